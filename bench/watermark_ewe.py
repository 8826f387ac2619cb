"""Train-time against serve-time watermarks: which one survives in the thief's clone?

    python bench/watermark_ewe.py                 # 4 victims x 6 attacks x seeds 0-2:
                                                  # about 45 minutes on 2 cores
    python bench/watermark_ewe.py --victims digits-mlp-ewe synth-mlp-d20-ewe
                                                  # the committed run (seeds 0-2): 20 min
    python bench/watermark_ewe.py --ablation      # also: what the entangling buys
    python bench/watermark_ewe.py --quick         # seed 0, three attacks

Each cell serves a built-in victim trained with a train-time watermark through a Shield
whose tier also watermarks its answers (DAWN, rate 0.5%), lets a thief's key run an
attack through it (1,000 queries), and tests the one clone against both watermarks:

* the train-time one: an entangled watermark (EWE, Jia et al. 2021; ``*-ewe`` victims) or
  a trigger set (Adi et al. 2018; ``*-wm`` victims): the suspect answers the watermark
  inputs, and the binomial p-value is taken against the chance rate (1/k for a trigger
  set); for EWE, against the rates measured on independently trained models when it was
  embedded and against the suspect's own rates on 50 decoy watermarks (both must reject);
  the queries to the stolen copy that bring it to 95% confidence (EWE's anchor: fewer than
  100), to 1e-6 and to 2^-64 are reported;
* the serve-time one (DAWN): the key's watermark set is rebuilt from the audit log and the
  secret (``modelshield.audit.ownership``), p <= 1e-3 names it; tested on the clone's
  labels (``dawn_p``) and, where it has scores, on them (``dawn_p_scores``, the score test
  ``verify`` uses for such a suspect; ``dawn_p_sequential``, the sequential test, which
  holds whatever the attack's rows depended on). ``dawn_p_audit`` is the one the audit's
  "traced" column reads: the sequential test's for an attack whose rows follow its
  answers (``steered``: active learning, label-only adaptive retraining, Jacobian), the score
  test's otherwise.

Attacks: knockoff (synthetic queries, student and labels chosen on held-out answers),
knockoff-pool (natural rows), knockoff-hard (natural rows, labels only), active learning,
(adaptive) label-only retraining and Jacobian augmentation.

No false claims: per EWE victim and seed, 18 models built without its watermark (9
families x 2 seeds, on the victim's training rows and labels), an unmarked twin (the same
network trained without EWE) and three knockoff clones of the twin are tested at p <= 1e-3.
Each suspect also answers the watermark's 50 decoys (300 rows); the entangled watermark's
p-value is the larger of its two nulls' (independent models; the suspect's own decoys),
and each is also reported alone.

What was seen when: a first run on seeds 0-2 with the family null alone named 7 of 132
independent models (the numbers in git history). The decoys and the re-drawn trigger were
designed on the unit test's owner data and on synthetic seeds 0 and 2; with decoys that
avoided the real pair of classes, seeds 0-2 then named 2 of 132, and
bench/watermark_ewe_keys.py showed why. Decoys are now drawn on any pair. The decoy test's
floor on the spread (``DECOY_MIN_RHO``) was then set on seeds 3-5, the victims and their
decoys built again (a fresh ``MODELSHIELD_CACHE``):

    python bench/watermark_ewe.py --victims digits-mlp-ewe synth-mlp-d20-ewe \
        --seeds 3 4 5 --out watermark_ewe_seeds345
    python bench/watermark_ewe_keys.py --victims synth-mlp-d20-ewe --seeds 3 4 5 \
        --out watermark_ewe_keys_synth345
    python bench/watermark_ewe_calibrate.py bench/results/watermark_ewe_keys_synth345.json
    python bench/watermark_ewe.py --retest bench/results/watermark_ewe_seeds345.json \
        --decoy-min-rho 0.02 0.05 0.1 0.15 0.2 0.3 --out watermark_ewe_floors
    python bench/watermark_ewe.py --retest bench/results/watermark_ewe_seeds345.json \
        --out watermark_ewe_tune

(the suspects' answers stored by the first, the decoy test's false-positive rate with each
floor measured on 240 keys by the next two, the stored answers scored with each floor, and
with the floor chosen, by the last two). The committed watermark_ewe.json is seeds 0-2,
run after that with the same code.
Writes bench/results/watermark_ewe.json (``--out`` names another).
"""

