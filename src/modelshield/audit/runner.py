"""The audit runner: every attacker x defense x budget, plus honest users under each defense.

Each cell is a plain JSON-able dict that says everything needed to run it, so a cell can run
in another process and its result can be cached under a hash of that dict: a second run of
an unchanged scenario reads every cell from ``OUT/cells`` and takes seconds, and an
interrupted run picks up where it stopped. Cells are deterministic per seed.

Every defense runs as a tier of a real :class:`~modelshield.defenses.shield.Shield`, the
object the gateway serves, with its audit log in a SQLite file: the audit measures what a
customer of that tier would get, limits, detectors and all.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

import modelshield
from modelshield.answer import Answer, FloatArray
from modelshield.attacks import ATTACKS
from modelshield.audit.cells import Cell, CellResult
from modelshield.audit.evaluate import run_cell
from modelshield.audit.scenario import Benign, Defense, Scenario, Target
from modelshield.defenses.config import load_config
from modelshield.defenses.policies import parse_policy
from modelshield.errors import ConfigError, Denied, ModelShieldError
from modelshield.oracle.local import LocalOracle
from modelshield.victims.base import Victim

TIER = "audit"


# -- the target ----------------------------------------------------------------------------
def target_victim(target: Target) -> Victim:
    """The model the scenario attacks, with its test data and the attacker's pool."""
    if target.victim is not None:
        from modelshield.victims import load_victim

        return load_victim(target.victim, target.seed)
    from modelshield.victims.loaders import victim_from_files

    for what, path in (("file", target.file), ("data", target.data)):
        if not Path(path or "").is_file():
            raise ConfigError(f"target.{what}: {path!r} does not exist.")
    try:
        return victim_from_files(target.file or "", target.data or "")
    except ConfigError as exc:
        raise ConfigError(f"target.data: {exc}") from None


def check_target(scenario: Scenario) -> None:
    """Stop at once on a target that cannot be used: a missing file, an unreachable
    endpoint, a refused key, a tree-only output policy on a model that is not a tree."""
    victim = target_victim(scenario.target)
    for i, d in enumerate(scenario.defenses):
        tier = d.as_tier()
        for field in ("policy", "degrade_policy"):
            if parse_policy(getattr(tier, field)).needs_tree and victim.kind != "tree":
                raise ConfigError(f"defenses.{i}.{field}: {getattr(tier, field)!r} needs a "
                                  f"decision tree; the target {victim.name!r} is a "
                                  f"{victim.kind} model.")
    if scenario.target.remote:
        oracle = remote_oracle(scenario.target, budget=None, price=0.0)
        try:
            oracle.check_key()
        finally:
            oracle.close()


def remote_oracle(target: Target, budget: int | None, price: float) -> Any:
    from modelshield.oracle.http import HttpOracle

    return HttpOracle(target.url or "", target.api_key or "", model=target.model,
                      protocol=target.protocol, budget=budget, price_per_1k=price)


