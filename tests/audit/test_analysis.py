"""The rating and the recommendations, decided from cells written by hand."""

from __future__ import annotations

from typing import Any

import pytest

from modelshield.audit.analysis import analyse
from modelshield.audit.scenario import load_scenario


def scenario(**over: Any) -> Any:
    base = {"price_per_1k": 1.0, "model_value": 10_000, "target": {"victim": "digits-mlp"},
            "attackers": [{"name": "k", "attack": "knockoff", "budgets": [1000]}],
            "defenses": [{"name": "open"},
                         {"name": "alerting", "detectors": ["ood"], "on_flag": "alert"},
                         {"name": "denying", "detectors": ["ood"], "on_flag": "deny"}],
            "adaptive": False}  # the cells below are one attacker's
    return load_scenario({**base, **over})


def attack(defense: str, curve: list[tuple[int, float]], flag: int | None = None,
           status: str = "ok") -> dict[str, Any]:
    return {"kind": "attack", "defense": defense, "attacker": "k", "attack": "knockoff",
            "budget": 1000, "status": status, "reason": "", "queries": curve[-1][0],
            "curve": [list(p) for p in curve], "accuracy_curve": [],
            "fidelity_test": curve[-1][1], "accuracy": None,
            "first_flag": None if flag is None else {"query": flag, "detector": "ood"}}


def benign(defense: str, flagged: float = 0.0) -> dict[str, Any]:
    return {"kind": "benign", "defense": defense, "accuracy": 0.95, "model_accuracy": 0.95,
            "ece": 0.02, "model_ece": 0.02, "flagged_share": flagged, "refused_share": 0.0}


CURVE = [(100, 0.7), (300, 0.91), (1000, 0.96)]


def cells(alert_flag: int | None = 200, deny_curve: list[tuple[int, float]] | None = None
          ) -> list[dict[str, Any]]:
    return [attack("open", CURVE), benign("open"),
            attack("alerting", CURVE, flag=alert_flag), benign("alerting", 0.02),
            attack("denying", deny_curve or [(100, 0.7), (200, 0.8)], flag=200,
                   status="blocked"), benign("denying", 0.02)]


def rating(a: dict[str, Any], name: str) -> str:
    return str(next(d["rating"] for d in a["defenses"] if d["name"] == name))


def test_a_cheap_uncaught_clone_on_a_public_api_is_high() -> None:
    a = analyse(scenario(), cells())
    assert rating(a, "open") == "HIGH" and a["rating"]["level"] == "HIGH"
    assert "costs $0.30 (300 queries" in a["rating"]["facts"][0]
    # An alert nobody reads does not catch anyone; a deny that stops it at 200 does.
    assert rating(a, "alerting") == "HIGH"
    assert rating(a, "denying") == "LOWER"


def test_an_alert_counts_when_someone_watches() -> None:
    a = analyse(scenario(deployment={"monitoring": True}), cells())
    alerting = next(d for d in a["defenses"] if d["name"] == "alerting")
    assert alerting["rating"] == "MEDIUM" and alerting["cheapest_clone"] is None
    assert any("caught it at query 200" in f for f in alerting["facts"])
    # A flag after the clone reached 90% catches nobody, watched or not.
    late = analyse(scenario(deployment={"monitoring": True}), cells(alert_flag=500))
    assert rating(late, "alerting") == "HIGH"


def test_cost_against_value_and_the_public_api_decide_the_level() -> None:
    assert rating(analyse(scenario(model_value=20), cells()), "open") == "MEDIUM"
    assert rating(analyse(scenario(model_value=0.2), cells()), "open") == "LOWER"
    assert rating(analyse(scenario(deployment={"public_api": False}), cells()), "open") == \
        "MEDIUM"


def test_protection_and_recommendations() -> None:
    a = analyse(scenario(), cells())
    prot = {d["name"]: d["protection"] for d in a["defenses"]}
    assert prot == {"open": 0.0, "alerting": 0.0, "denying": 1.0}
    recs = a["recommendations"]
    assert [r["defense"] for r in recs] == ["denying"]
    assert recs[0]["honest_cost"] == pytest.approx(0.02)  # honest accounts flagged
    assert recs[0]["score"] == pytest.approx(1.0 / (0.02 + 0.01))
    assert "on_flag: deny" in recs[0]["config"] and "- ood" in recs[0]["config"]
    assert recs[0]["effect"] == "cheapest uncaught clone: $0.30 -> none within the budgets"


def test_needing_more_queries_protects_on_a_log_scale() -> None:
    slow = [(1000, 0.7), (30000, 0.95)]  # 100x the queries of the open API: full credit
    a = analyse(scenario(), [attack("open", [(300, 0.95)]), attack("alerting", slow),
                             attack("denying", [(3000, 0.95)])])
    prot = {d["name"]: d["protection"] for d in a["defenses"]}
    assert prot["open"] == 0.0 and prot["alerting"] == 1.0
    assert prot["denying"] == pytest.approx(0.5)  # 10x the queries