from __future__ import annotations

import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import TableSpec, arguments, pool, report, run_cells, show, write

sys.path.insert(0, str(Path(__file__).parent.parent))

VICTIMS = ["digits-mlp-ewe", "synth-mlp-d20-ewe", "digits-mlp-wm", "synth-mlp-d20-wm"]
ATTACKS_RUN: dict[str, tuple[str, dict[str, Any]]] = {
    "knockoff": ("knockoff", {"source": "synthetic"}),
    "knockoff-pool": ("knockoff", {"source": "pool"}),
    "knockoff-hard": ("knockoff", {"source": "pool", "labels": "hard"}),
    "active": ("active", {}),
    "label-only": ("label-only", {"method": "adaptive"}),
    "jacobian": ("jacobian", {}),
}
QUICK = ["knockoff", "knockoff-pool", "knockoff-hard"]
BUDGET = 1000
ALPHA = 1e-3
LEVELS = {"95%": 0.05, "1e-6": 1e-6, "2^-64": 2.0 ** -64}
SECRET = "bench-watermark-secret-0123456789"


def _steered(name: str) -> bool:
    """Whether the attack's rows follow its answers (``Attack.steered``)."""
    from modelshield.attacks import ATTACKS

    attack, kw = ATTACKS_RUN[name]
    return bool(ATTACKS[attack](**kw).steered)


def _attack(name: str, oracle: Any, pool: Any, seed: int) -> Any:
    from modelshield.attacks import ATTACKS

    attack, kw = ATTACKS_RUN[name]
    spend = min(BUDGET, len(pool)) if kw.get("source") == "pool" else BUDGET
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ATTACKS[attack](random_state=seed, **kw).run(oracle, spend, pool=pool)


def _mark_row(marks: Any, predict: Any) -> dict[str, Any]:
    """A suspect (its ``predict``) against a train-time watermark: the raw answers (which
    watermark inputs it answered with the watermark's label, and how many rows of each
    decoy with the decoy's target), then the tests on them (:func:`_scored`)."""
    from modelshield.victims.entangled import EntangledWatermark

    labels = predict(marks.x)
    if not isinstance(marks, EntangledWatermark):
        hit = np.asarray(labels) == marks.labels
        return _scored(marks, {"hits": "".join("01"[int(h)] for h in hit)})
    m, r = marks.decoy_x.shape[:2]
    decoys = np.asarray(predict(marks.decoy_inputs)).reshape(m, r)
    hit = np.asarray(labels) == marks.target
    return _scored(marks, {"hits": "".join("01"[int(h)] for h in hit), "decoy_hits": ",".join(
        str(int(h)) for h in (decoys == marks.decoy_targets[:, None]).sum(axis=1))})


