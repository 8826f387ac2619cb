"""Hostile input against a running gateway: memory under a flood of invalid keys, and the
server's CPU time for keyless requests of any size.

    python bench/hostile.py [--requests 20000] [--bad-keys 3000] [--key-bytes 15000]

1. Memory: one uvicorn worker (failed-authentication limit off, so every bad key reaches
   the key cache) takes ``--requests`` requests, ``--bad-keys`` of them with distinct invalid
   keys of ``--key-bytes`` each, the rest answered. The worker's resident memory (VmRSS) is
   read after the first 10% and at the end. Target: flat within 10 MiB.
2. Keyless work: requests with no key and bodies of 1 KB to 8 MB; the worker's CPU time
   (user + system, from /proc) per request. Target: under 5 ms.

Writes bench/results/hostile.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import free_port, server
from harness import show, write

from modelshield.store import AuditStore


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_pid(parent: int) -> int:
    """uvicorn with one worker serves in its own process; else the parent serves."""
    children = Path(f"/proc/{parent}/task/{parent}/children")
    kids = children.read_text().split() if children.exists() else []
    return int(kids[0]) if kids else parent


def memory(url: str, pid: int, key: str, args: argparse.Namespace) -> dict[str, Any]:
    body = {"inputs": [[0.0] * 64]}
    every = max(1, args.requests // args.bad_keys)
    warm = args.requests // 10
    statuses: dict[int, int] = {}
    before = None
    with httpx.Client(timeout=30) as client:
        for i in range(args.requests):
            if i == warm:
                before = rss_mib(pid)
            bad = i % every == 0 and i // every < args.bad_keys
            secret = f"{i:08d}" + "k" * (args.key_bytes - 8) if bad else key
            r = client.post(url, json=body, headers={"Authorization": f"Bearer {secret}"})
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    after = rss_mib(pid)
    return {"rss_mib_after_warmup": before, "rss_mib_end": after,
            "growth_mib": after - (before or after), "statuses": statuses}


def keyless(url: str, pid: int, sizes: list[int], n: int) -> list[dict[str, Any]]:
    rows = []
    with httpx.Client(timeout=60) as client:
        for size in sizes:
            body = b'{"inputs": [[' + b"1," * (size // 2) + b'1]]}'
            start = cpu_seconds(pid)
            codes = {client.post(url, content=body,
                                 headers={"content-type": "application/json"}).status_code
                     for _ in range(n)}
            rows.append({"body_bytes": len(body), "statuses": sorted(codes),
                         "server_cpu_ms_per_request": 1000 * (cpu_seconds(pid) - start) / n})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--bad-keys", type=int, default=3_000)
    parser.add_argument("--key-bytes", type=int, default=15_000)
    parser.add_argument("--keyless-each", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        audit = f"sqlite:///{tmp}/audit.db"
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"builtin": "digits-mlp"}, "audit_url": audit,
                                       "auth_failure_limits": None,
                                       "tiers": {"pro": {"policy": "round:3"}}}))
        key = AuditStore(audit).create_key("pro")[0]
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
        with server("modelshield.serve.main:app", port,
                    env={"MODELSHIELD_CONFIG": str(cfg)}) as proc:
            time.sleep(1)
            pid = worker_pid(proc.pid)
            mem = memory(url, pid, key, args)
            cpu = keyless(url, pid, [1_000, 100_000, 1_000_000, 8_000_000 - 100],
                          args.keyless_each)
    show(f"memory over {args.requests} requests, {args.bad_keys} distinct invalid keys of "
         f"{args.key_bytes} bytes", ["RSS after 10% (MiB)", "RSS at end (MiB)", "growth (MiB)",
                                     "statuses"],
         [[mem["rss_mib_after_warmup"], mem["rss_mib_end"], mem["growth_mib"],
           mem["statuses"]]])
    show("keyless requests", ["body bytes", "statuses", "server CPU per request (ms)"],
         [[r["body_bytes"], r["statuses"], r["server_cpu_ms_per_request"]] for r in cpu])
    write("hostile", {"args": vars(args), "memory": mem, "keyless": cpu,
                      "memory_flat_within_10_mib": mem["growth_mib"] <= 10,
                      "keyless_under_5_ms": all(r["server_cpu_ms_per_request"] < 5
                                                for r in cpu)})


if __name__ == "__main__":
    main()
