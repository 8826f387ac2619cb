"""From cells to answers: curves, cost to clone, when the thief was caught, what honest users
paid, the risk rating and the ranked recommendations.

Everything here is a pure function of the scenario and the cell results, so
``modelshield report results.json`` gives the same page from the same file.

The rules (docs/audit.md explains them):

* A *clone* is a copy with at least 90% fidelity (top-1 agreement with the model on its test
  set), or a copy that does the model's job: test accuracy within ``JOB_MARGIN`` (2 points)
  of the model's own, or 90% agreement on the test rows the model gets right (a thief of a
  model that is right 68% of the time wants its 68%, not its mistakes). Its cost is the
  queries it took times the price.
* An attacker is *caught* when the Shield flagged it before its clone reached 90%. A flag
  counts when the tier acts on it (throttle, degrade, deny), or when it only alerts and the
  deployment says someone watches the alerts (``monitoring: true``).
* Risk, per defense: HIGH when an uncaught clone costs less than 1% of what the model cost
  to build and the API is public; MEDIUM when an uncaught clone costs less than the model's
  value (or is HIGH by cost but the API is not public), or when every clone was caught;
  LOWER when no attacker reached 90% within its budget, or a clone costs more than the model.
* Protection of a defense against one attacker: 1 when the attacker gets no uncaught clone,
  else log10 of how many times more queries it needed than against the most exposed defense,
  over 2 (100 times the queries counts as full protection), clipped to [0, 1]; the defense's
  protection is the mean over attackers. The rating follows the cheapest uncaught clone of
  any attacker, adaptive ones included (an attacker with ``keys`` or ``mix_natural``), so
  no defense is rated better than its adaptive result; an adaptive attacker that cloned
  where its plain counterpart did not is listed as what broke the defense. Honest-user
  cost: accuracy lost, calibration error
  added, share of honest accounts flagged and share refused. Recommendations rank the
  defenses that protect better than the deployed one by protection gained per unit of cost;
  one whose cheapest uncaught clone costs no more than the deployed one's is left out (it
  protects nothing against the strongest attacker played).
* Tracing: each clone of 90% fidelity or more that the audit makes is tested against the
  tier's serve-time watermark (and a built-in victim's train-time one); a clone at p <= 1e-6
  is *traced*. The rating follows the cheapest uncaught clone that is not traced; when
  every uncaught clone is traced, it is at most MEDIUM (a copy can be proven, not
  prevented).
* Membership exposure, per defense with a privacy cell: HIGH when the best membership
  attack tells at least 10% of the training rows at 0.1% false positives, MEDIUM at 1%,
  else LOWER. The rating as deployed is the worse of the extraction rating and this.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NotRequired, TypedDict

import yaml

from modelshield.attacks import ATTACKS
from modelshield.audit.scenario import Defense, Scenario
from modelshield.audit.stats import wilson
from modelshield.defenses.config import Tier

CLONE = 0.90
EXACT = 0.99
JOB_MARGIN = 0.02  # a copy this close to the model's own test accuracy does its job
TRACED = 1e-6  # a clone whose watermark test reaches this p-value is traced to its account
HIGH_SHARE = 0.01  # an uncaught clone under 1% of the model's value: HIGH
COST_FLOOR = 0.01  # keeps protection per unit of cost finite for free defenses


class FirstFlag(TypedDict):
    """The first query the Shield flagged in a cell, and the detector that flagged it."""

    query: int
    detector: str


class AttackerRow(TypedDict):
    """One attacker under one defense, as ``analyse`` writes it in each defense's
    ``attackers``. ``curve``: [queries, fidelity, accuracy or None] by queries; ``trace``:
    [queries, watermark p-value]; ``protection`` is added once every defense is summed up."""

    attacker: str
    attack: str
    status: str
    reason: str
    budgets: list[int]
    curve: list[list[Any]]
    best_fidelity: float | None
    best_accuracy: float | None
    q90: int | None
    clone_by: str | None
    victim_accuracy: float | None
    q99: int | None
    q90_range: list[int | None] | None
    test_rows: int
    usd90: float | None
    usd99: float | None
    first_flag: FirstFlag | None
    caught_before_90: bool
    waited_s: float | None
    went_on: bool
    blocked_at: int | None
    uncaught_clone: bool
    trace: list[list[float]]
    traced_p: float | None
    traced: bool
    q90_untraced: int | None
    usd90_untraced: float | None
    protection: NotRequired[float]
    unseen: NotRequired[int | None]


def analyse(scenario: Scenario, cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The analysis of a scenario's cells: each defense summed up and rated, the rating as
    deployed, the recommendations and the best defense against each attacker."""
    defenses = [_defense_summary(scenario, profile, cells) for profile in scenario.defenses]
    _score_protection(len(scenario.attackers), defenses)
    for d in defenses:
        _conclude(scenario, d)
    deployed = next(d for d in defenses if d["name"] == scenario.deployed_defense)
    return {
        "price_per_1k": scenario.price_per_1k, "model_value": scenario.model_value,
        "deployed": deployed["name"],
        "rating": _rating_as_deployed(scenario, deployed),
        "defenses": defenses,
        "recommendations": _recommend(scenario, defenses, deployed), "left": LEFT,
        "best_defenses": _best_defenses(scenario, defenses),
    }