def _scored(marks: Any, raw: dict[str, Any]) -> dict[str, Any]:
    """The tests of a suspect's raw answers (a ``_mark_row``): the same labels, rebuilt
    (a hit as the watermark's label, a miss as another), so ``--retest`` can score stored
    answers with the library's current test."""
    from modelshield.victims.entangled import EntangledWatermark

    hit = np.array([c == "1" for c in raw["hits"]])
    k = marks.n_classes
    if not isinstance(marks, EntangledWatermark):
        r = marks.test(np.where(hit, marks.labels, (marks.labels + 1) % k))
        return {**raw, "mark_p": r.p_value, "mark_matches": r.matches,
                "mark_inputs": r.triggers, "mark_chance": r.chance,
                "mark_named": r.p_value <= ALPHA}
    labels = np.where(hit, marks.target, (marks.target + 1) % k)
    r_rows = marks.decoy_x.shape[1]
    decoys = np.concatenate([np.where(np.arange(r_rows) < int(h), t, (t + 1) % k) for h, t in
                             zip(raw["decoy_hits"].split(","), marks.decoy_targets, strict=True)])
    e = marks.test(labels, decoys)
    return {**raw, "mark_p": e.p_value, "mark_matches": e.matches, "mark_inputs": e.triggers,
            "mark_chance": e.chance, "mark_named": e.p_value <= ALPHA,
            "mark_p_family": e.p_family, "family_named": e.p_family <= ALPHA,
            "mark_p_decoy": e.p_decoy, "decoy_rate": e.decoy_rate,
            "decoys_above": e.decoys_above, "decoy_queries": e.decoy_queries,
            "mark_success": marks.success(labels),
            **{f"queries_{k}": marks.queries_to(labels, a, decoys)
               for k, a in LEVELS.items()}}


def cell(job: tuple[str, str, int]) -> dict[str, Any]:
    """One thief's clone, tested against the victim's train-time and serve-time marks."""
    name, attacker, seed = job
    from modelshield.audit.ownership import estimator_answer, logged_queries
    from modelshield.defenses.watermark import (
        control_test,
        label_test,
        score_test,
        sequential_cuts,
        sequential_p,
        watermark_set,
    )
    from modelshield.oracle import ShieldOracle
    from modelshield.serve.factory import build_shield
    from modelshield.store import seeded_key_id
    from modelshield.victims import load_victim
    from modelshield.victims.zoo import train_mark

    v = load_victim(name, seed)
    k = v.spec.n_classes
    with tempfile.TemporaryDirectory() as tmp:
        shield = build_shield({"model": {"builtin": name, "seed": seed},
                               "audit_url": f"sqlite:///{tmp}/a.db",
                               "watermark_secret": SECRET,
                               "tiers": {"pro": {"watermark": {"rate": 0.005},
                                                 "max_batch": 1000}}})
        key, rec = shield.store.create_key("pro", owner="thief",
                                           key_id=seeded_key_id("thief", name, attacker, seed))
        e = _attack(attacker, ShieldOracle(shield, key), v.pool, seed)
        x, given = logged_queries(shield.store, rec.key_id, shield.spec.name)
        ws = watermark_set(shield.watermarks["pro"], rec.key_id, x, v.model, answered=given)
        shield.close()
    clone = e.clone
    fidelity = float(np.mean(clone.predict(v.X_test) == v.predict_labels(v.X_test)))
    if len(ws.x) == 0:
        dawn_p = 1.0
    elif k > 2:
        dawn_p = label_test(clone.predict(ws.x), ws, k).p_value
    else:
        dawn_p = control_test(clone.predict(ws.x), clone.predict(ws.control_x), ws).p_value
    dawn_scores = dawn_seq = None  # the score test, as verify tests a suspect with scores,
    if len(ws.x) and hasattr(clone, "predict_proba"):  # and the sequential test beside it
        on_w = estimator_answer(clone, k, ws.x).probabilities
        on_c = estimator_answer(clone, k, ws.control_x).probabilities if len(ws.control_x) \
            else np.zeros((0, k))
        dawn_scores = score_test(on_w, on_c, ws).p_value
        if ws.complete:
            dawn_seq = sequential_p(sequential_cuts(on_w, on_c, ws, True), ws.rate)
    steered = _steered(attacker)
    marks = train_mark(name, seed)
    return {"victim": name, "attacker": attacker, "seed": seed, "queries": e.queries,
            "fidelity": fidelity, "dawn_p": dawn_p, "dawn_named": dawn_p <= ALPHA,
            "dawn_p_scores": dawn_scores,
            "dawn_named_scores": dawn_scores is not None and dawn_scores <= ALPHA,
            "dawn_p_sequential": dawn_seq, "steered": steered,
            # what the audit reads: the sequential test for an attack whose rows follow
            # its answers, the exact score test for one whose rows were drawn blind
            "dawn_p_audit": dawn_seq if steered else dawn_scores,
            "watermark": "entangled" if name.endswith("-ewe") else "trigger set",
            **_mark_row(marks, clone.predict)}


