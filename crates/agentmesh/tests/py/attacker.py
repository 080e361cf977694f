"""The attacker next door: a process of another uid on the same host, with only an HTTP client.

The test runs this with `setpriv` as an unprivileged uid, the Python standard library only, and
a JSON list of attempts on stdin. Each attempt is one HTTP request to a local address (a Unix
socket path or host:port); the outcome of each is printed as one JSON object per line:

  {"name": ..., "outcome": "refused", "detail": "[Errno 13] Permission denied"}   no connection
  {"name": ..., "outcome": "no_answer", "detail": "..."}     connected, but no HTTP answer came
  {"name": ..., "outcome": "answered", "status": 200, "body": "..."}            an HTTP answer
"""

import json
import socket
import sys


def attempt(a):
    target = a["target"]
    try:
        if target.startswith("unix://"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(target[len("unix://"):])
        else:
            host, port = target.rsplit(":", 1)
            s = socket.create_connection((host, int(port)), timeout=10)
    except OSError as e:
        return {"outcome": "refused", "detail": str(e)}
    body = a.get("body", "").encode()
    head = f"{a.get('method', 'POST')} {a['path']} HTTP/1.1\r\nHost: localhost\r\n"
    for k, v in a.get("headers", {}).items():
        head += f"{k}: {v}\r\n"
    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    out = b""
    try:
        s.sendall(head.encode() + body)
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
    except OSError as e:
        # A peer that closes at once may reset the connection while we still write.
        if not out:
            return {"outcome": "no_answer", "detail": str(e)}
    finally:
        s.close()
    if not out.startswith(b"HTTP/"):
        return {"outcome": "no_answer", "detail": repr(out[:80])}
    status = int(out.split(b" ", 2)[1])
    body = out.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in out else b""
    return {"outcome": "answered", "status": status, "body": body[:2000].decode("utf-8", "replace")}


def main():
    attempts = json.load(sys.stdin)
    for a in attempts:
        r = attempt(a)
        r["name"] = a["name"]
        print(json.dumps(r), flush=True)


main()
