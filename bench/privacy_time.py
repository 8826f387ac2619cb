"""How long membership inference takes in the audit, on this machine.

    python bench/privacy_time.py [--workers 2]

1. **The demo's privacy part**: the demo's scenario without its ``privacy`` section is run
   first; then the demo itself, in the same folder, so that only the privacy cells run
   (every other cell is read from the cache). The second run's wall time is what the
   privacy part adds to ``modelshield demo``. The shadow models start untrained (a fresh
   cache folder for them; the victims' cache is kept).
2. **A full privacy audit of one victim**: ``tabular-mlp`` under five defenses (none,
   rounded scores, top-1 score, labels only, every detector set to deny), with every
   membership attack (loss, confidence, LiRA online and offline, fixed and per-example
   variance, RMIA online and offline, label-only), 16 shadow models, from nothing cached
   but the victim.

Writes bench/results/privacy_time.json.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.audit.runner import run_audit
from modelshield.audit.scenario import DEMO, load_scenario

FULL: dict[str, Any] = {
    "name": "privacy audit of tabular-mlp",
    "target": {"victim": "tabular-mlp"},
    "attackers": [{"attack": "knockoff", "params": {"source": "pool"}, "budgets": [100]}],
    "defenses": [
        {"name": "none"}, {"name": "rounded", "policy": "round:2"},
        {"name": "top-1", "policy": "top-k:1"}, {"name": "labels only", "policy": "label"},
        {"name": "monitored", "detectors": ["sweep", "boundary", "ood", "prada", "volume"],
         "on_flag": "deny"}],
    "benign": {"accounts": 1, "archetypes": ["iid"]},
    "privacy": {"attacks": ["loss", "confidence", "lira", "lira:fixed_variance=true",
                            "lira:online=false", "lira:online=false,fixed_variance=true",
                            "rmia", "rmia:online=false", "label-only"], "shadows": 16},
}


def fresh_shadows() -> Path:
    """A cache folder of its own for the shadow models; the victims link to the usual one."""
    from modelshield.victims.zoo import cache_dir

    usual = cache_dir()
    tmp = Path(tempfile.mkdtemp(prefix="ms-time-"))
    for item in usual.iterdir() if usual.exists() else []:
        if item.name != "shadows":
            (tmp / item.name).symlink_to(item)
    os.environ["MODELSHIELD_CACHE"] = str(tmp)
    return tmp


def main() -> None:
    parser = arguments(__doc__, workers=2)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="ms-privacy-time-"))
    cache = fresh_shadows()
    try:
        plain = copy.deepcopy(DEMO)
        plain.pop("privacy")
        start = time.perf_counter()
        run_audit(load_scenario(plain), out / "demo", args.workers)
        without = time.perf_counter() - start
        start = time.perf_counter()
        doc = run_audit(load_scenario(DEMO), out / "demo", args.workers)
        added = time.perf_counter() - start
        privacy_cells = [c for c in doc["cells"] if c["kind"] == "privacy"]
        start = time.perf_counter()
        full = run_audit(load_scenario(FULL), out / "full", args.workers)
        whole = time.perf_counter() - start
    finally:
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    full_cells = [c for c in full["cells"] if c["kind"] == "privacy"]
    rows = [["demo without privacy", without, len(doc["cells"]) - len(privacy_cells)],
            ["demo's privacy part (added)", added, len(privacy_cells)],
            ["full privacy audit of tabular-mlp", whole, len(full["cells"])]]
    show(f"Privacy in the audit, wall seconds ({args.workers} workers)",
         ["run", "seconds", "cells"], rows)
    write("privacy_time", {
        "workers": args.workers, "demo_without_privacy_s": round(without, 1),
        "demo_privacy_added_s": round(added, 1),
        "demo_privacy_cell_seconds": [round(c["seconds"], 1) for c in privacy_cells],
        "full_privacy_audit_s": round(whole, 1),
        "full_privacy_cell_seconds": [round(c["seconds"], 1) for c in full_cells],
        "full_rating": full["analysis"]["rating"],
        "full_exposure": {d["name"]: d["privacy"]["level"]
                          for d in full["analysis"]["defenses"]},
    })


if __name__ == "__main__":
    main()
