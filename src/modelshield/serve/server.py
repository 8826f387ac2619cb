"""Running the gateway under uvicorn.

    python -m modelshield.serve.server MODULE:APP [--host H] [--port P] [--workers N]

(``modelshield serve`` runs ``modelshield.serve.main:app`` this way; the benchmarks run
their bare servers this way too, so both sides get the same server.)

With several workers uvicorn binds the listening socket itself, as ``socket(AF_INET)``
without naming TCP, and asyncio then leaves Nagle's algorithm on for the connections it
accepts: a response's headers and body, written apart, wait for the client's delayed ACK,
about 40 ms a request on keep-alive connections (measured: 44 ms for ``/v2/health/ready``
with 2 workers, 1.2 ms with 1). :class:`GatewayH11Protocol` sets ``TCP_NODELAY`` on every
connection, whatever the socket; it also answers a request h11 cannot parse with the
gateway's JSON error (uvicorn's is plain text), and bounds how long a connection may take
to send a request's headers (10 s) and its body (30 s): without that, idle or dripping
connections are held for as long as their clients like.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


def _json_response(status: str, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response with the gateway's error body, closing the connection."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class GatewayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``TCP_NODELAY`` on each connection, the gateway's JSON
    error body on a request h11 cannot parse, and two deadlines uvicorn does not keep: a
    request's headers must arrive within ``header_timeout`` seconds (of the connection, or
    of the previous response), and its body within ``body_timeout`` of its headers; past
    either the connection is closed (a 408 when a request was begun)."""

    header_timeout = 10.0
    body_timeout = 30.0
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        self._disarm()
        self.transport.write(_json_response("400 Bad Request", "malformed_http",
                                            f"{msg} The request is not valid HTTP/1.1."))
        self.transport.close()

    def _arm(self) -> None:
        """Keep the deadline of what the connection waits for: headers or a body."""
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        waits = "headers" if state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete) else \
            "body" if state is h11.SEND_BODY else None
        if waits is None:
            self._disarm()
        elif self._deadline is None or getattr(self, "_waits", None) != waits:
            self._disarm()
            self._waits = waits
            self._deadline = self.loop.call_later(
                self.header_timeout if waits == "headers" else self.body_timeout,
                self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        started = self.cycle is not None and not self.cycle.response_complete
        if getattr(self, "_waits", None) == "body" and started \
                and not self.cycle.response_started:
            self.cycle.disconnected = True  # the app's next receive() is a disconnect
            self.cycle.message_event.set()
            self.transport.write(_json_response(
                "408 Request Timeout", "request_timeout", f"The request body did not arrive "
                f"within {self.body_timeout:g} s of its headers."))
        self.transport.close()


NoDelayH11Protocol = GatewayH11Protocol


def run(app: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        **kwargs: Any) -> None:
    """Serve the ASGI app at import path ``app``. Forwarded headers are never trusted by
    uvicorn itself: the gateway applies its config's ``trusted_proxies``."""
    uvicorn.run(app, host=host, port=port, workers=workers, http=GatewayH11Protocol,
                proxy_headers=False, log_level=kwargs.pop("log_level", "warning"), **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve an ASGI app with uvicorn "
                                     "(TCP_NODELAY on every connection).")
    parser.add_argument("app", help="MODULE:ATTRIBUTE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run(args.app, args.host, args.port, args.workers)


if __name__ == "__main__":
    main()
