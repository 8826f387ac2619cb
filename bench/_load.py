"""A small closed-loop HTTP load generator (asyncio + httpx), bounded in count and time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(module: str, port: int, env: dict[str, str] | None = None,
           workers: int = 1) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``uvicorn module`` on a loopback port until the block ends."""
    # The gateway's own launcher (uvicorn with TCP_NODELAY on every connection), for the
    # bare servers too, so both sides run the same server.
    cmd = [sys.executable, "-m", "modelshield.serve.server", module, "--host", "127.0.0.1",
           "--port", str(port), "--workers", str(workers)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready")
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)


def wait_ready(url: str, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never became ready")


def run_load(url: str, bodies: list[Any], headers: list[dict[str, str]], *,
             concurrency: int, requests: int, max_seconds: float = 120.0, start: int = 0,
             sent: dict[int, set[int]] | None = None) -> dict[str, Any]:
    """Send ``requests`` POSTs from ``concurrency`` workers; worker i uses headers[i % len].
    The bodies are taken in turn from ``start`` (cycling). ``sent`` (kept across calls)
    records which bodies each headers entry (a key) has sent; ``repeats`` in the result
    counts the requests whose body their key had sent before (with one headers entry for
    all workers, as against a keyless server, that is the server's repeats)."""
    return asyncio.run(_load(url, bodies, headers, concurrency, requests, max_seconds,
                             start, {} if sent is None else sent))


async def _load(url: str, bodies: list[Any], headers: list[dict[str, str]], concurrency: int,
                requests: int, max_seconds: float, first: int, sent: dict[int, set[int]]
                ) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    repeats = 0
    counter = iter(range(first, first + requests))
    deadline = time.perf_counter() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal repeats
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                mine = sent.setdefault(w % len(headers), set())
                repeats += i % len(bodies) in mine
                mine.add(i % len(bodies))
                t = time.perf_counter()
                r = await client.post(url, json=bodies[i % len(bodies)],
                                      headers=headers[w % len(headers)])
                latencies.append(time.perf_counter() - t)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
    lat = np.array(latencies) * 1000
    return {"requests": len(lat), "seconds": elapsed, "throughput": len(lat) / elapsed,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
            "statuses": statuses, "repeats": repeats}


def run_alternating(targets: list[tuple[str, dict[str, str]]], bodies: list[Any],
                    requests: int) -> list[dict[str, Any]]:
    """One client sends ``requests`` POSTs to each target, one at a time, alternating
    between the targets (A B, B A, A B, ...), so drift in the machine's speed falls on
    all of them alike. Returns each target's p50/p99 latency."""
    return asyncio.run(_alternating(targets, bodies, requests))


async def _alternating(targets: list[tuple[str, dict[str, str]]], bodies: list[Any],
                       requests: int) -> list[dict[str, Any]]:
    latencies: list[list[float]] = [[] for _ in targets]
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=30))
                   for _ in targets]
        for i in range(requests):
            order = range(len(targets)) if i % 2 == 0 else reversed(range(len(targets)))
            for t in order:
                url, headers = targets[t]
                start = time.perf_counter()
                r = await clients[t].post(url, json=bodies[i % len(bodies)], headers=headers)
                latencies[t].append(time.perf_counter() - start)
                r.raise_for_status()
    out = []
    for lat in latencies:
        ms = np.array(lat) * 1000
        out.append({"requests": len(ms), "p50_ms": float(np.percentile(ms, 50)),
                    "p99_ms": float(np.percentile(ms, 99))})
    return out


def cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    """User plus system CPU time of a server: its process and every process under it (the
    uvicorn workers), from the OS."""
    import psutil

    root = psutil.Process(proc.pid)
    total = 0.0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def audit_commits(base_url: str, workers: int, tries: int = 60) -> dict[str, float]:
    """The audit log's commits and records, summed over the gateway's worker processes:
    ``/metrics`` is scraped on fresh connections until every worker has answered (each
    reports its own, labelled by process id)."""
    import re

    seen: dict[str, tuple[float, float]] = {}
    for _ in range(tries):
        text = httpx.get(f"{base_url}/metrics", timeout=10).text
        rows = re.findall(r'^modelshield_audit_(commits|records)_total\{pid="(\d+)"\} (\S+)$',
                          text, re.M)
        values = {(kind, pid): float(v) for kind, pid, v in rows}
        for _, pid in values:
            seen[pid] = (values["commits", pid], values["records", pid])
        if len(seen) >= workers:
            break
    return {"commits": sum(c for c, _ in seen.values()),
            "records": sum(r for _, r in seen.values()), "processes": len(seen)}