def independent_models(n_classes: int, s: int) -> dict[str, Any]:
    """The 9 families of models built without the watermark (seed ``s``), unfitted."""
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    from modelshield.models import TorchMLPClassifier

    return {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000,
                                                                       C=1.0 / s)),
        "mlp16": make_pipeline(StandardScaler(), MLPClassifier((16,), max_iter=1000,
                                                               random_state=s)),
        "mlp64x64": TorchMLPClassifier((64, 64), n_classes=n_classes, epochs=60,
                                       random_state=1000 + s),
        "mlp32x32": make_pipeline(StandardScaler(), MLPClassifier(
            (32, 32), max_iter=1000, random_state=s)),
        "forest": RandomForestClassifier(100, random_state=s),
        "boosting": HistGradientBoostingClassifier(random_state=s),
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(3 + 2 * s)),
        "svc": make_pipeline(StandardScaler(), SVC(C=float(s), random_state=s)),
        "tree": DecisionTreeClassifier(random_state=s, min_samples_leaf=s),
    }


def independent(job: tuple[str, int]) -> dict[str, Any]:
    """Models built without the EWE victim's watermark, tested against it; and the
    accuracy of an unmarked twin (the same network trained without EWE)."""
    name, seed = job
    from modelshield.data.datasets import load_split
    from modelshield.models import TorchMLPClassifier
    from modelshield.oracle import LocalOracle
    from modelshield.victims import load_victim, wrap_estimator
    from modelshield.victims.zoo import ZOO, train_mark

    v = load_victim(name, seed)
    marks = train_mark(name, seed)
    y = v.predict_labels(v.X_train)
    rows = []
    for s in (1, 2):
        for arch, est in independent_models(v.spec.n_classes, s).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est.fit(v.X_train, y)
            rows.append({"model": f"{arch}-s{s}", **_mark_row(marks, est.predict)})
    # The unmarked twin: the same network and data without EWE; then its clones.
    entry = ZOO[name]
    split = load_split(entry.data, seed=seed, fractions=entry.fractions,
                       **dict(entry.data_args))
    twin = TorchMLPClassifier((64, 64), n_classes=v.spec.n_classes, epochs=120,
                              random_state=seed).fit(split.X_train, split.y_train)
    rows.append({"model": "unmarked twin", **_mark_row(marks, twin.predict)})
    tv = wrap_estimator(twin, v.X_test, v.y_test, pool=v.pool, low=v.spec.low,
                        high=v.spec.high)
    for attacker in ("knockoff", "knockoff-pool", "knockoff-hard"):
        clone = _attack(attacker, LocalOracle(tv), v.pool, seed).clone
        rows.append({"model": f"{attacker} clone of the twin",
                     **_mark_row(marks, clone.predict)})
    return {"victim": name, "seed": seed, "models": rows,
            "accuracy": float(np.mean(v.predict_labels(v.X_test) == v.y_test)),
            "twin_accuracy": float(np.mean(twin.predict(v.X_test) == v.y_test)),
            "null_rate": marks.null_rate, "victim_success": marks.success(
                v.predict_labels(marks.x)), "trigger_features": len(marks.features)}


