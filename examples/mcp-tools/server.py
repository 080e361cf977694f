"""An MCP server written with the official MCP Python SDK, behind an agentmesh sidecar.

Run it with `agentmesh up --scenario examples/mcp-tools/scenario.toml` (needs `pip install
mcp==2.3.0`). It serves MCP's Streamable HTTP at /mcp on the port `up` gives it
($AGENTMESH_LISTEN) and has no authorization code of its own: its sidecar decides every
`tools/call` by the intentions (the executor may `search`, only finance users may `export`,
nobody may `delete_all`), and refused calls never reach this process.

With $MCP_TOOLS_LOG set, every tool that runs appends one JSON line to that file, so a test
can show what arrived. With $MCP_BENCH_TOOLS=N it also has N look-up tools (`tool_0000`, …),
so that `bench/run mcp` can measure filtering a `tools/list` answer as long as a big server's.
"""

import json
import os
import sys
import threading

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("tools")
LOG = os.environ.get("MCP_TOOLS_LOG")


def ran(tool: str, **arguments) -> None:
    """Records that `tool` ran here (only with $MCP_TOOLS_LOG)."""
    if LOG:
        with open(LOG, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "arguments": arguments}) + "\n")


@server.tool()
def search(query: str) -> str:
    """Searches the public index."""
    ran("search", query=query)
    return f"found 3 public documents about: {query[:80]}"


@server.tool()
def export(fmt: str = "csv") -> str:
    """Exports the books (finance only)."""
    ran("export", fmt=fmt)
    return f"exported the books as {fmt}"


@server.tool()
def delete_all() -> str:
    """Deletes everything (no intention allows it)."""
    ran("delete_all")
    return "deleted everything"


def bench_tool(name: str):
    """One of $MCP_BENCH_TOOLS look-up tools: a real signature, so its schema is a real one."""

    def look_up(query: str) -> str:
        return f"{name}: nothing about {query[:80]}"

    return look_up


for n in range(int(os.environ.get("MCP_BENCH_TOOLS", "0"))):
    server.add_tool(
        bench_tool(f"tool_{n:04d}"),
        name=f"tool_{n:04d}",
        description=f"Looks things up in index {n} (a bench tool).",
    )


def stop_with_stdin() -> None:
    """Under `agentmesh up`, stdin is a pipe `up` holds: its end means stop."""
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    if os.environ.get("AGENTMESH_STOP_WITH_STDIN") == "1":
        threading.Thread(target=stop_with_stdin, daemon=True).start()
    host, port = os.environ.get("AGENTMESH_LISTEN", "127.0.0.1:8090").rsplit(":", 1)
    # The sidecar forwards the caller's Host; the mesh, not a Host check, guards this port.
    app = server.streamable_http_app(
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False)
    )
    uvicorn.run(app, host=host, port=int(port), log_level="warning")
