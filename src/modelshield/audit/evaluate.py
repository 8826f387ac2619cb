"""Compare a clone with its victim: accuracy, fidelity, parameter error, queries and cost.

This is the defender's side: it may look at the victim. Fidelity is top-1 agreement with the
victim, on the victim's test set and on points drawn uniformly from the domain (off the data
distribution, where a clone trained on natural data is weakest).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from modelshield.answer import FloatArray
from modelshield.attacks.base import ATTACKS, Checkpoint, Extraction
from modelshield.attacks.equation_solving import relative_parameter_error
from modelshield.audit.stats import wilson
from modelshield.defenses.policies import parse_policy
from modelshield.errors import AttackFailed, AttackRefused, Blocked, BudgetExhausted
from modelshield.oracle.base import BaseOracle
from modelshield.oracle.local import LocalOracle
from modelshield.victims.base import Victim


@dataclass
class Result:
    """One row of results: one attack on one victim under one policy and budget."""

    victim: str
    attack: str
    policy: str
    budget: int
    seed: int
    status: str = "ok"
    reason: str = ""
    queries: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    accuracy: float | None = None
    fidelity_test: float | None = None
    # The 95% Wilson interval of fidelity_test over the test rows it was read on: a small
    # test set shows as a wide interval.
    fidelity_test_ci: tuple[float, float] | None = None
    test_rows: int = 0
    fidelity_uniform: float | None = None
    # The victim's own test accuracy, and the clone's agreement on the test rows the victim
    # gets right (and at each checkpoint): a clone that does the victim's job on a task the
    # victim does poorly is a theft whatever its raw agreement (audit/analysis.py).
    victim_accuracy: float | None = None
    fidelity_right: float | None = None
    right_curve: list[tuple[int, float]] = field(default_factory=list)
    parameter_error: float | None = None
    params: dict[str, Any] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    accuracy_curve: list[tuple[int, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    # The clone itself (for --save-clone) and the attack's checkpoints (the audit tests
    # each against the watermark); never written into the row's JSON.
    clone: Any = field(default=None, repr=False, compare=False)
    checkpoints: list[Checkpoint] = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable({f.name: getattr(self, f.name) for f in fields(self)
                                         if f.name not in ("clone", "checkpoints")})
        return out


def uniform_probe(victim: Victim, n: int = 10_000, seed: int = 0) -> FloatArray:
    """``n`` points uniform in the victim's domain (on the integer grid if inputs are integers)."""
    x = victim.spec.uniform(n, np.random.default_rng(seed))
    return np.round(x) if victim.spec.integer_features else x


def agreement(clone: Any, victim: Victim, x: FloatArray) -> float:
    return float(np.mean(np.asarray(clone.predict(x)) == victim.predict_labels(x)))


def fidelity_curve(checkpoints: list[Checkpoint], victim: Victim) -> list[tuple[int, float]]:
    """(queries, test fidelity) at each checkpoint the attack saved."""
    return [(c.queries, agreement(c.clone, victim, victim.X_test)) for c in checkpoints]


def accuracy_curve(checkpoints: list[Checkpoint], victim: Victim) -> list[tuple[int, float]]:
    """(queries, test accuracy) at each checkpoint the attack saved."""
    return [(c.queries, float(np.mean(np.asarray(c.clone.predict(victim.X_test))
                                      == victim.y_test)))
            for c in checkpoints]


def right_curve(checkpoints: list[Checkpoint], victim: Victim) -> list[tuple[int, float]]:
    """(queries, fidelity on the test rows the victim gets right) at each checkpoint."""
    right = victim.predict_labels(victim.X_test) == victim.y_test
    return [(c.queries, agreement(c.clone, victim, victim.X_test[right])) for c in checkpoints
            ] if right.any() else []


def victim_accuracy(victim: Victim) -> float:
    return float(np.mean(victim.predict_labels(victim.X_test) == victim.y_test))


