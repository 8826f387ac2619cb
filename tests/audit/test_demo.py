"""The demo: a scaled audit that still shows every kind of result, and says what it leaves out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelshield.audit.report import write_report
from modelshield.audit.runner import plan, run_audit
from modelshield.audit.scenario import DEMO, DEMO_SCOPE, load_scenario


def test_the_demo_plans_each_kind_of_result() -> None:
    cells = plan(load_scenario(DEMO))
    kinds = {c["kind"] for c in cells}
    assert kinds == {"attack", "benign", "privacy"}
    defenses = {c["defense"]["name"] for c in cells}
    assert defenses == {"none", "rounded", "labels only", "monitored"}
    attackers = {c["attacker"]["name"]: c["attacker"] for c in cells if c["kind"] == "attack"}
    plain = [a for a in attackers.values() if not a.get("counterpart") and a["keys"] == 1]
    adaptive = [a for a in attackers.values() if a["keys"] > 1 or a.get("pace")]
    assert len(plain) >= 3 and len(adaptive) >= 3  # attacks and their adaptive counterparts
    assert {c["attack"] for c in plain} == {"knockoff", "active", "jacobian"}


def test_the_demo_says_it_is_scaled_and_what_a_full_audit_would_add() -> None:
    scenario = load_scenario(DEMO)
    assert scenario.scope == DEMO_SCOPE
    assert "full audit" in DEMO_SCOPE and "300 queries" in DEMO_SCOPE
    assert {b for a in scenario.attackers for b in a.budgets} == {300}
    assert scenario.privacy is not None and f"{scenario.privacy.shadows} shadow" in DEMO_SCOPE


@pytest.mark.slow
def test_the_demo_runs_end_to_end_with_every_section(tmp_path: Path) -> None:
    doc = run_audit(load_scenario(DEMO), tmp_path, workers=2)
    (tmp_path / "results.json").write_text(json.dumps(doc))
    write_report(doc, tmp_path)
    for page in ("report.html", "summary.md"):
        assert "full audit" in (tmp_path / page).read_text()
    rows = {(r["defense"], r["attacker"]) for d in doc["analysis"]["defenses"]
            for r in [{"defense": d["name"], **x} for x in d["attackers"]]}
    assert len(rows) == 4 * 6
    assert all(c.get("status") in {"ok", "blocked", "refused", "stopped", None}
               for c in doc["cells"])
    assert any(c["kind"] == "privacy" and c["status"] == "ok" for c in doc["cells"])
    assert doc["analysis"]["rating"]["level"] in {"HIGH", "MEDIUM", "LOWER"}


@pytest.mark.slow
def test_the_demos_natural_knockoff_sends_unshifted_digits_past_every_detector() -> None:
    """The demo's digits pool is 449 digits and their one-pixel shifts; a thief with natural
    data sends digits. Against "monitored" (every detector, deny) the knockoff of natural
    digits is never flagged and clones the model: the rating must follow it."""
    from modelshield.audit.analysis import analyse
    from modelshield.audit.runner import run_one

    scenario = load_scenario(DEMO)
    cells = [c for c in plan(scenario) if c["kind"] == "attack"
             and c["label"] == "knockoff (natural data)"
             and c["defense"]["name"] in ("monitored", "none")]
    results = [run_one(c) for c in cells]
    watched = next(r for r in results if r["defense"] == "monitored")
    assert watched["status"] == "ok" and watched["first_flag"] is None
    assert watched["fidelity_test"] >= 0.9 and watched["queries"] == 300
    a = analyse(scenario, results)
    monitored = next(d for d in a["defenses"] if d["name"] == "monitored")
    assert monitored["rating"] == "HIGH"
    assert monitored["cheapest_clone"]["attacker"] == "knockoff (natural data)"
    assert any("sends only natural rows" in f for f in monitored["facts"])
