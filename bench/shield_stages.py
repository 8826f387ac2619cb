"""Where the Shield's time goes, stage by stage, in one process (no HTTP).

    python bench/shield_stages.py [--requests 3000] [--seed 0] [--profile N] [--redis]

The digits MLP behind the full Shield of bench/gateway_overhead.py (key check, limits per
key, IP and global, all five detectors, ``round:3``, the SQLite audit log), memory limits.
Single-row requests, one at a time, each a digits row its key has not sent before (all
1,797 images, shuffled; a new key each time they start again), so the detectors judge
every row (they skip the rows an account sent before). Each stage of ``Shield.stages`` is timed on
its own, in wall time and in this thread's CPU time (the record stage includes the audit
commit): its median, its 99th percentile, and its mean over the slowest 1% of requests
(what the tail is made of). ``--redis`` keeps the limits and the detectors' state in a
redis-server started on loopback (production's store), detection inline, so the
detectors' reads and their CPU count in the detect stage (writes
bench/results/shield_stages_redis.json). "beyond the model" is every stage but the model's,
per request: the Shield's own cost; each stage's CPU median over each block of 500
requests shows whether a stage grows over the run. ``--profile N`` also prints cProfile's
top N functions of the Shield's stages. Writes bench/results/shield_stages.json.
``--commit`` measures instead one audit commit's CPU (SQLite, a digits record, one at a
time) with and without the group commit's yield, in alternating blocks of 300 commits:
a lone request in a Shield skips the yield (bench/results/shield_commit.json).
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from gateway_overhead import ALL_ON
from harness import arguments, show, write

from modelshield.defenses.shield import Decision
from modelshield.defenses.stages import Call
from modelshield.serve.factory import build_shield
from modelshield.store.sql import AuditRecord, AuditStore
from modelshield.victims import load_victim
from tests.servers import redis_server


def stage_times(requests: int, seed: int, profile: cProfile.Profile | None = None,
                limits_url: str = "memory://") -> dict[str, dict[str, np.ndarray]]:
    """Each stage's wall and thread-CPU time per request, in µs: {"wall"|"cpu": {stage: µs}}."""
    pool = np.random.default_rng(seed).permutation(load_digits().data.astype(np.float64))
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({
            "model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp}/audit.db",
            "storage": {"limits": limits_url},
            "global_limits": {"requests": "1000000/minute"},
            "ip_limits": {"requests": "1000000/minute"}, "tiers": {"bench": ALL_ON}})
        keys: list[str] = []
        for stage in shield.stages:
            wall[stage.name], cpu[stage.name] = [], []

        def handle(i: int, record: bool) -> None:
            """Request ``i`` through the Shield's own stage list, each stage timed: the
            pool's rows in turn, a new key each time the pool starts again (a customer
            sends its own records, not the same ones again)."""
            if i // len(pool) >= len(keys):
                keys.append(shield.store.create_key("bench")[0])
            row = pool[i % len(pool)]
            call = Call(keys[i // len(pool)], "127.0.0.1", Decision(),
                        inputs=row[None, :].tolist())
            with shield.store.in_flight():  # as Shield.run counts a request
                for stage in shield.stages:
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    stage(call)
                    if record:
                        cpu[stage.name].append(time.thread_time() - start_cpu)
                        wall[stage.name].append(time.perf_counter() - start)

        for i in range(300):  # warm-up
            handle(i, False)
        if profile is not None:
            profile.enable()
        for i in range(300, 300 + requests):
            handle(i, True)
        if profile is not None:
            profile.disable()
        shield.close()
    return {"wall": {s: np.array(v) * 1e6 for s, v in wall.items()},
            "cpu": {s: np.array(v) * 1e6 for s, v in cpu.items()}}


def summary(us: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """p50, p99 and the slowest 1%'s mean of each stage, the total, and the total beyond
    the model (per request)."""
    total = sum(us.values())
    beyond = sum(v for s, v in us.items() if s != "model")
    slow = total >= np.percentile(total, 99)
    rows: list[dict[str, Any]] = []
    for name, v in [*us.items(), ("total", total), ("beyond the model", beyond)]:
        rows.append({"stage": name, "p50_us": float(np.percentile(v, 50)),
                     "p99_us": float(np.percentile(v, 99)),
                     "slowest_1pct_mean_us": float(v[slow].mean())})
    return rows


def commit_cpu(blocks: int = 9, per_block: int = 300) -> dict[str, list[float]]:
    """One SQLite audit commit's thread CPU (µs, the mean of each block): as a caller
    outside a Shield (it yields before the write lock) and as a lone request in a
    Shield's stages (it does not), alternating."""
    x = load_victim("digits-mlp").X_test[:1]

    def record() -> AuditRecord:
        return AuditRecord(ts=time.time(), key_id="bench", client_ip="127.0.0.1",
                           model="digits-mlp", rows=1, inputs=x,
                           answer={"labels": np.array([3]), "probabilities": np.full((1, 10), .1)},
                           decision={"tier": "bench", "action": "allow", "policy": "round:3",
                                     "flags": []})

    out: dict[str, list[float]] = {"yielding": [], "lone": []}
    with tempfile.TemporaryDirectory() as tmp:
        stores = {name: AuditStore(f"sqlite:///{tmp}/{name}.db", keys={"v1": "k" * 32})
                  for name in out}
        for _ in range(per_block):  # warm
            for store in stores.values():
                store.commit([record()])
        for _ in range(blocks):
            for name, store in stores.items():
                start = time.thread_time()
                for _ in range(per_block):
                    with store.in_flight() if name == "lone" else contextlib.nullcontext():
                        store.commit([record()])
                out[name].append((time.thread_time() - start) / per_block * 1e6)
        for store in stores.values():
            store.close()
    return out


def main() -> None:
    parser = arguments(__doc__, seed=0)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--profile", type=int, default=0,
                        help="print cProfile's top N functions (cumulative) of the stages")
    parser.add_argument("--redis", action="store_true",
                        help="limits and detector state in a redis-server on loopback")
    parser.add_argument("--commit", action="store_true",
                        help="one audit commit's CPU with and without the group commit's yield")
    args = parser.parse_args()
    if args.commit:
        cpu = commit_cpu()
        med = {name: float(np.median(v)) for name, v in cpu.items()}
        show("one SQLite audit commit, thread CPU (µs, median of 9 blocks of 300)",
             ["caller", "CPU"], [[name, round(v, 1)] for name, v in med.items()])
        write("shield_commit", {"args": vars(args), "cpu_us_median": med,
                                "cpu_us_by_block": cpu})
        return
    profile = cProfile.Profile() if args.profile else None
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(redis_server()) if args.redis else "memory://"
        times = stage_times(args.requests, args.seed, profile, url)
    rows, cpu_rows = summary(times["wall"]), summary(times["cpu"])
    show(f"Shield stages, one process, {args.requests} single-row requests (µs)",
         ["stage", "wall p50", "wall p99", "wall, slowest 1%", "CPU p50", "CPU p99"],
         [[r["stage"], round(r["p50_us"], 1), round(r["p99_us"], 1),
           round(r["slowest_1pct_mean_us"], 1), round(c["p50_us"], 1), round(c["p99_us"], 1)]
          for r, c in zip(rows, cpu_rows, strict=True)])
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.profile)
    blocks = {stage: [float(np.median(v[i:i + 500])) for i in range(0, len(v), 500)]
              for stage, v in times["cpu"].items()}  # does any stage grow over the run?
    write("shield_stages" + ("_redis" if args.redis else ""),
          {"args": vars(args), "stages": rows, "cpu": cpu_rows,
           "cpu_p50_by_500_requests": blocks})


if __name__ == "__main__":
    main()
