"""Where the Shield's time goes, stage by stage, in one process (no HTTP).

    python bench/shield_stages.py [--requests 3000] [--seed 0]

The digits MLP behind the full Shield of bench/gateway_overhead.py (key check, limits per
key, IP and global, all five detectors, ``round:3``, the SQLite audit log), memory limits.
Single-row requests from one key, one at a time. Each stage of ``Shield.handle`` is timed
on its own: its median, its 99th percentile, and its mean over the slowest 1% of requests
(what the tail is made of). Writes bench/results/shield_stages.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _common import show, write
from gateway_overhead import ALL_ON

from modelshield.defenses.shield import Decision, Shield, _answer_record
from modelshield.store import AuditRecord
from modelshield.victims import load_victim

STAGES = ["key", "inputs", "limits", "model", "detectors", "policy", "record", "commit"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x = load_victim("digits-mlp").X_test
    rng = np.random.default_rng(args.seed)
    times: dict[str, list[float]] = {s: [] for s in STAGES}
    with tempfile.TemporaryDirectory() as tmp:
        shield = Shield.from_config({
            "model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp}/audit.db",
            "global_limits": {"requests": "1000000/minute"},
            "ip_limits": {"requests": "1000000/minute"}, "tiers": {"bench": ALL_ON}})
        api_key = shield.store.create_key("bench")[0]

        def handle(row: np.ndarray, record: bool) -> None:
            marks = [time.perf_counter()]
            decision = Decision()
            key = shield._authenticate(api_key, decision)
            tier = shield.config.tiers[key.tier]
            marks.append(time.perf_counter())
            inputs = shield._check_inputs(row[None, :].tolist(), tier)
            marks.append(time.perf_counter())
            shield._limit(key, tier, "127.0.0.1", len(inputs), decision)
            marks.append(time.perf_counter())
            prediction = shield.model.predict(inputs)
            marks.append(time.perf_counter())
            shield._shared(shield._detect, key, tier, inputs, prediction, decision, "127.0.0.1")
            marks.append(time.perf_counter())
            policy = shield._policy(key, decision)
            answer = policy.apply(prediction, inputs)
            decision.policy = policy.spec
            marks.append(time.perf_counter())
            rec = AuditRecord(ts=shield.clock(), key_id=key.key_id, client_ip="127.0.0.1",
                              model=shield.spec.name, rows=1, inputs=inputs,
                              answer=_answer_record(answer), decision=decision.to_record())
            marks.append(time.perf_counter())
            shield.store.commit([rec])
            marks.append(time.perf_counter())
            if record:
                for stage, a, b in zip(STAGES, marks[:-1], marks[1:], strict=True):
                    times[stage].append(b - a)

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