def test_queries_to_90_carries_the_range_a_small_test_set_leaves() -> None:
    def row(rows: int) -> dict[str, Any]:
        cs = [{**attack("open", CURVE), "test_rows": rows}, benign("open")]
        a = analyse(scenario(defenses=[{"name": "open"}]), cs)
        return dict(a["defenses"][0]["attackers"][0])

    small, large = row(45), row(5000)
    assert small["q90"] == large["q90"] == 300
    # 0.91 on 45 rows could be 0.79; 0.96 could be 0.85: no budget is surely past 90%.
    assert small["q90_range"] == [300, None] and small["test_rows"] == 45
    assert large["q90_range"] == [300, 300]


def privacy(defense: str, tpr: float) -> dict[str, Any]:
    row = {"attack": "lira", "status": "ok", "tpr": {"1%": tpr, "0.1%": tpr, "0.001%": 0.0},
           "auc": 0.8, "members": 250, "non_members": 250, "resolution": 0.004,
           "queries": 500, "cost": 0.5}
    return {"kind": "privacy", "defense": defense, "status": "ok", "attacks": [row]}


def test_a_defense_that_lowers_membership_exposure_is_recommended() -> None:
    # Extraction: every defense stops nobody (HIGH everywhere); membership: the deployed
    # "open" lets a fifth of the members out, "alerting" (say, labels only) none.
    cs = [attack("open", CURVE), benign("open"), privacy("open", 0.2),
          attack("alerting", CURVE), benign("alerting"), privacy("alerting", 0.0),
          attack("denying", CURVE), benign("denying"), privacy("denying", 0.05)]
    a = analyse(scenario(), cs)
    assert a["rating"]["inference"] == "HIGH"
    recs = a["recommendations"]
    # Extraction stays HIGH for all; the two that leak fewer members are listed, the one
    # that leaks none first.
    assert [(r["defense"], r["inference"]) for r in recs] == [("alerting", "LOWER"),
                                                              ("denying", "MEDIUM")]
    assert recs[0]["protection_gain"] == 0.0
    assert recs[0]["effect"].endswith("membership exposure: HIGH -> LOWER")
    # With an extraction defense that works, the one that also closes membership ranks first.
    cs = [attack("open", CURVE), benign("open"), privacy("open", 0.2),
          attack("alerting", [(100, 0.7), (200, 0.8)], flag=200, status="blocked"),
          benign("alerting", 0.05), privacy("alerting", 0.0),
          attack("denying", [(100, 0.7), (200, 0.8)], flag=200, status="blocked"),
          benign("denying", 0.01), privacy("denying", 0.2)]
    recs = analyse(scenario(), cs)["recommendations"]
    assert [r["defense"] for r in recs] == ["alerting", "denying"]
    assert recs[0]["overall"] == "LOWER" and recs[1]["overall"] == "HIGH"
    assert recs[1]["score"] > recs[0]["score"]  # cheaper, but leaves membership open
    assert "membership exposure: HIGH -> HIGH" in recs[1]["effect"]


def test_a_clone_the_watermark_traces_is_proof_not_prevention() -> None:
    """A clone traced to its account (p <= 1e-6) does not set the rating: the cheapest
    untraced one does; when every clone is traced the rating is at most MEDIUM."""
    def traced(curve: list[tuple[int, float]], trace: list[list[float]]) -> dict[str, Any]:
        return {**attack("open", curve), "trace": trace}

    every = analyse(scenario(), [traced(CURVE, [[300, 1e-9], [1000, 1e-20]]), benign("open")])
    row = every["defenses"][0]["attackers"][0]
    assert row["traced"] and row["traced_p"] == 1e-9 and row["q90_untraced"] is None
    assert rating(every, "open") == "MEDIUM"  # $0.30 would be HIGH untraced
    assert any("can be proven, not prevented" in f for f in every["rating"]["facts"])
    # Traced at 300 queries, not at 1,000 (p 1e-4): the untraced clone at 1,000 sets it.
    part = analyse(scenario(model_value=50),
                   [traced(CURVE, [[300, 1e-9], [1000, 1e-4]]), benign("open")])
    row = part["defenses"][0]["attackers"][0]
    assert not row["traced"] and row["q90_untraced"] == 1000
    assert part["defenses"][0]["cheapest_untraced_clone"]["usd"] == 1.0
    assert rating(part, "open") == "MEDIUM"  # $1.00 of $50: 2%, not under 1%
    assert any("cheapest it does not trace (k) costs $1.00" in f
               for f in part["rating"]["facts"])
    # Weaker than 1e-6 is not traced; no trace at all (no watermark) neither.
    weak = analyse(scenario(), [traced(CURVE, [[300, 1e-5], [1000, 1e-5]]), benign("open")])
    assert rating(weak, "open") == "HIGH"
    plain = analyse(scenario(), cells())
    assert plain["defenses"][0]["attackers"][0]["trace"] == []
    assert not plain["defenses"][0]["attackers"][0]["traced"]


