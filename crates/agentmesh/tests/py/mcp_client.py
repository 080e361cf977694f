"""An MCP client written with the official MCP Python SDK, for crates/agentmesh/tests/mcp.rs.

Run: python mcp_client.py URL MODE [CERT KEY ROOTS]

MODE is the SDK's connect mode: "legacy" (the initialize handshake, 2025-11-25) or
"2026-07-28" (the stateless revision, with Mcp-Method/Mcp-Name headers on every request).
With CERT, KEY and ROOTS (PEM files: an SVID chain, its key, the trust bundle) the client
speaks mTLS itself, to a server that does mTLS in process (the agentmesh SDK), with the
SDK's transport on an httpx client that presents the SVID and trusts only the bundle (no host
name check: an SVID names a SPIFFE ID, not a host).
Prints one JSON object: the tools listed, and each call's text or error.
"""

import asyncio
import json
import ssl
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, MODE = sys.argv[1], sys.argv[2]
TLS = sys.argv[3:6]


async def call(client, name, args):
    try:
        result = await client.call_tool(name, args)
    except Exception as e:  # the SDK raises the JSON-RPC error the sidecar answered with
        return {"error": str(e), "type": type(e).__name__}
    texts = [c.text for c in result.content if getattr(c, "text", None) is not None]
    return {"text": " ".join(texts), "is_error": bool(result.is_error)}


def server():
    if not TLS:
        return URL
    cert, key, roots = TLS
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=roots)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(cert, key)
    return streamable_http_client(URL, http_client=httpx2.AsyncClient(verify=ctx))


async def main():
    async with Client(server(), mode=MODE) as client:
        tools = await client.list_tools()
        out = {"tools": sorted(t.name for t in tools.tools)}
        out["search"] = await call(client, "search", {"query": "mesh"})
        out["delete_all"] = await call(client, "delete_all", {})
        out["export"] = await call(client, "export", {"fmt": "pdf"})
        # The session survives a refusal: the allowed tool still answers afterwards.
        out["search_again"] = await call(client, "search", {"query": "again"})
    print(json.dumps(out))


asyncio.run(main())
