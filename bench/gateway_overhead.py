"""Gateway overhead: the full Shield against the same model behind a bare FastAPI endpoint.

    python bench/gateway_overhead.py [--requests 3000] [--concurrency 8] [--all]

``--all`` also starts a redis-server and a PostgreSQL server on free loopback ports and
measures the Redis-limits and PostgreSQL-audit configurations (or name your own servers
with ``--redis URL`` / ``--postgres URL``).

Both servers run one at a time under uvicorn on loopback, with the same load (single-row
requests from the digits test set, closed loop, ``--concurrency`` clients, one API key
each). The Shield has every defense on: key check, per-key/IP/global limits on requests and
rows (set high enough not to refuse), all five detectors (alert only), an output policy,
and the audit log committed before each response. Prints throughput and latency, the
throughput ratio and the p99 added; writes bench/results/gateway_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import show, write
from _load import free_port, run_load, server

from modelshield.serve.store import AuditStore
from modelshield.victims import load_victim

ALL_ON = {"limits": {"requests": "100000/minute", "rows": "100000/minute"},
          "policy": "round:3", "detectors": ["sweep", "boundary", "ood", "prada", "volume"],
          "on_flag": "alert", "max_batch": 100}


def gateway_config(tmp: Path, limits_url: str, audit_url: str) -> Path:
    cfg = {"model": {"builtin": "digits-mlp"}, "audit_url": audit_url,
           "storage": {"limits": limits_url},
           "global_limits": {"requests": "1000000/minute"},
           "ip_limits": {"requests": "1000000/minute"}, "tiers": {"bench": ALL_ON}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def measure(args: argparse.Namespace, limits_url: str, audit_url: str,
            label: str) -> list[dict[str, Any]]:
    victim = load_victim("digits-mlp")
    x = victim.X_test
    bodies = [{"inputs": x[np.arange(i, i + args.rows) % len(x)].tolist()}
              for i in range(len(x))]
    rows = []
    port = free_port()
    with server("bare_app:app", port, env={"PYTHONPATH": str(Path(__file__).parent)}):
        url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
        run_load(url, bodies, [{}], concurrency=args.concurrency, requests=200)  # warm-up
        rows.append({"server": "bare FastAPI", **run_load(
            url, bodies, [{}], concurrency=args.concurrency, requests=args.requests),
            "moderate": run_load(url, bodies, [{}], concurrency=1, requests=args.moderate)})
    with tempfile.TemporaryDirectory() as tmp:
        cfg = gateway_config(Path(tmp), limits_url, audit_url.format(tmp=tmp))
        store = AuditStore(audit_url.format(tmp=tmp))
        keys = [{"Authorization": f"Bearer {store.create_key('bench')[0]}"}
                for _ in range(args.concurrency)]
        store.close()
        port = free_port()
        with server("modelshield.serve.main:app", port, env={"MODELSHIELD_CONFIG": str(cfg)}):
            url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
            run_load(url, bodies, keys, concurrency=args.concurrency, requests=200)
            rows.append({"server": f"modelshield ({label})", **run_load(
                url, bodies, keys, concurrency=args.concurrency, requests=args.requests),
                "moderate": run_load(url, bodies, keys[:1], concurrency=1,
                                     requests=args.moderate)})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--moderate", type=int, default=1000,
                        help="requests sent one at a time for the moderate-load latency")
    parser.add_argument("--redis", help="also measure with limits in this redis:// URL")
    parser.add_argument("--postgres", help="also measure with the audit log at this URL")
    parser.add_argument("--all", action="store_true",
                        help="start Redis and PostgreSQL here and measure them too")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.all:
            from tests.servers import postgres_server, redis_server

            args.redis = args.redis or stack.enter_context(redis_server())
            args.postgres = args.postgres or stack.enter_context(postgres_server())
        run(args)


def run(args: argparse.Namespace) -> None:
    configs = [("memory limits, SQLite audit", "memory://", "sqlite:///{tmp}/audit.db")]
    if args.redis:
        configs.append(("Redis limits, SQLite audit", args.redis, "sqlite:///{tmp}/audit.db"))
    if args.postgres:
        configs.append(("memory limits, PostgreSQL audit", "memory://", args.postgres))
    results = []
    for label, limits_url, audit_url in configs:
        bare, shielded = measure(args, limits_url, audit_url, label)
        results.append({"config": label, "bare": bare, "shield": shielded,
                        "throughput_ratio": shielded["throughput"] / bare["throughput"],
                        "p99_added_ms": shielded["p99_ms"] - bare["p99_ms"],
                        "moderate_p50_added_ms": shielded["moderate"]["p50_ms"]
                        - bare["moderate"]["p50_ms"],
                        "moderate_p99_added_ms": shielded["moderate"]["p99_ms"]
                        - bare["moderate"]["p99_ms"]})
    show(f"gateway overhead: {args.requests} requests of {args.rows} row(s) from {args.concurrency} "
         f"clients (throughput), {args.moderate} one at a time (moderate-load latency)",
         ["config", "bare req/s", "shield req/s", "ratio", "bare p50/p99 ms (moderate)",
          "shield p50/p99 ms (moderate)", "added p50/p99 ms (moderate)"],
         [[r["config"], r["bare"]["throughput"], r["shield"]["throughput"],
           r["throughput_ratio"],
           f"{r['bare']['moderate']['p50_ms']:.2f} / {r['bare']['moderate']['p99_ms']:.2f}",
           f"{r['shield']['moderate']['p50_ms']:.2f} / {r['shield']['moderate']['p99_ms']:.2f}",
           f"{r['moderate_p50_added_ms']:.2f} / {r['moderate_p99_added_ms']:.2f}"]
          for r in results])
    suffix = "" if args.rows == 1 else f"_rows{args.rows}"
    write(f"gateway_overhead{suffix}", {"args": vars(args), "results": results})


if __name__ == "__main__":
    main()
