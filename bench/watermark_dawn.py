"""The serve-time watermark (DAWN) against extraction: does it survive in the clone, does it
name the right account, and does it ever name a model built without our answers?

    python bench/watermark_dawn.py --victims digits-mlp-wm breast-cancer-lr --seeds 0
                                         # the committed run: about 15 minutes on 2 cores
    python bench/watermark_dawn.py       # four victims, seeds 0-2: over 2 hours on 2 cores
    python bench/watermark_dawn.py --quick         # one seed, 1,000 queries
    python bench/watermark_dawn.py --victims synth-tree-d12 --seeds 0 1 2 --budgets 1000 \
        --out watermark_dawn_tree                  # the depth-8 tree: about 20 minutes

Each cell serves a built-in victim through a Shield whose tier watermarks its answers
(rate 0.5% by default, the other settings at their defaults), lets a thief's key run an
attack through it, rebuilds that key's watermark set from the audit log and the secret,
and tests the clone (``modelshield.audit.ownership``; p <= 1e-3 names the key) on its
labels (``p_value``: the label test with three classes or more, the control test with two)
and, where it has scores, on its scores (``p_scores``: the score test, as ``verify`` tests
a suspect that gives them; the independent models too). Attackers:

* ``knockoff``: synthetic queries, the student chosen on held-out answers (the default);
* ``knockoff-forest``: the same answers, a random forest student (it memorises);
* ``knockoff-pool``: natural rows only (the attacker's pool; at most its size);
* ``vote5``: knows a watermark may be there: each training point is sent as 5 copies
  jittered by 1% of each range, and trains on the majority (a fifth of the points);
* ``prune``: fits, drops the answers its clone disagrees with, fits again.

A seed is the thief's: its attack's random state and its key's id (``seeded_key_id`` of
the cell, so a rerun draws the same watermarked inputs; the runs committed before
2026-12-01 drew a fresh random id each); the victims are the built-in ones of seed 0, so
every seed attacks the same models.

No false claims: per victim, models built without our answers (9 architectures x 2 seeds,
trained on the victim's own training rows with its labels, and a knockoff clone made from
another key's answers) are each tested against the thief's watermark; and every cell's
watermark is tested against every one of them, for the share of p-values at or below 1e-3
(an exact test gives at most 1e-3 of them). Writes bench/results/watermark_dawn.json.
"""

from __future__ import annotations

import functools
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import arguments, pool, report, run_cells

sys.path.insert(0, str(Path(__file__).parent.parent))

# The two MLPs were trained with a trigger set (Adi et al.): train-time and serve-time
# watermarks side by side.
VICTIMS = ["digits-mlp-wm", "synth-mlp-d20-wm", "synth-tree-d12", "breast-cancer-lr"]
ATTACKERS: dict[str, dict[str, Any]] = {
    "knockoff": {"source": "synthetic"},
    "knockoff-forest": {"source": "synthetic", "student": "forest"},
    "knockoff-pool": {"source": "pool"},  # natural rows only (at most the pool's size)
    "vote5": {"source": "synthetic", "votes": 5},
    "prune": {"source": "synthetic", "prune": True},
}
ALPHA = 1e-3
TRACED = 1e-6  # the audit's bar for a traced clone
SECRET = "bench-watermark-secret-0123456789"


