"""The text watermark on served completions (Kirchenbauer et al. 2023): completions fetched
with the official openai client from a watermarked tier are found by `detect-text`; those of
an unwatermarked tier and text written without the key are not; the test is exact."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from typer.testing import CliRunner

from modelshield.cli import app
from modelshield.defenses.shield import Shield
from modelshield.defenses.textmark import TextWatermark
from modelshield.errors import ConfigError
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.servers import live_app

runner = CliRunner()
SECRET = "text-watermark-secret-for-tests"


def test_green_lists_are_keyed_and_the_test_is_exact() -> None:
    mark = TextWatermark(SECRET, 2048, gamma=0.25)
    assert abs(mark.green(7).mean() - 0.25) < 0.03
    assert (mark.green(7) == mark.green(7)).all() and (mark.green(7) != mark.green(8)).any()
    other = TextWatermark("another-key-altogether", 2048, gamma=0.25)
    assert (other.green(7) != mark.green(7)).any()
    rng = np.random.default_rng(0)
    small = sum(mark.score(rng.integers(0, 2048, 150).tolist()).p_value <= 0.05
                for _ in range(400))
    assert small / 400 <= 0.08
    # Repeats count once: a loop of the same two tokens is one or two pairs, not 100.
    assert mark.score([5, 9] * 50).scored == 2
    # A text that always picks green is found within a few dozen tokens.
    seq = [1]
    for _ in range(60):
        seq.append(int(np.flatnonzero(mark.green(seq[-1]))[rng.integers(0, 100)]))
    assert mark.score(seq).p_value < 1e-20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shield, Path]]:
    tmp = tmp_path_factory.mktemp("textmark")
    cfg = tmp / "gw.yaml"
    cfg.write_text(json.dumps({
        "model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
        "watermark_secret": SECRET,
        "tiers": {"marked": {"llm": {"watermark_delta": 2.0}}, "plain": {}}}))
    shield = build_shield(str(cfg))
    yield shield, cfg
    shield.close()


def test_completions_of_a_watermarked_tier_are_found(served: tuple[Shield, Path],
                                                     tmp_path: Path) -> None:
    shield, cfg = served
    texts = {}
    with live_app(create_app(shield)) as client:
        for tier in ("marked", "plain"):
            api = openai.OpenAI(base_url=f"{client.base_url}/v1",
                                api_key=shield.store.create_key(tier)[0], max_retries=0)
            out = api.completions.create(model="lm-tiny", prompt="import os\ndef main(",
                                         max_tokens=100, temperature=1.0, n=2, seed=3)
            texts[tier] = "".join(c.text for c in out.choices)
    for tier, text in texts.items():
        (tmp_path / f"{tier}.txt").write_text(text)
    (tmp_path / "by-hand.txt").write_text(Path(__file__).read_text())
    result = tmp_path / "r.json"
    r = runner.invoke(app, ["detect-text", str(tmp_path / "marked.txt"),
                            str(tmp_path / "plain.txt"), str(tmp_path / "by-hand.txt"),
                            "--config", str(cfg), "--json", str(result)])
    assert r.exit_code == 0, r.output
    rows = {Path(t["text"]).stem: t for t in json.loads(result.read_text())["texts"]}
    assert rows["marked"]["watermarked"] and rows["marked"]["z"] > 4
    assert not rows["plain"]["watermarked"] and not rows["by-hand"]["watermarked"]


def test_config_needs_the_secret_and_a_local_model(tmp_path: Path) -> None:
    base = {"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp_path}/a.db",
            "tiers": {"marked": {"llm": {"watermark_delta": 2.0}}}}
    with pytest.raises(ConfigError, match="watermark_secret"):
        build_shield(base)
    upstream = {**base, "watermark_secret": SECRET,
                "model": {"lm_upstream": "http://127.0.0.1:9", "upstream_model": "m"}}
    with pytest.raises(ConfigError, match=r"llm\.watermark_delta"):
        build_shield(upstream)

