"""An MCP server written with the official MCP Python SDK (MCPServer, formerly FastMCP),
serving Streamable HTTP, for crates/agentmesh/tests/mcp.rs.

Run: python mcp_server.py PORT LOG

Every HTTP request that reaches it is appended to LOG as one JSON line (method, path, the
Mcp-* headers and the raw body) before the SDK sees it, so the test can show that what the
sidecar refused never arrived. Tools: search, delete_all, export, and slow (a minute of
progress notifications, so a streamed answer stays open while the test revokes it).
"""

import asyncio
import json
import sys

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings

PORT = int(sys.argv[1])
LOG = sys.argv[2]

server = MCPServer("tools")


@server.tool()
def search(query: str) -> str:
    """Searches the public index."""
    return f"found: {query}"


@server.tool()
def delete_all() -> str:
    """Deletes everything."""
    return "deleted everything"


@server.tool()
def export(fmt: str = "csv") -> str:
    """Exports the books."""
    return f"exported as {fmt}"


@server.tool()
async def slow(ctx: Context) -> str:
    """Reports progress for a minute, then answers."""
    for step in range(600):
        await ctx.report_progress(step, 600)
        await asyncio.sleep(0.1)
    return "slow is done"


# The sidecar forwards the caller's Host; the mesh, not a Host check, guards this port.
app = server.streamable_http_app(
    transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
)


def logged(inner):
    """Records each request's body as it arrives, before the SDK reads it."""

    async def wrapped(scope, receive, send):
        if scope["type"] != "http":
            return await inner(scope, receive, send)
        chunks = []

        async def recv():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    headers = {
                        k.decode("latin-1"): v.decode("latin-1")
                        for k, v in scope["headers"]
                        if k.lower().startswith(b"mcp-")
                    }
                    with open(LOG, "a", encoding="utf-8") as f:
                        f.write(
                            json.dumps(
                                {
                                    "method": scope["method"],
                                    "path": scope["path"],
                                    "headers": headers,
                                    "body": b"".join(chunks).decode("utf-8", "replace"),
                                }
                            )
                            + "\n"
                        )
            return message

        return await inner(scope, recv, send)

    return wrapped


uvicorn.run(logged(app), host="127.0.0.1", port=PORT, log_level="warning")
