"""An in-process Shield: one tier, ``open``, with the llm settings given, a key of it, and
its audit log in a temporary file that is gone once the Shield is closed."""

from __future__ import annotations

from pathlib import Path

from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.local import ALL_LOGPROBS, local_shield


def test_the_shield_serves_every_logprob_to_its_key_and_cleans_up() -> None:
    with local_shield({"builtin": None, "lm": "lm-tiny"}, ALL_LOGPROBS) as (shield, key):
        assert list(shield.config.tiers) == ["open"]
        db = Path(shield.config.audit_url.removeprefix("sqlite:///"))
        assert db.exists()
        assert shield.lm is not None
        oracle = ShieldLMOracle(shield, key)
        [out] = oracle.complete([shield.lm.encode("def")], max_tokens=1,
                                logprobs=shield.lm.vocab)
        assert out.top_logprobs is not None
        oracle.close()
    assert not db.exists()
