"""A captioner webhook receiver using only the standard library: verify, deduplicate, handle.

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000

Get the secret from `GET /v1/webhooks/secret`; during a rotation put both secrets in
WEBHOOK_SECRET, separated by a space. Each verified event is printed as one JSON line. Answer
fast with a 2xx: anything else (or no answer within the timeout) is retried with the same
webhook-id, so repeats are skipped here by that id.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE_S = 300  # refuse messages signed longer ago than this (replays)


def verify(secrets: list[str], headers, body: bytes) -> None:
    """Raise ValueError unless one of `secrets` signed this message, recently."""
    message_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    offered = headers.get("webhook-signature", "").split()
    if not (message_id and timestamp.isdigit() and offered):
        raise ValueError("missing webhook headers")
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        raise ValueError("timestamp too old or too new")
    signed = f"{message_id}.{timestamp}.".encode() + body
    for secret in secrets:
        key = base64.b64decode(secret.removeprefix("whsec_"))
        expected = "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        if any(hmac.compare_digest(expected, candidate) for candidate in offered):
            return
    raise ValueError("no valid signature")


class Receiver(BaseHTTPRequestHandler):
    secrets: list[str] = []
    seen: set[str] = set()  # handled webhook-ids; keep them in a database in production

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            verify(self.secrets, self.headers, body)
        except ValueError as exc:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(str(exc).encode())
            return
        message_id = self.headers["webhook-id"]
        if message_id not in self.seen:
            self.seen.add(message_id)
            handle(message_id, json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:  # quiet: the events are the output
        pass


def handle(message_id: str, event: dict) -> None:
    """Do something with an event: here, print what happened to which job or batch."""
    data = event["data"]
    caption = (data.get("result") or {}).get("caption")
    print(
        json.dumps(
            {
                "webhook_id": message_id,
                "type": event["type"],
                "id": data["id"],
                "status": data["status"],
                "caption": caption,
            }
        ),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    Receiver.secrets = os.environ["WEBHOOK_SECRET"].split()
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    print(f"listening on http://{args.host}:{server.server_port}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
