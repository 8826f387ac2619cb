"""The audit end to end: scenario checks, the runner and its cache, the analysis, the report,
a remote target behind the real gateway, and the page rendered in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from markupsafe import escape as html_escape
from typer.testing import CliRunner

from modelshield.audit.report import load_results, render_html, write_report
from modelshield.audit.runner import plan, run_audit
from modelshield.audit.scenario import EXAMPLE, Scenario, load_scenario
from modelshield.cli import app
from modelshield.errors import ConfigError
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.cli import Run, run_cli
from tests.servers import free_port, live_app

SMALL: dict[str, Any] = {
    "name": "small", "seed": 0, "price_per_1k": 2.0, "model_value": 1000,
    "target": {"victim": "breast-cancer-lr"},
    "attackers": [
        {"name": "eq", "attack": "equation-solving", "budgets": [31, 100]},
        {"name": "lowd-meek", "attack": "label-only", "params": {"method": "lowd-meek"},
         "budgets": [600]},
    ],
    "defenses": [
        {"name": "none", "policy": "full"},
        {"name": "labels", "policy": "label"},
        {"name": "watched", "policy": "label", "detectors": ["sweep"], "on_flag": "deny"},
    ],
    "benign": {"accounts": 8, "median_rows": 20},
}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("audit")
    doc = run_audit(load_scenario(SMALL), out, workers=1)
    (out / "results.json").write_text(json.dumps(doc))
    write_report(doc, out)
    return doc, out


def defense(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in doc["analysis"]["defenses"] if d["name"] == name)


def attacker(doc: dict[str, Any], d: str, a: str) -> dict[str, Any]:
    return next(r for r in defense(doc, d)["attackers"] if r["attacker"] == a)


# -- scenarios -----------------------------------------------------------------------------
def test_example_scenario_loads_and_plans_every_cell() -> None:
    s = load_scenario(yaml.safe_load(EXAMPLE))
    cells = plan(s)
    budgets = sum(len(a.budgets) for a in s.attackers)
    # + one honest-user cell and one membership-inference cell per defense
    assert len(cells) == len(s.defenses) * (budgets + 2)
    assert s.privacy is not None and s.privacy.shadows == 16
    assert s.deployed_defense == "monitored"


@pytest.mark.parametrize(("change", "message"), [
    ({"target": {"victim": "mnist"}}, "target.victim: unknown victim 'mnist'"),
    ({"target": {}}, "give exactly one of 'victim'"),
    ({"target": {"file": "m.joblib"}}, "'file' needs 'data'"),
    ({"target": {"victim": "digits-mlp", "url": "ftp://x"}}, "target.url: must be an http"),
    ({"target": {"victim": "digits-mlp", "url": "http://x"}}, "'url' needs 'api_key'"),
    ({"attackers": [{"attack": "teleport", "budgets": [5]}]}, "unknown attack 'teleport'"),
    ({"attackers": [{"attack": "knockoff", "budgets": [0]}]},
     "attackers.0.budgets: every budget must be an integer >= 1"),
    ({"attackers": [{"attack": "knockoff", "budgets": [5], "params": {"sorce": "pool"}}]},
     "'sorce=pool': expected key=value with key one of source"),
    ({"defenses": [{"name": "a", "policy": "blur"}]}, "Unknown output policy 'blur'"),
    ({"defenses": [{"name": "a", "detectors": ["psychic"]}]}, "unknown detector 'psychic'"),
    ({"defenses": [{"name": "a", "limits": {"rows": "lots"}}]}, "defenses.0.limits.rows"),
    ({"defenses": [{"name": "a"}, {"name": "a"}]}, "defense names must be unique"),
    ({"deployed": "fortress"}, "deployed: 'fortress' is not a defense"),
    ({"price_per_1k": -1}, "price_per_1k: Input should be greater than or equal to 0"),
    ({"colour": "red"}, "colour: Extra inputs are not permitted"),
])
def test_a_bad_scenario_names_the_field(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_scenario({**SMALL, **change})
    assert message in str(info.value)


def test_bad_scenario_at_the_cli_exits_2_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**SMALL, "defenses": [{"name": "a", "policy": "blur"}]}))
    result = _cli("audit", str(bad), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Unknown output policy 'blur'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # stopped before running anything
    result = _cli("report", str(tmp_path / "missing.json"))
    assert result.returncode == 2 and "does not exist" in result.stderr


def _cli(*args: str) -> Run:
    return run_cli(*args)


def test_a_tree_policy_on_a_model_that_is_not_a_tree_stops_at_once(tmp_path: Path) -> None:
    s = load_scenario({**SMALL, "defenses": [{"name": "a"}, {"name": "b", "policy": "leaf-id"}]})
    with pytest.raises(ConfigError, match=r"defenses\.1\.policy: .leaf-id. needs a decision tree"):
        run_audit(s, tmp_path, workers=1)
    assert not (tmp_path / "cells").exists()


def test_init_audit_writes_a_scenario_that_loads(tmp_path: Path) -> None:
    path = tmp_path / "audit.yaml"
    result = CliRunner().invoke(app, ["init", "--audit", str(path)])
    assert result.exit_code == 0, result.output
    assert isinstance(load_scenario(path), Scenario)


# -- the runner and the analysis -------------------------------------------------------------
def test_exact_extraction_without_defenses_is_high_risk(small: tuple[dict[str, Any], Path]
                                                        ) -> None:
    doc, _ = small
    eq = attacker(doc, "none", "eq")
    assert eq["status"] == "ok" and eq["q90"] == 31 and eq["best_fidelity"] == 1.0
    assert eq["usd90"] == pytest.approx(31 * 2.0 / 1000)
    assert doc["analysis"]["rating"]["level"] == "HIGH"  # $0.06 against a $1,000 model
    assert "$0.06 (31 queries" in doc["analysis"]["rating"]["facts"][0]


def test_a_refused_attack_is_a_row_with_its_reason(small: tuple[dict[str, Any], Path]) -> None:
    doc, out = small
    eq = attacker(doc, "labels", "eq")
    assert eq["status"] == "refused" and "probabilities" in eq["reason"]
    assert eq["curve"] == [] and eq["q90"] is None
    lm = attacker(doc, "labels", "lowd-meek")
    assert lm["status"] == "ok" and lm["best_fidelity"] >= 0.99
    html = (out / "report.html").read_text()
    assert "refused" in html and html_escape(eq["reason"]) in html


def test_a_denying_detector_stops_the_sweep_and_says_when(small: tuple[dict[str, Any], Path]
                                                          ) -> None:
    doc, _ = small
    lm = attacker(doc, "watched", "lowd-meek")
    assert lm["status"] == "blocked" and lm["first_flag"]["detector"] == "sweep"
    assert lm["blocked_at"] < 100 and lm["q90"] is None
    assert attacker(doc, "labels", "lowd-meek")["first_flag"] is None
    # Its counterpart over 10 keys (every audit adds it): each key is suspended at about
    # 50 rows, and the next goes on; the clone is made, and is not counted as caught.
    spread = attacker(doc, "watched", "lowd-meek, 10 keys, paced")
    assert spread["first_flag"]["detector"] == "sweep" and spread["best_fidelity"] >= 0.99
    assert spread["went_on"] and spread["uncaught_clone"]
    watched = defense(doc, "watched")
    assert watched["rating"] == "HIGH" and watched["cheapest_clone"]["attacker"] == spread["attacker"]
    assert "went on with its other keys" in " ".join(watched["facts"])
    assert [b["how"] for b in watched["broken_by"]] == ["10 keys, paced to the rate limits"]


def test_honest_users_keep_their_top1_and_pay_for_coarser_scores(
        small: tuple[dict[str, Any], Path]) -> None:
    doc, _ = small
    for name in ("none", "labels", "watched"):
        b = defense(doc, name)["benign"]
        assert b["accuracy"] == b["model_accuracy"]  # every policy keeps the top-1 label
        assert b["refused_share"] == 0 and b["answered_rows"] == b["rows"]
    assert defense(doc, "none")["benign"]["ece"] == pytest.approx(
        defense(doc, "none")["benign"]["model_ece"])
    assert defense(doc, "labels")["benign"]["ece"] != defense(doc, "none")["benign"]["ece"]


def test_recommendations_rank_what_protects_better_than_deployed(
        small: tuple[dict[str, Any], Path]) -> None:
    doc, _ = small
    recs = doc["analysis"]["recommendations"]
    assert recs[0]["defense"] == "watched"  # stops both attackers
    assert all(r["protection_gain"] > 0 for r in recs)
    assert "detectors:\n    - sweep" in recs[0]["config"] and "on_flag: deny" in recs[0]["config"]
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)


def test_a_second_run_reads_every_cell_from_the_cache(small: tuple[dict[str, Any], Path]
                                                      ) -> None:
    doc, out = small
    again = run_audit(load_scenario(SMALL), out, workers=1)
    assert again["cells_cached"] == len(again["cells"]) == len(doc["cells"])
    assert again["analysis"] == doc["analysis"]
    changed = run_audit(load_scenario({**SMALL, "price_per_1k": 4.0}), out, workers=1)
    # The price is part of every attack cell; honest users' cells do not depend on it.
    assert changed["cells_cached"] == sum(c["kind"] == "benign" for c in doc["cells"])


def test_report_is_redrawn_identically_from_results_json(small: tuple[dict[str, Any], Path],
                                                         tmp_path: Path) -> None:
    _, out = small
    result = CliRunner().invoke(app, ["report", str(out / "results.json"), "--out",
                                      str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "report.html").read_text() == (out / "report.html").read_text()
    html = render_html(load_results(out / "results.json"))
    # Self-contained: three inline plots, and nothing fetched from anywhere.
    assert html.count("<svg") == 3
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)|<link|<script|url\((?!#)""", html)
    ids = re.findall(r'\bid="([^"]+)"', html)
    assert len(ids) == len(set(ids))  # the plots' ids do not collide
    md = (tmp_path / "summary.md").read_text()
    assert "**Risk as deployed (\"none\"): HIGH**" in md


