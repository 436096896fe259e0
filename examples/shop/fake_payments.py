"""A stand-in payment provider for trying the shop example locally.

    python examples/shop/fake_payments.py [--port 9090] [--token dev-token]

It accepts POST /charge with `Authorization: Bearer <token>` and a JSON body
{"order_id", "amount_cents", "currency"}, and answers {"reference": "pay-..."}; a wrong
token gets 401, an amount over 100000 cents gets 402 (declined). Standard library only.
"""

from __future__ import annotations

import argparse
import json
import secrets
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def handler(token: str):
    class Payments(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            if self.path != "/charge":
                return self.answer(404, {"error": "no such endpoint"})
            if self.headers.get("Authorization") != f"Bearer {token}":
                return self.answer(401, {"error": "bad token"})
            try:
                charge = json.loads(body)
                amount = int(charge["amount_cents"])
            except (ValueError, KeyError, TypeError):
                return self.answer(400, {"error": "bad charge"})
            if amount > 100_000:
                return self.answer(402, {"error": "declined: amount too large"})
            reference = "pay-" + secrets.token_hex(6)
            self.log_message("charged %s %s for %s: %s", amount, charge.get("currency"),
                             charge.get("order_id"), reference)
            return self.answer(200, {"reference": reference})

        def answer(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Payments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--token", default="dev-token")
    options = parser.parse_args()
    server = ThreadingHTTPServer((options.host, options.port), handler(options.token))
    print(f"fake payment provider on http://{options.host}:{server.server_port}/charge", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