@contextmanager
def shield_for(defense: Defense, victim: Victim, clock: Any = None) -> Iterator[Any]:
    """A fresh Shield serving ``victim`` with ``defense`` as its only tier, audit log in a
    temporary SQLite file. Detectors are calibrated on the victim's calibration rows (half
    its test set, apart from the attacker's pool and from the rows honest users send).

    A detector the calibration data cannot calibrate (prada on a small data set) is left
    out, and the Shield's ``left_out`` says which and why: the audit reports it.

    ``clock``: a :class:`~modelshield.defenses.limits_memory.VirtualClock` the Shield and
    its rate limits (an exact moving window) run on, for a paced attacker."""
    from limits.strategies import MovingWindowRateLimiter

    from modelshield.defenses.detectors import without_uncalibrated
    from modelshield.defenses.limits_memory import ClockedMemoryStorage
    from modelshield.defenses.shield import Shield
    from modelshield.store import AuditStore

    tier = defense.as_tier().model_dump()
    with tempfile.TemporaryDirectory(prefix="modelshield-cell-") as tmp:
        benign = victim.calibration if len(victim.calibration) >= 20 else None

        def build(detectors: list[Any]) -> Any:
            # A fixed noise key keeps cells reproducible; the attackers never see it.
            config = load_config({"audit_url": f"sqlite:///{tmp}/audit.db",
                                  "tiers": {TIER: {**tier, "detectors": detectors}},
                                  "noise_secret": "modelshield-audit-cell-noise-key",
                                  "watermark_secret": "modelshield-audit-cell-watermark-key",
                                  **defense.shield_fields()})
            store = AuditStore(config.audit_url)
            timed: dict[str, Any] = {} if clock is None else {
                "clock": clock, "limiter": MovingWindowRateLimiter(ClockedMemoryStorage(clock))}
            try:
                return Shield(config, victim.model, victim.spec, store, benign=benign, **timed)
            except ConfigError:
                store.close()
                raise

        shield, left_out = without_uncalibrated(build, tier["detectors"])
        shield.left_out = left_out
        try:
            yield shield
        finally:
            shield.close()


# -- cells ---------------------------------------------------------------------------------
# What a cell's result holds; raised when it gains a field (2: each clone's watermark trace,
# and accounts with key ids seeded by the cell; 3: steered attacks traced by the sequential
# test; 4: its grid reaching 16 log-odds; 5: the victim's accuracy and the clone's
# fidelity on the rows it gets right, and natural pools), so cached cells of before are run
# again.
CELL_FORMAT = 5


def plan(scenario: Scenario) -> list[Cell]:
    """The cells of ``scenario``: one per attacker x defense x budget, one benign cell per
    defense (local targets only)."""
    cells: list[Cell] = []
    for d in scenario.defenses:
        base = _base_cell(scenario, d)
        for a in scenario.attackers:
            for b in a.budgets:
                cells.append({**base, "kind": "attack", "attacker": a.model_dump(),
                              "label": a.label, "budget": b,
                              "price_per_1k": scenario.price_per_1k})
        if not scenario.target.remote:
            cells.append({**base, "kind": "benign", "benign": scenario.benign.model_dump()})
        if scenario.privacy is not None:
            data = scenario.privacy.data
            cells.append({**base, "kind": "privacy", "privacy": scenario.privacy.model_dump(),
                          "privacy_file": hashlib.sha256(Path(data).read_bytes()).hexdigest()
                          if data else None,
                          "price_per_1k": scenario.price_per_1k})
    return cells


def _base_cell(scenario: Scenario, d: Defense) -> Cell:
    cell: Cell = {"kind": "attack", "defense": d.model_dump(),
                  "target": scenario.target.model_dump(), "seed": scenario.seed,
                  "target_files": _file_digests(scenario.target),
                  "version": modelshield.__version__, "cell_format": CELL_FORMAT}
    if d.config:  # a tier taken from a gateway config: its file's content is part of the cell
        cell["defense_file"] = hashlib.sha256(Path(d.config).read_bytes()).hexdigest()
    return cell


def cell_key(cell: Cell) -> str:
    return hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:20]


def run_one(cell: Cell) -> CellResult:
    """Run one cell (in this process) and return its JSON-able result."""
    start = time.perf_counter()
    target = Target.model_validate(cell["target"])
    defense = Defense.model_validate(cell["defense"])
    try:
        victim = target_victim(target)
        if cell["kind"] == "benign":
            out = _benign_cell(cell, defense, victim)
        elif cell["kind"] == "privacy":
            out = _privacy_cell(cell, target, defense)
        else:
            out = _attack_cell(cell, target, defense, victim)
    except Exception as exc:  # one broken cell is a row that says why, not a lost audit
        why = str(exc) if isinstance(exc, ModelShieldError) else f"{type(exc).__name__}: {exc}"
        out = {"status": "error", "reason": why, "queries": 0, "budget": cell.get("budget"),
               "attack": cell.get("attacker", {}).get("attack"), "curve": [],
               "attacker": cell.get("label")}
    out.update(kind=cell["kind"], defense=defense.name, seconds=time.perf_counter() - start)
    return out