@pytest.mark.slow
def test_parallel_run_matches_serial(small: tuple[dict[str, Any], Path], tmp_path: Path
                                     ) -> None:
    doc, _ = small
    par = run_audit(load_scenario(SMALL), tmp_path, workers=2)

    def strip(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{k: v for k, v in c.items() if k != "seconds"} for c in cells]

    assert strip(par["cells"]) == strip(doc["cells"])


# -- a remote target: the real gateway over HTTP ----------------------------------------------
def test_every_clone_is_tested_against_the_watermark_and_a_rerun_repeats_it(
        tmp_path: Path) -> None:
    """Through a watermarked tier, each clone of 90% fidelity or more is tested against the
    attacker's watermark, rebuilt from the cell's audit log; a traced copy caps the rating
    at MEDIUM, and the report shows the "traced" column. The accounts' key ids are seeded
    by the cell, so a fresh run (no cache) marks the same answers and gives the same p."""
    scenario = {"name": "traced", "seed": 0, "price_per_1k": 1.0, "model_value": 20_000,
                "target": {"victim": "breast-cancer-lr"},
                "attackers": [{"name": "ko-forest", "attack": "knockoff", "budgets": [300],
                               "params": {"student": "forest", "source": "synthetic"}}],
                "defenses": [{"name": "none"},
                             {"name": "marked", "watermark": {"rate": 0.05}}],
                "benign": {"accounts": 2, "median_rows": 20}, "adaptive": False}
    runs = [run_audit(load_scenario(scenario), tmp_path / name, workers=1)
            for name in ("first", "again")]
    for doc in runs:
        plain, marked = doc["analysis"]["defenses"]
        assert plain["attackers"][0]["trace"] == [] and plain["rating"] == "HIGH"
        row = marked["attackers"][0]
        assert row["q90"] == 300 and row["traced"] and row["traced_p"] <= 1e-6
        assert marked["rating"] == "MEDIUM"
        assert any("can be proven, not prevented" in f for f in marked["facts"])
    assert runs[0]["analysis"]["defenses"][1]["attackers"][0]["trace"] == \
        runs[1]["analysis"]["defenses"][1]["attackers"][0]["trace"]
    write_report(runs[0], tmp_path / "first")
    html = (tmp_path / "first" / "report.html").read_text()
    assert ">traced</th>" in html and "yes (p " in html


