"""A workload written against py-spiffe and spiffe-tls, libraries no one here wrote.

crates/agentmesh/tests/interop.rs runs it against a real `agentmesh node` process, with
SPIFFE_ENDPOINT_SOCKET set. Every mode prints exactly one JSON object on stdout (the test's
evidence) and exits non-zero with a message on stderr when something is wrong.

    workload.py x509 OUTDIR ROTATION_WAIT_S   X509Source: ID, chain + bundle into OUTDIR,
                                              then waits for a rotation on the open stream
    workload.py jwt AUDIENCE                  fetch_jwt_svid, validate_jwt_svid, local JWKS check
    workload.py echo-server ADDR PEER_ID N    spiffetls mTLS echo server, authorize_id(PEER_ID),
                                              for N good connections
    workload.py echo-client ADDR PEER_ID OUTDIR ROTATION_WAIT_S
                                              spiffetls mTLS echo client, authorize_id(PEER_ID);
                                              talks, waits for its SVID to rotate, talks again

    workload.py http-get ADDR PEER_ID PATH    spiffetls mTLS client, authorize_id(PEER_ID), sends
                                              one HTTP/1.1 GET and reports the status and body

The echo and http-get modes read one line from stdin before touching the Workload API, so the test can
register them with the node's launcher API first.
"""

import json
import os
import sys
import time

from cryptography.hazmat.primitives import serialization
from spiffe import JwtSvid, SpiffeId, WorkloadApiClient, X509Source
from spiffetls import ListenOptions, dial, listen
from spiffetls.tlsconfig.authorize import authorize_id


def socket_path():
    return os.environ["SPIFFE_ENDPOINT_SOCKET"]


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def serial(svid):
    return format(svid.leaf.serial_number, "x")


def x509(outdir, wait_s):
    source = X509Source(socket_path=socket_path(), timeout_in_seconds=30)
    try:
        svid = source.get_x509_context().default_svid
        first = serial(svid)
        with open(os.path.join(outdir, "chain.pem"), "w") as f:
            f.write("".join(pem(c) for c in svid.cert_chain))
        bundle = source.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None:
            sys.exit("no X.509 bundle for the SVID's own trust domain")
        with open(os.path.join(outdir, "bundle.pem"), "w") as f:
            f.write("".join(pem(c) for c in bundle.x509_authorities))
        # The source keeps its stream open; a rotation changes what it holds.
        deadline = time.monotonic() + wait_s
        rotated = None
        while time.monotonic() < deadline:
            s = serial(source.get_x509_context().default_svid)
            if s != first:
                rotated = s
                break
            time.sleep(0.1)
        print(json.dumps({
            "spiffe_id": str(svid.spiffe_id),
            "chain_len": len(svid.cert_chain),
            "first_serial": first,
            "rotated_serial": rotated,
        }))
    finally:
        source.close()


def jwt(audience):
    client = WorkloadApiClient(socket_path=socket_path(), default_timeout=30)
    try:
        svid = client.fetch_jwt_svid(audience={audience})
        validated = client.validate_jwt_svid(svid.token, audience)
        bundles = client.fetch_jwt_bundles()
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None:
            sys.exit("no JWT bundle for the SVID's own trust domain")
        # The JWKS the node serves must be usable on its own, without the node.
        local = JwtSvid.parse_and_validate(svid.token, bundle, {audience})
        try:
            client.validate_jwt_svid(svid.token, audience + "-other")
            wrong_audience_refused = False
        except Exception:  # noqa: BLE001 - any refusal counts; the test checks that there is one
            wrong_audience_refused = True
        print(json.dumps({
            "spiffe_id": str(svid.spiffe_id),
            "audience": sorted(svid.audience),
            "validated_by_node": str(validated.spiffe_id),
            "validated_locally": str(local.spiffe_id),
            "wrong_audience_refused": wrong_audience_refused,
        }))
    finally:
        client.close()


