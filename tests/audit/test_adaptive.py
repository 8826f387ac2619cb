"""Attackers who know the defense: the budget spread over keys, natural rows mixed in, and
the audit naming the adaptation that broke a defense."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield.audit.analysis import analyse
from modelshield.audit.scenario import load_scenario
from modelshield.errors import Blocked
from modelshield.oracle.shielded import SpreadOracle
from modelshield.serve.factory import build_shield
from modelshield.victims import Victim


def shield(tmp: Path, **tier: Any) -> Any:
    return build_shield({"model": {"builtin": "digits-mlp"}, "audit_url": f"sqlite:///{tmp}/a.db",
                         "tiers": {"t": {"max_batch": 1000, **tier}}})


def test_a_refused_key_hands_over_to_the_next(tmp_path: Path, victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    sh = shield(tmp_path, detectors=["ood"], on_flag="deny")
    keys = [(sh.store.create_key("t", owner=f"o{i}")[0], f"10.0.{i}.7") for i in range(3)]
    oracle = SpreadOracle(sh, keys, budget=200)
    assert len(oracle.query(v.honest[:10])) == 10  # natural rows on the first key pass
    noise = np.random.default_rng(0).uniform(0, 16, (30, 64))
    with pytest.raises(Blocked):  # each key in turn is suspended by the noise
        oracle.query(noise)
    assert oracle.first_flag == (40, "ood") and oracle.current == 2
    assert len(sh.store.flags()) == 3
    sh.close()


def test_the_budget_is_spread_over_the_keys(tmp_path: Path, victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    sh = shield(tmp_path)
    keys = [(sh.store.create_key("t", owner=f"o{i}")[0], f"10.0.{i}.7") for i in range(4)]
    oracle = SpreadOracle(sh, keys, budget=100)
    for i in range(10):
        oracle.query(v.honest[10 * i : 10 * i + 10])
    assert oracle.sent_by_key == [30, 30, 30, 10]  # 25 each, rounded up to whole requests
    sh.close()


def test_natural_rows_dilute_the_stream_and_are_paid_for(tmp_path: Path,
                                                         victims: dict[str, Victim]) -> None:
    v = victims["digits-mlp"]
    sh = shield(tmp_path)
    oracle = SpreadOracle(sh, [(sh.store.create_key("t")[0], "10.0.0.7")], mix=0.5,
                          natural=v.pool, budget=100)
    x = v.honest[:20]
    answer = oracle.query(x)
    np.testing.assert_array_equal(answer.labels, v.predict_labels(x))  # its own rows' answers
    assert oracle.natural_rows == 20 and oracle.used == 40
    assert oracle.remaining == 30  # the attack's share of the 60 left: half are natural
    assert sh.store.count() == 1  # one request held both
    # An attack that spends its share in one call leaves room for the natural rows: the
    # whole stream stays within the budget.
    oracle.query(v.honest[20:50])
    assert oracle.used == 100 and oracle.natural_rows == 50 and oracle.remaining == 0
    sh.close()


def test_the_report_names_the_adaptation_that_broke_a_defense() -> None:
    scenario = load_scenario({
        "target": {"victim": "digits-mlp"},
        "attackers": [{"name": "plain", "attack": "knockoff", "budgets": [1000]},
                      {"name": "ten keys", "attack": "knockoff", "budgets": [1000], "keys": 10}],
        "defenses": [{"name": "watched", "detectors": ["ood"], "on_flag": "deny"}]})

    def cell(attacker: str, curve: list[list[float]], flag: int | None) -> dict[str, Any]:
        return {"kind": "attack", "defense": "watched", "attacker": attacker, "budget": 1000,
                "attack": "knockoff", "status": "ok", "queries": 1000, "curve": curve,
                "first_flag": None if flag is None else {"query": flag, "detector": "ood"},
                "fidelity_test": curve[-1][1], "test_rows": 450}

    cells = [cell("plain", [[100, 0.5], [1000, 0.95]], 100),
             cell("ten keys", [[100, 0.5], [1000, 0.95]], None)]
    d = analyse(scenario, cells)["defenses"][0]
    assert d["broken_by"] == [{"adaptive": "ten keys", "plain": "plain", "how": "10 keys",
                               "queries": 1000, "plain_result": "caught"}]
    assert d["cheapest_clone"]["attacker"] == "ten keys"  # rated by the adaptive result


def test_the_best_defense_is_the_cheapest_that_stops_the_attacker_within_budget() -> None:
    scenario = load_scenario({
        "target": {"victim": "digits-mlp"},
        "attackers": [{"name": "k", "attack": "knockoff", "budgets": [1000]},
                      {"name": "j", "attack": "jacobian", "budgets": [1000]}],
        "defenses": [{"name": "none"}, {"name": "labels", "policy": "label"},
                     {"name": "strict", "detectors": ["ood"], "on_flag": "deny"}],
        "honest_budget": {"accuracy_lost": 0.01, "flagged_share": 0.01}})

    def attack(defense: str, attacker: str, fid: float, flag: int | None) -> dict[str, Any]:
        return {"kind": "attack", "defense": defense, "attacker": attacker, "budget": 1000,
                "attack": "knockoff", "status": "ok", "queries": 1000,
                "curve": [[1000, fid]], "fidelity_test": fid, "test_rows": 450,
                "first_flag": None if flag is None else {"query": flag, "detector": "ood"}}

    def benign(defense: str, ece: float, flagged: float) -> dict[str, Any]:
        return {"kind": "benign", "defense": defense, "accuracy": 0.95, "model_accuracy": 0.95,
                "ece": ece, "model_ece": 0.02, "flagged_share": flagged, "refused_share": 0.0}

    cells = [attack("none", "k", 0.95, None), attack("none", "j", 0.95, None),
             attack("labels", "k", 0.95, None), attack("labels", "j", 0.5, None),
             attack("strict", "k", 0.95, 10), attack("strict", "j", 0.95, 10),
             benign("none", 0.02, 0.0), benign("labels", 0.2, 0.0), benign("strict", 0.02, 0.05)]
    best = {b["attacker"]: b for b in analyse(scenario, cells)["best_defenses"]}
    assert best["j"]["best"]["defense"] == "labels"  # strict stops it too, but flags 5%
    assert best["k"]["best"] is None and "watermark" in best["k"]["left"]
    assert [o["defense"] for o in best["k"]["over_budget"]] == ["strict"]


def test_choosing_labels_on_held_out_answers_is_an_adaptation() -> None:
    from modelshield.audit.analysis import adaptation

    scenario = load_scenario({
        "target": {"victim": "digits-mlp"},
        "attackers": [
            {"name": "soft", "attack": "knockoff", "params": {"labels": "soft"}, "budgets": [9]},
            {"name": "chosen", "attack": "knockoff", "params": {"student": "auto"},
             "budgets": [9]},
            {"name": "votes", "attack": "knockoff", "params": {"labels": "soft", "votes": 5},
             "budgets": [9]},
            {"name": "other", "attack": "knockoff", "params": {"source": "uniform"},
             "budgets": [9]}]})
    soft, chosen, votes, other = scenario.attackers
    assert adaptation(chosen, soft) == "labels: auto"  # its student is auto either way
    assert adaptation(soft, chosen) == ""  # soft labels adapt to nothing
    assert adaptation(votes, soft) == "votes: 5"
    assert adaptation(other, soft) == ""  # another query source is another attack


def test_a_paced_attacker_waits_out_the_rate_limit_on_the_virtual_clock(
        tmp_path: Path, victims: dict[str, Victim]) -> None:
    """Low and slow: each 429 is waited out (Retry-After), on a clock the audit advances
    instead of sleeping; the moving window then lets the next requests through."""
    from limits.strategies import MovingWindowRateLimiter

    from modelshield.defenses.limits_memory import ClockedMemoryStorage, VirtualClock
    from modelshield.oracle.shielded import Pacer, ShieldOracle

    v = victims["digits-mlp"]
    clock = VirtualClock()
    sh = build_shield({"model": {"builtin": "digits-mlp"},
                       "audit_url": f"sqlite:///{tmp_path}/a.db",
                       "tiers": {"t": {"max_batch": 10,
                                       "limits": {"requests": "5/hour", "rows": "40/day"}}}},
                      clock=clock, limiter=MovingWindowRateLimiter(ClockedMemoryStorage(clock)))
    key = sh.store.create_key("t")[0]
    plain = ShieldOracle(sh, key, budget=200)
    with pytest.raises(Blocked) as info:
        plain.query(v.honest[:100])
    assert info.value.status == 429 and plain.used == 40  # the day's rows, then refused
    pacer = Pacer(clock)
    paced = ShieldOracle(sh, sh.store.create_key("t")[0], budget=200, pacer=pacer)
    answer = paced.query(v.honest[:100])
    np.testing.assert_array_equal(answer.labels, v.predict_labels(v.honest[:100]))
    # 100 rows at 40 a day: the third day's first rows; 5 requests an hour within each day.
    assert 2 * 86400 - 3600 <= pacer.waited <= 2 * 86400 + 3600
    assert clock() - __import__("time").time() == pytest.approx(pacer.waited, abs=60)
    sh.close()


@pytest.mark.slow
def test_the_audit_measures_how_long_a_paced_attacker_waited(tmp_path: Path) -> None:
    """A real audit cell: the plain attacker is stopped by the rate limit; the paced one
    gets its clone and the report says how long it waited; the analysis names the pacing
    as the adaptation that broke the limit."""
    from modelshield.audit.report import write_report
    from modelshield.audit.runner import run_audit

    scenario = load_scenario({
        "name": "pacing", "target": {"victim": "digits-mlp"},
        "attackers": [{"name": "plain", "attack": "knockoff", "budgets": [400],
                       "params": {"source": "pool", "student": "mlp"}},
                      {"name": "paced", "attack": "knockoff", "budgets": [400],
                       "params": {"source": "pool", "student": "mlp"}, "pace": True}],
        # 25 rows an hour: the plain attacker's 25 natural digits make no clone (0.68
        # agreement); 50 already do the model's job (0.89 accuracy, the model's 0.95).
        "defenses": [{"name": "limited", "max_batch": 25,
                      "limits": {"rows": "25/hour"}}],
        "benign": {"accounts": 1}})
    doc = run_audit(scenario, tmp_path, workers=1)
    d = doc["analysis"]["defenses"][0]
    by = {r["attacker"]: r for r in d["attackers"]}
    assert by["plain"]["status"] == "blocked" and by["plain"]["blocked_at"] == 25
    assert by["paced"]["status"] == "ok" and by["paced"]["uncaught_clone"]
    assert 14 * 3600 <= by["paced"]["waited_s"] <= 16 * 3600  # 400 rows at 25 an hour
    assert [b["how"] for b in d["broken_by"]] == ["paced to the rate limits"]
    assert d["cheapest_clone"]["attacker"] == "paced"
    write_report(doc, tmp_path)
    assert "waited out rate limits for" in (tmp_path / "report.html").read_text()
    assert "waiting (low and slow)" in " ".join(d["facts"])


def test_the_search_writes_defenses_and_the_best_may_be_one_of_them() -> None:
    from modelshield.errors import ConfigError

    scenario = load_scenario({
        "target": {"victim": "digits-mlp"},
        "attackers": [{"name": "k", "attack": "knockoff", "budgets": [1000]}],
        "defenses": [{"name": "none"}],
        "search": {"policies": ["label", "round:1"], "fprs": [0.01, 0.001],
                   "combine": True}})
    names = [d.name for d in scenario.defenses]
    assert names == ["none", "search: label", "search: round:1",
                     "search: detectors (deny, fpr 0.001)", "search: detectors (deny, fpr 0.01)",
                     "search: detectors (deny, fpr 0.001) + label",
                     "search: detectors (deny, fpr 0.001) + round:1"]
    tier = next(d for d in scenario.defenses if d.name.endswith("0.01)")).as_tier()
    assert tier.fpr == 0.01 and tier.on_flag == "deny" and len(tier.detectors) == 5
    # Validating the dump again writes nothing twice (a cell's scenario, a cached run).
    again = load_scenario(scenario.model_dump())
    assert [d.name for d in again.defenses] == names

    def attack(defense: str, fid: float) -> dict[str, Any]:
        return {"kind": "attack", "defense": defense, "attacker": "k", "budget": 1000,
                "attack": "knockoff", "status": "ok", "queries": 1000, "curve": [[1000, fid]],
                "fidelity_test": fid, "test_rows": 450, "first_flag": None}

    def benign(defense: str, ece: float) -> dict[str, Any]:
        return {"kind": "benign", "defense": defense, "accuracy": 0.95, "model_accuracy": 0.95,
                "ece": ece, "model_ece": 0.02, "flagged_share": 0.0, "refused_share": 0.0}

    cells = [c for n in names for c in (attack(n, 0.5 if "round" in n else 0.95),
                                        benign(n, 0.1 if "round" in n else 0.02))]
    best = analyse(scenario, cells)["best_defenses"][0]["best"]
    assert best["defense"] == "search: round:1" and best["generated"]
    with pytest.raises(ConfigError, match=r"search\.policies.*blur"):
        load_scenario({"target": {"victim": "digits-mlp"},
                       "attackers": [{"attack": "knockoff", "budgets": [10]}],
                       "search": {"policies": ["blur"]}})
    with pytest.raises(ConfigError, match=r"search\.detectors: unknown detector 'nosuch'"):
        load_scenario({"target": {"victim": "digits-mlp"},
                       "attackers": [{"attack": "knockoff", "budgets": [10]}],
                       "search": {"detectors": ["nosuch"]}})
    with pytest.raises(ConfigError, match="search: a remote target"):
        load_scenario({"target": {"url": "http://127.0.0.1:9/", "api_key": "k",
                                  "victim": "digits-mlp"},
                       "attackers": [{"attack": "knockoff", "budgets": [10]}],
                       "search": {}})


def test_every_audit_adds_the_adaptive_counterparts_where_a_defense_keeps_per_key_state(
) -> None:
    base = {"target": {"victim": "digits-mlp"},
            "attackers": [{"name": "k", "attack": "knockoff", "budgets": [1000]},
                          {"name": "j", "attack": "jacobian", "budgets": [500]},
                          {"name": "j spread", "attack": "jacobian", "budgets": [500],
                           "keys": 5}]}
    plain = load_scenario({**base, "defenses": [{"name": "none"}, {"name": "round:1",
                                                                   "policy": "round:1"}]})
    assert [a.label for a in plain.attackers] == ["k", "j", "j spread"]  # nothing per key
    watched = load_scenario({**base, "defenses": [{"name": "none"}, {
        "name": "limited", "limits": {"rows": "1000/day"}}]})
    labels = [a.label for a in watched.attackers]
    assert labels == ["k", "j", "j spread", "k, 10 keys, paced"]  # j has its own already
    extra = watched.attackers[-1]
    assert extra.keys == 10 and extra.pace and extra.counterpart and extra.budgets == [1000]
    assert [a.label for a in load_scenario(watched.model_dump()).attackers] == labels
    off = load_scenario({**base, "adaptive": False,
                         "defenses": [{"name": "w", "detectors": ["ood"], "on_flag": "deny"}]})
    assert len(off.attackers) == 3
