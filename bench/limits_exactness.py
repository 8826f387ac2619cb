"""Exactness of shared limits: two uvicorn workers, one Redis, 1,000 concurrent requests
against a limit of 100 per key.

    python bench/limits_exactness.py [--rounds 3] [--requests 1000] [--limit 100]

Starts its own redis-server on a free loopback port and ``modelshield serve --workers 2``
with limits in it; each round uses a fresh key and counts the 200s. Exact means exactly
``--limit`` every round. Writes bench/results/limits_exactness.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import free_port, run_load, server
from harness import show, write

from modelshield.store import AuditStore
from tests.servers import redis_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    rows = []
    with redis_server() as redis_url, tempfile.TemporaryDirectory() as tmp:
        audit = f"sqlite:///{tmp}/audit.db"
        cfg = Path(tmp) / "cfg.yaml"
        cfg.write_text(yaml.safe_dump({
            "model": {"builtin": "digits-mlp"}, "audit_url": audit,
            "storage": {"limits": redis_url},
            "tiers": {"free": {"limits": {"requests": f"{args.limit}/hour"}}}}))
        store = AuditStore(audit)
        port = free_port()
        with server("modelshield.serve.main:app", port, env={"MODELSHIELD_CONFIG": str(cfg)},
                    workers=2):
            url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
            for r in range(args.rounds):
                key = store.create_key("free")[0]
                out = run_load(url, [{"inputs": [[0.0] * 64]}],
                               [{"Authorization": f"Bearer {key}"}],
                               concurrency=args.concurrency, requests=args.requests)
                rows.append({"round": r, "admitted": out["statuses"].get(200, 0),
                             "refused_429": out["statuses"].get(429, 0),
                             "other": {k: v for k, v in out["statuses"].items()
                                       if k not in (200, 429)}})
        records = store.count(answered=True)
        refusals = store.count(answered=False)
        ok = store.verify().ok
    show(f"two uvicorn workers sharing Redis: {args.requests} concurrent requests, limit "
         f"{args.limit}", ["round", "admitted (200)", "refused (429)", "other"],
         [[r["round"], r["admitted"], r["refused_429"], r["other"]] for r in rows])
    exact = all(r["admitted"] == args.limit for r in rows)
    print(f"exact every round: {exact}; audit records {records} "
          f"(= {args.limit} x {args.rounds}: {records == args.limit * args.rounds}); "
          f"refusals recorded {refusals}; chain intact: {ok}")
    write("limits_exactness", {"args": vars(args), "rounds": rows, "exact": exact,
                               "audit_records": records, "refusal_records": refusals,
                               "chain_intact": ok})


if __name__ == "__main__":
    main()
