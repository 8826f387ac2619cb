"""Scoring membership inference: TPR at a low FPR, AUC and the ROC (Carlini et al. 2022).

An attack that is right on average but never sure says little about any one person; what
matters is how many members it finds while almost never accusing a non-member. Hence the
headline figure: the true-positive rate at 0.1% (and 0.001%) false positives, read off the
ROC curve. With N non-members the smallest FPR one can resolve is 1/N: below it, the figure
is the TPR at zero false positives, and ``resolution`` says so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import NDArray
from sklearn.metrics import roc_auc_score, roc_curve

from modelshield.answer import FloatArray
from modelshield.attacks.membership import MEMBERSHIP, ShadowSet
from modelshield.errors import AttackRefused, ConfigError, OracleError
from modelshield.models import RECIPES, make_estimator
from modelshield.oracle.base import Oracle
from modelshield.victims.base import MembershipTask

FPRS = (1e-2, 1e-3, 1e-5)
"""The false-positive rates the TPRs are read at; 0.1% and 0.001% are the headline."""

ROC_GRID = np.logspace(-5, 0, 41)
"""FPR values at which the ROC is kept for plotting (log-spaced, as log-log plots need)."""


def tpr_at_fpr(scores: FloatArray, is_member: NDArray[np.bool_], fpr: float) -> float:
    """The highest TPR among thresholds whose FPR is at most ``fpr``."""
    f, t, _ = roc_curve(is_member, scores, drop_intermediate=False)
    return float(t[np.searchsorted(f, fpr, side="right") - 1])


def membership_metrics(scores: FloatArray, is_member: NDArray[np.bool_]) -> dict[str, Any]:
    """TPR at :data:`FPRS`, AUC, best balanced accuracy and the ROC on :data:`ROC_GRID`."""
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(is_member, dtype=bool)
    if s.shape != m.shape or m.all() or not m.any():
        raise ValueError("scores need one value per candidate, with members and non-members")
    s = np.nan_to_num(s, nan=-np.inf, posinf=np.finfo(float).max, neginf=-np.finfo(float).max)
    f, t, _ = roc_curve(m, s, drop_intermediate=False)
    idx = np.searchsorted(f, ROC_GRID, side="right") - 1
    return {
        "auc": float(roc_auc_score(m, s)),
        "tpr": {tpr_label(fpr): float(t[np.searchsorted(f, fpr, "right") - 1]) for fpr in FPRS},
        "balanced_accuracy": float(np.max((t + 1 - f) / 2)),
        "members": int(m.sum()),
        "non_members": int((~m).sum()),
        "resolution": 1.0 / float((~m).sum()),
        "roc": {"fpr": [float(x) for x in ROC_GRID], "tpr": [float(x) for x in t[idx]]},
    }


def tpr_label(fpr: float) -> str:
    """The key :func:`membership_metrics` files a TPR under, e.g. ``0.1%``."""
    return f"{fpr * 100:g}%"


def run_privacy(
    task: MembershipTask, oracle_for: Callable[[int], Oracle],
    attacks: list[tuple[str, dict[str, Any]]], *, n_classes: int, shadows: int = 16,
    recipe: str | None = None, train_size: int | None = None, workers: int = 1,
    seed: int = 0, price: float = 0.0, on_shadow: Callable[[int], None] | None = None,
    shadow_cache: Path | None = None, backend: str = "local",
) -> list[dict[str, Any]]:
    """Run membership attacks on ``task``'s candidates, each through a fresh oracle
    (``oracle_for(queries the attack needs)``).

    The shadow models are trained once (online, from ``recipe`` or the task's) and shared;
    offline variants use the shadows that left each candidate out. The attacker is assumed
    to know the recipe and the training-set size (``train_size``, default the number of
    members): the owner's worst case. An attack the policy refuses gets a row that says so.
    """
    chosen = [(MEMBERSHIP[name], params) for name, params in attacks]
    shadow_set = None
    if any(cls.uses_shadows for cls, _ in chosen):
        how = _recipe(recipe or task.recipe)

        def train() -> ShadowSet:
            return ShadowSet.train(
                how, task.candidates, task.labels, task.population, task.population_labels,
                n_shadows=shadows, online=True, train_size=train_size or len(task.members),
                n_classes=n_classes, random_state=1000 + seed, workers=workers,
                progress=on_shadow, backend=backend)

        shadow_set = train() if shadow_cache is None else _cached(shadow_cache, train)
    rows = []
    for (cls, params), (name, _) in zip(chosen, attacks, strict=True):
        if cls.uses_shadows:
            assert shadow_set is not None
            params = {"shadow": shadow_set.recipe, "shadows": shadows, **params}
        attack = cls(random_state=seed, **params)
        oracle = oracle_for(attack.queries_needed(len(task.candidates)))
        row: dict[str, Any] = {"attack": name, "params": params, "needs": cls.needs}
        rows.append({**row, **_attack_outcome(attack, oracle, task,
                                              shadow_set if cls.uses_shadows else None,
                                              price)})
    return rows


def _recipe(how: str | None) -> str:
    """The victim's training recipe the shadows need, checked."""
    if not how:
        raise ConfigError("Shadow models need the victim's training recipe (--recipe), "
                          "e.g. mlp:hidden=256-256,epochs=100; recipes: "
                          + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()))
    make_estimator(how)
    return how


