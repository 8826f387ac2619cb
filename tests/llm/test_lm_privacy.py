"""Secrets in a language model's text through the Shield's logprob policies: teacher-forced
log-likelihoods equal the model's own, canary exposure ranks a likely secret above random
ones, beam and greedy extraction, Min-K% Prob, and each policy meeting what it allows."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from modelshield.attacks.lm_privacy import (
    canary_exposure,
    extract_secret,
    min_k_scores,
    sequence_logprobs,
    usable_logprobs,
)
from modelshield.defenses.shield import Shield
from modelshield.errors import AttackRefused, ConfigError
from modelshield.oracle.lm import ShieldLMOracle
from modelshield.serve.factory import build_shield
from modelshield.victims.lm import CANARY_ALPHABET, Canary, canaries, corpus


@pytest.fixture(scope="module")
def shield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shield]:
    tmp = tmp_path_factory.mktemp("lmp")
    s = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
                      "tiers": {"full": {"llm": {"max_top_logprobs": 1 << 20}},
                                "top-5": {}, "off": {"llm": {"logprobs": False}}}})
    yield s
    s.close()


def oracle(shield: Shield, tier: str) -> ShieldLMOracle:
    return ShieldLMOracle(shield, shield.store.create_key(tier)[0])


def alphabet(shield: Shield) -> list[int]:
    assert shield.lm is not None
    return [shield.lm.encode(" " + a)[0] for a in CANARY_ALPHABET]


def test_the_usable_logprobs_are_read_off_the_refusals(shield: Shield) -> None:
    assert shield.lm is not None
    probe = shield.lm.encode("# vault")
    assert usable_logprobs(oracle(shield, "full"), shield.lm.vocab, probe) == shield.lm.vocab
    o = oracle(shield, "top-5")
    assert usable_logprobs(o, shield.lm.vocab, probe) == 5 and o.used == 1  # one refusal free
    assert usable_logprobs(oracle(shield, "off"), shield.lm.vocab, probe) is None


def test_teacher_forced_logprobs_are_the_model_own(shield: Shield) -> None:
    lm = shield.lm
    assert lm is not None
    prefix = lm.encode("def main(")
    conts = [lm.encode(" x): return 1"), lm.encode(" self, a, b):")]
    got = sequence_logprobs(oracle(shield, "full"), prefix, conts, lm.vocab)
    for cont, value in zip(conts, got, strict=True):
        ids = prefix + cont
        logits = lm.sequence_logits(ids).astype(np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        want = sum(logp[i - 1, ids[i]] for i in range(len(prefix), len(ids)))
        assert value == pytest.approx(want, abs=1e-3)
    # Under top-5 an unlisted token gets an upper bound (the fifth logprob, or the mass the
    # five leave): the sum is never below the true one, and above it here.
    top5 = sequence_logprobs(oracle(shield, "top-5"), prefix, conts, 5)
    assert np.all(top5 >= got - 1e-3) and np.any(top5 > got + 0.1)


def test_the_most_likely_secret_is_exposed_and_extracted(shield: Shield) -> None:
    lm = shield.lm
    assert lm is not None
    letters = alphabet(shield)
    prefix = lm.encode("# vault 03 passphrase:")
    full = oracle(shield, "full")
    best = extract_secret(full, prefix, 4, letters, method="beam", width=5, k=lm.vocab)
    assert len(best) == 4 and set(best) <= set(letters)
    top = canary_exposure(full, prefix, best, letters, references=200, k=lm.vocab, seed=1)
    assert top.rank <= 2 and top.interpolation > np.log2(201) - 1.6
    # One query per distinct context: the prefix, then the candidates' shared beginnings
    # (1 + 10 + at most 100 + at most 201), not one per candidate and position (804).
    assert 100 < top.queries <= 312
    rng = np.random.default_rng(5)
    plain = canary_exposure(full, prefix, list(rng.choice(letters, 4)), letters,
                            references=200, k=lm.vocab, seed=1)
    assert plain.interpolation < top.interpolation and plain.extrapolation < top.extrapolation
    with pytest.raises(ConfigError, match="references"):
        canary_exposure(full, prefix, best, letters, references=3)
    with pytest.raises(AttackRefused, match="logprobs"):
        canary_exposure(oracle(shield, "off"), prefix, best, letters, references=20)
    # Greedy decoding needs no logprobs.
    greedy = extract_secret(oracle(shield, "off"), prefix, 4, letters)
    assert len(greedy) == 4


def test_min_k_prob_scores_texts_and_refuses_without_logprobs(shield: Shield) -> None:
    lm = shield.lm
    assert lm is not None
    texts = [lm.encode(t)[:24] for t in corpus("public")[:3]]
    mink, mean = min_k_scores(oracle(shield, "full"), texts, fraction=0.2, k=lm.vocab)
    assert mink.shape == mean.shape == (3,) and np.all(mink <= mean)
    with pytest.raises(AttackRefused):
        min_k_scores(oracle(shield, "off"), texts)
    with pytest.raises(ConfigError, match="fraction"):
        min_k_scores(oracle(shield, "full"), texts, fraction=0)


def test_the_canaries_are_keyed_by_the_seed_and_one_token_per_letter(shield: Shield) -> None:
    lm = shield.lm
    assert lm is not None
    marks = canaries(0)
    assert [c.repeats for c in marks] == [1, 1, 4, 4, 16, 16, 64, 64]
    assert [c.secret for c in marks] != [c.secret for c in canaries(1)]
    assert len({c.prefix for c in marks}) == len(marks)
    c = marks[0]
    ids = lm.encode(c.text)
    letters = [lm.encode(" " + s)[0] for s in c.secret.split()]
    assert ids[len(lm.encode(c.prefix)):][:6] == letters
    assert Canary("# p:", "a b", 1).text == "# p: a b\n"


def test_the_canaries_command_in_process_and_over_http(tmp_path_factory: pytest.TempPathFactory
                                                       ) -> None:
    import json

    from typer.testing import CliRunner

    from modelshield.cli import app
    from modelshield.serve.app import create_app
    from tests.servers import live_app

    runner = CliRunner()
    tmp = tmp_path_factory.mktemp("canaries")
    out = tmp / "c.json"
    r = runner.invoke(app, ["canaries", "--victim", "lm-tiny-canary", "--references", "30",
                            "--json", str(out)])
    assert r.exit_code == 0, r.output
    doc = json.loads(out.read_text())
    assert doc["top_logprobs"] > 5 and len(doc["canaries"]) == 8
    for row in doc["canaries"]:
        assert 0 <= row["interpolation"] <= np.log2(31) + 1e-9 and 0 <= row["rank"] <= 30
    shield = build_shield({"model": {"lm": "lm-tiny-canary"},
                           "audit_url": f"sqlite:///{tmp}/a.db",
                           "tiers": {"top-5": {}, "off": {"llm": {"logprobs": False}}}})
    with live_app(create_app([shield])) as client:
        for tier, k in (("top-5", 5), ("off", None)):
            key = shield.store.create_key(tier)[0]
            r = runner.invoke(app, ["canaries", "--victim", "lm-tiny-canary", "--target",
                                    str(client.base_url), "--api-key", key, "--references",
                                    "30", "--json", str(out)])
            assert r.exit_code == 0, r.output
            doc = json.loads(out.read_text())
            assert doc["top_logprobs"] == k
            assert all(("interpolation" in row) == (k is not None) for row in doc["canaries"])
    shield.close()
    r = runner.invoke(app, ["canaries", "--victim", "lm-tiny"])
    assert isinstance(r.exception, ConfigError) and "carries no canaries" in str(r.exception)
