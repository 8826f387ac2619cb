"""Texts tested for the gateway's text watermark: a text drawn from the green lists is
named, a text of the wrong key is not; a config without a text watermark is refused."""

from __future__ import annotations

import pytest

from modelshield.defenses.config import load_config
from modelshield.defenses.textmark import TextWatermark
from modelshield.errors import ConfigError
from modelshield.serve.text_check import TextDetector, score_text, text_detector


def _green_text(mark: TextWatermark, n: int) -> str:
    tokens = [1]
    for _ in range(n):
        green = mark.green(tokens[-1])
        tokens.append(next(t for t in range(2, mark.vocab) if green[t] and t not in tokens))
    return " ".join(map(str, tokens))


def test_a_green_text_is_named_and_a_text_of_another_key_is_not() -> None:
    mark = TextWatermark("a" * 16, 500, 0.25)
    detector = TextDetector(mark, lambda text: [int(t) for t in text.split()])
    text = _green_text(mark, 60)
    hit = score_text(detector, "ours.txt", text, 1e-4)
    assert hit.watermarked and hit.green == hit.scored == 60 and hit.tokens == 61
    assert hit.to_json()["text"] == "ours.txt"
    other = TextDetector(TextWatermark("b" * 16, 500, 0.25), detector.encode)
    assert not score_text(other, "ours.txt", text, 1e-4).watermarked


def test_a_config_without_a_text_watermark_is_refused() -> None:
    with pytest.raises(ConfigError, match="no language-model tier with a text watermark"):
        text_detector(load_config({}))
    two = {"watermark_secret": "s" * 16, "model": {"builtin": None, "lm": "lm-tiny"},
           "tiers": {"a": {"llm": {"watermark_delta": 2.0, "watermark_gamma": 0.25}},
                     "b": {"llm": {"watermark_delta": 2.0, "watermark_gamma": 0.5}}}}
    with pytest.raises(ConfigError, match="different gammas"):
        text_detector(load_config(two))