def _attack_outcome(attack: Any, oracle: Oracle, task: MembershipTask,
                    shadow_set: ShadowSet | None, price: float) -> dict[str, Any]:
    """Run one membership attack through ``oracle`` (closed after): its status, and its
    metrics and cost when it ran; the reason when the policy refused it, the data could
    not serve it or the Shield blocked the key."""
    has_population = bool(len(task.population))
    try:
        r = attack.run(oracle, task.candidates, task.labels,
                       population=task.population if has_population else None,
                       population_labels=task.population_labels if has_population else None,
                       shadows=shadow_set)
    except AttackRefused as exc:  # after one query: the scores are withheld
        return {"status": "refused", "reason": str(exc), "queries": getattr(oracle, "used", 0)}
    except ConfigError as exc:  # the data cannot serve it (no population, say)
        return {"status": "not run", "reason": str(exc), "queries": 0}
    except OracleError as exc:  # the Shield blocked the key
        return {"status": "blocked", "reason": str(exc), "queries": getattr(oracle, "used", 0)}
    finally:
        close = getattr(oracle, "close", None)
        if close is not None:
            close()
    return {"status": "ok", **membership_metrics(r.scores, task.is_member),
            "queries": r.queries, "cost": r.queries * price / 1000.0,
            "seconds": round(r.seconds, 2), "info": r.info}


def _cached(path: Path, train: Callable[[], ShadowSet]) -> ShadowSet:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.is_file():
            try:
                return ShadowSet.load(path)
            except (OSError, ValueError, KeyError):  # a torn file: train again
                path.unlink(missing_ok=True)
        shadow_set = train()
        shadow_set.save(path)
        return shadow_set


def roc_figure(rows: list[dict[str, Any]], title: str) -> Figure:
    """The log-log ROC of each attack that ran, with the chance line."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    grid = np.asarray(ROC_GRID)
    ax.plot(grid, grid, color="grey", linestyle=":", label="chance")
    for row in rows:
        if row.get("status") != "ok":
            continue
        tpr = np.maximum(np.asarray(row["roc"]["tpr"]), 1e-5)
        ax.plot(row["roc"]["fpr"], tpr,
                label=f"{row['attack']} ({row['tpr']['0.1%']:.3f} at 0.1%)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_ylim(1e-4, 1)
    ax.set_xlabel("false-positive rate (non-members called members)")
    ax.set_ylabel("true-positive rate (members found)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig
