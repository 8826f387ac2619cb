"""Durability: kill -9 the gateway under load, restart it, and check that every response a
client received has its audit record, refusals included, and that the hash chain verifies.

    python bench/durability.py [--rounds 3] [--seconds 3] [--concurrency 16] [--postgres]

Each request carries a unique id in its first feature. Half the clients hold a key whose
tier allows one request an hour, so they are refused (429) with their rows recorded; a
refusal received is checked against the log like an answer. ``--postgres`` starts a real
PostgreSQL server for the audit log (else SQLite). Writes bench/results/durability.json
(durability-postgres.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
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


async def hammer(url: str, keys: list[str], start_id: int, concurrency: int,
                 stop_at: float) -> list[int]:
    """Send requests until the server dies or time is up; return the ids answered (200) or
    refused for the rate limit (429): each must be in the log."""
    received: list[int] = []
    next_id = iter(range(start_id, start_id + 10**7))
    async with httpx.AsyncClient(timeout=5) as client:

        async def worker(key: str) -> None:
            while time.time() < stop_at:
                i = next(next_id)
                try:
                    r = await client.post(url, json={"inputs": [[float(i)] + [0.0] * 63]},
                                          headers={"Authorization": f"Bearer {key}"})
                except httpx.HTTPError:
                    return  # the server is gone
                if r.status_code in (200, 429):
                    received.append(i)

        await asyncio.gather(*(worker(keys[w % len(keys)]) for w in range(concurrency)))
    return received


async def kill_under_load(pid: int, load: Any, seconds: float) -> list[int]:
    """Start ``load``, SIGKILL the server's process group after ``seconds``, finish ``load``."""
    task = asyncio.create_task(load)
    await asyncio.sleep(seconds)
    os.killpg(pid, signal.SIGKILL)  # no shutdown, no flush
    return list(await task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--postgres", action="store_true", help="audit log in PostgreSQL")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        if args.postgres:
            from tests.servers import postgres_server

            audit = stack.enter_context(postgres_server())
        else:
            audit = f"sqlite:///{tmp}/audit.db"
        rows = run(args, audit, Path(tmp))
    show(f"kill -9 under load ({'PostgreSQL' if args.postgres else 'SQLite'} audit log)",
         ["round", "responses received (200 and 429)", "records in log (total)",
          "received but not recorded", "chain intact"],
         [[x["round"], x["received"], x["records"], x["lost"], x["chain_intact"]]
          for x in rows])
    write("durability-postgres" if args.postgres else "durability",
          {"args": vars(args), "rounds": rows,
           "lost_total": sum(x["lost"] for x in rows),
           "chain_intact": all(x["chain_intact"] for x in rows)})


def run(args: argparse.Namespace, audit: str, tmp: Path) -> list[dict[str, Any]]:
    rows = []
    cfg = tmp / "cfg.yaml"
    # Request ids ride in the first feature, far outside the digits' 0..16.
    cfg.write_text(yaml.safe_dump({"model": {"builtin": "digits-mlp",
                                             "enforce_domain": False},
                                   "audit_url": audit,
                                   "tiers": {"pro": {"policy": "round:3"},
                                             "tight": {"limits": {"requests": "1/hour"}}}}))
    store = AuditStore(audit)
    keys = [store.create_key("pro")[0], store.create_key("tight")[0]]
    next_id = 0
    for r in range(args.rounds):
        port = free_port()
        url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
        with server("modelshield.serve.main:app", port,
                    env={"MODELSHIELD_CONFIG": str(cfg)}) as proc:
            stop_at = time.time() + args.seconds + 5

            received = asyncio.run(kill_under_load(
                proc.pid, hammer(url, keys, next_id, args.concurrency, stop_at),
                args.seconds))
            proc.wait(10)
        recorded = {int(json.loads(rec["inputs"])[0][0]) for rec in store.records()
                    if rec["inputs"] != "null"}  # answers, and refusals with their rows
        lost = sorted(set(received) - recorded)
        verdict = store.verify()
        ok, n = verdict.ok, verdict.checked
        rows.append({"round": r, "received": len(received), "records": n,
                     "lost": len(lost), "chain_intact": ok})
        next_id += 10**7
    store.close()
    return rows


if __name__ == "__main__":
    main()
