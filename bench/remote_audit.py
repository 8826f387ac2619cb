"""The same audit cells in-process and against a running gateway, timed side by side.

    python bench/remote_audit.py [--repeats 3] [--victim breast-cancer-lr]

The gateway serves the victim from a config file (`modelshield.serve.server`, uvicorn on
loopback, one worker) with one tier; the in-process audit runs the same tier through the
Shield in this process. Both run one cell at a time (workers=1), with a fresh cell cache.

Network time is what the transport alone costs for the requests the remote audit sent: the
requests (counted in the gateway's audit log) times the median round trip of a request the
gateway answers without any work (GET /v2/health/ready), measured right after. Target
(issue 14): remote time <= 1.5 x (in-process time + network time).

Writes bench/results/remote_audit.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from _load import free_port, server
from harness import show, write

sys.path.insert(0, str(Path(__file__).parent.parent))

from modelshield.audit.runner import run_audit
from modelshield.audit.scenario import load_scenario
from modelshield.store import AuditStore

ATTACKERS = [
    {"name": "equation solving", "attack": "equation-solving", "budgets": [31, 200]},
    {"name": "lowd-meek", "attack": "label-only", "params": {"method": "lowd-meek"},
     "budgets": [1000]},
    {"name": "knockoff", "attack": "knockoff", "params": {"epochs": 50, "source": "synthetic"},
     "budgets": [1000]},
]
TREE_ATTACKERS = [
    {"name": "path finding", "attack": "path-finding", "params": {"incomplete": True},
     "budgets": [2000]},
    {"name": "knockoff", "attack": "knockoff", "params": {"epochs": 50, "source": "synthetic"},
     "budgets": [1000]},
]


def round_trip(url: str, n: int = 300) -> float:
    """Median seconds of a request the gateway answers without work."""
    times = []
    with httpx.Client(base_url=url) as client:
        for _ in range(n):
            t = time.perf_counter()
            client.get("/v2/health/ready")
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", default="breast-cancer-lr")
    parser.add_argument("--policy", default=None,
                        help="the tier's output policy (default: full; leaf-id for trees)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    tree = args.victim.endswith("-tree")
    policy = args.policy or ("leaf-id" if tree else "full")
    attackers = TREE_ATTACKERS if tree else ATTACKERS
    runs = []
    with tempfile.TemporaryDirectory(prefix="remote-audit-") as tmp:
        audit_url = f"sqlite:///{tmp}/audit.db"
        config = {"model": {"builtin": args.victim}, "audit_url": audit_url,
                  "tiers": {"pro": {"policy": policy}}}
        (Path(tmp) / "gw.yaml").write_text(yaml.safe_dump(config))
        store = AuditStore(audit_url)
        key = store.create_key("pro")[0]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        base = {"name": "remote-vs-local", "seed": 0, "price_per_1k": 1.0,
                "model_value": 1000, "attackers": attackers}
        local = load_scenario({**base, "target": {"victim": args.victim},
                               "defenses": [{"name": "pro", "policy": policy}]})
        remote = load_scenario({**base, "target": {"victim": args.victim, "url": url,
                                                   "api_key": key},
                                "defenses": [{"name": "pro"}]})
        env = {"MODELSHIELD_CONFIG": str(Path(tmp) / "gw.yaml")}
        with server("modelshield.serve.main:app", port, env=env):
            for r in range(args.repeats):
                t = time.perf_counter()
                doc_local = run_audit(local, Path(tmp) / f"local{r}", workers=1)
                local_s = time.perf_counter() - t
                before = store.count()
                t = time.perf_counter()
                doc_remote = run_audit(remote, Path(tmp) / f"remote{r}", workers=1)
                remote_s = time.perf_counter() - t
                requests = store.count() - before
                rtt = round_trip(url)
                attack_local = sum(c["seconds"] for c in doc_local["cells"]
                                   if c["kind"] == "attack")
                attack_remote = sum(c["seconds"] for c in doc_remote["cells"])
                network = requests * rtt
                runs.append({
                    "repeat": r, "local_seconds": local_s, "remote_seconds": remote_s,
                    "local_attack_cell_seconds": attack_local,
                    "remote_attack_cell_seconds": attack_remote,
                    "requests": requests, "round_trip_ms": rtt * 1000,
                    "network_seconds": network,
                    "ratio": attack_remote / (attack_local + network),
                    "queries": sum(c["queries"] for c in doc_remote["cells"]),
                    "cells": [{"attacker": a["attacker"], "budget": a["budget"],
                               "status": (a["status"], b["status"]),
                               "queries": (a["queries"], b["queries"]),
                               "seconds": (a["seconds"], b["seconds"])}
                              for a, b in zip([c for c in doc_local["cells"]
                                               if c["kind"] == "attack"],
                                              doc_remote["cells"], strict=True)],
                })
                for c in runs[-1]["cells"]:
                    print(c, flush=True)
    show(f"{args.victim} behind {policy}: attack cells in-process and over HTTP, one at a "
         "time (ratio = remote / (in-process + requests x bare round trip); target <= 1.5)",
         ["repeat", "queries", "requests", "in-process s", "remote s", "round trip ms",
          "network s", "ratio"],
         [[r["repeat"], r["queries"], r["requests"], r["local_attack_cell_seconds"],
           r["remote_attack_cell_seconds"], r["round_trip_ms"], r["network_seconds"],
           r["ratio"]] for r in runs])
    write(f"remote_audit_{args.victim}", {"victim": args.victim, "policy": policy,
                                          "attackers": attackers, "runs": runs,
                                          "median_ratio": statistics.median(
                                              r["ratio"] for r in runs)})


if __name__ == "__main__":
    main()