def _attack_cell(cell: Cell, target: Target, defense: Defense,
                 victim: Victim) -> CellResult:
    from modelshield.audit.scenario import Attacker
    from modelshield.oracle import ShieldOracle
    from modelshield.store import seeded_key_id

    attacker = Attacker.model_validate(cell["attacker"])
    budget, seed, price = cell["budget"], cell["seed"], cell["price_per_1k"]
    tier = defense.as_tier()
    first_flag, waited = None, None
    trace: list[list[float]] | None = None
    oracle: Any
    pool = attack_pool(victim, attacker.typical, budget)
    if target.remote:
        if attacker.keys > 1 or attacker.mix_natural > 0 or attacker.pace:
            raise ConfigError(f"attacker {attacker.label!r}: keys, mix_natural and pace need "
                              "a local target (the audit makes the keys and keeps the clock)")
        oracle = remote_oracle(target, budget, price)
        try:
            result = run_cell(victim, attacker.attack, defense.name, budget, seed, price,
                              attacker.kwargs, oracle=oracle, label=defense.name, pool=pool)
        finally:
            oracle.close()
    else:
        from modelshield.defenses.limits_memory import VirtualClock
        from modelshield.oracle.shielded import Pacer, SpreadOracle

        clock = VirtualClock() if attacker.pace else None
        pacer = None if clock is None else Pacer(clock)
        with shield_for(defense, victim, clock) as shield:
            if attacker.keys > 1 or attacker.mix_natural > 0:
                keys = [(shield.store.create_key(TIER, owner=f"attacker-{i}",
                                                 key_id=seeded_key_id(seed, "attacker", i))[0],
                         f"10.{i // 256}.{i % 256}.7") for i in range(attacker.keys)]
                oracle = SpreadOracle(shield, keys, mix=attacker.mix_natural,
                                      natural=pool, seed=seed, budget=budget,
                                      price_per_1k=price, pacer=pacer)
            else:
                key = shield.store.create_key(TIER, key_id=seeded_key_id(seed, "attacker", 0))[0]
                oracle = ShieldOracle(shield, key, budget=budget, price_per_1k=price,
                                      pacer=pacer)
            result = run_cell(victim, attacker.attack, defense.name, budget, seed, price,
                              attacker.kwargs, oracle=oracle, label=defense.name, pool=pool)
            first_flag = oracle.first_flag
            waited = None if pacer is None else pacer.waited
            steered = ATTACKS[attacker.attack](random_state=seed, **attacker.kwargs).steered
            trace = _trace(shield, victim, target, result, steered) \
                if result.status == "ok" else None
    if result.status == "blocked" and result.queries > 0 and not target.remote:
        _keep_what_it_was_told(result, victim, attacker, tier.policy, seed, price, pool,
                               defense.name)
    out = result.to_dict()
    out.update(attacker=cell["label"], first_flag=None if first_flag is None else
               {"query": first_flag[0], "detector": first_flag[1]})
    if waited is not None:  # a paced attacker: the seconds it waited out rate limits
        out["waited_s"] = waited
    out["trace"] = trace
    return out


