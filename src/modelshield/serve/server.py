"""Running the gateway under uvicorn.

    python -m modelshield.serve.server MODULE:APP [--host H] [--port P] [--workers N]

(``modelshield serve`` runs ``modelshield.serve.main:app`` this way; the benchmarks run
their bare servers this way too, so both sides get the same server.)

With several workers uvicorn binds the listening socket itself, as ``socket(AF_INET)``
without naming TCP, and asyncio then leaves Nagle's algorithm on for the connections it
accepts: a response's headers and body, written apart, wait for the client's delayed ACK,
about 40 ms a request on keep-alive connections (measured: 44 ms for ``/v2/health/ready``
with 2 workers, 1.2 ms with 1). :class:`NoDelayH11Protocol` sets ``TCP_NODELAY`` on every
connection, whatever the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``TCP_NODELAY`` set on each connection."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def run(app: str, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        **kwargs: Any) -> None:
    """Serve the ASGI app at import path ``app``. Forwarded headers are never trusted by
    uvicorn itself: the gateway applies its config's ``trusted_proxies``."""
    uvicorn.run(app, host=host, port=port, workers=workers, http=NoDelayH11Protocol,
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
