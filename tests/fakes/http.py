"""A small threaded HTTP server on a free loopback port, for the API stand-ins."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JsonHandler(BaseHTTPRequestHandler):
    server: "LocalServer"

    def log_message(self, *_):  # keep test output clean
        pass

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None,
             content_type: str = "application/json") -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.app.handle(self, "GET")

    def do_POST(self):
        self.server.app.handle(self, "POST")


class StandIn:
    """A local service: its ``handle(handler, method)`` answers on a free loopback port inside ``with``."""

    def __init__(self) -> None:
        self.server = LocalServer(self)

    def __enter__(self):
        self.server.__enter__()
        return self

    def __exit__(self, *exc):
        self.server.__exit__(*exc)


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, app):
        super().__init__(("127.0.0.1", 0), JsonHandler)
        self.app = app
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.shutdown()
        self.server_close()