def _keep_what_it_was_told(result: Any, victim: Victim, attacker: Any, policy: str,
                           seed: int, price: float, pool: FloatArray, label: str) -> None:
    """A blocked attacker keeps what it was told before the block: score the clone it can
    make from that many queries under the same output policy, after the curve it had
    built before the block."""
    after = run_cell(victim, attacker.attack, policy, result.queries, seed, price,
                     attacker.kwargs, oracle=LocalOracle(
                         victim, parse_policy(policy, secret="modelshield-audit-cell-noise-key"),
                         budget=result.queries, price_per_1k=price), label=label, pool=pool)
    if after.status != "ok":
        return
    for name in ("accuracy", "fidelity_test", "fidelity_uniform", "victim_accuracy",
                 "fidelity_right"):
        setattr(result, name, getattr(after, name))
    n = result.queries
    result.curve = [p for p in result.curve if p[0] < n] + [(n, after.fidelity_test or 0.0)]
    result.accuracy_curve = ([p for p in result.accuracy_curve if p[0] < n]
                             + [(n, after.accuracy or 0.0)])
    result.right_curve = ([p for p in result.right_curve if p[0] < n]
                          + [(n, after.fidelity_right or 0.0)])


def pool_words(victim: Victim) -> str:
    """The attacker's pool in words: what it holds, and what the attackers draw."""
    from modelshield.data.pools import describe, pool_parts

    parts = pool_parts(victim.pool, victim.spec.integer_features)
    if not parts:
        return "The attackers have no pool of their own."
    natural = sum(p.rows for p in parts if p.kind == "natural")
    return (f"The attackers' pool holds {describe(parts)}; every attacker draws from the "
            f"{natural:,} natural rows, data a customer could send.")


def attack_pool(victim: Victim, typical: float = 0.0, budget: int = 0) -> FloatArray:
    """The rows an attacker with natural data draws from: the natural part of the target's
    pool (data/pools.py: never the augmented rows no customer sends), and with
    ``typical`` only that share its own density estimate finds most typical (at least
    ``budget`` rows where it has them)."""
    from modelshield.attacks.data_choice import typical_rows
    from modelshield.data.pools import natural_rows

    pool = natural_rows(victim.pool, victim.spec.integer_features)
    return typical_rows(pool, typical, at_least=budget) if typical and len(pool) else pool


def _trace(shield: Any, victim: Victim, target: Target, result: Any, steered: bool = False
           ) -> list[list[float]] | None:
    """[queries, p] for each clone of the cell that reached 90% fidelity (the attack's
    checkpoints and its final clone), tested against the watermarks that mark what the
    attacker learnt from:

    - the tier's serve-time watermark: every attacker key's watermark set rebuilt from the
      cell's audit log and the secret, as ``modelshield verify`` does, and with several
      keys also their sets together (an attacker who spread its queries leaves a share of
      its marks on each key); the smallest p-value, times the number of tests. Against an
      attack whose rows follow its answers (``Attack.steered``: an active learner, a
      boundary search) the score and control tests are not exact, so its clones are traced
      by the sequential test instead, which holds whatever the rows depended on; it needs
      every cell the key sent, so no control is cut;
    - a built-in victim's train-time watermark (trigger set or entangled), when it has one.

    With both, the smaller p-value times 2. None: nothing marks this target's answers.
    """
    from modelshield.audit.analysis import CLONE
    from modelshield.audit.ownership import account_sets, estimator_answer, verify_sets
    from modelshield.defenses.watermark import MAX_CONTROL, joint_set
    from modelshield.victims.zoo import ZOO, train_mark

    wm = shield.watermarks.get(TIER)
    controls = sys.maxsize if steered else MAX_CONTROL
    sets = [] if wm is None else account_sets(wm, shield.store, victim.model, shield.spec.name,
                                              shield.store.list_keys(), controls)
    marked = [(key, ws) for key, ws in sets if len(ws.x)]
    if len(marked) > 1:
        every = SimpleNamespace(key_id="+".join(k.key_id for k, _ in marked), owner="",
                                tier=TIER)
        sets = [*sets, (every, joint_set([ws for _, ws in marked]))]
    mark = train_mark(target.victim, target.seed) \
        if target.victim is not None and ZOO[target.victim].watermark else None
    if not sets and mark is None:
        return None
    fidelity = {int(q): f for q, f in result.curve}
    clones = {c.queries: c.clone for c in result.checkpoints}
    if result.clone is not None:
        clones[result.queries] = result.clone
        fidelity[result.queries] = result.fidelity_test or 0.0
    out = []
    for queries, clone in sorted(clones.items()):
        if fidelity.get(queries, 0.0) < CLONE:
            continue
        p = []
        if sets:
            report = verify_sets(wm, sets, partial(estimator_answer, clone, wm.k), "clone")
            p.append(min((_account_p(a, len(report.accounts), steered)
                          for a in report.accounts), default=1.0))
        if mark is not None:
            p.append(_train_time_p(mark, clone))
        out.append([queries, min(1.0, min(p) * len(p))])
    return out


