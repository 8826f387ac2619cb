"""Where the Shield's time goes, stage by stage, in one process (no HTTP).

    python bench/shield_stages.py [--requests 3000] [--seed 0]

The digits MLP behind the full Shield of bench/gateway_overhead.py (key check, limits per
key, IP and global, all five detectors, ``round:3``, the SQLite audit log), memory limits.
Single-row requests from one key, one at a time. Each stage of ``Shield.stages`` is timed
on its own (the record stage includes the audit commit): its median, its 99th
percentile, and its mean over the slowest 1% of requests
(what the tail is made of). Writes bench/results/shield_stages.json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from gateway_overhead import ALL_ON
from harness import arguments, show, write

from modelshield.defenses.shield import Decision
from modelshield.defenses.stages import Call
from modelshield.serve.factory import build_shield
from modelshield.victims import load_victim


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()
    x = load_victim("digits-mlp").X_test
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({
            "model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp}/audit.db",
            "global_limits": {"requests": "1000000/minute"},
            "ip_limits": {"requests": "1000000/minute"}, "tiers": {"bench": ALL_ON}})
        api_key = shield.store.create_key("bench")[0]
        times: dict[str, list[float]] = {stage.name: [] for stage in shield.stages}

        def handle(row: np.ndarray, record: bool) -> None:
            """One request through the Shield's own stage list, each stage timed."""
            call = Call(api_key, "127.0.0.1", Decision(), inputs=row[None, :].tolist())
            for stage in shield.stages:
                start = time.perf_counter()
                stage(call)
                if record:
                    times[stage.name].append(time.perf_counter() - start)

        for _ in range(300):  # warm-up
            handle(x[rng.integers(len(x))], False)
        for _ in range(args.requests):
            handle(x[rng.integers(len(x))], True)
        shield.close()
    us = {s: np.array(v) * 1e6 for s, v in times.items()}
    total = sum(us.values())
    slow = total >= np.percentile(total, 99)
    rows: list[dict[str, Any]] = [
        {"stage": s, "p50_us": float(np.percentile(v, 50)), "p99_us": float(np.percentile(v, 99)),
         "slowest_1pct_mean_us": float(v[slow].mean())} for s, v in us.items()]
    rows.append({"stage": "total", "p50_us": float(np.percentile(total, 50)),
                 "p99_us": float(np.percentile(total, 99)),
                 "slowest_1pct_mean_us": float(total[slow].mean())})
    show(f"Shield stages, one process, {args.requests} single-row requests (µs)",
         ["stage", "p50", "p99", "mean of the slowest 1%"],
         [[r["stage"], round(r["p50_us"], 1), round(r["p99_us"], 1),
           round(r["slowest_1pct_mean_us"], 1)] for r in rows])
    write("shield_stages", {"args": vars(args), "stages": rows})


if __name__ == "__main__":
    main()
