"""The Shield as an ordered list of stages: the default order, and a stage added by an
owner runs in its place, refuses like any other, and its refusals are recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelshield.defenses.lm_stages import LM_STAGES
from modelshield.defenses.shield import Shield
from modelshield.defenses.stages import CLASSIFIER_STAGES, Call, Limit
from modelshield.errors import Denied
from modelshield.serve.factory import build_shield


def config(tmp: Path) -> dict[str, Any]:
    return {"model": {"builtin": "digits-lr"}, "audit_url": f"sqlite:///{tmp}/a.db",
            "tiers": {"t": {"policy": "round:2"}}}


def test_the_default_order(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path))
    assert [s.name for s in shield.stages] == ["authenticate", "check inputs", "limit",
                                               "model", "detect", "watermark", "shape", "record"]
    assert [s.name for s in shield.lm_stages] == [
        "authenticate", "check request", "limit requests", "size bound", "tokenize",
        "system prompt", "check prompts", "limit tokens", "detect", "generate", "leak filter",
        "record"]


class BusinessHours:
    """An owner's own stage: no queries outside 08:00-18:00 (by the Shield's clock)."""

    name = "business hours"

    def __init__(self, shield: Shield) -> None:
        self.shield = shield

    def __call__(self, call: Call) -> None:
        hour = (self.shield.clock() // 3600) % 24
        if not 8 <= hour < 18:
            raise Denied(403, "outside_hours", "Queries are answered 08:00-18:00 UTC.")


def test_an_owner_stage_runs_in_its_place_and_its_refusals_are_recorded(tmp_path: Path) -> None:
    now = [10 * 3600.0]
    order = list(CLASSIFIER_STAGES)
    order.insert(order.index(Limit), BusinessHours)
    shield = build_shield(config(tmp_path), stages=order, clock=lambda: now[0])
    key, _ = shield.store.create_key("t")
    shield.handle(key, np.zeros((1, 64)))
    now[0] = 20 * 3600.0
    with pytest.raises(Denied) as info:
        shield.handle(key, np.zeros((2, 64)))
    assert info.value.code == "outside_hours"
    refusal = shield.store.records()[-1]
    assert json.loads(refusal["decision"])["code"] == "outside_hours"
    assert refusal["rows"] == 2  # the rows had passed the input check
    assert len(LM_STAGES) == 12


def test_a_stage_before_authenticate_fails_loudly(tmp_path: Path) -> None:
    shield = build_shield(config(tmp_path), stages=[Limit])
    with pytest.raises(RuntimeError, match="before Authenticate"):
        shield.handle("any", np.zeros((1, 64)))