def peer_serial(conn):
    return format(conn.get_peer_certificate().get_serial_number(), "x")


def echo_server(addr, peer_id, count):
    sys.stdin.readline()
    source = X509Source(socket_path=socket_path(), timeout_in_seconds=30)
    try:
        own = str(source.get_x509_context().default_svid.spiffe_id)
        server = listen(addr, source, ListenOptions(authorize_fn=authorize_id(SpiffeId(peer_id))))
        print(json.dumps({"listening": addr, "spiffe_id": own}), flush=True)
        refused, peers, echoed = 0, [], []
        while len(peers) < count:
            conn, _ = server.accept()
            try:
                conn.do_handshake()
                data = conn.recv(1024)
                conn.sendall(b"echo:" + data)
                peers.append(peer_serial(conn))
                echoed.append(data.decode())
                conn.shutdown()
            except Exception:  # noqa: BLE001 - a refused client; keep serving the next one
                refused += 1
            finally:
                conn.close()
        print(json.dumps({
            "spiffe_id": own,
            "echoed": echoed,
            "peer_serials": peers,
            "refused": refused,
        }))
    finally:
        source.close()


def echo_client(addr, peer_id, outdir, wait_s):
    """Talks to the echo server, waits for its own SVID to rotate, and talks again."""
    sys.stdin.readline()
    source = X509Source(socket_path=socket_path(), timeout_in_seconds=30)
    try:
        svid = source.get_x509_context().default_svid
        own = str(svid.spiffe_id)
        with open(os.path.join(outdir, "chain.pem"), "w") as f:
            f.write("".join(pem(c) for c in svid.cert_chain))
        bundle = source.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        with open(os.path.join(outdir, "bundle.pem"), "w") as f:
            f.write("".join(pem(c) for c in bundle.x509_authorities))
        # The server is not who we expect: the handshake must fail.
        try:
            conn = dial(addr, source, authorize_fn=authorize_id(SpiffeId(peer_id + "-impostor")))
            conn.close()
            wrong_peer_refused = False
        except Exception:  # noqa: BLE001
            wrong_peer_refused = True

        def talk():
            conn = dial(addr, source, authorize_fn=authorize_id(SpiffeId(peer_id)))
            mine = serial(source.get_x509_context().default_svid)
            conn.sendall(b"hello from " + own.encode())
            reply = conn.recv(1024).decode()
            conn.close()
            return mine, reply

        first_serial, first_reply = talk()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if serial(source.get_x509_context().default_svid) != first_serial:
                break
            time.sleep(0.1)
        second_serial, second_reply = talk()
        print(json.dumps({
            "spiffe_id": own,
            "replies": [first_reply, second_reply],
            "own_serials": [first_serial, second_serial],
            "wrong_peer_refused": wrong_peer_refused,
        }))
    finally:
        source.close()


def http_get(addr, peer_id, path):
    """One HTTP/1.1 request over a spiffetls connection, as a sidecar-less client would send."""
    sys.stdin.readline()
    source = X509Source(socket_path=socket_path(), timeout_in_seconds=30)
    try:
        own = str(source.get_x509_context().default_svid.spiffe_id)
        conn = dial(addr, source, authorize_fn=authorize_id(SpiffeId(peer_id)))
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: upstream\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            try:
                chunk = conn.recv(65536)
            except Exception:  # noqa: BLE001 - the peer closing ends the response
                break
            if not chunk:
                break
            data += chunk
        conn.close()
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head else 0
        print(json.dumps({"spiffe_id": own, "status": status, "body": body.decode(errors="replace")}))
    finally:
        source.close()


def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "x509":
        x509(args[0], float(args[1]))
    elif mode == "jwt":
        jwt(args[0])
    elif mode == "echo-server":
        echo_server(args[0], args[1], int(args[2]))
    elif mode == "echo-client":
        echo_client(args[0], args[1], args[2], float(args[3]))
    elif mode == "http-get":
        http_get(args[0], args[1], args[2])
    else:
        sys.exit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
