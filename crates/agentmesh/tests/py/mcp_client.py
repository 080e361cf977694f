"""An MCP client written with the official MCP Python SDK, for crates/agentmesh/tests/mcp.rs.

Run: python mcp_client.py URL MODE

MODE is the SDK's connect mode: "legacy" (the initialize handshake, 2025-11-25) or
"2026-07-28" (the stateless revision, with Mcp-Method/Mcp-Name headers on every request).
Prints one JSON object: the tools listed, and each call's text or error.
"""

import asyncio
import json
import sys

from mcp import Client

URL, MODE = sys.argv[1], sys.argv[2]


async def call(client, name, args):
    try:
        result = await client.call_tool(name, args)
    except Exception as e:  # the SDK raises the JSON-RPC error the sidecar answered with
        return {"error": str(e), "type": type(e).__name__}
    texts = [c.text for c in result.content if getattr(c, "text", None) is not None]
    return {"text": " ".join(texts), "is_error": bool(result.is_error)}


async def main():
    async with Client(URL, mode=MODE) as client:
        tools = await client.list_tools()
        out = {"tools": sorted(t.name for t in tools.tools)}
        out["search"] = await call(client, "search", {"query": "mesh"})
        out["delete_all"] = await call(client, "delete_all", {})
        out["export"] = await call(client, "export", {"fmt": "pdf"})
        # The session survives a refusal: the allowed tool still answers afterwards.
        out["search_again"] = await call(client, "search", {"query": "again"})
    print(json.dumps(out))


asyncio.run(main())
