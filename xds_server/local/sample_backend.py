"""A small static-site backend for the demo, the tests and the benchmarks.

It answers every GET with a short page naming itself and the path asked for, and sets the
header `x-backend` to its name, so a test can tell which backend served a request.

A few knobs let the tests play a backend in trouble; none changes the default behaviour:

- `healthy`: when False, a GET of `health_path` answers 503 (every other path still 200);
- a query parameter `delay_ms=N` makes that one answer wait N milliseconds (at most 30 s);
- `headers`: more response headers, sent with every answer;
- `requests` and `health_checks` count the requests received (of other paths, and of
  `health_path`), so a test can tell whether anything reached the backend.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_DELAY_MS = 30_000


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go in two writes: no delayed-ACK stall
    server: _Server

    def _answer(self, *, head: bool) -> None:
        backend = self.server.backend
        path, _, query = self.path.partition("?")
        checking = path == backend.health_path
        backend.count(health_check=checking)
        delay = _delay_ms(query)
        if delay:
            time.sleep(delay / 1000)
        if checking and not backend.healthy:
            status = 503
            body = f"{backend.name} is unhealthy\n".encode()
        else:
            status = 200
            body = (
                f"<!doctype html><title>{backend.name}</title>"
                f"<p>Hello from {backend.name}: you asked for {self.path}</p>\n"
            ).encode()
        self.send_response(status)
        if not head:
            self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", "0" if head else str(len(body)))
        self.send_header("x-backend", backend.name)
        for name, value in backend.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _delay_ms(query: str) -> int:
    """The `delay_ms` a query asks for (0 when none, or not a number), bounded."""
    if "delay_ms=" not in query:
        return 0
    values = urllib.parse.parse_qs(query).get("delay_ms", [])
    try:
        asked = int(values[-1]) if values else 0
    except ValueError:
        return 0
    return max(0, min(asked, MAX_DELAY_MS))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    backend: SampleBackend

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that hangs up mid-response (a proxy reloading, say) is not an error here."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class SampleBackend:
    """An HTTP server on 127.0.0.1 (port 0 picks a free one), run in a background thread."""

    def __init__(
        self, name: str, port: int = 0, host: str = "127.0.0.1", *, health_path: str = "/healthz"
    ) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.backend = self
        self.name = name
        self.port: int = self._server.server_address[1]
        self.health_path = health_path
        self.healthy = True
        self.headers: dict[str, str] = {}
        self.requests = 0
        self.health_checks = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"backend-{name}", daemon=True
        )

    def count(self, *, health_check: bool) -> None:
        with self._lock:
            if health_check:
                self.health_checks += 1
            else:
                self.requests += 1

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