def test_remote_target_through_the_gateway(tmp_path: Path) -> None:
    shield = build_shield({
        "model": {"builtin": "breast-cancer-lr"}, "audit_url": f"sqlite:///{tmp_path}/a.db",
        "tiers": {"pro": {"policy": "round:4"}}})
    key, _ = shield.store.create_key("pro")
    remote = {**SMALL, "attackers": SMALL["attackers"][:1], "defenses": [{"name": "pro tier"}]}
    with live_app(create_app(shield)) as client:
        url = str(client.base_url)
        for protocol in ("rest", "v2"):
            s = load_scenario({**remote, "target": {"victim": "breast-cancer-lr", "url": url,
                                                    "api_key": key, "protocol": protocol}})
            doc = run_audit(s, tmp_path / protocol, workers=1)
            eq = attacker(doc, "pro tier", "eq")
            assert eq["status"] == "ok" and eq["best_fidelity"] == 1.0, eq
            assert all(c["kind"] == "attack" for c in doc["cells"])  # no honest-user cell
        assert shield.store.count() > 0 and shield.store.verify().ok
        bad = load_scenario({**remote, "target": {"victim": "breast-cancer-lr", "url": url,
                                                  "api_key": "ms_wrong"}})
        with pytest.raises(ConfigError, match="refused the API key: HTTP 401"):
            run_audit(bad, tmp_path / "bad", workers=1)
    gone = load_scenario({**remote, "target": {"victim": "breast-cancer-lr",
                                               "url": f"http://127.0.0.1:{free_port()}",
                                               "api_key": key}})
    with pytest.raises(ConfigError, match="Cannot reach the target"):
        run_audit(gone, tmp_path / "gone", workers=1)
    shield.close()


# -- the page in a real browser -----------------------------------------------------------------
def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run must install it")
        pytest.skip("chromium is not installed")
    return path