def _account_p(verdict: Any, accounts: int, steered: bool) -> float:
    """One account's p-value in a trace, adjusted for the accounts tested. For a steered
    attack, the sequential test's. Otherwise, and where the sequential test did not run (a
    clone that gives labels only, with three classes or more), the exact test's."""
    seq = verdict.result.p_sequential
    if steered and seq is not None:
        return min(1.0, float(seq) * accounts)
    return float(verdict.p_adjusted)


def _train_time_p(mark: Any, clone: Any) -> float:
    """The train-time watermark's p-value for ``clone`` (an entangled one asks the clone
    its decoys too)."""
    from modelshield.victims.entangled import EntangledWatermark

    labels = np.asarray(clone.predict(mark.x))
    if isinstance(mark, EntangledWatermark):
        decoys = np.asarray(clone.predict(mark.decoy_inputs)) if len(mark.decoy_x) else None
        return float(mark.test(labels, decoys).p_value)
    return float(mark.test(labels).p_value)


SHADOW_BUILDER = ("modelshield.models", "modelshield.attacks.membership",
                  "modelshield.audit.privacy")
"""The modules whose code trains shadow models: a change to one trains them again."""


def _privacy_cell(cell: Cell, target: Target, defense: Defense) -> CellResult:
    """Membership inference through one defense: each attack with a fresh key of the tier.

    The shadow models depend on the model and its data, not on the defense: they are
    trained once and kept in the cache folder (``$MODELSHIELD_CACHE/shadows``), shared by
    the privacy cells of every defense and by later runs."""
    from modelshield.audit.privacy import run_privacy
    from modelshield.audit.scenario import Privacy
    from modelshield.oracle import ShieldOracle
    from modelshield.store import seeded_key_id
    from modelshield.victims.cache import build_tag, cache_dir

    privacy = Privacy.model_validate(cell["privacy"])
    victim, task = privacy_task(target, privacy)
    seed, price = cell["seed"], cell["price_per_1k"]
    shadow_key = hashlib.sha256(json.dumps(
        [cell["target"], cell["target_files"], cell.get("privacy_file"), seed, privacy.recipe,
         task.recipe, privacy.shadows, privacy.train_size, cell["version"],
         build_tag(*SHADOW_BUILDER)],
        sort_keys=True, default=str).encode()).hexdigest()[:20]
    specs = privacy.parsed()
    common: dict[str, Any] = {
        "n_classes": victim.spec.n_classes, "shadows": privacy.shadows,
        "recipe": privacy.recipe, "train_size": privacy.train_size, "seed": seed,
        "price": price, "shadow_cache": cache_dir() / "shadows" / f"{shadow_key}.npz",
        "backend": "ray" if os.environ.get(SHADOWS_ON) == "ray" else "local", "workers": 1}
    attacks = [(name, params) for _, name, params in specs]
    if target.remote:
        rows = run_privacy(task, lambda need: remote_oracle(target, None, price), attacks,
                           **common)
    else:
        from modelshield.oracle.shielded import SpreadOracle

        with shield_for(defense, victim) as shield:
            attacks_run = itertools.count()

            def oracle_for(need: int) -> Any:
                # Each attack its own keys (ids seeded by the cell and the attack's place).
                n = next(attacks_run)
                if privacy.keys == 1:
                    key = shield.store.create_key(TIER, key_id=seeded_key_id(seed, "member", n))
                    return ShieldOracle(shield, key[0], price_per_1k=price)
                # An attacker who knows the detectors: its queries spread over keys of
                # other owners and networks, as the adaptive extraction attackers do.
                keys = [(shield.store.create_key(TIER, owner=f"member-{i}",
                                                 key_id=seeded_key_id(seed, "member", n, i))[0],
                         f"10.{i // 256}.{i % 256}.9") for i in range(privacy.keys)]
                return SpreadOracle(shield, keys, seed=seed, budget=need, price_per_1k=price)

            rows = run_privacy(task, oracle_for, attacks, **common)
    for row, (label, _, _) in zip(rows, specs, strict=True):
        row["attack"] = label
    return {"status": "ok", "members": len(task.members), "non_members": len(task.non_members),
            "population": len(task.population), "keys": privacy.keys, "attacks": rows}