def _defense_summary(scenario: Scenario, profile: Defense, cells: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """One defense before it is compared with the others: each attacker's summary, what
    honest users paid and the membership exposure."""
    tier = profile.as_tier()
    acts = tier.on_flag != "alert" or scenario.deployment.monitoring
    attacks = _cells(cells, "attack", profile.name)
    rows = [_attacker_summary(a.label, [c for c in attacks if c["attacker"] == a.label],
                              scenario.price_per_1k, acts, spread=a.keys > 1)
            for a in scenario.attackers]
    benign, benign_error = _benign(_first(cells, "benign", profile.name))
    privacy = _privacy(_first(cells, "privacy", profile.name))
    return {"name": profile.name, "tier": _tier_fields(profile), "on_flag": tier.on_flag,
            "detector_floor": _detector_floor(tier, benign),
            "flags_count": acts, "attackers": rows, "benign": benign,
            "benign_error": benign_error, "honest_cost": _honest_cost(benign),
            "privacy": privacy}


def _cells(cells: list[dict[str, Any]], kind: str, defense: str) -> list[dict[str, Any]]:
    return [c for c in cells if c["kind"] == kind and c["defense"] == defense]


def _first(cells: list[dict[str, Any]], kind: str, defense: str) -> dict[str, Any] | None:
    return next(iter(_cells(cells, kind, defense)), None)


def _benign(cell: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str | None]:
    """The honest-user cell, or None and why when it failed."""
    if cell is not None and cell.get("status") == "error":
        return None, str(cell["reason"])
    return cell, None


def _detector_floor(tier: Tier, benign: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fewest distinct queries at which any of the tier's detectors (those the
    calibration data let run, as the honest-user cell found) can flag an account: each
    rate test's first look, PRADA's first test, the volume cap. None: no detector."""
    from modelshield.defenses.detectors import detector_spec, make_detector

    left = {x.get("detector") for x in (benign or {}).get("detectors_left_out") or []}
    firsts = []
    for spec in tier.detectors:
        if detector_spec(spec)[0] in left:
            continue
        det = make_detector(spec)
        firsts.append((det.name, int(getattr(det, "max_rows", det.min_queries))))
    if not firsts:
        return None
    return {"queries": min(q for _, q in firsts), "detectors": [list(f) for f in firsts]}


def _score_protection(attackers: int, defenses: list[dict[str, Any]]) -> None:
    """Each attacker's protection under each defense, measured against the defense where it
    cloned with the fewest queries; and whether that clone is smaller than the defense's
    detectors can see (``unseen``: the queries it took, under the first look)."""
    for i in range(attackers):
        rows = [d["attackers"][i] for d in defenses]
        ref = min((r["q90"] for r in rows if r["q90"] is not None), default=None)
        for d, row in zip(defenses, rows, strict=True):
            row["protection"] = _protection(row, ref)
            floor = d["detector_floor"]
            seen_to = floor["queries"] if floor and row["status"] in ("ok", "blocked") else 0
            row["unseen"] = ref if ref is not None and ref < seen_to else None


def _conclude(scenario: Scenario, d: dict[str, Any]) -> None:
    """What the attackers did against defense ``d`` as a whole, and its rating."""
    d["broken_by"] = _adaptations_that_won(scenario, d["attackers"])
    d["protection"] = sum(r["protection"] for r in d["attackers"]) / len(d["attackers"])
    d["cheapest_clone"] = _cheapest(d["attackers"])
    d["cheapest_untraced_clone"] = _cheapest(d["attackers"], untraced=True)
    d["rating"], d["facts"] = _rate(scenario, d)


def _rating_as_deployed(scenario: Scenario, deployed: dict[str, Any]) -> dict[str, Any]:
    """The worse of the deployed defense's extraction rating and its membership exposure."""
    inference = deployed["privacy"]["level"] if deployed["privacy"] else None
    level = max(deployed["rating"], inference or "LOWER", key=LEVELS.index)
    return {"level": level, "defense": deployed["name"],
            "extraction": deployed["rating"], "inference": inference,
            "facts": deployed["facts"] + (deployed["privacy"] or {}).get("facts", [])
            + _deployment_facts(scenario)}


LEVELS = ["LOWER", "MEDIUM", "HIGH"]
PRIVACY_HIGH = 0.10  # a tenth of the training rows found at 0.1% false positives: HIGH
PRIVACY_MEDIUM = 0.01  # ten times the false-positive rate: MEDIUM


def _privacy(cell: dict[str, Any] | None) -> dict[str, Any] | None:
    """Membership exposure under one defense: each attack's TPR at 0.1% FPR and AUC, and a
    level from the best: HIGH when it finds at least 10% of the training rows at 0.1% false
    positives, MEDIUM at 1% (ten times the false-positive rate), else LOWER."""
    if cell is None:
        return None
    if cell.get("status") != "ok":
        return {"level": None, "attacks": [], "best": None, "members": None,
                "non_members": None,
                "facts": [f"Membership inference not measured: {cell.get('reason')}."]}
    rows = cell["attacks"]
    ok = [r for r in rows if r["status"] == "ok"]
    best = max(ok, key=lambda r: (r["tpr"]["0.1%"], r["auc"]), default=None)
    facts = []
    if best is None:
        level = "LOWER"
        facts.append("No membership attack got an answer it could use.")
    else:
        tpr = best["tpr"]["0.1%"]
        level = "HIGH" if tpr >= PRIVACY_HIGH else "MEDIUM" if tpr >= PRIVACY_MEDIUM else "LOWER"
        exact = "" if best["resolution"] <= 1e-3 else (
            f" (with {best['non_members']} non-members: at no false positive)")
        facts.append(f"Membership inference: {best['attack']} tells {tpr:.1%} of the "
                     f"{best['members']:,} training rows at 0.1% false positives{exact}, AUC "
                     f"{best['auc']:.3f}, with {best['queries']:,} queries "
                     f"(${best['cost']:,.2f}).")
    for r in rows:
        if r["status"] != "ok":
            facts.append(f"{r['attack']}: {r['status']} ({r['reason']}).")
    return {"level": level, "attacks": rows, "best": None if best is None else best["attack"],
            "facts": facts, "members": cell.get("members"),
            "non_members": cell.get("non_members")}


def _attacker_summary(label: str, cells: list[dict[str, Any]], price: float,
                      acts: bool, spread: bool = False) -> AttackerRow:
    """One attacker under one defense. ``spread``: its queries went over several keys, so
    a flag stops one key, not the attacker: a clone it completed anyway was not caught."""
    curve = _curve(cells)
    job = _does_job(cells)
    q90 = next((q for q, f, _ in curve if f >= CLONE or q in job), None)
    q99 = _first_reaching(curve, EXACT)
    by_job = q90 is not None and _first_reaching(curve, CLONE) != q90
    test_rows = max((int(c.get("test_rows") or 0) for c in cells), default=0)
    status, reason, blocked_at = _outcome(cells, bool(curve))
    flag = _first_flag(cells)
    caught, went_on = _caught(flag, q90, spread)
    traces = _traces(cells)
    untraced = min((q for q, f, _ in curve if (f >= CLONE or q in job)
                    and traces.get(q, 1.0) > TRACED), default=None)
    return {
        "attacker": label, "attack": cells[0]["attack"] if cells else "",
        "status": status, "reason": reason,
        "budgets": [c["budget"] for c in cells], "curve": curve,
        "best_fidelity": max((f for _, f, _ in curve), default=None),
        "best_accuracy": max((a for _, _, a in curve if a is not None), default=None),
        "q90": q90, "clone_by": None if q90 is None else "job" if by_job else "fidelity",
        "victim_accuracy": next((c["victim_accuracy"] for c in cells
                                 if c.get("victim_accuracy") is not None), None),
        "q99": q99, "q90_range": None if by_job else _q90_range(curve, test_rows),
        "test_rows": test_rows, "usd90": _usd_at(q90, price), "usd99": _usd_at(q99, price),
        "first_flag": flag, "caught_before_90": caught, "waited_s": _waited(cells),
        "went_on": went_on, "blocked_at": blocked_at,
        "uncaught_clone": q90 is not None and not (caught and acts),
        "trace": [[q, traces[q]] for q in sorted(traces)],
        "traced_p": None if q90 is None else traces.get(q90),
        "traced": q90 is not None and untraced is None,
        "q90_untraced": untraced, "usd90_untraced": _usd_at(untraced, price),
    }


def _curve(cells: list[dict[str, Any]]) -> list[list[Any]]:
    """[queries, fidelity, accuracy or None] over every cell's checkpoints and final clone,
    by queries; where two cells read the same query count, the larger budget's reading."""
    points: dict[int, tuple[float, float | None]] = {}
    # A failed cell's clone broke its attack's assumption: scored, never counted as a copy.
    for c in sorted((c for c in cells if c["status"] != "failed"), key=lambda c: c["budget"]):
        acc = dict((q, a) for q, a in c.get("accuracy_curve") or [])
        for q, f in c.get("curve") or []:
            points[int(q)] = (float(f), acc.get(q))
        if c.get("fidelity_test") is not None and c["queries"] not in points:
            points[int(c["queries"])] = (c["fidelity_test"], c.get("accuracy"))
    return [[q, f, a] for q, (f, a) in sorted(points.items())]


def _does_job(cells: list[dict[str, Any]]) -> set[int]:
    """The query counts at which a cell's clone does the model's job: test accuracy within
    ``JOB_MARGIN`` of the model's, or 90% agreement on the rows the model gets right."""
    out = set()
    for c in cells:
        model = c.get("victim_accuracy")
        if model is None:
            continue
        acc = dict((int(q), a) for q, a in c.get("accuracy_curve") or [])
        right = dict((int(q), r) for q, r in c.get("right_curve") or [])
        if c.get("accuracy") is not None and c.get("fidelity_right") is not None:
            acc.setdefault(int(c["queries"]), c["accuracy"])
            right.setdefault(int(c["queries"]), c["fidelity_right"])
        out |= {q for q, a in acc.items() if a >= model - JOB_MARGIN}
        out |= {q for q, r in right.items() if r >= CLONE}
    return out


def _first_reaching(curve: list[list[Any]], fidelity: float) -> int | None:
    return next((q for q, f, _ in curve if f >= fidelity), None)


def _q90_range(curve: list[list[Any]], rows: int) -> list[int | None] | None:
    """A small test set reads fidelity coarsely (45 rows: about +-0.09 at 0.9). The range runs
    from the first budget whose 95% interval reaches 90% to the first whose interval lies
    wholly above it (None: not within the budgets)."""
    if not rows or not curve:
        return None
    bounds = [(q, wilson(f, rows)) for q, f, _ in curve]
    return [next((q for q, (_, hi) in bounds if hi >= CLONE), None),
            next((q for q, (lo, _) in bounds if lo >= CLONE), None)]


def _first_flag(cells: list[dict[str, Any]]) -> FirstFlag | None:
    flags = [c["first_flag"] for c in cells if c.get("first_flag")]
    return min(flags, key=lambda f: f["query"]) if flags else None


def _caught(flag: FirstFlag | None, q90: int | None, spread: bool) -> tuple[bool, bool]:
    """Whether the flag came before the clone reached 90% (or there was no clone) and stopped
    the attacker, and whether a ``spread`` attacker went on with its other keys instead."""
    flagged_first = flag is not None and q90 is not None and flag["query"] <= q90
    caught = flag is not None and (q90 is None or (flagged_first and not spread))
    return caught, spread and flagged_first


def _waited(cells: list[dict[str, Any]]) -> float | None:
    """A paced attacker: the time it waited out rate limits, to its first clone (or in all)."""
    paced = sorted((c for c in cells if c.get("waited_s") is not None),
                   key=lambda c: c["budget"])
    if not paced:
        return None
    cloned = [c for c in paced if (c.get("fidelity_test") or 0) >= CLONE]
    waited: float = (cloned[0] if cloned else max(paced, key=lambda c: c["waited_s"]))["waited_s"]
    return waited


def _traces(cells: list[dict[str, Any]]) -> dict[int, float]:
    """Each clone at 90% or more, tested against the watermarks (the larger p where two cells
    hold a clone at the same query count); a clone never tested is not traced."""
    traces: dict[int, float] = {}
    for c in cells:
        for q, p in c.get("trace") or []:
            traces[int(q)] = max(float(p), traces.get(int(q), 0.0))
    return traces


def _outcome(cells: list[dict[str, Any]], read: bool) -> tuple[str, str, int | None]:
    """The status (a failure's where the attacker got no reading at all: ``read``), the
    reason of the first failed or blocked cell, and the fewest queries a block came at."""
    blocked = [c for c in cells if c["status"] == "blocked"]
    failed = [c for c in cells if c["status"] not in ("ok", "blocked")]
    if not read and failed:
        status = str(failed[0]["status"])
    else:
        status = "blocked" if blocked else "ok"
    reason: str = (failed or blocked or [{}])[0].get("reason", "")
    return status, reason, min((c["queries"] for c in blocked), default=None)


def _usd_at(queries: int | None, price: float) -> float | None:
    return None if queries is None else queries * price / 1000


# Attack parameters by which an attacker adapts to a defense, and the values that do.
ADAPTIVE_PARAMS: dict[str, Callable[[Any], bool]] = {
    "student": lambda v: v == "auto", "labels": lambda v: v in ("auto", "hard"),
    "votes": lambda v: int(v) > 1, "prune": lambda v: v in (True, "true", 1)}


def adaptation(a: Any, b: Any) -> str:
    """How attacker ``a`` adapts where ``b`` does not, if ``a`` is ``b`` plus adaptations
    (more keys, natural rows mixed in, labels or student chosen on held-out answers,
    votes over repeated queries, pruning); '' otherwise."""
    if a.attack != b.attack or b.adaptive:
        return ""

    def rest(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k not in ADAPTIVE_PARAMS}

    if rest(a.params) != rest(b.params):
        return ""
    parts = [a.adaptation] if a.adaptive else []
    mine, theirs = _effective(a), _effective(b)  # defaults count: knockoff's student is auto
    for k, adapts in ADAPTIVE_PARAMS.items():
        v = mine.get(k)
        if v is not None and v != theirs.get(k) and adapts(v):
            parts.append(f"{k}: {v}")
    return ", ".join(p for p in parts if p)


def _effective(attacker: Any) -> dict[str, Any]:
    """The attacker's adaptive settings as its attack runs them, defaults included."""
    obj = ATTACKS[attacker.attack](**attacker.kwargs)
    return {k: getattr(obj, k) for k in ADAPTIVE_PARAMS if hasattr(obj, k)}


def _adaptations_that_won(scenario: Scenario, rows: list[dict[str, Any]]
                          ) -> list[dict[str, Any]]:
    """Adaptive attackers that got an uncaught clone where their plain counterpart (the
    same attack and parameters, without the adaptation) did not, or got it cheaper."""
    out = []
    attackers = scenario.attackers
    for i, a in enumerate(attackers):
        if not rows[i]["uncaught_clone"]:
            continue
        for j, b in enumerate(attackers):
            how = adaptation(a, b) if i != j else ""
            if not how:
                continue
            plain = rows[j]
            if not plain["uncaught_clone"] or (plain["q90"] or 0) > (rows[i]["q90"] or 0):
                out.append({"adaptive": a.label, "plain": b.label, "how": how,
                            "queries": rows[i]["q90"],
                            "plain_result": "uncaught clone at "
                            f"{plain['q90']} queries" if plain["uncaught_clone"] else
                            ("caught" if plain["caught_before_90"] else "no clone")})
    return out


LEFT = ("watermark tracing (a tier's watermark; modelshield verify names the key a copy "
        "came from), the price per query, and the terms of service")


def _best_defenses(scenario: Scenario, defenses: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each attacker, the defense of the scenario (listed, or written by its
    ``search``) that stops it (no uncaught clone)
    at the least honest-user cost within the scenario's ``honest_budget``; or, when none
    does, the measurement that says so: the defenses that stop it and what they cost
    honest users, and what is left."""
    limit = scenario.honest_budget
    generated = {d.name for d in scenario.defenses if d.generated}
    out = []
    for i, a in enumerate(scenario.attackers):
        stops, over = [], []
        for d in defenses:
            row = d["attackers"][i]
            if row["uncaught_clone"]:
                continue
            if row.get("unseen") and row["first_flag"] is not None:
                over.append({"defense": d["name"], "why": "its detectors first look at "
                             f"{d['detector_floor']['queries']:,} queries; the attack "
                             f"clones in {row['unseen']:,}"})
                continue
            b = d["benign"]
            if b is None:
                over.append({"defense": d["name"], "why": "honest users not measured"})
                continue
            lost = max(0.0, b["model_accuracy"] - b["accuracy"])
            flagged = max(b["flagged_share"], b["refused_share"])
            entry = {"defense": d["name"], "honest_cost": d["honest_cost"],
                     "accuracy_lost": lost, "flagged_share": flagged,
                     "generated": d["name"] in generated}
            if lost <= limit.accuracy_lost and flagged <= limit.flagged_share:
                stops.append(entry)
            else:
                over.append({**entry, "why": f"costs honest users {lost:.1%} accuracy and "
                             f"flags or refuses {flagged:.1%} of accounts"})
        best = min(stops, key=lambda e: e["honest_cost"]) if stops else None
        out.append({"attacker": a.label, "adaptive": a.adaptation, "best": best,
                    "over_budget": over, "left": None if best else LEFT})
    return out


def duration(seconds: float) -> str:
    """``seconds`` in the largest unit that reads well: '45 s', '12 min', '3.5 h', '9.2 days'."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:,.1f} days"


def _protection(row: dict[str, Any], ref: int | None) -> float:
    if not row["uncaught_clone"]:
        return 1.0
    if ref is None or row["q90"] is None:
        return 0.0
    return min(1.0, max(0.0, math.log10(row["q90"] / ref) / 2))


def _cheapest(rows: list[dict[str, Any]], untraced: bool = False) -> dict[str, Any] | None:
    """The cheapest uncaught clone (``untraced``: of those the watermark does not trace)."""
    field = "q90_untraced" if untraced else "q90"
    clones = [r for r in rows if r["uncaught_clone"] and r.get(field) is not None]
    if not clones:
        return None
    r = min(clones, key=lambda r: r[field])
    f, a = next((f, a) for q, f, a in r["curve"] if q == r[field])
    return {"attacker": r["attacker"], "queries": r[field],
            "usd": r["usd90_untraced" if untraced else "usd90"],
            "fidelity": f, "accuracy": a, "victim_accuracy": r["victim_accuracy"],
            "by": "fidelity" if f >= CLONE else "job"}


def _honest_cost(benign: dict[str, Any] | None) -> float | None:
    if benign is None:
        return None
    lost = max(0.0, benign["model_accuracy"] - benign["accuracy"])
    miscalibrated = max(0.0, benign["ece"] - benign["model_ece"])
    return float(lost + miscalibrated + benign["flagged_share"] + benign["refused_share"])


def _rate(scenario: Scenario, d: dict[str, Any]) -> tuple[str, list[str]]:
    """Defense ``d``'s extraction rating and the facts behind it (the module's docstring
    gives the rules)."""
    rows = d["attackers"]
    caught = [r for r in rows if r["q90"] is not None and not r["uncaught_clone"]]
    if d["cheapest_clone"] is not None:
        level, facts = _rate_clone(scenario, d)
    elif caught:
        level, facts = "MEDIUM", [_caught_fact(r, r["first_flag"]) for r in caught]
    else:
        level, facts = "LOWER", [_best_attempt_fact(rows)]
    return level, facts + [f for r in rows for f in _status_fact(r)] + _unseen_facts(d)


def _unseen_facts(d: dict[str, Any]) -> list[str]:
    """The attackers whose clone takes fewer queries than the tier's detectors first look at."""
    floor = d["detector_floor"]
    return [f"{r['attacker']} clones in {r['unseen']:,} queries, fewer than this tier's "
            f"detectors first look at ({_firsts(floor)}): they cannot see an attack that "
            "small; the price per query, limits and watermark tracing are what is left."
            for r in d["attackers"] if r.get("unseen")]


def _firsts(floor: dict[str, Any]) -> str:
    return ", ".join(f"{name} from {q:,}" for name, q in floor["detectors"])


def _rate_clone(scenario: Scenario, d: dict[str, Any]) -> tuple[str, list[str]]:
    """The rating where some attacker got an uncaught clone: by the cheapest one the
    watermark does not trace; at most MEDIUM where the watermark traces them all."""
    clone, basis = d["cheapest_clone"], d["cheapest_untraced_clone"]
    row = next(r for r in d["attackers"] if r["attacker"] == clone["attacker"])
    facts = [_clone_fact(scenario, clone), *_waiting_fact(row), _flag_fact(row),
             *_unflagged_fact(scenario, d, row), *_trace_fact(clone, basis)]
    share = (basis or clone)["usd"] / scenario.model_value
    if share < HIGH_SHARE and scenario.deployment.public_api and basis is not None:
        return "HIGH", facts
    if share < 1.0:
        return "MEDIUM", facts
    return "LOWER", [*facts, "Cloning costs more than building the model."]


def _clone_fact(scenario: Scenario, clone: dict[str, Any]) -> str:
    price, value = scenario.price_per_1k, scenario.model_value
    what = f"A {clone['fidelity']:.0%}-fidelity clone"
    if clone.get("by") == "job":
        what = (f"A clone that does the model's job (test accuracy {clone['accuracy']:.3f}, "
                f"the model's {clone['victim_accuracy']:.3f}; {clone['fidelity']:.0%} "
                "agreement overall)")
    return (f"{what} ({clone['attacker']}) costs "
            f"${clone['usd']:,.2f} ({clone['queries']:,} queries at ${price:,.2f} per 1,000); "
            f"the model cost ${value:,.0f} to build ({_share(clone['usd'] / value)} of that).")


def _waiting_fact(row: AttackerRow) -> list[str]:
    waited = row["waited_s"]
    if not waited:
        return []
    return [f"It waited out the rate limits: {duration(waited)} of "
            "waiting (low and slow), which the limits cost it and nothing more."]


def _flag_fact(row: AttackerRow) -> str:
    """Why the Shield did not stop the attacker that made the cheapest clone."""
    flag = row["first_flag"]
    if flag is None:
        return "The Shield never flagged that attacker."
    if row["went_on"]:
        return (f"The Shield flagged one of its keys at query {flag['query']:,} "
                f"({flag['detector']}), but it went on with its other keys: a flag "
                "stops a key, not an attacker with several.")
    if not row["caught_before_90"]:
        return (f"The Shield flagged it at query {flag['query']:,} ({flag['detector']}), "
                f"after the clone reached 90% at {row['q90']:,}.")
    return (f"The Shield flagged it at query {flag['query']:,} ({flag['detector']}), "
            "but the tier only alerts and nobody watches the alerts.")


def _unflagged_fact(scenario: Scenario, d: dict[str, Any], row: AttackerRow) -> list[str]:
    """Detectors that let the cheapest clone through unflagged: say so, and what is left."""
    floor = d["detector_floor"]
    if floor is None or row["first_flag"] is not None:
        return []
    attacker = next(a for a in scenario.attackers if a.label == row["attacker"])
    natural = attacker.natural_only
    sends = " (it sends only natural rows, as customers do)" if natural else ""
    return [f"None of this tier's detectors ({', '.join(n for n, _ in floor['detectors'])}) "
            f"flagged this attacker{sends}: they do not stop it. What raises its cost is "
            "the price per query "
            "and the rate limits; a watermark on the tier traces the copy to its account "
            "(modelshield verify)."]


def _trace_fact(clone: dict[str, Any], basis: dict[str, Any] | None) -> list[str]:
    """A clone the watermark traces to its account (p <= 1e-6) is proof, not prevention:
    the rating follows the cheapest clone that is not traced."""
    if basis is None:
        return [f"Every clone of 90% fidelity or more that the audit made is traced to "
                f"the account that made it (watermark p <= {TRACED:g}): a copy can "
                "be proven, not prevented."]
    if basis["queries"] != clone["queries"] or basis["attacker"] != clone["attacker"]:
        return [f"The watermark traces the cheaper clones; the cheapest it does not "
                f"trace ({basis['attacker']}) costs ${basis['usd']:,.2f} "
                f"({basis['queries']:,} queries)."]
    return []


def _caught_fact(r: AttackerRow, flag: FirstFlag) -> str:
    return (f"{r['attacker']} could reach 90% fidelity in {r['q90']:,} queries "
            f"(${r['usd90']:,.2f}), but the Shield caught it at query "
            f"{flag['query']:,} ({flag['detector']}).")


def _best_attempt_fact(rows: list[AttackerRow]) -> str:
    best = max((r for r in rows if r["best_fidelity"] is not None),
               key=lambda r: r["best_fidelity"] or 0.0, default=None)
    if best is None:
        return "No attacker got a usable answer: every attack was refused or blocked."
    return (f"No attacker reached 90% fidelity within its budget; the best was "
            f"{best['attacker']} at {best['best_fidelity']:.1%} "
            f"({best['curve'][-1][0]:,} queries).")


def _status_fact(r: AttackerRow) -> list[str]:
    if r["status"] in ("refused", "failed", "error", "out of budget"):
        return [f"{r['attacker']}: {r['status']} ({r['reason']})."]
    if r["status"] == "blocked" and r["blocked_at"] is not None:
        return [f"{r['attacker']}: blocked after {r['blocked_at']:,} queries."]
    return []


def _deployment_facts(scenario: Scenario) -> list[str]:
    dep = scenario.deployment
    yes = {True: "yes", False: "no"}
    return [f"Deployment as stated: public API {yes[dep.public_api]}, generous limits "
            f"{yes[dep.generous_limits]}, monitoring {yes[dep.monitoring]}."]


def _tier_fields(defense: Defense) -> dict[str, Any]:
    """The tier's settings that differ from a default tier: what turns this defense on."""
    tier = defense.as_tier().model_dump(exclude_defaults=True)
    tier.pop("max_batch", None)
    return tier


def config_snippet(defense: dict[str, Any], scenario: Scenario, tier_name: str = "free"
                   ) -> str:
    d = next(x for x in scenario.defenses if x.name == defense["name"])
    if d.config is not None:
        return f"# use tier {d.tier!r} of {d.config}\n"
    fields = defense["tier"] or {"policy": Tier().policy}
    return yaml.safe_dump({"tiers": {tier_name: fields}}, sort_keys=False)


def _recommend(scenario: Scenario, defenses: list[dict[str, Any]],
               deployed: dict[str, Any]) -> list[dict[str, Any]]:
    """The defenses better than the deployed one: those that protect more against the
    extraction attackers, or as well with less membership exposure (where the scenario
    measures it). Ranked by the overall rating they reach (the worse of extraction and
    membership), then by protection gained per unit of extra cost to honest users, then by
    membership exposure."""
    base_cost = deployed["honest_cost"] or 0.0
    was = (deployed["privacy"] or {}).get("level")
    out = []
    for d in defenses:
        gain = d["protection"] - deployed["protection"]
        inference = (d["privacy"] or {}).get("level")
        safer = inference is not None and was is not None and \
            LEVELS.index(inference) < LEVELS.index(was)
        before, after = deployed["cheapest_clone"], d["cheapest_clone"]
        # Against the strongest attacker played: a defense whose cheapest clone costs no
        # more than the deployed one's protects nothing, whatever it does to the others.
        stronger = before is None or after is None or after["queries"] > before["queries"]
        if d is deployed or not ((gain > 1e-9 and stronger) or (safer and gain >= -1e-9)):
            continue
        cost = d["honest_cost"]
        extra = None if cost is None else max(0.0, cost - base_cost)
        effect = (f"cheapest uncaught clone: {_usd(before)} -> {_usd(after)}")
        if inference is not None and was is not None:
            effect += f"; membership exposure: {was} -> {inference}"
        out.append({"defense": d["name"], "protection": float(d["protection"]),
                    "protection_gain": float(gain), "honest_cost": extra,
                    "score": float(max(gain, 0.0) / ((extra or 0.0) + COST_FLOOR)),
                    "rating": d["rating"], "inference": inference, "overall": _overall(d),
                    "effect": effect, "config": config_snippet(d, scenario)})
    out.sort(key=lambda r: (LEVELS.index(r["overall"]), -r["score"],
                            LEVELS.index(r["inference"] or "LOWER")))
    return out


def _overall(d: dict[str, Any]) -> str:
    """The worse of a defense's extraction rating and its membership exposure."""
    inference = (d["privacy"] or {}).get("level") or "LOWER"
    return str(max(d["rating"], inference, key=LEVELS.index))


def _share(x: float) -> str:
    return f"{x:.2%}" if x >= 1e-4 else "under 0.01%"


def _usd(clone: dict[str, Any] | None) -> str:
    return "none within the budgets" if clone is None else f"${clone['usd']:,.2f}"
