"""How often does the entangled watermark's decoy test name a model that never saw our answers?

    python bench/watermark_ewe_calibrate.py bench/results/watermark_ewe_keys_synth345.json
                              # about a minute: the floors compared on seeds 3-5, where
                              # DECOY_MIN_RHO was set (watermark_ewe_calibrate.json)
    python bench/watermark_ewe_calibrate.py bench/results/watermark_ewe_keys.json \
        --out watermark_ewe_calibrate_seeds012   # the reported seeds, after the choice

The decoy test of :class:`~modelshield.victims.entangled.EntangledWatermark` says: a model
built without our answers cannot tell our key from another key drawn by the same procedure,
so its rate on our watermark is one more draw from its rates on the 50 decoys, and the
p-value is the tail of a Beta fitted to those (with a floor, ``DECOY_MIN_RHO``, on the
spread between keys). Whether that tail is honest at 1e-3 cannot be read off 50 decoys, but
it can be measured on many keys: bench/watermark_ewe_keys.py stores, for each independent
model of a victim, its rate on 240 keys drawn by the very procedure of the real key and the
decoys. Here every one of those keys plays the real key in turn, against 50 decoys drawn
from the other keys (its own copies left out, as embedding does), each decoy answered on 6
rows (binomial around the model's rate on it) and the real key on all its rows, as the
verification asks. Every such test is a false claim if it reaches alpha, so the share that
does is the decoy test's false-positive rate; it should be at most alpha.

Each floor in ``--rhos`` is scored on the same draws; ``--draws`` sets of decoys per key.
Writes bench/results/watermark_ewe_calibrate.json (``--out`` names another).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from harness import show, write

sys.path.insert(0, str(Path(__file__).parent.parent))

ALPHAS = (1e-2, 1e-3, 1e-4)
N_DECOYS = 50
DECOY_ROWS = 6


def trials(run: dict[str, Any], draws: int, seed: int) -> list[tuple[str, int, int, Any]]:
    """Per model and key: (model, real hits, real rows, decoy hits (draws, 50))."""
    rng = np.random.default_rng(seed)
    ident = np.asarray(run["key_ident"])
    rows = np.asarray(run["key_rows"])
    out = []
    for m in run["models"]:
        counts = np.array([int(h) for h in m["hits"].split(",")])
        rates = counts / rows
        for i in range(len(rates)):
            others = np.flatnonzero(ident != ident[i])
            picks = np.stack([rng.choice(others, N_DECOYS, replace=False) for _ in range(draws)])
            hits = rng.binomial(DECOY_ROWS, rates[picks])
            out.append((m["model"], int(counts[i]), int(rows[i]), hits))
    return out


@functools.cache
def _watermark(real_rows: int) -> Any:
    """A watermark of ``real_rows`` rows and 50 decoys of 6, target 0 (one a row count)."""
    from modelshield.victims.entangled import EntangledWatermark

    return EntangledWatermark(np.zeros((real_rows, 1)), 1, 0, 2, np.array([0]),
                              np.array([0.0]), (0.0,), np.zeros((N_DECOYS, DECOY_ROWS, 1)),
                              np.zeros(N_DECOYS, dtype=np.int64))


def p_decoy(real_hits: int, real_rows: int, decoy_hits: Any) -> float:
    """The library's decoy p-value for one suspect: labels 0 are hits (target 0)."""
    wm = _watermark(real_rows)
    labels = (np.arange(real_rows) >= real_hits).astype(np.int64)
    decoys = (np.arange(DECOY_ROWS)[None, :] >= decoy_hits[:, None]).astype(np.int64).ravel()
    p = wm.test(labels, decoys).p_decoy
    assert p is not None
    return p


def main() -> None:
    import modelshield.victims.entangled as entangled

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("keys", type=Path, nargs="+", help="result files of watermark_ewe_keys.py")
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.02, 0.05, 0.1, 0.15, 0.2, 0.3],
                    help="floors on the spread between keys (DECOY_MIN_RHO) to score")
    ap.add_argument("--draws", type=int, default=2, help="decoy sets per key and model")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the decoy draws and of their rows' binomial answers")
    ap.add_argument("--out", default="watermark_ewe_calibrate", help="result name in "
                    "bench/results/")
    args = ap.parse_args()
    runs = [r for path in args.keys for r in json.loads(path.read_text())["runs"]]
    if any("hits" not in m for r in runs for m in r["models"]):
        sys.exit("a keys file without per-key hits (written before they were stored); run "
                 "bench/watermark_ewe_keys.py again")
    tests = [(r["victim"], r["seed"], *t) for j, r in enumerate(runs)
             for t in trials(r, args.draws, args.seed + j)]
    results = []
    for rho in args.rhos:
        entangled.DECOY_MIN_RHO = rho
        p = np.array([[p_decoy(hits, n, d) for d in dec] for *_, hits, n, dec in tests])
        per_model: dict[str, list[float]] = {}
        for (victim, seed, model, *_), row in zip(tests, p, strict=True):
            per_model.setdefault(f"{victim}/{seed}/{model}", []).extend(row)
        shares = {k: float(np.mean(np.asarray(v) <= 1e-3)) for k, v in per_model.items()}
        worst = max(shares, key=shares.__getitem__)
        share = shares[worst]
        results.append({"rho": rho, "tests": int(p.size),
                        **{f"fpr_{a:g}": float(np.mean(p <= a)) for a in ALPHAS},
                        **{f"named_{a:g}": int(np.sum(p <= a)) for a in ALPHAS},
                        "worst_model": worst if share else None,
                        "worst_model_fpr_0.001": share,
                        "models_with_a_claim_0.001": sum(v > 0 for v in shares.values()),
                        "models": len(per_model)})
        print(f"rho {rho}: {results[-1]['named_0.001']} of {p.size} at 1e-3", flush=True)
    show("the decoy test's false claims: every key as the real one, 50 others as decoys",
         ["floor (rho)", "tests", "p <= 1e-2", "p <= 1e-3", "p <= 1e-4",
          "models with one at 1e-3", "worst model", "its share at 1e-3"],
         [[r["rho"], r["tests"], r["fpr_0.01"], r["fpr_0.001"], r["fpr_0.0001"],
           f"{r['models_with_a_claim_0.001']}/{r['models']}", r["worst_model"],
           r["worst_model_fpr_0.001"]] for r in results])
    write(args.out, {"sources": [str(p) for p in args.keys], "draws": args.draws,
                     "seed": args.seed, "decoys": N_DECOYS, "decoy_rows": DECOY_ROWS,
                     "results": results})


if __name__ == "__main__":
    main()