@functools.cache
def independent_models(name: str) -> list[tuple[str, Any]]:
    """Models built without our answers: on the victim's own training rows and labels."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    from modelshield.victims import load_victim

    v = load_victim(name)
    y = v.predict_labels(v.X_train)
    out = []
    for seed in (1, 2):
        archs = {
            "logistic": LogisticRegression(max_iter=2000, C=1.0 / seed),
            "mlp16": MLPClassifier((16,), max_iter=1000, random_state=seed),
            "mlp64": MLPClassifier((64,), max_iter=1000, random_state=seed),
            "mlp32x32": MLPClassifier((32, 32), max_iter=1000, random_state=seed),
            "forest": RandomForestClassifier(100, random_state=seed),
            "boosting": HistGradientBoostingClassifier(random_state=seed),
            "knn": KNeighborsClassifier(3 + 2 * seed),
            "svc": SVC(C=float(seed), random_state=seed),
            "tree": DecisionTreeClassifier(random_state=seed, min_samples_leaf=seed),
        }
        for arch, est in archs.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = make_pipeline(StandardScaler(), est).fit(v.X_train, y)
            out.append((f"{arch}-s{seed}", model))
    return out


def shield_for(name: str, tmp: str, rate: float) -> Any:
    from modelshield.serve.factory import build_shield

    return build_shield({"model": {"builtin": name}, "audit_url": f"sqlite:///{tmp}/a.db",
                         "watermark_secret": SECRET,
                         "tiers": {"pro": {"watermark": {"rate": rate}, "max_batch": 1000}}})


def test(clone_labels: Any, control_labels: Any, ws: Any, k: int) -> Any:
    from modelshield.defenses.watermark import control_test, label_test

    return label_test(clone_labels, ws, k) if k > 2 else \
        control_test(clone_labels, control_labels, ws)


def scores(model: Any, ws: Any, k: int) -> float | None:
    """The score test of ``model`` against ``ws`` (as ``verify`` tests a suspect that gives
    every class's score), or None for a model without scores."""
    from modelshield.audit.ownership import estimator_answer
    from modelshield.defenses.watermark import score_test

    if not hasattr(model, "predict_proba") or not len(ws.x):
        return None
    return score_test(estimator_answer(model, k, ws.x).probabilities,
                      estimator_answer(model, k, ws.control_x).probabilities
                      if len(ws.control_x) else np.zeros((0, k)), ws).p_value


def cell(job: tuple[str, str, int, int, float]) -> dict[str, Any]:
    """One thief's attack through a watermarked tier, and the tests of its clone and of
    the independent models against its watermark."""
    name, attacker, budget, seed, rate = job
    from modelshield.attacks import ATTACKS
    from modelshield.audit.ownership import logged_queries
    from modelshield.defenses.watermark import watermark_set
    from modelshield.oracle import ShieldOracle
    from modelshield.store import seeded_key_id
    from modelshield.victims import load_victim
    from modelshield.victims.zoo import ZOO, builtin_trigger_set

    v = load_victim(name)
    k = v.spec.n_classes
    with tempfile.TemporaryDirectory() as tmp:
        shield = shield_for(name, tmp, rate)
        key, rec = shield.store.create_key("pro", owner="thief", key_id=seeded_key_id(
            "thief", name, attacker, budget, seed, rate))
        spend = min(budget, len(v.pool)) if ATTACKERS[attacker]["source"] == "pool" else budget
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e = ATTACKS["knockoff"](random_state=seed, **ATTACKERS[attacker]).run(
                ShieldOracle(shield, key), spend, pool=v.pool)
        x, given = logged_queries(shield.store, rec.key_id, shield.spec.name)
        ws = watermark_set(shield.watermarks["pro"], rec.key_id, x, v.model, answered=given)
        shield.close()
    fidelity = float(np.mean(e.clone.predict(v.X_test) == v.predict_labels(v.X_test)))
    res = test(e.clone.predict(ws.x) if len(ws.x) else ws.labels[:0],
               e.clone.predict(ws.control_x) if len(ws.control_x) else ws.labels[:0], ws, k)
    p_scores = scores(e.clone, ws, k)
    null, null_scores = [], []
    for label, model in independent_models(name):
        r = test(model.predict(ws.x) if len(ws.x) else ws.labels[:0],
                 model.predict(ws.control_x) if len(ws.control_x) else ws.labels[:0], ws, k)
        null.append((label, r.p_value))
        null_scores.append((label, scores(model, ws, k)))
    trig: dict[str, Any] = {}
    if ZOO[name].watermark:  # the train-time trigger set, in the same clone
        from modelshield.victims.trainmark import trigger_test

        triggers = builtin_trigger_set(name)
        t = trigger_test(e.clone.predict(triggers.x), triggers)
        trig = {"trigger_p": t.p_value, "trigger_matches": t.matches,
                "trigger_named": t.p_value <= ALPHA,
                "trigger_null_named": sum(
                    trigger_test(m.predict(triggers.x), triggers).p_value <= ALPHA
                    for _, m in independent_models(name))}
    return {**trig, "victim": name, "attacker": attacker, "budget": budget, "seed": seed, "rate": rate,
            "queries": e.queries, "fidelity": fidelity, "student": e.info.get("student"),
            "watermarks": res.watermarks, "disagreements": res.disagreements,
            "matches": res.matches, "test": res.test, "p_value": res.p_value,
            "named": res.p_value <= ALPHA, "null_p": null,
            "null_named": sum(p <= ALPHA for _, p in null),
            "p_scores": p_scores, "null_p_scores": null_scores,
            "null_named_scores": sum(p is not None and p <= ALPHA for _, p in null_scores)}


def other_account_clone(name: str, seed: int, rate: float, budget: int) -> dict[str, Any]:
    """A clone made from one key's answers, tested against another key's watermark."""
    from modelshield.attacks import ATTACKS
    from modelshield.audit.ownership import logged_queries
    from modelshield.defenses.watermark import watermark_set
    from modelshield.oracle import ShieldOracle
    from modelshield.store import seeded_key_id
    from modelshield.victims import load_victim

    v = load_victim(name)
    with tempfile.TemporaryDirectory() as tmp:
        shield = shield_for(name, tmp, rate)
        keys = [shield.store.create_key("pro", owner=o, key_id=seeded_key_id(
            o, name, budget, seed, rate)) for o in ("a", "b")]
        clones = []
        for i, (key, _) in enumerate(keys):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                clones.append(ATTACKS["knockoff"](random_state=seed + i, source="synthetic",
                                                  student="forest").run(
                    ShieldOracle(shield, key), budget, pool=v.pool).clone)
        out = {}
        for i, (_, rec) in enumerate(keys):
            x, given = logged_queries(shield.store, rec.key_id, shield.spec.name)
            ws = watermark_set(shield.watermarks["pro"], rec.key_id, x, v.model, answered=given)
            own, other = clones[i], clones[1 - i]
            out[f"own-{i}"] = test(own.predict(ws.x), own.predict(ws.control_x), ws,
                                   v.spec.n_classes).p_value
            out[f"other-{i}"] = test(other.predict(ws.x), other.predict(ws.control_x), ws,
                                     v.spec.n_classes).p_value
        shield.close()
    return {"victim": name, "seed": seed, "budget": budget, **out}


def honest_cost(name: str, rate: float) -> dict[str, Any]:
    """What the watermark costs a customer who scores the test set: answers changed."""
    from modelshield.oracle import ShieldOracle
    from modelshield.store import seeded_key_id
    from modelshield.victims import load_victim

    v = load_victim(name)
    changed, acc = [], []
    with tempfile.TemporaryDirectory() as tmp:
        shield = shield_for(name, tmp, rate)
        for i in range(20):
            key, _ = shield.store.create_key("pro", key_id=seeded_key_id("honest", name, rate, i))
            got = ShieldOracle(shield, key).query(v.X_test).labels
            changed.append(float(np.mean(got != v.predict_labels(v.X_test))))
            acc.append(float(np.mean(got == v.y_test)))
        shield.close()
    return {"victim": name, "rate": rate, "answers_changed": float(np.mean(changed)),
            "accuracy": float(np.mean(acc)),
            "accuracy_unmarked": float(np.mean(v.predict_labels(v.X_test) == v.y_test))}


def main() -> None:
    ap = arguments(__doc__.split("\n")[0], seeds=[0, 1, 2], workers=2, out="watermark_dawn")
    ap.add_argument("--quick", action="store_true", help="one seed, 1,000 queries")
    ap.add_argument("--victims", nargs="+", default=VICTIMS)
    ap.add_argument("--budgets", type=int, nargs="+", default=None,
                    help="query budgets (default 1,000 and 10,000; 1,000 with --quick)")
    args = ap.parse_args()
    seeds = [0] if args.quick else args.seeds
    budgets = args.budgets or ([1000] if args.quick else [1000, 10_000])
    jobs = [(v, a, b, s, 0.005) for v in args.victims for a in ATTACKERS for b in budgets
            for s in seeds]
    jobs += [(v, "knockoff", 1000, s, 0.02) for v in args.victims for s in seeds]
    jobs += [(v, "knockoff-forest", 1000, s, 0.02) for v in args.victims for s in seeds]
    n = len(args.victims)
    with pool(args.workers, spawn=True) as ex:
        rows = run_cells(cell, jobs, args.workers, executor=ex, progress=lambda r: (
            f"{r['victim']} {r['attacker']} {r['budget']} seed {r['seed']} rate {r['rate']}: "
            f"fidelity {r['fidelity']:.3f}, p {r['p_value']:.2g}, on scores "
            f"{r['p_scores'] or 1:.2g}"))
        others = list(ex.map(other_account_clone, args.victims, [seeds[0]] * n,
                             [0.005] * n, [budgets[-1]] * n))
        costs = list(ex.map(honest_cost, args.victims, [0.005] * n))
    summary = summarize(rows, args.victims, budgets)
    independent, null_row = no_false_claims(rows, others, seeds, budgets)
    report(args.out, {"alpha": ALPHA, "seeds": seeds, "budgets": budgets,
                      "rows": [{k: v for k, v in r.items()
                                if k not in ("null_p", "null_p_scores")} for r in rows],
                      "summary": summary, "independent_models": independent,
                      "other_accounts": others, "honest_cost": costs},
           [("DAWN watermark in the thief's clone (p <= 1e-3 names the key); trigger set's p",
             ["victim", "attacker", "rate", "budget", "seed", "student", "fidelity",
              "wm inputs", "matches", "p", "named", "p on scores", "trigger p"],
             [[r["victim"], r["attacker"], f"{r['rate']:.3f}", r["budget"], r["seed"],
               r["student"], r["fidelity"], r["watermarks"],
               f"{r['matches']}/{r['disagreements']}" if r["test"] == "label"
               else f"{r['matches']}/{r['watermarks']}", r["p_value"],
               "yes" if r["named"] else "no", r["p_scores"], r.get("trigger_p")]
              for r in rows]),
            ("named / runs, mean fidelity (serve-time DAWN on labels and on scores, named at "
             "1e-3 and traced at 1e-6; train-time trigger set)",
             ["victim", "attacker", "budget", "rate", "DAWN named", "on scores", "traced",
              "on scores", "fidelity", "median p", "on scores", "trigger set named"],
             [[s["victim"], s["attacker"], s["budget"], s["rate"], f"{s['named']}/{s['runs']}",
               f"{s['named_scores']}/{s['runs']}", f"{s['traced']}/{s['runs']}",
               f"{s['traced_scores']}/{s['runs']}", s["fidelity"], s["median_p"],
               s["median_p_scores"],
               "-" if s["trigger_named"] is None else f"{s['trigger_named']}/{s['runs']}"]
              for s in summary]),
            ("models built without our answers",
             ["models", "named at 1e-3", "tests (all cells)", "named", "p <= 0.05",
              "tests on scores", "named on scores", "p <= 0.05 on scores",
              "named by a trigger set"], [null_row]),
            ("another key's clone against a key's watermark (forest students)",
             ["victim", "own p (a)", "other p (a)", "own p (b)", "other p (b)"],
             [[o["victim"], o["own-0"], o["other-0"], o["own-1"], o["other-1"]]
              for o in others]),
            ("what it costs a customer scoring the test set (20 keys)",
             ["victim", "rate", "answers changed", "accuracy", "unmarked accuracy"],
             [[c["victim"], c["rate"], c["answers_changed"], c["accuracy"],
               c["accuracy_unmarked"]] for c in costs])])


def on_scores(r: dict[str, Any]) -> float:
    """The score test's p, or the label test's for a clone without scores."""
    return r["p_value"] if r["p_scores"] is None else r["p_scores"]


def summarize(rows: list[dict[str, Any]], victims: list[str],
              budgets: list[int]) -> list[dict[str, Any]]:
    """Each victim, attacker, budget and rate: the runs named and traced."""
    summary = []
    for v in victims:
        for a in ATTACKERS:
            for b in budgets:
                for rate in (0.005, 0.02):
                    sel = [r for r in rows if (r["victim"], r["attacker"], r["budget"],
                                               r["rate"]) == (v, a, b, rate)]
                    if sel:
                        trig = [r["trigger_named"] for r in sel if "trigger_named" in r]
                        summary.append({"victim": v, "attacker": a, "budget": b, "rate": rate,
                                        "named": sum(r["named"] for r in sel), "runs": len(sel),
                                        "named_scores": sum(on_scores(r) <= ALPHA for r in sel),
                                        "traced": sum(r["p_value"] <= TRACED for r in sel),
                                        "traced_scores": sum(on_scores(r) <= TRACED
                                                             for r in sel),
                                        "median_p_scores": float(np.median(
                                            [on_scores(r) for r in sel])),
                                        "trigger_named": sum(trig) if trig else None,
                                        "fidelity": float(np.mean([r["fidelity"] for r in sel])),
                                        "median_p": float(np.median([r["p_value"]
                                                                     for r in sel]))})
    return summary


def no_false_claims(rows: list[dict[str, Any]], others: list[dict[str, Any]],
                    seeds: list[int], budgets: list[int]) -> tuple[dict[str, Any], list[Any]]:
    """Each independent model against the thief's watermark of the largest budget, first
    seed; and every cell's watermark against every model. Returns the result and its
    table row."""
    first = [r for r in rows if r["attacker"] == "knockoff" and r["seed"] == seeds[0]
             and r["budget"] == budgets[-1] and r["rate"] == 0.005]
    per_model = [(r["victim"], label, p) for r in first for label, p in r["null_p"]]
    others_p = [(o["victim"], k, p) for o in others for k, p in o.items()
                if k.startswith("other")]
    named_models = sum(p <= ALPHA for *_, p in per_model + others_p)
    all_tests = sum(len(r["null_p"]) for r in rows)
    scored = [p for r in rows for _, p in r["null_p_scores"] if p is not None]
    scored_named = sum(p <= ALPHA for p in scored)
    all_named = sum(r["null_named"] for r in rows)
    small = sum(p <= 0.05 for r in rows for _, p in r["null_p"])
    trigger_false = sum(r.get("trigger_null_named", 0) for r in rows if r["seed"] == seeds[0]
                        and r["attacker"] == "knockoff" and r["budget"] == budgets[-1]
                        and r["rate"] == 0.005)
    result = {"models": len(per_model) + len(others_p), "named": named_models,
              "per_model": per_model, "other_account_clones": others_p,
              "all_tests": all_tests, "all_named": all_named,
              "share_p_le_0.05": small / max(all_tests, 1), "tests_on_scores": len(scored),
              "named_on_scores": scored_named, "min_p_on_scores": min(scored, default=1.0),
              "trigger_set_named": trigger_false}
    row = [len(per_model) + len(others_p), named_models, all_tests, all_named,
           f"{small / max(all_tests, 1):.3f}", len(scored), scored_named,
           f"{sum(p <= 0.05 for p in scored) / max(len(scored), 1):.3f}", trigger_false]
    return result, row


if __name__ == "__main__":
    main()