def privacy_task(target: Target, privacy: Any) -> tuple[Victim, Any]:
    """The model and its members, non-members and attacker's population."""
    if target.victim is not None:
        from modelshield.victims import load_victim
        from modelshield.victims.zoo import membership_task

        return load_victim(target.victim, target.seed), membership_task(target.victim,
                                                                        target.seed)
    from modelshield.victims.loaders import membership_from_files

    try:
        return membership_from_files(target.file or "", privacy.data or "",
                                     recipe=privacy.recipe or "")
    except ConfigError as exc:
        raise ConfigError(f"privacy.data: {exc}") from None


class _HonestTally:
    """What honest customers sent and got back, row by row, across their accounts."""

    def __init__(self, victim: Victim) -> None:
        X, y = victim.honest, victim.y_test[1::2]
        self.victim = victim
        self.truth = {r.tobytes(): int(t) for r, t in zip(X, y, strict=True)}
        self.got: list[Any] = []
        self.conf: list[Any] = []
        self.true: list[Any] = []
        self.model_p: list[Any] = []
        self.refused_rows = self.answered_rows = 0

    def serve(self, shield: Any, key: str, requests: list[Any], row: dict[str, Any]) -> bool:
        """Send one account's requests until the Shield denies one; True if it did."""
        refused = False
        for req in requests:
            row["rows"] += len(req)
            if refused:
                self.refused_rows += len(req)
                continue
            try:
                answer, _ = shield.handle(key, req)
            except Denied:
                refused = True
                self.refused_rows += len(req)
                continue
            self.answered_rows += len(req)
            self._score(req, answer)
        return refused

    def _score(self, req: Any, answer: Answer) -> None:
        known = np.array([r.tobytes() in self.truth for r in req])
        if known.any():
            self.got.append(answer.labels[known])
            self.conf.append(_confidence(answer)[known])
            self.true.append(np.array([self.truth[r.tobytes()] for r in req[known]]))
            self.model_p.append(self.victim.model.predict(req[known]).probabilities)

    def metrics(self) -> dict[str, Any]:
        """Accuracy and calibration of what was answered, beside the model's own."""
        y_all = np.concatenate(self.true) if self.true else np.empty(0, int)
        labels = np.concatenate(self.got) if self.got else np.empty(0, int)
        c = np.concatenate(self.conf) if self.conf else np.empty(0)
        p = (np.concatenate(self.model_p) if self.model_p
             else np.empty((0, self.victim.spec.n_classes)))
        model_labels = p.argmax(axis=1)
        return {"answered_rows": self.answered_rows, "scored_rows": len(y_all),
                "accuracy": _mean(labels == y_all), "ece": ece(c, labels == y_all),
                "model_accuracy": _mean(model_labels == y_all),
                "model_ece": ece(p.max(axis=1) if len(p) else p, model_labels == y_all),
                "refused_rows": self.refused_rows}


