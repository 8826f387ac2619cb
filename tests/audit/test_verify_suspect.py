"""What the serve-time watermark test reads off a gateway config: the one model asked
for, and the watermarked tiers with their one setting."""

from __future__ import annotations

import pytest

from modelshield.audit.verify_suspect import one_model, watermark_plan
from modelshield.defenses.config import load_config
from modelshield.errors import ConfigError

SECRET = "s" * 16


def test_one_model_of_several_is_chosen_by_name() -> None:
    many = load_config({"models": [{"builtin": "digits-lr", "name": "a"},
                                   {"builtin": "wine-tree"}]})
    assert one_model(many, "wine-tree").model.builtin == "wine-tree"
    with pytest.raises(ConfigError, match="name one of: a, wine-tree"):
        one_model(many, None)
    single = load_config({})
    assert one_model(single, None) is single


def test_the_watermarked_tiers_must_exist_and_agree() -> None:
    with pytest.raises(ConfigError, match="nothing to verify"):
        watermark_plan(load_config({}))
    cfg = load_config({"watermark_secret": SECRET,
                       "tiers": {"free": {"watermark": {"rate": 0.01}}, "pro": {}}})
    plan = watermark_plan(cfg)
    assert plan.tiers == ["free"] and plan.rate == 0.01 and plan.secret == SECRET
    two = load_config({"watermark_secret": SECRET,
                       "tiers": {"free": {"watermark": {"rate": 0.01}},
                                 "pro": {"watermark": {"rate": 0.02}}}})
    with pytest.raises(ConfigError, match="different settings"):
        watermark_plan(two)
