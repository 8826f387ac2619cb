"""What the predict route's fast path saves: the gateway app with it and without it, and
the bare app, in one process, with no sockets.

    python bench/fast_path.py [--requests 200] [--blocks 12] [--detect after]

The full Shield of bench/gateway_overhead.py (every defense on, the SQLite audit log,
memory limits) behind ``create_app(fast_path=True)`` and ``create_app(fast_path=False)``
(every request through FastAPI's routing and pydantic's validation, as before the fast
path), and bench/bare_app.py. Each app gets single-row predict requests through its ASGI
interface, one at a time, each a digits row its key has not sent before, in ``--blocks``
blocks of ``--requests`` that rotate between the apps (the machine's drift falls on all
alike). The figure is the process's CPU time per request (event loop, request thread,
detection thread, SQLite), the median over the blocks. HTTP parsing (uvicorn, h11) is left
out: it is the same for all three. Writes bench/results/fast_path.json.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from gateway_overhead import gateway_config
from harness import arguments, show, write

from modelshield.serve.app import create_app
from modelshield.serve.factory import build_gateway

PATH = "/v1/models/digits-mlp/predict"
App = tuple[Any, list[tuple[bytes, bytes]]]


def gateway(tmp: Path, fast: bool, detect: str) -> App:
    """The benchmark's gateway app and its key's header."""
    shields = build_gateway(str(gateway_config(tmp, "memory://", f"sqlite:///{tmp}/a.db",
                                               detect=detect)))
    key = shields[0].store.create_key("bench")[0]
    return create_app(shields, fast_path=fast), [(b"authorization", f"Bearer {key}".encode())]


async def post(app: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """One request through the app's ASGI interface: its status."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": PATH, "raw_path": PATH.encode(),
             "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5555),
             "server": ("127.0.0.1", 8000), "state": {},
             "headers": [*headers, (b"content-length", str(len(body)).encode()),
                         (b"content-type", b"application/json")]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)  # the client never leaves
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def cpu_per_request(app: App, bodies: list[bytes]) -> float:
    """The process's CPU time per request over ``bodies`` (µs); every one must be a 200."""
    start = time.process_time()
    for body in bodies:
        status = await post(*app, body)
        if status != 200:
            raise RuntimeError(f"a benchmark request got {status}")
    return (time.process_time() - start) / len(bodies) * 1e6


async def rotate(apps: dict[str, App], bodies: list[bytes], requests: int, blocks: int
                 ) -> dict[str, list[float]]:
    """Each app's CPU per request in each block, the apps taking turns."""
    out: dict[str, list[float]] = {name: [] for name in apps}
    at = 0
    for app in apps.values():  # warm-up
        await cpu_per_request(app, bodies[:50])
    for _ in range(blocks):
        chunk = [bodies[(at + i) % len(bodies)] for i in range(50, 50 + requests)]
        for name, app in apps.items():
            out[name].append(await cpu_per_request(app, chunk))
        at += requests
    return out


def main() -> None:
    ap = arguments(__doc__)
    ap.add_argument("--requests", type=int, default=200, help="requests a block")
    ap.add_argument("--blocks", type=int, default=12, help="blocks each app answers")
    ap.add_argument("--detect", choices=["inline", "after"], default="after",
                    help="the tier's detection, on the path or after the answer")
    args = ap.parse_args()
    rows = np.random.default_rng(0).permutation(load_digits().data.astype(np.float64))
    bodies = [json.dumps({"inputs": [r.tolist()]}).encode() for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        import bare_app

        (Path(tmp) / "fast").mkdir()
        (Path(tmp) / "route").mkdir()
        apps = {"gateway, fast path": gateway(Path(tmp) / "fast", True, args.detect),
                "gateway, FastAPI route": gateway(Path(tmp) / "route", False, args.detect),
                "bare": (bare_app.app, [])}
        blocks = asyncio.run(rotate(apps, bodies, args.requests, args.blocks))
    median = {name: statistics.median(v) for name, v in blocks.items()}
    saved = median["gateway, FastAPI route"] - median["gateway, fast path"]
    show("CPU per request, in-process ASGI (µs, median over blocks)", ["app", "µs"],
         [[name, round(v)] for name, v in median.items()] + [["saved by the fast path",
                                                              round(saved)]])
    write("fast_path", {"args": vars(args), "cpu_us_median": median, "saved_us": saved,
                        "added_over_bare_us": {
                            "fast path": median["gateway, fast path"] - median["bare"],
                            "route": median["gateway, FastAPI route"] - median["bare"]},
                        "cpu_us_blocks": blocks})


if __name__ == "__main__":
    main()
