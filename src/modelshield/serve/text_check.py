"""The owner's test of texts for the gateway's text watermark (Kirchenbauer et al. 2023),
with the key and the tokenizer of the config's language model."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelshield.defenses.config import ShieldConfig
from modelshield.defenses.textmark import TextWatermark
from modelshield.errors import ConfigError
from modelshield.serve.factory import load_model


@dataclass(frozen=True)
class TextDetector:
    """The gateway's text watermark and the served model's tokenizer."""

    mark: TextWatermark
    encode: Callable[[str], Sequence[int]]


def text_detector(cfg: ShieldConfig) -> TextDetector:
    """The text watermark of the config's language-model tiers (one gamma for all)."""
    gammas = {t.llm.watermark_gamma for t in cfg.all_tiers().values()
              if t.llm.watermark_delta > 0}
    if not gammas or not cfg.watermark_secret or not (cfg.model.lm or cfg.model.lm_upstream):
        raise ConfigError("The config has no language-model tier with a text watermark "
                          "(tiers.NAME.llm.watermark_delta > 0).")
    if len(gammas) > 1:
        raise ConfigError("detect-text: the watermarked tiers use different gammas; give "
                          "them one.")
    lm, _, _ = load_model(cfg)
    return TextDetector(TextWatermark(cfg.watermark_secret, lm.vocab, gammas.pop()),
                        lm.tokenizer.encode)


@dataclass(frozen=True)
class TextVerdict:
    """One text's test: tokens, distinct pairs scored, green ones, z, p and the verdict."""

    text: str
    tokens: int
    scored: int
    green: int
    z: float
    p_value: float
    watermarked: bool

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "tokens": self.tokens, "scored": self.scored,
                "green": self.green, "z": self.z, "p_value": self.p_value,
                "watermarked": self.watermarked}


def score_text(detector: TextDetector, name: str, text: str, alpha: float) -> TextVerdict:
    """Score ``text`` (called ``name``); watermarked at p <= ``alpha``."""
    tokens = detector.encode(text)
    score = detector.mark.score(tokens)
    return TextVerdict(name, len(tokens), score.scored, score.green, score.z, score.p_value,
                       score.p_value <= alpha)