def evaluate(extraction: Extraction, victim: Victim, result: Result,
             uniform_points: int = 10_000) -> Result:
    """Fill ``result`` with the clone's measured accuracy, fidelity and parameter error."""
    clone = extraction.clone
    result.queries = extraction.queries
    result.cost = extraction.cost
    result.seconds = extraction.seconds
    result.accuracy = float(np.mean(np.asarray(clone.predict(victim.X_test)) == victim.y_test))
    result.fidelity_test = agreement(clone, victim, victim.X_test)
    result.test_rows = len(victim.X_test)
    result.fidelity_test_ci = wilson(result.fidelity_test, result.test_rows)
    result.clone = clone
    result.fidelity_uniform = agreement(clone, victim, uniform_probe(victim, uniform_points,
                                                                     result.seed + 1))
    if extraction.parameters and victim.parameters and not extraction.info.get("scale_free"):
        result.parameter_error = relative_parameter_error(extraction.parameters,
                                                          victim.parameters)
    result.checkpoints = list(extraction.checkpoints)
    result.curve = fidelity_curve(extraction.checkpoints, victim)
    result.accuracy_curve = accuracy_curve(extraction.checkpoints, victim)
    result.victim_accuracy = victim_accuracy(victim)
    right = victim.predict_labels(victim.X_test) == victim.y_test
    result.fidelity_right = agreement(clone, victim, victim.X_test[right]) if right.any() \
        else None
    result.right_curve = right_curve(extraction.checkpoints, victim)
    result.info = dict(extraction.info)
    if extraction.info.get("budget_note"):  # an attack that spent less says why
        result.reason = str(extraction.info["budget_note"])
    if extraction.status != "ok":  # scored, but its assumption did not hold in the answers
        result.status, result.reason = extraction.status, extraction.reason
    return result


def run_cell(victim: Victim | None, attack: str, policy: str, budget: int, seed: int = 0,
             price_per_1k: float = 0.0, params: dict[str, Any] | None = None,
             uniform_points: int = 10_000, oracle: BaseOracle | None = None,
             label: str | None = None, pool: FloatArray | None = None) -> Result:
    """Run one attack and evaluate it; a refusal or a block becomes a row too.

    By default the attack goes through a LocalOracle on ``victim`` behind ``policy``; pass
    ``oracle`` (a ShieldOracle, an HttpOracle) to attack through it instead. ``victim``,
    when given, scores the clone and lends the attacker its pool (``pool``, when given,
    instead: the rows the attacker chose). ``label`` names the defense in the row (the
    policy, or "(target)" for a given oracle, by default).
    """
    params = dict(params or {})
    name = victim.name if victim else oracle.spec.name if oracle else "?"
    label = label or (policy if oracle is None else "(target)")
    result = Result(name, attack, label, budget, seed, params=params)
    attack_obj = ATTACKS[attack](random_state=seed, **params)
    if oracle is None:
        if victim is None:
            raise ValueError("run_cell needs a victim or an oracle")
        # A noise key fixed by the seed keeps a run reproducible; the attack never sees it.
        oracle = LocalOracle(victim, parse_policy(policy, secret=f"modelshield-seed-{seed}"),
                             budget=budget, price_per_1k=price_per_1k)
    try:
        if pool is None and victim is not None:
            pool = victim.pool
        extraction = attack_obj.run(oracle, budget, pool=pool)
    except (AttackRefused, AttackFailed, BudgetExhausted, Blocked) as exc:
        result.status = {AttackRefused: "refused", AttackFailed: "failed",
                         Blocked: "blocked"}.get(type(exc), "out of budget")
        result.reason = str(exc)
        result.queries, result.cost = oracle.used, oracle.cost
        if victim is not None and isinstance(exc, Blocked):
            # The clones the attacker had built before it was stopped.
            result.curve = fidelity_curve(exc.checkpoints, victim)
            result.accuracy_curve = accuracy_curve(exc.checkpoints, victim)
            result.right_curve = right_curve(exc.checkpoints, victim)
            result.victim_accuracy = victim_accuracy(victim)
        return result
    if victim is None:
        result.queries, result.cost, result.seconds = (extraction.queries, extraction.cost,
                                                       extraction.seconds)
        result.info = dict(extraction.info)
        if extraction.status != "ok":
            result.status, result.reason = extraction.status, extraction.reason
        return result
    return evaluate(extraction, victim, result, uniform_points)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
