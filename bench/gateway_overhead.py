"""Gateway overhead: the full Shield against the same model behind a bare FastAPI endpoint.

    python bench/gateway_overhead.py [--requests 3000] [--concurrency 8] [--all]

``--all`` also starts a redis-server and a PostgreSQL server on free loopback ports and
measures the Redis-limits and PostgreSQL-audit configurations (or name your own servers
with ``--redis URL`` / ``--postgres URL``).

Both servers run under uvicorn on loopback at the same time, with the same load (single-row
requests from all the digits rows, shuffled, closed loop, ``--concurrency`` clients, one API key
each), measured side by side: throughput in ``--rounds`` rounds that alternate between the
two servers (so the machine's drift falls on both alike), and the moderate-load latency
from single requests that alternate between them. The Shield has every defense on: key
check, per-key/IP/global limits on requests and rows (set high enough not to refuse), all
five detectors (alert only), an output policy, and the audit log committed before each
response. Prints throughput, the throughput ratio (pooled, and its range over the rounds)
and the latency added; writes bench/results/gateway_overhead.json.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import audit_commits, cpu_seconds, free_port, run_alternating, run_load, server
from harness import show, write

from modelshield.serve.factory import build_shield
from modelshield.store import AuditStore
from modelshield.victims import load_victim

ALL_ON = {"limits": {"requests": "100000/minute", "rows": "100000/minute"},
          "policy": "round:3", "detectors": ["sweep", "boundary", "ood", "prada", "volume"],
          "on_flag": "alert", "max_batch": 100}


def gateway_config(tmp: Path, limits_url: str, audit_url: str, detect: str = "inline",
                   answer_on: str = "auto") -> Path:
    cfg = {"model": {"builtin": "digits-mlp"}, "audit_url": audit_url, "answer_on": answer_on,
           "storage": {"limits": limits_url},
           "global_limits": {"requests": "1000000/minute"},
           "ip_limits": {"requests": "1000000/minute"},
           "tiers": {"bench": {**ALL_ON, "detect": detect}}}
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


WARM_UP = 200
"""Requests each server answers before it is measured."""


def digits_bodies(rows: int, seed: int = 0) -> list[dict[str, Any]]:
    """Request bodies of ``rows`` rows each from all 1,797 digits images (scikit-learn's
    copy, the model's train, test and pool rows), shuffled. Taken in turn across a
    benchmark's rounds, a key mostly sends rows it has not sent before, as a customer
    sends its own records (the detectors skip a row an account sent before); the JSON
    states the share that were repeats."""
    x = np.random.default_rng(seed).permutation(load_digits().data.astype(np.float64))
    return [{"inputs": x[np.arange(i, i + rows) % len(x)].tolist()} for i in range(len(x))]


def measure(args: argparse.Namespace, bare: tuple[str, Any], bodies: list[Any],
            limits_url: str, audit_url: str, floor_trips: int | None = None
            ) -> dict[str, Any]:
    """The Shield in one configuration against the bare server (already running: its URL
    and process), side by side: throughput in rounds that rotate the servers' order,
    each server's CPU time over each round (from the OS),
    the audit log's commits per answer, then single requests alternating between the two.
    With ``floor_trips``, the floor server (the bare one plus the same audit commit and
    that many Redis round trips per answer) runs in the same rounds."""
    bare_url, bare_proc = bare
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        cfg = gateway_config(Path(tmp), limits_url, audit_url.format(tmp=tmp), args.detect,
                             args.answer_on)
        store = AuditStore(audit_url.format(tmp=tmp))
        keys = [{"Authorization": f"Bearer {store.create_key('bench')[0]}"}
                for _ in range(args.concurrency)]
        # The single requests come from a key of their own: its rows are all new to it.
        alone = {"Authorization": f"Bearer {store.create_key('bench')[0]}"}
        store.close()
        port = free_port()
        shield_proc = stack.enter_context(server(
            "modelshield.serve.main:app", port, env={"MODELSHIELD_CONFIG": str(cfg)},
            workers=args.workers))
        url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
        servers: list[tuple[str, str, list[dict[str, str]], Any]] = [
            ("bare", bare_url, [{}], bare_proc), ("shield", url, keys, shield_proc)]
        if floor_trips is not None:  # its own log: the floor's commits extend no other chain
            floor_url = own_database(audit_url) if audit_url.startswith("postgresql") \
                else audit_url.replace("{tmp}/audit.db", f"{tmp}/floor.db")
            servers.append(stack.enter_context(floor_server(args, floor_url, limits_url,
                                                            floor_trips)))
        cursors = {name: WARM_UP for name, _, _, _ in servers}
        sent: dict[str, dict[int, set[int]]] = {name: {} for name, _, _, _ in servers}
        for name, u, headers, _ in servers[1:]:  # warm-up
            run_load(u, bodies, headers, concurrency=args.concurrency, requests=WARM_UP,
                     sent=sent[name])
        bases = [u.split("/v1/")[0] for _, u, _, _ in servers]
        before = [audit_commits(b, args.workers) for b in bases[1:]]
        rounds = throughput_rounds(args, bodies, servers, cursors, sent)
        after = [audit_commits(b, args.workers) for b in bases[1:]]
        bare_m, shield_m = run_alternating([(bare_url, {}), (url, alone)], bodies,
                                           args.moderate)
    out = summarise(rounds, before[0], after[0], bare_m, shield_m)
    gateway = [x for x in rounds if x["server"] == "shield"]
    out["repeated_rows_share"] = sum(x["repeats"] for x in gateway) / max(
        1, sum(x["requests"] for x in gateway))
    if floor_trips is not None:
        out["floor"] = floor_summary(rounds, before[1], after[1], floor_trips)
    return out


def own_database(url: str) -> str:
    """A new, empty database on the PostgreSQL server of ``url``, and its URL."""
    import psycopg

    name = f"floor_{secrets.token_hex(4)}"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"),
                         autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{url.rsplit('/', 1)[0]}/{name}"


@contextlib.contextmanager
def floor_server(args: argparse.Namespace, audit_url: str, limits_url: str, trips: int
                 ) -> Any:
    """The bare server that also commits each answer's audit record to ``audit_url`` and
    makes ``trips`` Redis round trips (when ``limits_url`` is Redis): what the gateway's
    design costs before any of the Shield's own work."""
    env = {"PYTHONPATH": str(Path(__file__).parent), "BARE_AUDIT_URL": audit_url,
           "BARE_REDIS_TRIPS": str(trips)}
    if limits_url.startswith("redis"):
        env["BARE_REDIS_URL"] = limits_url
    port = free_port()
    with server("bare_app:app", port, env=env, workers=args.workers) as proc:
        yield "floor", f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict", [{}], proc


def floor_summary(rounds: list[dict[str, Any]], before: dict[str, float],
                  after: dict[str, float], trips: int) -> dict[str, Any]:
    """The floor server's throughput against the bare one's and the gateway's, its CPU per
    answer and its commits per answer, from the rounds all three shared."""
    records = after["records"] - before["records"]
    return {"redis_round_trips": trips, "throughput": pooled(rounds, "floor"),
            "ratio_to_bare": pooled(rounds, "floor") / pooled(rounds, "bare"),
            "gateway_to_floor": pooled(rounds, "shield") / pooled(rounds, "floor"),
            "cpu_us_per_answer_p50": float(np.median(
                [1e6 * x["cpu_seconds"] / x["answered"] for x in rounds
                 if x["server"] == "floor"])),
            "commits_per_answer": (after["commits"] - before["commits"]) / max(records, 1)}


def summarise(rounds: list[dict[str, Any]], before: dict[str, float], after: dict[str, float],
              bare_m: dict[str, Any], shield_m: dict[str, Any]) -> dict[str, Any]:
    """The gateway against the bare server, from the rounds and the single requests."""

    def cpu_us(name: str) -> list[float]:
        """CPU time per answered request (µs), each round."""
        return [1e6 * x["cpu_seconds"] / x["answered"] for x in rounds if x["server"] == name]

    ratios = [s["throughput"] / b["throughput"] for b, s in zip(
        [x for x in rounds if x["server"] == "bare"],
        [x for x in rounds if x["server"] == "shield"], strict=True)]
    added = [s - b for b, s in zip(cpu_us("bare"), cpu_us("shield"), strict=True)]
    records = after["records"] - before["records"]
    return {"bare_throughput": pooled(rounds, "bare"),
            "shield_throughput": pooled(rounds, "shield"),
            "throughput_ratio": pooled(rounds, "shield") / pooled(rounds, "bare"),
            "round_ratios": ratios, "rounds": rounds,
            "cpu_us_per_answer": {"bare": cpu_us("bare"), "shield": cpu_us("shield"),
                                  "added": added, "added_p50": float(np.median(added))},
            "audit": {"records": records, "commits": after["commits"] - before["commits"],
                      "commits_per_answer": (after["commits"] - before["commits"])
                      / max(records, 1), "processes": after["processes"]},
            "moderate": {"bare": bare_m, "shield": shield_m},
            "moderate_p50_added_ms": shield_m["p50_ms"] - bare_m["p50_ms"],
            "moderate_p99_added_ms": shield_m["p99_ms"] - bare_m["p99_ms"]}


def pooled(rounds: list[dict[str, Any]], name: str) -> float:
    """A server's requests per second over all its rounds."""
    done = [x for x in rounds if x["server"] == name]
    return float(sum(x["requests"] for x in done) / sum(x["seconds"] for x in done))


def throughput_rounds(args: argparse.Namespace, bodies: list[Any],
                      servers: list[tuple[str, str, list[dict[str, str]], Any]],
                      cursors: dict[str, int] | None = None,
                      sent: dict[str, dict[int, set[int]]] | None = None
                      ) -> list[dict[str, Any]]:
    """``args.rounds`` rounds of closed-loop load on each server in turn (the order rotated
    every round), with each server's CPU time over its round. Each server takes the bodies
    in turn from its cursor in ``cursors`` (moved on), so a round sends rows the last did
    not; ``sent`` keeps what each server's keys have sent, for the repeats."""
    per_round = max(1, args.requests // args.rounds)
    cursors = {} if cursors is None else cursors
    sent = {} if sent is None else sent
    rounds = []
    for r in range(args.rounds):
        for name, u, headers, proc in servers[r % len(servers):] + servers[:r % len(servers)]:
            cpu = cpu_seconds(proc)
            out = run_load(u, bodies, headers, concurrency=args.concurrency,
                           requests=per_round, start=cursors.get(name, 0),
                           sent=sent.setdefault(name, {}))
            cursors[name] = cursors.get(name, 0) + per_round
            answered = out["statuses"].get(200, 0)
            rounds.append({"round": r, "server": name, **out, "answered": answered,
                           "cpu_seconds": cpu_seconds(proc) - cpu})
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6,
                        help="alternating throughput rounds per server (the requests are "
                        "split over them)")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--moderate", type=int, default=1000,
                        help="requests sent one at a time for the moderate-load latency")
    parser.add_argument("--redis", help="also measure with limits in this redis:// URL")
    parser.add_argument("--postgres", help="also measure with the audit log at this URL")
    parser.add_argument("--all", action="store_true",
                        help="start Redis and PostgreSQL here and measure them too")
    parser.add_argument("--workers", type=int, default=1,
                        help="uvicorn workers of both servers (the bare one and the gateway)")
    parser.add_argument("--floor", action="store_true",
                        help="measure instead what no gateway can go under: the bare server "
                        "against itself plus one PostgreSQL audit commit and 3 Redis round "
                        "trips per answer (needs --all or --redis and --postgres)")
    parser.add_argument("--floor-redis-trips", type=int, default=3,
                        help="Redis round trips per answer in the --floor server")
    parser.add_argument("--detect", choices=["inline", "after"], default="after",
                        help="the bench tier's detect setting: detectors before the answer "
                        "(inline) or off the request's path once it is answered (after; "
                        "their CPU is still counted in the server's)")
    parser.add_argument("--answer-on", choices=["auto", "loop", "threads"], default="auto",
                        help="the gateway's answer_on setting: its stages on the event loop "
                        "or on request threads (auto: the loop, for this fast model)")
    parser.add_argument("--out", default="gateway_targets",
                        help="with --all-targets: the result's name in bench/results/")
    parser.add_argument("--all-targets", action="store_true",
                        help="measure the three targets side by side and write "
                        "bench/results/gateway_targets.json: memory limits + SQLite (1 worker), "
                        "production (2 workers, Redis, PostgreSQL; both started here), and the "
                        "Shield's own CPU per request beyond the model")
    parser.add_argument("--repeat", type=int, default=1, choices=range(1, 21),
                        metavar="N",
                        help="with --all-targets: measure both configurations this many "
                        "times (the host's speed drifts); the targets take the median")
    parser.add_argument("--only", choices=["memory", "redis", "postgres", "production"],
                        help="measure one configuration only (production: Redis limits "
                        "and state with the PostgreSQL audit)")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.all or args.all_targets:
            from tests.servers import postgres_server, redis_server

            args.redis = args.redis or stack.enter_context(redis_server())
            args.postgres = args.postgres or stack.enter_context(postgres_server())
        if args.all_targets:
            all_targets(args)
        elif args.floor:
            floor(args)
        else:
            run(args)