def job_cell(defense: str, fidelity: float, accuracy: float, right: float,
             model: float = 0.683, queries: int = 1000) -> dict[str, Any]:
    """A knockoff cell on a model that is right 68% of the time."""
    return {**attack(defense, [(queries, fidelity)]), "accuracy": accuracy,
            "accuracy_curve": [[queries, accuracy]], "victim_accuracy": model,
            "fidelity_right": right, "right_curve": [[queries, right]]}


def test_a_clone_as_accurate_as_a_weak_model_is_a_theft_whatever_its_agreement() -> None:
    # Item 5 of the true-to-the-world issue: 0.771 fidelity, 0.684 accuracy against the
    # model's 0.683, for $1: every defense was LOWER, "no clone reached 90%".
    s = scenario(defenses=[{"name": "none"}])
    a = analyse(s, [job_cell("none", 0.771, 0.684, 0.93), benign("none")])
    row = a["defenses"][0]["attackers"][0]
    assert row["q90"] == 1000 and row["clone_by"] == "job" and row["uncaught_clone"]
    assert rating(a, "none") == "HIGH"
    assert "does the model's job (test accuracy 0.684, the model's 0.683" in \
        a["rating"]["facts"][0]
    assert row["q90_range"] is None  # the fidelity interval does not time this clone


@pytest.mark.parametrize(("accuracy", "right", "clone"), [
    (0.684, 0.80, True),  # as accurate, right in other places
    (0.63, 0.91, True),  # 91% of the model's right answers
    (0.64, 0.85, False),  # 4 points less accurate, and 15% of its right answers lost
    (0.50, 0.70, False)])
def test_a_weaker_copy_is_no_clone(accuracy: float, right: float, clone: bool) -> None:
    s = scenario(defenses=[{"name": "none"}])
    a = analyse(s, [job_cell("none", 0.771, accuracy, right), benign("none")])
    assert (a["defenses"][0]["attackers"][0]["q90"] is not None) is clone
    assert rating(a, "none") == ("HIGH" if clone else "LOWER")


def test_detectors_that_first_look_after_the_clone_cannot_see_it_and_are_not_offered(
        ) -> None:
    # Item 7: a clone at 40 queries; prada's first look is at 100 distinct queries. Where
    # the attacker went on past the clone the flag came, but a thief stops at 40.
    s = scenario(defenses=[{"name": "open"},
                           {"name": "prada", "detectors": ["prada"], "on_flag": "deny"}])
    open_cell = attack("open", [(40, 0.93), (300, 0.97)])
    watched = attack("prada", [(300, 0.97)], flag=120)
    a = analyse(s, [open_cell, benign("open"), watched, benign("prada")])
    prada = next(d for d in a["defenses"] if d["name"] == "prada")
    assert any("cannot see an attack that small" in f and "40 queries" in f
               for f in prada["facts"])
    best = a["best_defenses"][0]
    assert best["best"] is None
    assert any(o["defense"] == "prada" and "first look at 100 queries" in o["why"]
               for o in best["over_budget"])


def test_a_defense_that_leaves_the_cheapest_clone_as_cheap_is_not_recommended() -> None:
    # The demo's "rounded" gained protection against a weaker attacker only: its cheapest
    # uncaught clone cost what the deployed one's did, so it protects nothing.
    s = load_scenario({
        "price_per_1k": 1.0, "model_value": 10_000, "target": {"victim": "digits-mlp"},
        "attackers": [{"name": "k", "attack": "knockoff", "budgets": [1000]},
                      {"name": "a", "attack": "active", "budgets": [1000]}],
        "defenses": [{"name": "open"}, {"name": "rounded", "policy": "round:1"}],
        "adaptive": False})

    def cell(defense: str, attacker: str, q: int) -> dict[str, Any]:
        return {**attack(defense, [(q, 0.95)]), "attacker": attacker}

    cells = [cell("open", "k", 100), cell("open", "a", 100), benign("open"),
             cell("rounded", "k", 100), cell("rounded", "a", 300), benign("rounded")]
    a = analyse(s, cells)
    rounded = next(d for d in a["defenses"] if d["name"] == "rounded")
    assert rounded["protection"] > a["defenses"][0]["protection"]  # it did protect a bit
    assert a["recommendations"] == [] and "watermark" in a["left"]