def ablation(job: tuple[str, int, str, float]) -> dict[str, Any]:
    """What the entangling buys: the trigger chosen by the SNNL or at random, trained with
    the SNNL term or without it (factor 0: the watermark batches alone)."""
    data, seed, choice, factor = job
    from modelshield.data.datasets import load_split
    from modelshield.oracle import LocalOracle
    from modelshield.victims import wrap_estimator
    from modelshield.victims.entangled import embed_entangled

    kw = {"n_features": 20, "n_classes": 4} if data == "synthetic" else {}
    sp = load_split(data, seed=seed, **kw)
    net, wm = embed_entangled(sp.X_train, sp.y_train, f"ablation/{data}/{seed}",
                              n_classes=len(sp.classes), factor=factor, choice=choice,
                              random_state=seed)
    v = wrap_estimator(net, sp.X_test, sp.y_test, pool=sp.pool, low=sp.low, high=sp.high)
    out: dict[str, Any] = {"data": data, "seed": seed, "choice": choice, "factor": factor,
                           "accuracy": float(np.mean(net.predict(sp.X_test) == sp.y_test)),
                           "null_rate": wm.null_rate}
    for attacker in ("knockoff-pool", "knockoff-hard"):
        clone = _attack(attacker, LocalOracle(v), sp.pool, seed).clone
        out[attacker] = {"success": wm.success(clone.predict(wm.x)),
                         "p": _mark_row(wm, clone.predict)["mark_p"]}
    return out


def _run(args: Any) -> tuple[list[Any], list[Any], list[Any], list[int], list[str]]:
    seeds = [0] if args.quick else args.seeds
    attacks = QUICK if args.quick else args.attacks
    from modelshield.victims import load_victim

    for name in args.victims:  # build (and cache) each victim once, before the workers
        for s in seeds:
            load_victim(name, s)
    jobs = [(v, a, s) for v in args.victims for a in attacks for s in seeds]
    ewe = [v for v in args.victims if v.endswith("-ewe")]
    # Spawned workers: the victims were trained with PyTorch here, and a forked child of a
    # process whose intra-op thread pool has started can wait on it for ever.
    with pool(args.workers, spawn=True) as ex:
        rows = run_cells(cell, jobs, args.workers, executor=ex, progress=lambda r: (
            f"{r['victim']} {r['attacker']} seed {r['seed']}: fidelity {r['fidelity']:.3f}, "
            f"train-time p {r['mark_p']:.2g}, DAWN p {r['dawn_p']:.2g} (scores "
            f"{r['dawn_p_scores'] or 1:.2g}, sequential {r['dawn_p_sequential'] or 1:.2g})"))
        nulls = run_cells(independent, [(v, s) for v in ewe for s in seeds], args.workers,
                          executor=ex, progress=lambda n: (
                              f"independent models of {n['victim']} seed {n['seed']}: "
                              f"{sum(m['mark_named'] for m in n['models'])} of "
                              f"{len(n['models'])} named"))
        abl = list(ex.map(ablation, [(d, 1, c, f) for d in ("digits", "synthetic")
                                     for c in ("snnl", "random") for f in (32.0, 0.0)])) \
            if args.ablation else []
    return rows, nulls, abl, seeds, attacks


def _retest(path: Path) -> tuple[list[Any], list[Any], list[Any], list[int], list[str]]:
    """The stored answers of a result file, scored again with the current tests (the
    victims come from the cache, so the watermarks are the ones the answers were to)."""
    import json

    from modelshield.victims.zoo import train_mark

    d = json.loads(path.read_text())
    rows = [{**r, **_scored(train_mark(r["victim"], r["seed"]), r)} for r in d["rows"]]
    nulls = [{**n, "models": [{**m, **_scored(train_mark(n["victim"], n["seed"]), m)}
                              for m in n["models"]]} for n in d["independent"]]
    attacks = list(dict.fromkeys(r["attacker"] for r in rows))
    return rows, nulls, d.get("ablation", []), d["seeds"], attacks


