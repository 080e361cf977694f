"""A Python AI agent that joins an agentmesh scenario with no SPIFFE code of its own.

Run it with `agentmesh up --scenario examples/python-agent/scenario.toml` (needs `pip install
flask`). Like planner-executor's agents, it speaks plain HTTP: it serves POST /ask on the port
`up` gives it, and calls the LLM gateway through its sidecar's local port
($AGENTMESH_UPSTREAM_GATEWAY). The sidecar does mTLS with the agent's SPIFFE identity and the
gateway's sidecar checks the intentions, so this file never sees a certificate.
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.request

from flask import Flask, jsonify, request

NAME = os.environ.get("AGENTMESH_SERVICE", "python-agent")
GATEWAY = os.environ.get("AGENTMESH_UPSTREAM_GATEWAY", "http://127.0.0.1:9002")
MODEL = os.environ.get("AGENTMESH_MODEL", "agentmesh-default")
ROLE_PROMPT = "You are a Python executor agent. Answer the question directly and briefly."

app = Flask(__name__)


def ask_gateway(question: str, traceparent: str | None) -> str:
    """One Ollama-style /api/chat call through the sidecar (the gateway speaks Ollama's API)."""
    body = json.dumps(
        {
            "model": MODEL,
            "stream": False,
            "messages": [
                {"role": "system", "content": ROLE_PROMPT},
                {"role": "user", "content": question},
            ],
        }
    ).encode()
    headers = {"Content-Type": "application/json"}
    if traceparent:
        # Passing the trace context on keeps this hop in the caller's trace.
        headers["traceparent"] = traceparent
    req = urllib.request.Request(f"{GATEWAY}/api/chat", data=body, headers=headers)
    with urllib.request.urlopen(req, timeout=300) as resp:
        return json.load(resp)["message"]["content"]


@app.get("/healthz")
def healthz():
    return "ok\n"


@app.post("/ask")
def ask():
    payload = request.get_json(silent=True)
    if not isinstance(payload, dict) or not str(payload.get("question", "")).strip():
        return jsonify(error='the body is not {"question": "..."} JSON', agent=NAME), 400
    question = payload["question"]
    if payload.get("context"):
        question = f"{question}\n\n{payload['context']}"
    traceparent = request.headers.get("traceparent")
    try:
        answer = ask_gateway(question, traceparent)
    except urllib.error.HTTPError as e:
        # The sidecar's or the gateway's refusal, passed on with its reason.
        return jsonify(error=f"gateway answered {e.code}: {e.read().decode(errors='replace')}", agent=NAME), 502
    except (urllib.error.URLError, OSError, KeyError, ValueError) as e:
        return jsonify(error=f"gateway unreachable: {e}", agent=NAME), 502
    trace_id = traceparent.split("-")[1] if traceparent and traceparent.count("-") == 3 else ""
    return jsonify(answer=answer, agents=[NAME, "gateway"], trace_id=trace_id, model=MODEL)


def stop_with_stdin():
    """Under `agentmesh up`, stdin is a pipe `up` holds: its end means stop."""
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    if os.environ.get("AGENTMESH_STOP_WITH_STDIN") == "1":
        threading.Thread(target=stop_with_stdin, daemon=True).start()
    host, port = os.environ.get("AGENTMESH_LISTEN", "127.0.0.1:8081").rsplit(":", 1)
    app.run(host=host, port=int(port))