def redis_round_trips(redis_url: str, requests: int = 100) -> float:
    """Redis round trips per single-row request through the full Shield, in-process: every
    command or pipeline redis-py sends is one."""
    import redis.connection


    sent = [0]
    original = redis.connection.Connection.send_packed_command

    def counted(self: Any, *a: Any, **k: Any) -> Any:
        sent[0] += 1
        return original(self, *a, **k)

    x = load_victim("digits-mlp").X_test
    with tempfile.TemporaryDirectory() as tmp:
        cfg = yaml.safe_load(gateway_config(Path(tmp), redis_url.replace("/0", "/7"),
                                            f"sqlite:///{tmp}/a.db").read_text())
        shield = build_shield(cfg)
        key = shield.store.create_key("bench")[0]
        for i in range(30):  # warm: connections open, per-account state exists
            shield.handle(key, x[i:i + 1])
        redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]
        try:
            for i in range(requests):
                shield.handle(key, x[i % len(x)][None, :])
        finally:
            redis.connection.Connection.send_packed_command = original  # type: ignore[method-assign]
        shield.close()
    return sent[0] / requests


def floor(args: argparse.Namespace) -> None:
    """The bare server against the bare server that also commits an audit record (to
    ``--postgres``, else to SQLite) and makes ``--floor-redis-trips`` Redis round trips
    per answer (with ``--redis``), side by side, with each server's CPU per answer."""
    trips = args.floor_redis_trips if args.redis else 0
    kind = "PostgreSQL" if args.postgres else "SQLite"
    with_floor = f"bare + {kind} audit commit + {trips} Redis round trips"
    bodies = digits_bodies(args.rows)
    here = {"PYTHONPATH": str(Path(__file__).parent)}
    plain, floored = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**here, "BARE_AUDIT_URL": args.postgres or f"sqlite:///{tmp}/floor.db",
               "BARE_REDIS_TRIPS": str(trips)}
        if args.redis:
            env["BARE_REDIS_URL"] = args.redis
        with server("bare_app:app", plain, env=here, workers=args.workers) as bare_proc, \
                server("bare_app:app", floored, env=env, workers=args.workers) as floor_proc:
            url = f"http://127.0.0.1:{plain}/v1/models/digits-mlp/predict"
            floor_url = f"http://127.0.0.1:{floored}/v1/models/digits-mlp/predict"
            for u in (url, floor_url):
                run_load(u, bodies, [{}], concurrency=args.concurrency, requests=WARM_UP)
            rounds = throughput_rounds(args, bodies, [("bare", url, [{}], bare_proc),
                                                      (with_floor, floor_url, [{}], floor_proc)],
                                       {"bare": WARM_UP, with_floor: WARM_UP})
    cpu = {n: float(np.median([1e6 * x["cpu_seconds"] / x["answered"] for x in rounds
                               if x["server"] == n])) for n in ("bare", with_floor)}
    total = {n: sum(x["requests"] for x in rounds if x["server"] == n)
             / sum(x["seconds"] for x in rounds if x["server"] == n)
             for n in ("bare", with_floor)}
    ratio = total[with_floor] / total["bare"]
    show(f"the floor, {args.workers} worker(s) each: {args.requests} requests per server",
         ["server", "req/s", "CPU µs per answer (median of rounds)"],
         [[n, v, cpu[n]] for n, v in total.items()] + [["ratio", ratio, ""]])
    write(f"gateway_floor_workers{args.workers}_{kind.lower()}_redis{trips}",
          {"args": vars(args), "throughput": total, "ratio": ratio,
           "cpu_us_per_answer": cpu, "rounds": rounds})