def _compare_floors(path: Path, rhos: list[float], out: str) -> None:
    """The stored answers scored with each floor on the decoy test's spread: clones named
    at 1e-3 and 1e-6, and independent models named (how DECOY_MIN_RHO was set)."""
    import modelshield.victims.entangled as entangled

    table = []
    for rho in rhos:
        entangled.DECOY_MIN_RHO = rho
        rows, nulls, *_ = _retest(path)
        tested = [m for n in nulls for m in n["models"]]
        table.append({"rho": rho, "clones": len(rows),
                      "clones_named": sum(r["mark_p"] <= ALPHA for r in rows),
                      "clones_named_1e-6": sum(r["mark_p"] <= 1e-6 for r in rows),
                      "independent_models": len(tested),
                      "independent_named": sum(m["mark_p"] <= ALPHA for m in tested),
                      "smallest_independent_p_decoy": min(m["mark_p_decoy"] for m in tested)})
    show(f"the decoy test's floor on the spread, scored on {path.name}",
         ["floor (rho)", "clones named at 1e-3", "at 1e-6", "independent models named",
          "smallest p (decoys alone)"],
         [[t["rho"], f"{t['clones_named']}/{t['clones']}", t["clones_named_1e-6"],
           f"{t['independent_named']}/{t['independent_models']}",
           t["smallest_independent_p_decoy"]] for t in table])
    write(out, {"source": str(path), "alpha": ALPHA, "floors": table})


def main() -> None:
    ap = arguments(__doc__.split("\n")[0], seeds=[0, 1, 2], workers=2, out="watermark_ewe")
    ap.add_argument("--quick", action="store_true", help="seed 0, three attacks")
    ap.add_argument("--victims", nargs="+", default=VICTIMS)
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS_RUN), choices=ATTACKS_RUN)
    ap.add_argument("--ablation", action="store_true",
                    help="also train digits and synthetic networks with the trigger chosen "
                         "at random and without the SNNL term (seed 1)")
    ap.add_argument("--retest", type=Path, metavar="JSON",
                    help="score the suspects' stored answers in a result file this bench wrote "
                         "(since it stores them) with the library's current tests, instead "
                         "of running the attacks; the victims come from the cache")
    ap.add_argument("--decoy-min-rho", type=float, metavar="RHO", nargs="+",
                    help="the decoy test's floor on the spread between keys (default: the "
                         "library's DECOY_MIN_RHO); with --retest and several floors, only "
                         "a table comparing them is written")
    args = ap.parse_args()
    import modelshield.victims.entangled as entangled

    if args.retest and args.decoy_min_rho and len(args.decoy_min_rho) > 1:
        return _compare_floors(args.retest, args.decoy_min_rho, args.out)
    if args.decoy_min_rho:
        entangled.DECOY_MIN_RHO = args.decoy_min_rho[0]
    if args.retest:
        rows, nulls, abl, seeds, attacks = _retest(args.retest)
        args.victims = list(dict.fromkeys(r["victim"] for r in rows))
    else:
        rows, nulls, abl, seeds, attacks = _run(args)
    summary = summarize(rows, args.victims, attacks)
    tested = [m for n in nulls for m in n["models"]]
    report(args.out, {"alpha": ALPHA, "budget": BUDGET, "seeds": seeds, "rows": rows,
                      "summary": summary, "independent": nulls,
                      "independent_named": sum(m["mark_named"] for m in tested),
                      "independent_named_family_null": sum(m.get("family_named", False)
                                                           for m in tested),
                      "independent_named_decoys": sum((m.get("mark_p_decoy") or 1.0) <= ALPHA
                                                      for m in tested),
                      "independent_models": len(tested), "ablation": abl},
           tables(rows, summary, nulls, abl))


