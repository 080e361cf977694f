"""An OTLP/HTTP trace receiver for the tracing test. It decodes what agentmesh exports with the
official OpenTelemetry protobuf classes (the `opentelemetry-proto` package), not with anything
agentmesh generated, so a wrong encoding cannot pass by agreeing with itself.

    otlp_receiver.py OUT_FILE

Listens on 127.0.0.1 on a port the OS picks and prints `listening PORT` on stdout. Each
POST /v1/traces with Content-Type application/x-protobuf is parsed as an
ExportTraceServiceRequest; every span in it becomes one JSON line appended to OUT_FILE:
{trace_id, span_id, parent_span_id, name, kind, service_name, attributes}
(ids in lowercase hex, kind as the proto enum name, attributes as a JSON object). The answer is
200 with an empty ExportTraceServiceResponse. Anything else gets 404, 415 or 400.
"""

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    from opentelemetry.proto.trace.v1 import trace_pb2
except ImportError as e:
    sys.stderr.write(
        f"the opentelemetry-proto Python package is missing ({e}); run the suite through "
        "scripts/test, which installs scripts/requirements-test.txt into .cache/venv\n"
    )
    sys.exit(3)

PROTOBUF = "application/x-protobuf"


def any_value(v):
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, as a collector does: the exporter reuses its connection.
    protocol_version = "HTTP/1.1"
    out = None
    lock = threading.Lock()

    def reply(self, status, body=b"", content_type=PROTOBUF):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path != "/v1/traces":
            return self.reply(404, b"not found", "text/plain")
        if (self.headers.get("Content-Type") or "").split(";")[0].strip() != PROTOBUF:
            return self.reply(415, b"expected application/x-protobuf", "text/plain")
        request = trace_service_pb2.ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is the client's fault
            sys.stderr.write(f"undecodable ExportTraceServiceRequest: {e}\n")
            return self.reply(400, str(e).encode(), "text/plain")
        lines = []
        for rs in request.resource_spans:
            service = attributes(rs.resource.attributes).get("service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    lines.append(
                        json.dumps(
                            {
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent_span_id": span.parent_span_id.hex(),
                                "name": span.name,
                                "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                                "service_name": service,
                                "attributes": attributes(span.attributes),
                                "status_code": trace_pb2.Status.StatusCode.Name(span.status.code),
                            }
                        )
                    )
        with self.lock, open(self.out, "a", encoding="utf-8") as f:
            for line in lines:
                f.write(line + "\n")
        self.reply(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

    def log_message(self, fmt, *args):
        sys.stderr.write("otlp_receiver: " + (fmt % args) + "\n")


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: otlp_receiver.py OUT_FILE")
    Handler.out = sys.argv[1]
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
