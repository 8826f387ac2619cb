"""Where the gateway's interpreter time goes under load: a py-spy profile, grouped.

    python bench/gateway_profile.py [--requests 4000] [--detect after]

The gateway of ``bench/gateway_overhead.py`` (memory limits and state, SQLite audit, every
defense on, 1 worker) under the same load: single-row digits requests from 8 closed-loop
clients, one key each, rows each key has mostly not sent before. py-spy samples the thread
that holds the GIL (``--gil``): one process's Python runs one thread at a time, so this is
the Python work a worker cannot spread over cores (the GIL is not held all the time: C
code that releases it, and waits, are not in the profile). Each sample goes to the first
group its stack matches: the Shield's stages by name (on a request thread), the detection
after the answer, the hop to and from the request thread, and the serve layer (the event
loop: HTTP parsing, middleware, FastAPI's validation, the response). Needs py-spy (the ``bench`` extra has it)
and the right to trace the server (root, or ptrace allowed). The bare server
(``bench/bare_app.py``) is profiled the same way first, so each group's GIL time per
request stands beside the bare server's. Writes bench/results/gateway_profile.json.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from _load import free_port, run_load, server
from gateway_overhead import digits_bodies, gateway_config
from harness import show, write

from modelshield.store import AuditStore

GROUPS = [  # (group, a function on the stack, its module's file), first match wins
    ("detection after the answer", "_logged", "modelshield/defenses/shield.py"),
    ("the audit log's writer thread", "AuditStore._write_loop", "modelshield/store/sql.py"),
    ("stage: authenticate", "Authenticate.__call__", "modelshield/defenses/stages.py"),
    ("stage: check inputs", "CheckInputs.__call__", "modelshield/defenses/stages.py"),
    ("stage: limit", "Limit.__call__", "modelshield/defenses/stages.py"),
    ("stage: model", "Model.__call__", "modelshield/defenses/stages.py"),
    ("stage: detect", "Detect.__call__", "modelshield/defenses/stages.py"),
    ("stage: watermark", "Watermark.__call__", "modelshield/defenses/stages.py"),
    ("stage: shape", "Shape.__call__", "modelshield/defenses/stages.py"),
    ("stage: record", "Record.__call__", "modelshield/defenses/stages.py"),
    ("the Shield, between stages", "Shield.run", "modelshield/defenses/shield.py"),
    ("request thread, other", "_WorkItem.run", "concurrent/futures/thread.py"),
    ("thread hop and wake-ups", "_worker", "concurrent/futures/thread.py"),
    ("request thread, other", "WorkerThread.run", "anyio/_backends/_asyncio.py"),
    ("serve layer (event loop)", "BaseEventLoop.run_forever", "asyncio/base_events.py"),
]


WARM_UP_ROWS = 300


def group_of(stack: str) -> str:
    """The group of a collapsed stack (frames ``name (file:line)`` joined by ``;``)."""
    frames = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        frames.append((name, where.rsplit(":", 1)[0]))
    for group, name, path in GROUPS:  # a path as py-spy shows it, short or in full
        if any(n == name and (where == path or where.endswith("/" + path))
               for n, where in frames):
            return group
    return "other"


def profile(args: argparse.Namespace, spy: str, out: Path, bare: bool) -> dict[str, Any]:
    """Run the gateway (or the bare server) under load with py-spy attached; the load's
    figures."""
    bodies = digits_bodies(1)
    with tempfile.TemporaryDirectory() as tmp:
        audit = f"sqlite:///{tmp}/audit.db"
        cfg = gateway_config(Path(tmp), "memory://", audit, args.detect)
        store = AuditStore(audit)
        keys = [{"Authorization": f"Bearer {store.create_key('bench')[0]}"}
                for _ in range(args.concurrency)]
        store.close()
        port = free_port()
        app, env = ("bare_app:app", {"PYTHONPATH": str(Path(__file__).parent)}) if bare \
            else ("modelshield.serve.main:app", {"MODELSHIELD_CONFIG": str(cfg)})
        with server(app, port, env=env) as proc:
            url = f"http://127.0.0.1:{port}/v1/models/digits-mlp/predict"
            sent: dict[int, set[int]] = {}
            run_load(url, bodies, keys, concurrency=args.concurrency, requests=WARM_UP_ROWS,
                     sent=sent)
            log = out.with_suffix(".log")
            with log.open("w") as err:
                sampler = subprocess.Popen(
                    [spy, "record", "--pid", str(proc.pid), "--gil", "--format", "raw",
                     "--rate", str(args.rate), "-o", str(out)],
                    stdout=subprocess.DEVNULL, stderr=err)
                time.sleep(1.0)  # py-spy attaches
                load = run_load(url, bodies, keys, concurrency=args.concurrency,
                                requests=args.requests, start=WARM_UP_ROWS, sent=sent)
                sampler.send_signal(signal.SIGINT)
                sampler.wait(60)
            behind = [line for line in log.read_text().splitlines() if "behind" in line]
            load["sampler_fell_behind"] = len(behind)  # py-spy's own warnings, if any
    return load


def serve_functions(raw: Path) -> Counter[str]:
    """Samples of the event loop's thread by the Python function running (its own time:
    the innermost Python frame, which C code it calls counts in)."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "BaseEventLoop.run_forever" not in stack or not n.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        counts[leaf.split(" (")[0] + " (" + leaf.partition(" (")[2].rsplit(":", 1)[0]
               + ")"] += int(n)
    return counts


def grouped(raw: Path) -> tuple[Counter[str], int]:
    """Samples per group from py-spy's raw (collapsed stacks) output."""
    counts: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack and n.isdigit():
            counts[group_of(stack)] += int(n)
    return counts, sum(counts.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--detect", choices=["inline", "after"], default="after")
    parser.add_argument("--top", type=int, default=25,
                        help="serve-layer functions to list, by the time they add")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        sys.exit("bench/gateway_profile.py needs py-spy: pip install -e '.[bench]'")
    results: dict[str, dict[str, Any]] = {}
    for name in ("bare", "gateway"):
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "profile.txt"
            load = profile(args, spy, raw, name == "bare")
            counts, total = grouped(raw)
            serve = serve_functions(raw)
            if args.raw is not None:
                shutil.copy(raw, args.raw.with_name(f"{args.raw.stem}_{name}{args.raw.suffix}"))
        if total == 0:
            sys.exit("py-spy took no samples: is tracing this process allowed (ptrace)?")
        per_request = 1e6 / args.rate / load["requests"]  # µs of GIL time a sample stands for
        results[name] = {"load": load, "samples": total, "groups": [
            {"group": g, "samples": n, "share": n / total, "gil_us_per_request": n * per_request}
            for g, n in counts.most_common()],
            "serve_layer_us_per_request": {f: n * per_request for f, n in serve.items()}}
    groups = {g["group"] for r in results.values() for g in r["groups"]}

    def us(name: str, group: str) -> float:
        return float(sum(g["gil_us_per_request"] for g in results[name]["groups"]
                         if g["group"] == group))

    order = sorted(groups, key=lambda g: -us("gateway", g))
    show(f"GIL time per request under load, µs (bare {results['bare']['load']['throughput']:.0f}"
         f" req/s, gateway {results['gateway']['load']['throughput']:.0f} req/s)",
         ["group", "bare", "gateway"],
         [[g, f"{us('bare', g):.0f}", f"{us('gateway', g):.0f}"] for g in order]
         + [["total", f"{sum(us('bare', g) for g in groups):.0f}",
             f"{sum(us('gateway', g) for g in groups):.0f}"]])
    bare_f, gate_f = (results[n]["serve_layer_us_per_request"] for n in ("bare", "gateway"))
    added = sorted(((gate_f.get(f, 0.0) - bare_f.get(f, 0.0), f) for f in set(gate_f)
                    | set(bare_f)), reverse=True)[:args.top]
    show("the serve layer's functions that cost the gateway more than the bare server "
         "(GIL µs per request, their own time)", ["function", "bare", "gateway", "added"],
         [[f, f"{bare_f.get(f, 0):.0f}", f"{gate_f.get(f, 0):.0f}", f"{d:+.0f}"]
          for d, f in added])
    for r in results.values():  # keep the JSON small: the functions shown only
        r["serve_layer_us_per_request"] = {f: v for f, v in r["serve_layer_us_per_request"]
                                           .items() if any(f == a for _, a in added)}
    write("gateway_profile", {"args": {**vars(args), "raw": str(args.raw)}, **results})


if __name__ == "__main__":
    main()
