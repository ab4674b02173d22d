"""A fault-injecting HTTP reverse proxy for testing retry and integrity logic.

:class:`FlakyProxy` listens on 127.0.0.1 and forwards every request to an
upstream HTTP server (typically the moto S3 server), except that, drawn from a
seeded random generator, it:

* ``failure_rate``: answers with HTTP 500/503 *without* forwarding (the request
  never happened upstream), the classic transient error;
* ``lost_response_rate``: forwards the request, then discards the upstream
  answer and replies 500 (the request *did* happen; tests idempotency, e.g. a
  conditional create retried after it already succeeded);
* ``corrupt_rate``: flips one byte in the body of successful object downloads
  (GET responses carrying an ``ETag``), a corruption only end-to-end checksums
  can catch.

Deterministic faults for a precise scenario can be queued with
:meth:`FlakyProxy.inject`. Injected errors carry S3-style XML bodies with
non-throttling codes (``InternalError``/``ServiceUnavailable``), which botocore's
standard retry mode retries with short backoff.

Usage::

    with FlakyProxy(moto.endpoint_url, failure_rate=0.2, seed=7) as proxy:
        store = S3Store(bucket, config=S3Config(endpoint_url=proxy.endpoint_url))
        ...
        assert proxy.stats.failed_before > 0
"""

from __future__ import annotations

import collections
import http.client
import random
import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal
from urllib.parse import urlsplit

Fault = Literal["fail", "lose", "corrupt"]

_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "expect",
}

_ERROR_CODES = {
    500: "InternalError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass
class ProxyStats:
    """Counters of what the proxy did (read them after the traffic has finished)."""

    requests: int = 0
    forwarded: int = 0
    failed_before: int = 0
    lost_responses: int = 0
    corrupted: int = 0

    @property
    def injected(self) -> int:
        """Requests that saw any fault."""
        return self.failed_before + self.lost_responses + self.corrupted


class FlakyProxy:
    """Threaded reverse proxy in front of ``upstream`` that injects faults."""

    def __init__(
        self,
        upstream: str,
        *,
        failure_rate: float = 0.2,
        lost_response_rate: float = 0.0,
        corrupt_rate: float = 0.0,
        statuses: tuple[int, ...] = (500, 503),
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, got {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.failure_rate = failure_rate
        self.lost_response_rate = lost_response_rate
        self.corrupt_rate = corrupt_rate
        self.statuses = statuses
        self.stats = ProxyStats()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._queued: collections.deque[Fault] = collections.deque()
        self._server = ThreadingHTTPServer((host, port), _ProxyHandler)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FlakyProxy:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="flaky-proxy",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> FlakyProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ control
    def inject(self, *faults: Fault) -> None:
        """Queue faults applied, in order, to the next requests (before any random ones).

        ``"corrupt"`` waits for the next object download; the others apply to the
        next request whatever it is.
        """
        with self._lock:
            self._queued.extend(faults)

    def set_rates(
        self,
        *,
        failure_rate: float | None = None,
        lost_response_rate: float | None = None,
        corrupt_rate: float | None = None,
    ) -> None:
        """Change fault rates while running (``0`` turns a kind of fault off)."""
        with self._lock:
            if failure_rate is not None:
                self.failure_rate = failure_rate
            if lost_response_rate is not None:
                self.lost_response_rate = lost_response_rate
            if corrupt_rate is not None:
                self.corrupt_rate = corrupt_rate

    # ------------------------------------------------------------------ decisions
    def _decide_request(self) -> tuple[Fault | None, int]:
        """Fault for the request about to be forwarded, and the status to use."""
        with self._lock:
            self.stats.requests += 1
            status = self._random.choice(self.statuses)
            if self._queued and self._queued[0] in ("fail", "lose"):
                return self._queued.popleft(), status
            draw = self._random.random()
            if draw < self.failure_rate:
                return "fail", status
            if draw < self.failure_rate + self.lost_response_rate:
                return "lose", status
            return None, status

    def _decide_corruption(self) -> int | None:
        """Random seed for corrupting this download's body, or ``None``."""
        with self._lock:
            if self._queued and self._queued[0] == "corrupt":
                self._queued.popleft()
            elif self._random.random() >= self.corrupt_rate:
                return None
            return self._random.getrandbits(32)

    def _count(self, field_name: str) -> None:
        with self._lock:
            setattr(self.stats, field_name, getattr(self.stats, field_name) + 1)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FlakyProxy/1.0"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's
        # algorithm and delayed ACKs add ~40 ms to every keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self._proxy()

    def do_HEAD(self) -> None:
        self._proxy()

    def do_PUT(self) -> None:
        self._proxy()

    def do_POST(self) -> None:
        self._proxy()

    def do_DELETE(self) -> None:
        self._proxy()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        proxy: FlakyProxy = self.server.proxy  # type: ignore[attr-defined]
        try:
            body = self._read_body()
            fault, status = proxy._decide_request()
            if fault == "fail":
                proxy._count("failed_before")
                self._send_error(status)
                return
            response_status, headers, payload = self._forward(proxy, body)
            proxy._count("forwarded")
            if fault == "lose":
                proxy._count("lost_responses")
                self._send_error(status)
                return
            if (
                self.command == "GET"
                and response_status in (200, 206)
                and payload
                and any(name.lower() == "etag" for name, _ in headers)
            ):
                corruption = proxy._decide_corruption()
                if corruption is not None:
                    proxy._count("corrupted")
                    position = corruption % len(payload)
                    payload = (
                        payload[:position]
                        + bytes([payload[position] ^ 0xFF])
                        + payload[position + 1 :]
                    )
            self._send(response_status, headers, payload)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _forward(self, proxy: FlakyProxy, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        headers = {
            name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP
        }
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        connection = http.client.HTTPConnection(
            proxy.upstream_host, proxy.upstream_port, timeout=60
        )
        try:
            connection.request(self.command, self.path, body=body or None, headers=headers)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.getheaders(), payload
        finally:
            connection.close()

    def _send(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        has_length = False
        for name, value in headers:
            lowered = name.lower()
            if lowered in _HOP_BY_HOP or lowered in ("server", "date"):
                continue
            if lowered == "content-length":
                has_length = True
                if self.command != "HEAD":
                    value = str(len(payload))
            self.send_header(name, value)
        if not has_length:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    def _send_error(self, status: int) -> None:
        code = _ERROR_CODES.get(status, "InternalError")
        payload = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>fault injected by FlakyProxy</Message>"
            "<RequestId>flaky-proxy</RequestId></Error>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
