"""A small static-site backend for the demo, the tests and the benchmarks.

It answers every GET with a short page naming itself and the path asked for, and sets the
header `x-backend` to its name, so a test can tell which backend served a request.
"""

from __future__ import annotations

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall
    server: _Server

    def do_GET(self) -> None:
        body = (
            f"<!doctype html><title>{self.server.site_name}</title>"
            f"<p>Hello from {self.server.site_name}: you asked for {self.path}</p>\n"
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.send_header("x-backend", self.server.site_name)
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("x-backend", self.server.site_name)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    site_name = ""

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-response (a proxy reloading, say) is not an error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class SampleBackend:
    """An HTTP server on 127.0.0.1 (port 0 picks a free one), run in a background thread."""

    def __init__(self, name: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self._server = _Server((host, port), _Handler)
        self._server.site_name = name
        self.name = name
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"backend-{name}", daemon=True
        )

    def start(self) -> SampleBackend:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SampleBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