def test_report_renders_in_headless_chromium(small: tuple[dict[str, Any], Path],
                                             tmp_path: Path) -> None:
    doc, out = small
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    page = (out / "report.html").resolve().as_uri()
    # The DOM after the browser parsed and laid out the page, with scripting off the network.
    dom = subprocess.run([_chromium(), *flags, "--dump-dom", page], capture_output=True,
                         text=True, timeout=120).stdout
    for fig in ("fig-curves", "fig-dollars", "fig-tradeoff"):
        start = dom.index(f'id="{fig}"')
        assert "<svg" in dom[start:start + 400], fig
    level = doc["analysis"]["rating"]["level"]
    assert 'class="badge"' in dom and f">{level}</span>" in dom
    shot = tmp_path / "page.png"
    subprocess.run([_chromium(), *flags, "--window-size=1200,1600", f"--screenshot={shot}",
                    page], capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000  # a page with plots, not a blank one


@pytest.mark.slow
def test_a_tier_from_a_gateway_config_is_audited_as_deployed(tmp_path: Path) -> None:
    from modelshield.defenses.config import example_config

    gateway = tmp_path / "modelshield.yaml"
    example = example_config()
    gateway.write_text(example)
    s = load_scenario({**SMALL, "defenses": [{"name": "free tier", "config": str(gateway),
                                              "tier": "free"}],
                       "benign": {"accounts": 20, "median_rows": 80}})
    doc = run_audit(s, tmp_path / "out", workers=1)
    eq = attacker(doc, "free tier", "eq")
    assert eq["status"] == "refused"  # top-k:1 withholds the scores equation solving needs
    lm = attacker(doc, "free tier", "lowd-meek")
    assert lm["status"] == "blocked" and lm["blocked_at"] <= 100  # 100 rows/hour, or a flag
    benign = defense(doc, "free tier")["benign"]
    assert benign["refused_share"] > 0  # the heaviest honest users hit 100 rows an hour too
    # Editing the gateway config invalidates the cached cells.
    gateway.write_text(example.replace("100/hour, rows: 100/hour", "100/hour, rows: 200/hour"))
    assert run_audit(s, tmp_path / "out", workers=1)["cells_cached"] == 0
    with pytest.raises(ConfigError, match="tier 'gold' is not in"):
        load_scenario({**SMALL, "defenses": [{"name": "x", "config": str(gateway),
                                              "tier": "gold"}]})


@pytest.mark.slow
def test_a_steered_attack_is_traced_by_the_sequential_test() -> None:
    """An active learner picks its next rows by the answers it got, marked ones included,
    so the score test's null (the marked cells a blind draw from the key's cells) does not
    hold for it. Its clones are traced by the sequential test, on every cell the key sent;
    a knockoff's, whose rows are drawn before it asks, keep the exact score test."""
    from functools import partial

    from modelshield.attacks import ATTACKS
    from modelshield.audit.evaluate import run_cell
    from modelshield.audit.ownership import account_sets, estimator_answer, verify_sets
    from modelshield.audit.runner import TIER, _trace, shield_for
    from modelshield.audit.scenario import Defense, Target
    from modelshield.oracle import ShieldOracle
    from modelshield.victims import load_victim

    assert ATTACKS["active"]().steered and ATTACKS["jacobian"]().steered
    assert ATTACKS["label-only"](method="adaptive").steered
    assert not ATTACKS["label-only"](method="retraining").steered
    assert not ATTACKS["knockoff"](votes=3).steered
    victim = load_victim("breast-cancer-lr")
    defense = Defense.model_validate({"name": "marked", "watermark": {"rate": 0.05}})
    with shield_for(defense, victim) as shield:
        key = shield.store.create_key(TIER, key_id="5eed0000abcd")[0]
        result = run_cell(victim, "active", "marked", 400, 0, 0.0, {},
                          oracle=ShieldOracle(shield, key, budget=400))
        assert result.status == "ok" and (result.fidelity_test or 0.0) >= 0.9
        target = Target.model_validate({"victim": "breast-cancer-lr"})
        plain = _trace(shield, victim, target, result, steered=False)
        steered = _trace(shield, victim, target, result, steered=True)
        wm = shield.watermarks[TIER]
        sets = account_sets(wm, shield.store, victim.model, shield.spec.name,
                            shield.store.list_keys(), controls=sys.maxsize)
        assert len(sets) == 1 and sets[0][1].complete and len(sets[0][1].x) > 0
        [verdict] = verify_sets(wm, sets, partial(estimator_answer, result.clone, wm.k),
                                "clone").accounts
    assert verdict.result.p_sequential is not None
    assert plain is not None and steered is not None
    assert plain[-1] == [result.queries, verdict.p_adjusted]
    assert steered[-1] == [result.queries, min(1.0, verdict.result.p_sequential)]