def run(args: argparse.Namespace) -> None:
    configs = [("memory", "memory limits, SQLite audit", "memory://", "sqlite:///{tmp}/audit.db")]
    if args.redis:
        configs.append(("redis", "Redis limits, SQLite audit", args.redis,
                        "sqlite:///{tmp}/audit.db"))
    if args.postgres:
        configs.append(("postgres", "memory limits, PostgreSQL audit", "memory://",
                        args.postgres))
    if args.redis and args.postgres:
        configs.append(("production", "Redis limits and state, PostgreSQL audit", args.redis,
                        args.postgres))
    configs = [c for c in configs if args.only in (None, c[0])]
    bodies = digits_bodies(args.rows)
    results = []
    port = free_port()
    with server("bare_app:app", port, env={"PYTHONPATH": str(Path(__file__).parent)},
                workers=args.workers) as bare_proc:
        bare_url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
        run_load(bare_url, bodies, [{}], concurrency=args.concurrency, requests=200)  # warm-up
        for _, label, limits_url, audit_url in configs:
            results.append({"config": label, **measure(args, (bare_url, bare_proc), bodies,
                                                       limits_url, audit_url)})
    show(f"gateway overhead, {args.workers} worker(s) each: {args.requests} requests of "
         f"{args.rows} row(s) per server from "
         f"{args.concurrency} clients in {args.rounds} alternating rounds (throughput), "
         f"{args.moderate} one at a time, alternating (moderate-load latency)",
         ["config", "bare req/s", "shield req/s", "ratio", "ratio by round",
          "bare p50/p99 ms (moderate)", "shield p50/p99 ms (moderate)",
          "added p50/p99 ms (moderate)"],
         [[r["config"], r["bare_throughput"], r["shield_throughput"], r["throughput_ratio"],
           f"{min(r['round_ratios']):.2f} to {max(r['round_ratios']):.2f}",
           f"{r['moderate']['bare']['p50_ms']:.2f} / {r['moderate']['bare']['p99_ms']:.2f}",
           f"{r['moderate']['shield']['p50_ms']:.2f} / {r['moderate']['shield']['p99_ms']:.2f}",
           f"{r['moderate_p50_added_ms']:.2f} / {r['moderate_p99_added_ms']:.2f}"]
          for r in results])
    trips = redis_round_trips(args.redis) if args.redis else None
    if trips is not None:
        print(f"Redis round trips per single-row request (in-process, all defenses): {trips:.1f}")
    suffix = ("" if args.rows == 1 else f"_rows{args.rows}") + \
        ("" if args.workers == 1 else f"_workers{args.workers}") + \
        ("" if args.only is None else f"_{args.only}")
    write(f"gateway_overhead{suffix}", {"args": vars(args), "results": results,
                                        "redis_round_trips_per_request": trips})