def summarize(rows: list[dict[str, Any]], victims: list[str],
              attacks: list[str]) -> list[dict[str, Any]]:
    """Each victim and attack: the runs each watermark names."""
    summary = []
    for v in victims:
        for a in attacks:
            sel = [r for r in rows if (r["victim"], r["attacker"]) == (v, a)]
            if not sel:
                continue
            q95 = [r.get("queries_95%") for r in sel]
            summary.append({
                "victim": v, "attacker": a, "runs": len(sel),
                "fidelity": float(np.mean([r["fidelity"] for r in sel])),
                "train_time_named": sum(r["mark_named"] for r in sel),
                "family_null_named": sum(r.get("family_named", False) for r in sel),
                "max_p": max(r["mark_p"] for r in sel),
                "dawn_named": sum(r["dawn_named"] for r in sel),
                "dawn_named_scores": sum(r.get("dawn_named_scores", False) for r in sel),
                "dawn_traced_scores": sum((r.get("dawn_p_scores") or 1) <= 1e-6 for r in sel),
                "dawn_traced_audit": sum((r.get("dawn_p_audit") or 1) <= 1e-6 for r in sel),
                "success": float(np.mean([r.get("mark_success", r["mark_matches"]
                                                 / r["mark_inputs"]) for r in sel])),
                "max_queries_95": None if None in q95 or not q95 else max(
                    q for q in q95 if q is not None)})
    return summary


def tables(rows: list[dict[str, Any]], summary: list[dict[str, Any]],
           nulls: list[dict[str, Any]], abl: list[dict[str, Any]]) -> list[TableSpec]:
    out: list[TableSpec] = [
        ("each clone against the train-time and the serve-time watermark (p <= 1e-3 names)",
         ["victim", "attack", "seed", "fidelity", "train-time", "success", "p",
          "queries to 95%", "to 1e-6", "to 2^-64", "DAWN p", "on scores", "sequential"],
         [[r["victim"], r["attacker"], r["seed"], r["fidelity"], r["watermark"],
           r.get("mark_success", r["mark_matches"] / r["mark_inputs"]), r["mark_p"],
           r.get("queries_95%"), r.get("queries_1e-6"), r.get("queries_2^-64"), r["dawn_p"],
           r.get("dawn_p_scores"), r.get("dawn_p_sequential")] for r in rows]),
        ("side by side: runs in which each watermark names the clone (p <= 1e-3)",
         ["victim", "attack", "fidelity", "train-time named", "(family null alone)",
          "largest p", "watermark success", "most queries to 95%", "DAWN named",
          "on scores", "traced on scores", "traced as the audit traces"],
         [[s["victim"], s["attacker"], s["fidelity"], f"{s['train_time_named']}/{s['runs']}",
           f"{s['family_null_named']}/{s['runs']}", s["max_p"], s["success"],
           s["max_queries_95"], f"{s['dawn_named']}/{s['runs']}",
           f"{s['dawn_named_scores']}/{s['runs']}", f"{s['dawn_traced_scores']}/{s['runs']}",
           f"{s['dawn_traced_audit']}/{s['runs']}"]
          for s in summary]),
        ("models built without the entangled watermark",
         ["victim", "seed", "accuracy", "unmarked twin", "null rate", "victim's success",
          "models", "named at 1e-3", "by the family null alone", "by the decoys alone",
          "smallest p"],
         [[n["victim"], n["seed"], n["accuracy"], n["twin_accuracy"], n["null_rate"],
           n["victim_success"], len(n["models"]),
           sum(m["mark_named"] for m in n["models"]),
           sum(m.get("family_named", False) for m in n["models"]),
           sum((m.get("mark_p_decoy") or 1.0) <= ALPHA for m in n["models"]),
           min(m["mark_p"] for m in n["models"])] for n in nulls])]
    if abl:
        out.append(("ablation (seed 1): trigger choice and the SNNL term",
                    ["data", "trigger", "SNNL factor", "accuracy", "null rate",
                     "pool clone success", "hard-label clone success"],
                    [[a["data"], a["choice"], a["factor"], a["accuracy"], a["null_rate"],
                      a["knockoff-pool"]["success"], a["knockoff-hard"]["success"]]
                     for a in abl]))
    return out


if __name__ == "__main__":
    main()
