"""A fault-injecting HTTP server on 127.0.0.1 for tests: real sockets, programmable misbehaviour.

Usage (a pytest plugin: tests/conftest.py lists it in `pytest_plugins`)::

    def test_resume(fault_server):
        route = fault_server.add("/w.bin", b"x" * 10_000, drop_after=4_000)
        url = fault_server.url("/w.bin")
        ...
        assert route.hits == 2 and route.bytes_sent == 10_000
        assert fault_server.requests[-1].headers["Range"] == "bytes=4000-"

Every request is recorded (`server.requests`, `route.requests`) with its method, path,
headers and arrival time, so a test can check what a client sent (a Range header, an
Authorization header that must not be there, an If-None-Match). Each `Route` is a plain
dataclass: change its fields between requests to change behaviour (e.g. `route.set_body(b"new")`
gives the next response a new ETag). Faults that count down (`fail`, `drop_after`, `stall`)
apply to the first requests only and then the route behaves.

Routes support:
- `Range` (single ``bytes=a-b`` / ``bytes=a-`` ranges -> 206 with Content-Range; out of range
  -> 416) unless ``ranges=False``, in which case the full body comes back with 200;
- `If-Range` (ETag or Last-Modified): a stale validator gets the full body with 200;
- `ETag` / `If-None-Match` and `Last-Modified` / `If-Modified-Since` -> 304;
- ``fail=[503, 503]``: the first requests get those statuses (with ``retry_after`` as a
  Retry-After header when set), then the body is served;
- ``drop_after=N`` (``drops`` times): send N bytes of the body, then cut the connection;
- ``stall=S`` (``stalls`` times): sleep S seconds after the headers, or after
  ``stall_after`` bytes of the body (read timeout tests);
  ``gate=threading.Event()``: hold bodies after the headers until the test sets the event;
  ``delay=S``: sleep before answering at all; ``rate=B``: throttle the body to B bytes/s
  (``rate=4``: a byte every 0.25 s, a stalled server), after ``rate_after`` bytes sent at full speed;
- ``redirect="/other"`` or a full URL (status ``redirect_status``), for chains and loops;
- ``auth="Bearer t"``: anything else in Authorization gets 401 (403 when a wrong one is sent);
- ``status``/``content_type``/``headers``: serve an HTML error page with 200, a 404, etc.
Unknown paths get 404.
"""
from __future__ import annotations

import email.utils
import hashlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pytest


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    time: float


@dataclass
class Route:
    """What the server does for one path; fields can be changed while the server runs."""

    path: str
    body: bytes = b""
    status: int = 200
    content_type: str = "application/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = None  # None: derived from the body; "" for no ETag header
    last_modified: float | None = None  # epoch seconds; None: no Last-Modified header
    ranges: bool = True
    fail: list[int] = field(default_factory=list)
    retry_after: str | None = None
    drop_after: int | None = None
    drops: int = 1
    stall: float = 0.0
    stalls: int = 1
    stall_after: int = 0  # bytes of the body sent before the stall
    delay: float = 0.0
    rate: float | None = None
    rate_after: int = 0  # bytes of each response sent at full speed before `rate` applies
    redirect: str | None = None
    redirect_status: int = 302
    auth: str | None = None
    gate: threading.Event | None = None  # hold every body until the test sets it
    # Filled in by the server.
    hits: int = 0
    bytes_sent: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)

    def set_body(self, body: bytes) -> None:
        """Serve new content (its ETag changes with it unless `etag` was set explicitly)."""
        self.body = body

    @property
    def current_etag(self) -> str | None:
        if self.etag == "":
            return None
        return self.etag or '"' + hashlib.sha1(self.body).hexdigest()[:16] + '"'


class FaultServer:
    """A ThreadingHTTPServer in a daemon thread; use as a context manager or via `fault_server`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.routes: dict[str, Route] = {}
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd = _QuietServer((host, port), _handler_for(self))
        self._httpd.daemon_threads = True
        self.host, self.port = self._httpd.server_address[:2]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add(self, path: str, body: bytes = b"", **options) -> Route:
        """Serve `body` at `path` with the given `Route` options; returns the route."""
        route = Route(path=path, body=body, **options)
        self.routes[path] = route
        return route

    def url(self, path: str, host: str | None = None) -> str:
        """Full URL of `path`; `host="localhost"` gives a URL on a different host name."""
        return f"http://{host or self.host}:{self.port}{path}"

    @property
    def bytes_sent(self) -> int:
        return sum(r.bytes_sent for r in self.routes.values())


class _QuietServer(ThreadingHTTPServer):
    """Clients hanging up mid-response is normal here (that is what tests provoke)."""

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range, or None when it cannot be satisfied."""
    unit, _, spec = header.partition("=")
    if unit.strip() != "bytes" or "," in spec:
        return None
    first, _, last = spec.strip().partition("-")
    if first == "":  # suffix range: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n else None
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return None
    return start, min(end, size - 1)