def _benign_cell(cell: Cell, defense: Defense, victim: Victim) -> CellResult:
    """Honest customers of every archetype (modelshield.data.honest: i.i.d., narrow,
    what-if, batch, repeat, burst) send the victim's honest rows, which the detectors were
    not calibrated on; what they get back is scored. Accuracy counts the rows whose true
    label is known (not a what-if user's edits)."""
    from modelshield.data.honest import honest_accounts
    from modelshield.store import seeded_key_id

    spec = Benign.model_validate(cell["benign"])
    X = victim.honest
    labels_of = victim.predict_labels(X)
    tally = _HonestTally(victim)
    by: dict[str, dict[str, Any]] = {}
    with shield_for(defense, victim) as shield:
        tier = shield.config.tiers[TIER]
        for i, archetype in enumerate(spec.archetypes):
            row = by.setdefault(archetype, {"accounts": 0, "flagged": 0, "refused": 0,
                                            "rows": 0})
            accounts = honest_accounts(X, archetype, spec.accounts, seed=cell["seed"] * 100 + i,
                                       labels=labels_of, low=victim.spec.low,
                                       high=victim.spec.high,
                                       integer=victim.spec.integer_features,
                                       median_rows=spec.median_rows)
            for j, account in enumerate(accounts):
                key, record = shield.store.create_key(
                    TIER, key_id=seeded_key_id(cell["seed"], "honest", archetype, j))
                refused = tally.serve(shield, key, account.chunked(tier.max_batch).requests, row)
                row["accounts"] += 1
                row["refused"] += int(refused)
                row["flagged"] += int(record.key_id in shield.flagged)
        left_out = getattr(shield, "left_out", [])
        flagged_total = len(shield.flagged)
    accounts = sum(r["accounts"] for r in by.values())
    for r in by.values():
        r["flagged_share"] = r["flagged"] / max(r["accounts"], 1)
        r["refused_share"] = r["refused"] / max(r["accounts"], 1)
    return {
        "accounts": accounts, "rows": sum(r["rows"] for r in by.values()), **tally.metrics(),
        "flagged_share": flagged_total / max(accounts, 1),
        "refused_share": sum(r["refused"] for r in by.values()) / max(accounts, 1),
        "by_archetype": by, "detectors_left_out": left_out,
    }


def _confidence(answer: Answer) -> FloatArray:
    """The score an honest caller would read as the answer's confidence (1.0 when none)."""
    if answer.probabilities is not None:
        with np.errstate(all="ignore"):
            p = np.nanmax(answer.probabilities, axis=1)
        return np.asarray(np.nan_to_num(p, nan=1.0), dtype=np.float64)
    if answer.confidence is not None:
        return np.asarray(answer.confidence, dtype=np.float64)
    return np.ones(len(answer))