TARGETS = {"memory": ("memory limits + SQLite, 1 worker", 1, 0.80, 2.0, 0),
           "production": ("production: Redis limits and state, PostgreSQL, 2 workers", 2,
                          0.60, 3.0, 1)}
"""Each configuration: its label, workers, throughput ratio and p99 added wanted, and the
Redis round trips its floor server makes (the design's one blocking trip in production)."""
SHIELD_CPU_TARGET_US = 200.0


def all_targets(args: argparse.Namespace) -> None:
    """The issue's three targets, each against the bare server with as many workers, in
    one run: throughput ratio and p99 added (memory, production), and the Shield's CPU per
    single-row request beyond the model (all five detectors; in-process, thread CPU, p50;
    and over HTTP, the gateway's CPU per answer minus the bare server's)."""
    from shield_stages import stage_times, summary

    bodies = digits_bodies(1)
    urls = {"memory": ("memory://", "sqlite:///{tmp}/audit.db"),
            "production": (args.redis, args.postgres)}
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in TARGETS}
    speed = machine_speed()
    for _ in range(args.repeat):
        for name, (_, workers, _, _, trips) in TARGETS.items():
            one = argparse.Namespace(**{**vars(args), "workers": workers})
            port = free_port()
            with server("bare_app:app", port, env={"PYTHONPATH": str(Path(__file__).parent)},
                        workers=workers) as bare_proc:
                bare_url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
                run_load(bare_url, bodies, [{}], concurrency=args.concurrency, requests=200)
                measured[name].append(measure(one, (bare_url, bare_proc), bodies,
                                              *urls[name], floor_trips=trips))
    cpu = summary(stage_times(args.requests, 0)["cpu"])
    beyond = next(r for r in cpu if r["stage"] == "beyond the model")
    rows = target_rows(measured, beyond)
    show(f"gateway targets (bare and gateway side by side; the median of {args.repeat} "
         "run(s) and their range; see gateway_targets.json)",
         ["target", "measured", "range", "wanted", "met"],
         [[r["target"], r["measured"], "{:.3g} to {:.3g}".format(*r["range"]), r["wanted"],
           r["met"]] for r in rows])
    for name, m in ((n, m) for n, ms in measured.items() for m in ms):
        print(f"{name}: commits per answer {m['audit']['commits_per_answer']:.3f} "
              f"({m['audit']['commits']:.0f} commits, {m['audit']['records']:.0f} records); "
              f"CPU per answer bare {np.median(m['cpu_us_per_answer']['bare']):.0f} µs, "
              f"gateway {np.median(m['cpu_us_per_answer']['shield']):.0f} µs, floor "
              f"{m['floor']['cpu_us_per_answer_p50']:.0f} µs at "
              f"{m['floor']['commits_per_answer']:.2f} commits per answer")
    speeds = {"before_ms": speed, "after_ms": machine_speed()}
    print(f"machine speed: a fixed Python loop took {speeds['before_ms']:.0f} ms before and "
          f"{speeds['after_ms']:.0f} ms after (thread CPU; the same code runs slower when the "
          f"host is busy)")
    write(args.out, {"args": vars(args), "targets": rows, "measured": measured,
                              "shield_stages_cpu_us": cpu, "machine_speed": speeds})


