"""Detection: when is each structured-query attack first flagged, against the queries it
needs for 90% fidelity, at the false-positive rate the tier states?

    python bench/detectors.py [--seeds 0 1 2 3 4] [--benign-accounts 200]

Each victim is served by one in-process Shield (the gateway's code path) with all five
detectors, ``fpr: 0.001`` and ``on_flag: alert``, so attacks run to the end and we can see
both numbers. The detectors are calibrated on the victim's calibration rows (half its test
set; the attacker's pool is apart). The volume detector is set to the benign volumes'
99.5th percentile (789 rows). For an attack no detector flags, the table shows why: each
rate test's share of the attack's queries against the honest rate, and its p-value at the
end against the budget of that look.

Benign traffic here is i.i.d. natural samples of the victim's honest rows (the other half
of its test set) in batches of 1 to 10 rows, volumes log-normal (median 60 rows);
bench/honest.py measures every kind of customer. Writes bench/results/detectors.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.attacks import ATTACKS
from modelshield.audit.evaluate import agreement
from modelshield.defenses.detectors import RateTest, without_uncalibrated
from modelshield.defenses.shield import Shield
from modelshield.oracle import ShieldOracle
from modelshield.serve.factory import build_shield
from modelshield.victims import load_victim

# Benign accounts' volumes: log-normal, median 60 rows, sigma 1 (see ``benign``). The owner
# knows its customers' volumes from past traffic, so the volume detector is set to their
# 99.5th percentile: 60 * exp(2.576) = 789 rows.
BENIGN_MEDIAN, BENIGN_SIGMA = 60, 1.0
VOLUME_MAX_ROWS = round(BENIGN_MEDIAN * float(np.exp(BENIGN_SIGMA * stats.norm.ppf(0.995))))
DETECTORS: list[Any] = ["sweep", "boundary", "ood", "prada",
                        {"volume": {"max_rows": VOLUME_MAX_ROWS}}]
CASES = [  # victim, policy, attack, budget, params
    ("breast-cancer-lr", "full", "equation-solving", 500, {}),
    ("breast-cancer-lr", "label", "label-only", 1000, {"method": "lowd-meek"}),
    ("breast-cancer-lr", "label", "label-only", 1000, {"method": "adaptive"}),
    ("wine-tree", "leaf-id", "path-finding", 5000, {}),
    ("digits-mlp", "full", "equation-solving", 1510, {"model": "mlp", "restarts": 1}),
    ("digits-mlp", "full", "knockoff", 2000, {"checkpoints": (100, 200, 300, 500, 1000)}),
    ("digits-mlp", "full", "knockoff", 2000,
     {"source": "uniform", "checkpoints": (100, 300, 1000)}),
    ("digits-mlp", "full", "knockoff", 2000,
     {"source": "synthetic", "checkpoints": (100, 300, 1000)}),
    ("digits-mlp", "full", "active", 1000, {}),
    ("digits-mlp", "label", "jacobian", 800, {}),
]


def shield_for(victim: str, policy: str, tmp: str, seed: int) -> Shield:
    """The victim behind every detector its calibration data can calibrate (prada needs
    streams of 100 distinct records; the small data sets cannot give them)."""
    shield, left_out = without_uncalibrated(lambda detectors: build_shield({
        "model": {"builtin": victim, "seed": seed},
        "audit_url": f"sqlite:///{tmp}/{victim}-{policy}-{seed}.db",
        "tiers": {"t": {"policy": policy, "detectors": detectors, "on_flag": "alert",
                        "fpr": 0.001, "max_batch": 100000}}}), DETECTORS)
    for x in left_out:
        print(f"{victim}: without {x['detector']} ({x['reason']})")
    return shield


def benign(victim_name: str, accounts: int, seed: int, tmp: str) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    victim = load_victim(victim_name, seed)
    shield = shield_for(victim_name, "full", tmp, seed)
    volumes = np.clip(rng.lognormal(np.log(BENIGN_MEDIAN), BENIGN_SIGMA, accounts).astype(int),
                      5, 5000)
    by: dict[str, int] = {}
    for n in volumes:
        key = shield.store.create_key("t")[0]
        sent = 0
        while sent < n:
            b = int(min(rng.integers(1, 11), n - sent))
            _, decision = shield.handle(key, victim.honest[rng.integers(0, len(victim.honest), b)])
            sent += b
            for f in decision.flags:
                by[f.detector] = by.get(f.detector, 0) + 1
    flagged = len(shield.flagged)
    return {"victim": victim_name, "accounts": accounts, "flagged": flagged,
            "rate": flagged / accounts, "median_volume": float(np.median(volumes)),
            "max_volume": int(volumes.max()), "flagged_requests_by_detector": by}


def attack(case: tuple[Any, ...], seed: int, tmp: str) -> dict[str, Any]:
    victim_name, policy, name, budget, params = case
    victim = load_victim(victim_name, seed)
    shield = shield_for(victim_name, policy, tmp, seed)
    key, record = shield.store.create_key("t")
    oracle = ShieldOracle(shield, key)
    e = ATTACKS[name](random_state=seed, **params).run(oracle, budget, pool=victim.pool)
    curve = [(c.queries, agreement(c.clone, victim, victim.X_test)) for c in e.checkpoints]
    reach = next((q for q, f in curve if f >= 0.9), None)
    flag = oracle.first_flag
    tests = {}
    for det in shield.detectors["t"]:
        if isinstance(det, RateTest):  # the measurement behind a miss
            c = det.state.incr_many(f"{det.name}:{record.key_id}", {"hits": 0, "total": 0})
            k, n = c["hits"], c["total"]
            tests[det.name] = {"hits": k, "distinct": n, "honest": det.baseline,
                               "p": det.p_value(k, n) if n else 1.0}
    shield.close()
    return {"victim": victim_name, "policy": policy, "attack": name, "params": str(params),
            "seed": seed, "queries": e.queries, "final_fidelity": curve[-1][1],
            "queries_to_90": reach, "first_flag_query": None if flag is None else flag[0],
            "first_flag_detector": None if flag is None else flag[1],
            # At or before, as in the audit: with on_flag deny, the request that trips the
            # detector is itself refused, so the answers that would reach 90% never leave.
            "caught_before_90": flag is not None and (reach is None or flag[0] <= reach),
            "tests": tests}


def _why(a: dict[str, Any]) -> str:
    if a["caught_before_90"]:
        return ""
    return "; ".join(f"{n} {t['hits']}/{t['distinct']} (honest {t['honest']:.0%}, p {t['p']:.0e})"
                     for n, t in a["tests"].items())


def main() -> None:
    parser = arguments(__doc__, seeds=[0, 1, 2, 3, 4])
    parser.add_argument("--benign-accounts", type=int, default=200)
    args = parser.parse_args()
    attacks, benign_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for c in CASES:
                attacks.append(attack(c, seed, tmp))
                a = attacks[-1]
                print(f"seed {seed} {a['victim']} {a['attack']} {a['params'][:30]}: 90% at "
                      f"{a['queries_to_90']}, flagged at {a['first_flag_query']} "
                      f"({a['first_flag_detector']})", flush=True)
            benign_rows += [benign(v, args.benign_accounts, seed, tmp)
                            for v in ("breast-cancer-lr", "wine-tree", "digits-mlp")]
    show("attacks through the Shield (all detectors, fpr 0.001, alert only)",
         ["seed", "victim", "policy", "attack", "params", "final fid", "queries to 90%",
          "first flag at", "by", "caught", "why not"],
         [[a["seed"], a["victim"], a["policy"], a["attack"], a["params"][:24],
           a["final_fidelity"], a["queries_to_90"], a["first_flag_query"],
           a["first_flag_detector"], a["caught_before_90"], _why(a)[:60]] for a in attacks])
    show("benign accounts (natural samples, realistic volumes)",
         ["victim", "accounts", "flagged", "rate", "median rows", "max rows", "by detector"],
         [[b["victim"], b["accounts"], b["flagged"], b["rate"], b["median_volume"],
           b["max_volume"], b["flagged_requests_by_detector"]] for b in benign_rows])
    write("detectors", {"seeds": args.seeds, "attacks": attacks, "benign": benign_rows})


if __name__ == "__main__":
    main()
