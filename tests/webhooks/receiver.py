"""A Standard Webhooks receiver written independently of tokend's code.

Every delivery is verified by the `standardwebhooks` package (PyPI) and its
body parsed as tokend.v1.ConnectionEvent under the proto3 JSON mapping (with
the generated Python stubs, unknown fields refused). Each delivery is appended
to OUT as one JSON line; a delivery that fails either check is recorded as
{"bad": reason} and answered 400.

usage: receiver.py PORT SECRET OUT
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from google.protobuf import json_format
from standardwebhooks import Webhook

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "clients", "python", "tokend_client", "_gen"))
from tokend.v1 import tokend_pb2  # noqa: E402

port, secret, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
webhook = Webhook(secret)


def record(entry: dict) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {k: v for k, v in self.headers.items()}
        try:
            webhook.verify(body, headers)
            event = json_format.Parse(body.decode(), tokend_pb2.ConnectionEvent())
        except Exception as e:  # any failure is the test's business
            record({"bad": f"{type(e).__name__}: {e}"})
            self.send_response(400)
            self.end_headers()
            return
        record({
            "id": headers.get("webhook-id") or headers.get("Webhook-Id"),
            "sequence": event.sequence,
            "type": tokend_pb2.EventType.Name(event.event_type),
            "connection_id": event.connection_id,
            "cursor": event.cursor,
        })
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