def _handler_for(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers go out line by line: without this, Nagle's algorithm holds each response's last
        # segment for the client's delayed ACK (~40 ms a request on a kept-alive connection).
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            record = RecordedRequest(self.command, self.path, dict(self.headers.items()), time.monotonic())
            path = self.path.split("?", 1)[0]
            with server._lock:
                server.requests.append(record)
                route = server.routes.get(path)
                if route is not None:
                    route.hits += 1
                    route.requests.append(record)
            if route is None:
                return self._reply(404, b"<html><body>404 Not Found</body></html>", "text/html", head)
            if route.delay:
                time.sleep(route.delay)
            if route.auth is not None and self.headers.get("Authorization") != route.auth:
                status = 403 if self.headers.get("Authorization") else 401
                return self._reply(status, b"denied\n", "text/plain", head)
            with server._lock:
                failure = route.fail.pop(0) if route.fail else None
            if failure is not None:
                extra = {"Retry-After": route.retry_after} if route.retry_after is not None else {}
                return self._reply(failure, f"error {failure}\n".encode(), "text/plain", head, extra)
            if route.redirect is not None:
                location = route.redirect
                return self._reply(route.redirect_status, b"", "text/plain", head, {"Location": location})
            self._send_body(route, head)

        def _reply(self, status: int, body: bytes, ctype: str, head: bool, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _send_body(self, route: Route, head: bool) -> None:
            body, etag = route.body, route.current_etag
            lastmod = email.utils.formatdate(route.last_modified, usegmt=True) if route.last_modified else None
            validators = {}
            if etag:
                validators["ETag"] = etag
            if lastmod:
                validators["Last-Modified"] = lastmod
            inm, ims = self.headers.get("If-None-Match"), self.headers.get("If-Modified-Since")
            if (etag and inm and etag in [t.strip() for t in inm.split(",")]) or (
                inm is None and lastmod and ims == lastmod
            ):
                self.send_response(304)
                for k, v in validators.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, start, end = route.status, 0, len(body) - 1
            extra = dict(validators)
            rng = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if rng and route.ranges and route.status == 200 and (if_range is None or if_range in (etag, lastmod)):
                span = _parse_range(rng, len(body))
                if span is None:
                    return self._reply(416, b"", "text/plain", head, {"Content-Range": f"bytes */{len(body)}"})
                start, end = span
                status = 206
                extra["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
            if route.ranges:
                extra["Accept-Ranges"] = "bytes"
            extra.update(route.headers)
            payload = body[start : end + 1]
            self.send_response(status)
            self.send_header("Content-Type", route.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for k, v in extra.items():
                self.send_header(k, v)
            self.end_headers()
            if head:
                return
            with server._lock:
                drop = route.drop_after if route.drop_after is not None and route.drops > 0 else None
                if drop is not None:
                    route.drops -= 1
                stall = route.stall if route.stall and route.stalls > 0 else 0.0
                if stall:
                    route.stalls -= 1
            limit = len(payload) if drop is None else min(drop, len(payload))
            head_start = min(route.stall_after, limit) if stall else 0
            if head_start:
                self._write(route, payload[:head_start])
            if stall or route.gate is not None:
                self.wfile.flush()
            if stall:
                time.sleep(stall)
            if route.gate is not None:
                route.gate.wait(timeout=60)
            fast = min(max(route.rate_after, head_start), limit) if route.rate else head_start
            if fast > head_start:
                self._write(route, payload[head_start:fast], throttle=False)
            self._write(route, payload[max(head_start, fast):limit])
            if drop is not None:
                self.wfile.flush()
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                self.close_connection = True

        def _write(self, route: Route, data: bytes, throttle: bool = True) -> None:
            step = 64 * 1024
            rate = route.rate if throttle else None
            if rate:
                step = max(1, int(rate / 20))
            try:
                for i in range(0, len(data), step):
                    piece = data[i : i + step]
                    self.wfile.write(piece)
                    with server._lock:
                        route.bytes_sent += len(piece)
                    if rate:
                        self.wfile.flush()
                        time.sleep(len(piece) / rate)
            except (BrokenPipeError, ConnectionResetError):  # the client hung up; that is its right
                self.close_connection = True

    return Handler


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A running FaultServer on 127.0.0.1 with no routes yet."""
    with FaultServer() as server:
        yield server


@pytest.fixture
def second_server() -> Iterator[FaultServer]:
    """Another FaultServer (a different port), e.g. the target of a cross-host redirect."""
    with FaultServer() as server:
        yield server


__all__ = ["FaultServer", "RecordedRequest", "Route", "fault_server", "second_server"]
