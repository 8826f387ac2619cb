"""The operator's view of a config and its store: a key's state (flagged keys by what
their tier does on a flag), reinstating a key, the names the gateway gives its models,
and each detector's calibration."""

from __future__ import annotations

from pathlib import Path

from modelshield.defenses.config import load_config
from modelshield.serve.admin import (
    calibration_models,
    detector_calibration,
    gateway_model_names,
    key_state,
    model_labels,
    reinstate_key,
)
from modelshield.store import AuditStore


def _config(tmp_path: Path) -> dict[str, object]:
    return {"audit_url": f"sqlite:///{tmp_path}/a.db",
            "tiers": {"free": {"on_flag": "deny"}, "pro": {"on_flag": "throttle"},
                      "team": {}}}


def test_a_key_state_names_what_its_flag_does(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    store = AuditStore(cfg.audit_url)
    states = {}
    for tier in ("free", "pro", "team"):
        _, key = store.create_key(tier)
        store.record_flag(key.key_id, "volume", 3.0, "too many rows")
        states[tier] = key.key_id
    _, plain = store.create_key("team")
    _, gone = store.create_key("team")
    store.revoke(gone.key_id)
    _, old = store.create_key("team", ttl_seconds=10)
    by_id = {k.key_id: k for k in store.list_keys()}
    assert key_state(by_id[states["free"]], cfg) == "suspended (volume)"
    assert key_state(by_id[states["pro"]], cfg) == "throttled (volume)"
    assert key_state(by_id[states["team"]], cfg) == "flagged (volume)"
    assert key_state(by_id[plain.key_id], cfg) == "active"
    assert key_state(by_id[gone.key_id], cfg) == "revoked"
    assert key_state(by_id[old.key_id], cfg, now=old.created_at + 11) == "expired"


def test_reinstating_lifts_the_flag_once(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path))
    store = AuditStore(cfg.audit_url)
    _, key = store.create_key("free")
    store.record_flag(key.key_id, "volume", 3.0, "too many rows")
    assert reinstate_key(cfg, store, key.key_id)
    assert store.list_keys()[0].flag is None
    assert not reinstate_key(cfg, store, key.key_id)


def test_models_are_named_as_the_gateway_names_them(tmp_path: Path) -> None:
    one = load_config({"model": {"builtin": "digits-lr"}})
    assert gateway_model_names(one) == ["digits-lr"] and model_labels(one) == ["digits-lr"]
    many = load_config({"models": [{"builtin": "digits-lr", "name": "a"},
                                   {"builtin": None, "lm": "lm-tiny"}]})
    assert gateway_model_names(many) == ["a", "lm-tiny"]  # as the gateway names it
    assert model_labels(many) == ["a", "lm-tiny"]


def test_each_detector_of_each_tier_has_a_calibration_row(tmp_path: Path) -> None:
    cfg = load_config({"model": {"builtin": "digits-lr"}, "audit_url": f"sqlite:///{tmp_path}/a.db",
                       "tiers": {"free": {"fpr": 0.01, "detectors": ["volume"]}, "open": {}}})
    rows = detector_calibration(cfg)
    assert rows and {r["tier"] for r in rows} == {"free"}
    assert all(r["model"] == "digits-lr" and r["fpr"] == 0.01 for r in rows)
    assert detector_calibration(cfg, model="another") == []
    [(one, _, spec, data)] = list(calibration_models(cfg))
    assert spec.name == "digits-lr" and len(data) > 0 and one.model.builtin == "digits-lr"
    assert list(calibration_models(cfg, only="another")) == []
