"""Membership inference through the oracle: LiRA, RMIA and the baselines, under each output
policy, beside IBM ART 1.20.1's membership inference on the same victims and members, and
the DP-SGD curve.

    python bench/membership.py [--seeds 1 2] [--shadows 16] [--workers 2] [--no-art] [--no-dp]

Victims: ``tabular-mlp`` (a 256-256 ReLU network that memorizes 1,000 rows of a 10-class
tabular population) and ``digits-mlp-overfit`` (the same network on a quarter of digits).
Members are each victim's training rows; non-members, as many rows of the same distribution
it never saw; the attacker's population (its own labelled data, for shadow models) is
disjoint from both. The attacker knows the training recipe, not the data (LiRA's threat
model), and trains ``--shadows`` models online; offline variants use the shadows that left
each candidate out. The recipes were settled on seed 0; the figures are read on seeds 1, 2.

Policies: full scores, ``round:2``, ``top-k:1`` and ``label`` (which meets the label-only
attack only). Shadow outputs are coarsened like the answers (the attacker reads the
rounding and the number of revealed scores off the answers).

ART, on the same victim, candidates and population, in the same run:
- ``MembershipInferenceBlackBox`` (attack model "nn", ART's default), trained on ART's own
  ``ShadowModels`` (the same recipe and count of shadows, each on as many rows of the
  attacker's population as the victim's training set);
- ``LabelOnlyDecisionBoundary``: its HopSkipJump distance to the boundary, exactly as its
  ``infer`` computes it (the distance it thresholds, kept whole for a ROC).
ML Privacy Meter is not in the run: PyPI's privacy-meter 1.0.1 predates LiRA and RMIA and
needs TensorFlow.

DP-SGD curve: ``tabular-mlp-dp{1,4,8}`` (Opacus, delta 1e-5) and ``tabular-mlp`` (epsilon
inf): test accuracy, and LiRA's and the loss baseline's TPR at 0.1% FPR, the attacker's
shadows trained with the victim's own DP recipe.

Writes bench/results/membership.json.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))

from harness import arguments, show, write

from modelshield.attacks.membership import MEMBERSHIP, ShadowSet
from modelshield.audit.privacy import membership_metrics
from modelshield.defenses.policies import parse_policy
from modelshield.errors import AttackRefused
from modelshield.oracle import LocalOracle
from modelshield.victims.zoo import load_victim, membership_task

VICTIMS = ["tabular-mlp", "digits-mlp-overfit"]
POLICIES = ["full", "round:2", "top-k:1", "label"]
ATTACKS = [  # label, attack, params
    ("loss threshold", "loss", {}),
    ("confidence threshold", "confidence", {}),
    ("LiRA online", "lira", {}),
    ("LiRA online, fixed variance", "lira", {"fixed_variance": True}),
    ("LiRA offline", "lira", {"online": False}),
    ("LiRA offline, fixed variance", "lira", {"online": False, "fixed_variance": True}),
    ("RMIA online", "rmia", {}),
    ("RMIA offline", "rmia", {"online": False}),
    ("label-only (noise)", "label-only", {}),
]
T01 = "0.1%"


def shadows_for(victim: Any, task: Any, n: int, seed: int, workers: int) -> ShadowSet:
    return ShadowSet.train(task.recipe, task.candidates, task.labels, task.population,
                           task.population_labels, n_shadows=n, online=True,
                           train_size=len(task.members), n_classes=victim.spec.n_classes,
                           random_state=1000 + seed, workers=workers)


def run_attack(victim: Any, task: Any, policy: str, attack: str, params: dict[str, Any],
               shadows: ShadowSet, seed: int) -> dict[str, Any]:
    cls = MEMBERSHIP[attack]
    if cls.uses_shadows:
        params = {"shadow": task.recipe, "train_size": len(task.members), **params}
    oracle = LocalOracle(victim, parse_policy(policy))
    try:
        r = cls(random_state=seed, **params).run(
            oracle, task.candidates, task.labels, population=task.population,
            population_labels=task.population_labels,
            shadows=shadows if cls.uses_shadows else None)
    except AttackRefused as exc:
        return {"refused": str(exc), "queries": oracle.used}
    return {**_metrics(r.scores, task.is_member), "queries": r.queries,
            "seconds": round(r.seconds, 2)}


def _metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, Any]:
    """The figures without the ROC points (they would make the JSON 400 kB)."""
    m = membership_metrics(scores, is_member)
    m.pop("roc")
    return m


def art_black_box(victim: Any, task: Any, n_shadows: int, seed: int) -> dict[str, Any]:
    from art.attacks.inference.membership_inference import (
        MembershipInferenceBlackBox,
        ShadowModels,
    )
    from art.estimators.classification import BlackBoxClassifier
    from art.estimators.classification.scikitlearn import ScikitlearnClassifier

    from modelshield.models import make_estimator

    c, d = victim.spec.n_classes, victim.spec.n_features
    oracle = LocalOracle(victim, parse_policy("full"))
    target = BlackBoxClassifier(lambda q: oracle.query(q).probabilities, (d,), c)
    start = time.perf_counter()
    template = ScikitlearnClassifier(make_estimator(task.recipe, n_classes=c, random_state=seed))
    # ART clones a template that knows its class count: fit it once (on the population).
    template.fit(task.population, np.eye(c)[task.population_labels])
    shadow = ShadowModels(template, num_shadow_models=n_shadows, random_state=seed)
    # As much data per shadow as the victim had (and as our shadows get): ART trains each
    # shadow on half of what it is given.
    pop = task.population[:2 * len(task.members)]
    onehot = np.eye(c)[task.population_labels[:len(pop)]]
    (mx, my, mp), (nx, ny, npred) = shadow.generate_shadow_dataset(pop, onehot)
    np.random.seed(seed)  # noqa: NPY002  (ART's attack model draws from the global generator)
    import torch

    torch.manual_seed(seed)
    mia = MembershipInferenceBlackBox(target, input_type="prediction", attack_model_type="nn")
    mia.fit(mx, my, nx, ny, mp, npred)
    y1 = np.eye(c)[task.labels]
    pred = target.predict(task.candidates)
    scores = mia.infer(task.candidates, y1, pred=pred, probabilities=True)
    scores = np.asarray(scores)[:, -1] if np.ndim(scores) == 2 else np.asarray(scores).ravel()
    m = _metrics(scores, task.is_member)
    return {**m, "queries": oracle.used, "seconds": round(time.perf_counter() - start, 1)}


def art_label_only(victim: Any, task: Any, seed: int, max_iter: int, max_eval: int
                   ) -> dict[str, Any]:
    from art.attacks.evasion.hop_skip_jump import HopSkipJump
    from art.estimators.classification import BlackBoxClassifier

    c, d = victim.spec.n_classes, victim.spec.n_features
    oracle = LocalOracle(victim, parse_policy("label"))
    clip = (float(victim.spec.low.min()), float(victim.spec.high.max()))
    target = BlackBoxClassifier(lambda q: np.eye(c)[oracle.query(q).labels], (d,), c,
                                clip_values=clip)
    start = time.perf_counter()
    np.random.seed(seed)  # noqa: NPY002  (HopSkipJump draws from the global generator)
    x = task.candidates.astype(np.float32)
    y1 = np.eye(c)[task.labels]
    # As LabelOnlyDecisionBoundary.infer (ART 1.20.1) computes the distance it thresholds.
    hsj = HopSkipJump(classifier=target, targeted=False, max_iter=max_iter, max_eval=max_eval,
                      init_eval=min(100, max_eval), verbose=False)
    x_adv = hsj.generate(x=x, y=y1)
    distance = np.linalg.norm((x_adv - x).reshape(len(x), -1), ord=2, axis=1)
    distance[np.argmax(target.predict(x), axis=1) != task.labels] = 0
    m = _metrics(distance, task.is_member)
    return {**m, "queries": oracle.used, "seconds": round(time.perf_counter() - start, 1),
            "max_iter": max_iter, "max_eval": max_eval}


def dp_curve(seed: int, n_shadows: int, workers: int) -> list[dict[str, Any]]:
    rows = []
    for name, eps in [("tabular-mlp-dp1", 1.0), ("tabular-mlp-dp4", 4.0),
                      ("tabular-mlp-dp8", 8.0), ("tabular-mlp", float("inf"))]:
        victim, task = load_victim(name, seed), membership_task(name, seed)
        acc = float(np.mean(victim.predict_labels(task.non_members) == task.non_member_labels))
        train_acc = float(np.mean(victim.predict_labels(task.members) == task.member_labels))
        sh = shadows_for(victim, task, n_shadows, seed, workers)
        lira = run_attack(victim, task, "full", "lira", {}, sh, seed)
        loss = run_attack(victim, task, "full", "loss", {}, sh, seed)
        rmia = run_attack(victim, task, "full", "rmia", {}, sh, seed)
        rows.append({"victim": name, "seed": seed, "epsilon": eps, "test_accuracy": acc,
                     "train_accuracy": train_acc, "lira": lira, "loss": loss, "rmia": rmia,
                     "shadow_seconds": round(sh.seconds, 1)})
        print(f"  dp {name} seed {seed}: acc {acc:.3f} lira {lira['tpr'][T01]:.3f} "
              f"loss {loss['tpr'][T01]:.3f}", flush=True)
    return rows


def main() -> None:
    parser = arguments(__doc__, seeds=[1, 2], workers=2, out="membership")
    parser.add_argument("--victims", nargs="+", default=VICTIMS)
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--no-art", action="store_true")
    parser.add_argument("--no-dp", action="store_true")
    parser.add_argument("--hsj-iter", type=int, default=5)
    parser.add_argument("--hsj-eval", type=int, default=200)
    args = parser.parse_args()
    start = time.perf_counter()
    cells: list[dict[str, Any]] = []
    art: list[dict[str, Any]] = []
    dp: list[dict[str, Any]] = []
    for name in args.victims:
        for seed in args.seeds:
            victim, task = load_victim(name, seed), membership_task(name, seed)
            sh = shadows_for(victim, task, args.shadows, seed, args.workers)
            acc = float(np.mean(victim.predict_labels(task.non_members) == task.non_member_labels))
            print(f"{name} seed {seed}: test accuracy {acc:.3f}, {sh.size} shadows in "
                  f"{sh.seconds:.0f} s", flush=True)
            for policy in POLICIES:
                for label, attack, params in ATTACKS:
                    r = run_attack(victim, task, policy, attack, params, sh, seed)
                    cells.append({"victim": name, "seed": seed, "policy": policy,
                                  "attack": label, **r})
            if not args.no_art:
                ours = next(c for c in cells if c["victim"] == name and c["seed"] == seed
                            and c["policy"] == "full" and c["attack"] == "LiRA online")
                bb = art_black_box(victim, task, args.shadows, seed)
                lo = art_label_only(victim, task, seed, args.hsj_iter, args.hsj_eval)
                art.append({"victim": name, "seed": seed, "black_box": bb, "label_only": lo,
                            "lira_tpr": ours["tpr"][T01]})
                print(f"  ART black-box {bb['tpr'][T01]:.3f} (auc {bb['auc']:.3f}), "
                      f"label-only {lo['tpr'][T01]:.3f} (auc {lo['auc']:.3f}, "
                      f"{lo['queries']} queries, {lo['seconds']} s)", flush=True)
    if not args.no_dp:
        for seed in args.seeds:
            dp += dp_curve(seed, args.shadows, args.workers)
    summary = summarize(cells, art, dp, args.seeds)
    write(args.out, {"seeds": args.seeds, "shadows": args.shadows, "victims": args.victims,
                     "seconds": round(time.perf_counter() - start, 1), "summary": summary,
                     "cells": cells, "art": art, "dp": dp})


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


def summarize(cells: list[dict[str, Any]], art: list[dict[str, Any]],
              dp: list[dict[str, Any]], seeds: list[int]) -> dict[str, Any]:
    """The means over seeds, with a table for each part shown."""
    victims = list(dict.fromkeys(c["victim"] for c in cells))
    return {"attacks": _attacks(cells, victims, seeds), "art": _beside_art(cells, art, victims),
            "dp": _dp(dp)}


def _attacks(cells: list[dict[str, Any]], victims: list[str],
             seeds: list[int]) -> list[dict[str, Any]]:
    out, rows = [], []
    for name in victims:
        for policy in POLICIES:
            for label, _, _ in ATTACKS:
                sel = [c for c in cells if c["victim"] == name and c["policy"] == policy
                       and c["attack"] == label]
                if not sel:
                    continue
                if any("refused" in c for c in sel):
                    rows.append([name, policy, label, "refused", None, None, None])
                    out.append({"victim": name, "policy": policy, "attack": label,
                                "refused": True})
                    continue
                t1 = _mean([c["tpr"][T01] for c in sel])
                t5 = _mean([c["tpr"]["0.001%"] for c in sel])
                auc = _mean([c["auc"] for c in sel])
                base = [c for c in cells if c["victim"] == name and c["policy"] == policy
                        and c["attack"] == "loss threshold" and "refused" not in c]
                ratio = t1 / _mean([c["tpr"][T01] for c in base]) if base and _mean(
                    [c["tpr"][T01] for c in base]) > 0 else None
                rows.append([name, policy, label, t1, t5, auc, ratio])
                out.append({"victim": name, "policy": policy, "attack": label,
                            "tpr_0.1%": t1, "tpr_0.001%": t5, "auc": auc,
                            "vs_loss": ratio, "queries": sel[0]["queries"]})
    show(f"Membership inference, mean over seeds {seeds} (TPR at 0.1% and 0.001% FPR)",
         ["victim", "policy", "attack", "TPR@0.1%", "TPR@0.001%", "AUC", "x loss baseline"],
         rows)
    return out


def _beside_art(cells: list[dict[str, Any]], art: list[dict[str, Any]],
                victims: list[str]) -> list[dict[str, Any]]:
    out, arows = [], []
    for name in victims:
        sel = [a for a in art if a["victim"] == name]
        if not sel:
            continue
        lira = _mean([a["lira_tpr"] for a in sel])
        bb = _mean([a["black_box"]["tpr"][T01] for a in sel])
        lo = _mean([a["label_only"]["tpr"][T01] for a in sel])
        ours_lo = _mean([c["tpr"][T01] for c in cells if c["victim"] == name
                         and c["policy"] == "label" and c["attack"] == "label-only (noise)"])
        # ART finding no member below 0.1% FPR: the ratio is at least LiRA's TPR over the
        # smallest TPR one member makes.
        floor = 1.0 / sel[0]["black_box"]["members"]
        entry = {"victim": name, "lira_tpr_0.1%": lira, "art_black_box_tpr_0.1%": bb,
                 "art_black_box_tpr_1%": _mean([a["black_box"]["tpr"]["1%"] for a in sel]),
                 "art_black_box_auc": _mean([a["black_box"]["auc"] for a in sel]),
                 "lira_vs_art_black_box": lira / bb if bb > 0 else None,
                 "lira_vs_art_black_box_at_least": lira / max(bb, floor),
                 "art_label_only_tpr_0.1%": lo,
                 "art_label_only_auc": _mean([a["label_only"]["auc"] for a in sel]),
                 "art_label_only_queries": _mean([a["label_only"]["queries"] for a in sel]),
                 "ours_label_only_tpr_0.1%": ours_lo,
                 "ours_label_only_auc": _mean([c["auc"] for c in cells if c["victim"] == name
                                               and c["policy"] == "label"
                                               and c["attack"] == "label-only (noise)"])}
        out.append(entry)
        ratio = (f"{entry['lira_vs_art_black_box']:.1f}" if bb > 0
                 else f">= {entry['lira_vs_art_black_box_at_least']:.0f}")
        arows.append([name, lira, bb, ratio, entry["art_black_box_auc"],
                      ours_lo, entry["ours_label_only_auc"], lo, entry["art_label_only_auc"]])
    if arows:
        show("Beside IBM ART 1.20.1 (TPR at 0.1% FPR; AUC)",
             ["victim", "LiRA", "ART black-box", "ratio", "ART bb AUC", "ours label-only",
              "AUC", "ART label-only", "AUC"], arows)
    return out


def _dp(dp: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out, drows = [], []
    for eps in sorted({d["epsilon"] for d in dp}):
        sel = [d for d in dp if d["epsilon"] == eps]
        entry = {"epsilon": eps, "test_accuracy": _mean([d["test_accuracy"] for d in sel]),
                 "train_accuracy": _mean([d["train_accuracy"] for d in sel]),
                 "lira_tpr_0.1%": _mean([d["lira"]["tpr"][T01] for d in sel]),
                 "rmia_tpr_0.1%": _mean([d["rmia"]["tpr"][T01] for d in sel]),
                 "loss_tpr_0.1%": _mean([d["loss"]["tpr"][T01] for d in sel]),
                 "lira_auc": _mean([d["lira"]["auc"] for d in sel])}
        out.append(entry)
        drows.append([eps, entry["test_accuracy"], entry["train_accuracy"],
                      entry["lira_tpr_0.1%"], entry["rmia_tpr_0.1%"], entry["loss_tpr_0.1%"],
                      entry["lira_auc"]])
    if drows:
        show("DP-SGD (tabular-mlp): epsilon against accuracy and TPR at 0.1% FPR",
             ["epsilon", "test acc", "train acc", "LiRA", "RMIA", "loss", "LiRA AUC"], drows)
    return out

if __name__ == "__main__":
    main()