def machine_speed() -> float:
    """Thread CPU (ms) of a fixed pure-Python loop, the median of 5: how fast this
    machine ran the interpreter at the time, for comparing runs on a shared host."""
    times = []
    for _ in range(5):
        start, total = time.thread_time(), 0
        for i in range(1_000_000):
            total += i * i
        times.append(1e3 * (time.thread_time() - start))
    return float(np.median(times))


def target_rows(measured: dict[str, list[dict[str, Any]]], beyond: dict[str, Any]
                ) -> list[dict[str, Any]]:
    """Each target: the median of the runs and their range, what is wanted, and whether
    the median meets it."""
    rows: list[dict[str, Any]] = []

    def row(target: str, values: list[float], wanted: str, met: Any = None) -> None:
        median = float(np.median(values))
        rows.append({"target": target, "measured": median, "range": [min(values),
                                                                    max(values)],
                     "wanted": wanted, "met": None if met is None else bool(met(median))})

    for name, (label, _, ratio, p99, trips) in TARGETS.items():
        ms = measured[name]
        row(f"{label}: throughput ratio", [m["throughput_ratio"] for m in ms],
            f">= {ratio}", lambda v, r=ratio: v >= r)
        row(f"{label}: p99 added (ms)", [m["moderate_p99_added_ms"] for m in ms],
            f"<= {p99}", lambda v, p=p99: v <= p)
        row(f"{label}: audit commits per answer",
            [m["audit"]["commits_per_answer"] for m in ms], "< 1", lambda v: v < 1)
        row(f"{label}: floor (bare + audit commit + {trips} Redis round trips), ratio to "
            "bare", [m["floor"]["ratio_to_bare"] for m in ms], "(reported)")
        row(f"{label}: gateway's throughput over the floor's",
            [m["floor"]["gateway_to_floor"] for m in ms], "(reported)")
        row(f"{label}: gateway CPU per answer beyond bare, over HTTP (µs, median of rounds)",
            [m["cpu_us_per_answer"]["added_p50"] for m in ms], "(reported)")
    row("Shield CPU beyond the model, in-process, p50 (µs)", [beyond["p50_us"]],
        f"<= {SHIELD_CPU_TARGET_US:g}", lambda v: v <= SHIELD_CPU_TARGET_US)
    return rows


if __name__ == "__main__":
    main()