def ece(confidence: FloatArray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: the gap between confidence and accuracy, over 10 bins."""
    if len(confidence) == 0:
        return float("nan")
    which = np.minimum((np.asarray(confidence) * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            total += m.mean() * abs(float(np.mean(correct[m])) - float(np.mean(confidence[m])))
    return float(total)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def _file_digests(target: Target) -> dict[str, str]:
    out = {}
    for what, path in (("file", target.file), ("data", target.data)):
        if path and Path(path).is_file():
            out[what] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


# -- running the matrix ----------------------------------------------------------------------
def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def run_cells(cells: list[Cell], cache: Path, workers: int = 0,
              on_done: Callable[[CellResult, bool], None] | None = None,
              executor: str = "process", address: str | None = None,
              ) -> list[CellResult]:
    """Results for ``cells`` in order: from ``cache`` where a cell ran before, else run,
    ``workers`` at a time (0: one per core). ``on_done(result, cached)`` follows each.

    executor: ``process`` (a process pool on this machine) or ``ray`` (each cell a task on
    the Ray cluster at ``address``, and the privacy cells' shadow models tasks too; the
    cache and the results stay here). Cells are seeded, so both give the same results."""
    cache.mkdir(parents=True, exist_ok=True)
    results: dict[int, CellResult] = {}
    todo = []
    for i, cell in enumerate(cells):
        path = cache / f"{cell_key(cell)}.json"
        if path.is_file():
            try:
                results[i] = json.loads(path.read_text())
            except ValueError:
                path.unlink()  # a torn write from an interrupted run: run it again
            else:
                if on_done:
                    on_done(results[i], True)
                continue
        todo.append(i)

    def keep(i: int, result: CellResult) -> None:
        path = cache / f"{cell_key(cells[i])}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(path)
        results[i] = result
        if on_done:
            on_done(result, False)

    if executor == "ray":
        _run_on_ray(cells, todo, keep, address)
        return [results[i] for i in range(len(cells))]
    if executor != "process":
        raise ConfigError.invalid("executor", "'process' or 'ray'", executor)
    workers = workers or os.cpu_count() or 1
    # Slowest first keeps the cores busy to the end. The first privacy cell trains the
    # shadow models the others read: it goes first, the others last.
    first_privacy = next((i for i in todo if cells[i]["kind"] == "privacy"), None)
    todo.sort(key=lambda i: -(10**9 if i == first_privacy else int(cells[i].get("budget") or 0)))
    if workers == 1 or len(todo) <= 1:
        for i in todo:
            keep(i, run_one(cells[i]))
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
            running: dict[Future[CellResult], int] = {
                pool.submit(run_one, cells[i]): i for i in todo}
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    keep(running.pop(fut), fut.result())
    return [results[i] for i in range(len(cells))]


def _ray_cell(cell: Cell) -> CellResult:
    """One cell on a Ray worker: one torch thread, as in the process pool."""
    _init_worker()
    return run_one(cell)


def _run_on_ray(cells: list[Cell], todo: list[int],
                keep: Callable[[int, CellResult], None], address: str | None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray needs Ray: pip install 'modelshield[ray]'") from None
    if not ray.is_initialized():
        try:
            # The workers train the privacy cells' shadow models as Ray tasks too, and use
            # the driver's cache folder where one is set.
            env = {SHADOWS_ON: "ray"}
            if os.environ.get("MODELSHIELD_CACHE"):
                env["MODELSHIELD_CACHE"] = os.environ["MODELSHIELD_CACHE"]
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     runtime_env={"env_vars": env})
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ConfigError(f"--address {address!r}: cannot join the Ray cluster: {exc}"
                              ) from None
    task = ray.remote(num_cpus=1)(_ray_cell)
    running = {task.remote(cells[i]): i for i in todo}
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        for ref in done:
            keep(running.pop(ref), ray.get(ref))


SHADOWS_ON = "MODELSHIELD_SHADOWS_ON"
"""Set to ``ray`` on the Ray workers: privacy cells train shadow models as Ray tasks."""


def run_audit(scenario: Scenario, out: Path, workers: int = 0,
              on_start: Callable[[int, int], None] | None = None,
              on_done: Callable[[CellResult, bool], None] | None = None,
              executor: str = "process", address: str | None = None) -> dict[str, Any]:
    """Run ``scenario`` (cells cached in ``out/cells``) and return the results document:
    the scenario, every cell, and the analysis (summaries, ratings, recommendations)."""
    from modelshield.audit.analysis import analyse

    check_target(scenario)
    start = time.perf_counter()
    cells = plan(scenario)
    cached = sum((out / "cells" / f"{cell_key(c)}.json").is_file() for c in cells)
    if on_start:
        on_start(len(cells), cached)
    results = run_cells(cells, out / "cells", workers, on_done, executor, address)
    doc = {"modelshield": modelshield.__version__, "scenario": scenario.model_dump(),
           "seconds": time.perf_counter() - start, "cells_cached": cached,
           "pool": pool_words(target_victim(scenario.target)), "cells": results}
    doc["analysis"] = analyse(scenario, results)
    return doc

