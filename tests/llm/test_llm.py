"""Language models behind the Shield: the OpenAI-compatible routes over real HTTP, their
errors, the LLM output policies and probing detector, and logit stealing through them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from httpx import Client as HttpClient

from modelshield.attacks.logit_stealing import (
    Collector,
    HiddenSize,
    Projection,
    VariantBlocked,
    alignment_error,
    finer_tolerance,
    quantization_floor,
)
from modelshield.defenses.shield import Shield
from modelshield.errors import AttackFailed
from modelshield.oracle.lm import OpenAIOracle, Refused, ShieldLMOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.cli import run_cli
from tests.servers import live_app

TIERS: dict[str, Any] = {
    "open": {"llm": {"max_top_logprobs": 4096}},
    "top5": {},
    "fixed": {"llm": {"bias_affects_logprobs": False}},
    "nolp": {"llm": {"logprobs": False}},
    "nobias": {"llm": {"logit_bias": "refuse"}},
    "capped": {"llm": {"max_logit_bias_entries": 3}},
    "rounded": {"llm": {"max_top_logprobs": 4096, "logprob_decimals": 2}},
    "watched": {"llm": {"detect_probing": True, "probe_distinct_bias_tokens": 40},
                "on_flag": "deny"},
    "metered": {"limits": {"tokens": "60/hour"}},
}


@pytest.fixture(scope="module")
def shield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shield]:
    tmp = tmp_path_factory.mktemp("llm")
    s = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
                            "tiers": TIERS})
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(shield: Shield) -> Iterator[HttpClient]:
    with live_app(create_app(shield)) as client:
        yield client


def key(shield: Shield, tier: str) -> str:
    return shield.store.create_key(tier)[0]


def post(client: HttpClient, path: str, k: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {k}"})


# -- the OpenAI-compatible surface -------------------------------------------------------------
def test_completion_with_logprobs_is_answered_and_recorded(shield: Shield,
                                                          gateway: HttpClient) -> None:
    before = shield.store.count()
    r = post(gateway, "/v1/completions", key(shield, "top5"), {
        "model": "lm-tiny", "prompt": "def main():\n", "max_tokens": 4, "logprobs": 3,
        "temperature": 0, "seed": 1})
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["choices"][0]
    assert body["object"] == "text_completion" and choice["finish_reason"] in ("length", "stop")
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) <= 4
    assert all(len(top) == 3 for top in lp["top_logprobs"])
    # Greedy: every sampled token is its step's most likely one.
    for t, v, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"], strict=True):
        assert v == max(top.values()) and top[t] == v
    assert body["usage"]["total_tokens"] == (body["usage"]["prompt_tokens"]
                                             + body["usage"]["completion_tokens"])
    assert shield.store.count() == before + 1 and shield.store.verify().ok


def test_chat_streaming_and_model_list(shield: Shield, gateway: HttpClient) -> None:
    k = key(shield, "top5")
    models = gateway.get("/v1/models", headers={"Authorization": f"Bearer {k}"}).json()
    assert models["data"][0]["id"] == "lm-tiny" and models["data"][0]["vocab_size"] == 2048
    r = post(gateway, "/v1/chat/completions", k, {
        "model": "lm-tiny", "messages": [{"role": "user", "content": "import os"}],
        "max_tokens": 3, "logprobs": True, "top_logprobs": 2, "seed": 3})
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["logprobs"]["content"]
    assert 1 <= len(content) <= 3 and all(len(c["top_logprobs"]) == 2 for c in content)
    body = {"model": "lm-tiny", "prompt": "x = ", "max_tokens": 6, "n": 2, "seed": 5}
    whole = post(gateway, "/v1/completions", k, body).json()["choices"]
    r = post(gateway, "/v1/completions", k, {**body, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e)["choices"][0] for e in events[:-1]]
    assert len(chunks) == 2 * 6  # a chunk per token of each choice (none ends early here)
    for i in (0, 1):  # the streamed pieces make the same text as the answer in one piece
        assert "".join(c["text"] for c in chunks if c["index"] == i) == whole[i]["text"]


@pytest.mark.parametrize(("tier", "body", "status", "param", "code"), [
    ("top5", {"model": "gpt-9"}, 404, "model", "model_not_found"),
    ("top5", {"max_tokens": -1}, 400, "max_tokens", "invalid_value"),
    ("top5", {"logit_bias": {"99999": 5}}, 400, "logit_bias", "invalid_value"),
    ("top5", {"logit_bias": {"abc": 5}}, 400, "logit_bias", "invalid_value"),
    ("top5", {"logit_bias": {"5": 500}}, 400, "logit_bias", "invalid_value"),
    ("capped", {"logit_bias": {str(i): 1 for i in range(4)}}, 400, "logit_bias",
     "invalid_value"),
    ("nobias", {"logit_bias": {"5": 1}}, 400, "logit_bias", "logit_bias_not_allowed"),
    ("nolp", {"logprobs": 1}, 400, "logprobs", "logprobs_not_allowed"),
    ("top5", {"logprobs": 6}, 400, "logprobs", "invalid_value"),
    ("top5", {"max_tokens": 500}, 400, "max_tokens", "context_length_exceeded"),
    ("top5", {"temperature": 3}, 400, "temperature", "invalid_value"),
])
def test_bad_requests_get_openai_style_errors(shield: Shield, gateway: HttpClient, tier: str,
                                              body: dict[str, Any], status: int, param: str,
                                              code: str) -> None:
    before = shield.store.count(answered=True)
    r = post(gateway, "/v1/completions", key(shield, tier),
             {"model": "lm-tiny", "prompt": [1, 2, 3], "max_tokens": 1, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code and err["message"]
    assert err["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert shield.store.count(answered=True) == before  # nothing refused is recorded as answered


def test_malformed_and_unauthenticated(shield: Shield, gateway: HttpClient) -> None:
    r = gateway.post("/v1/completions", content=b"{nope", headers={
        "Authorization": f"Bearer {key(shield, 'top5')}", "content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = post(gateway, "/v1/completions", "ms_wrong", {"model": "lm-tiny", "prompt": "a"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"


def test_token_limits(shield: Shield, gateway: HttpClient) -> None:
    k = key(shield, "metered")
    body = {"model": "lm-tiny", "prompt": [1, 2, 3, 4, 5], "max_tokens": 20}  # 25 tokens
    codes = [post(gateway, "/v1/completions", k, body).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


# -- the policies against the attacks ------------------------------------------------------------
def test_hidden_size_over_http_from_top5_and_bias(shield: Shield, gateway: HttpClient) -> None:
    oracle = OpenAIOracle(str(gateway.base_url), key(shield, "top5"), client=gateway)
    e = HiddenSize(variant="auto").run(oracle, 50_000)
    assert e.hidden_size == shield.lm.hidden == 32
    assert e.variant == "topk-bias" and "full" in e.info["blocked_variants"]
    assert e.info["queries_per_vector"] == 1 + 768 / 4  # one reference query, k-1 per query


def test_the_march_2024_fix_blocks_the_bias_variant_and_says_what_is_left(
        shield: Shield) -> None:
    oracle = ShieldLMOracle(shield, key(shield, "fixed"))
    with pytest.raises(VariantBlocked) as info:
        HiddenSize(variant="topk-bias").run(oracle, 50_000)
    assert "logprobs ignore logit_bias" in str(info.value)
    assert "not tried" in str(info.value) and "bias-search" in str(info.value)
    assert "still open" not in str(info.value)


def test_auto_out_of_budget_keeps_the_reasons_earlier_variants_were_blocked(
        shield: Shield) -> None:
    oracle = ShieldLMOracle(shield, key(shield, "top5"))
    with pytest.raises(AttackFailed) as info:
        HiddenSize(variant="auto").run(oracle, 1000)  # top-k + bias needs ~9,000 here
    text = str(info.value)
    assert text.startswith("topk-bias: ") and "full was blocked" in text
    assert "logprobs" in text.split("full was blocked")[1]


def test_full_logprobs_give_hidden_size_and_W(shield: Shield) -> None:
    e = Projection(variant="full").run(ShieldLMOracle(shield, key(shield, "open")), 512)
    assert e.hidden_size == 32 and e.W is not None
    err = alignment_error(e.W, shield.lm.W)
    assert err["relative_rms"] < 1e-3
    rounded = Projection(variant="full", hidden=32).run(
        ShieldLMOracle(shield, key(shield, "rounded")), 512)
    assert rounded.W is not None
    assert alignment_error(rounded.W, shield.lm.W)["relative_rms"] > 10 * err["relative_rms"]


def test_logprob_free_bisection_recovers_logit_differences(shield: Shield) -> None:
    oracle = ShieldLMOracle(shield, key(shield, "nolp"))
    attack = HiddenSize(variant="bias-search", tolerance=1e-4)
    c = Collector(oracle, 10_000, "bias-search", attack, np.random.default_rng(0))
    prompt = [5, 6, 7, 8]
    tokens = np.array([10, 200, 1500])
    row = c.vectors([prompt], tokens)[0]
    z = shield.lm.next_logits([prompt])[0].astype(np.float64)
    truth = z[tokens] - z.max()
    assert np.allclose(row, truth, atol=2e-4)
    assert c.used == 1 + 3 * 21  # the reference, then 1 + 20 bisection steps per token


def test_bisection_brackets_are_narrowed_later_without_starting_over(shield: Shield) -> None:
    oracle = ShieldLMOracle(shield, key(shield, "nolp"))
    attack = HiddenSize(variant="bias-search", tolerance=1e-2)
    c = Collector(oracle, 10_000, "bias-search", attack, np.random.default_rng(0))
    prompts, tokens = [[5, 6, 7, 8], [9, 10, 11]], np.array([10, 200, 1500])
    coarse = c.vectors(prompts, tokens)
    spent = c.used
    fine = np.stack(c.refine(1e-5))
    truth = np.stack([z[tokens] - z.max() for z in
                      shield.lm.next_logits(prompts).astype(np.float64)])
    assert np.abs(coarse - truth).max() > 1e-4 and np.allclose(fine, truth, atol=1e-5)
    # From brackets of 100 / 2^14 to 100 / 2^24: ten more steps a logit, nothing repeated.
    assert c.used - spent == 2 * 3 * 10


def test_the_tolerance_is_chosen_from_the_spectrum() -> None:
    signal = np.geomspace(100.0, 0.1, 32)
    # 48 vectors of 48 logits at tolerance 1e-3: bisection alone gives a floor near 4e-3.
    assert np.isclose(quantization_floor(1e-3, 48, 48), 1e-3 / np.sqrt(12) * 2 * np.sqrt(48))
    tolerance_floor = np.concatenate([signal, np.full(16, 2e-3)])
    assert np.isclose(finer_tolerance(tolerance_floor * 100, 0.1, 100.0, 48, 48) or 0,
                      0.1 / 1024)
    # At 1e-5 the next step would pass float32's resolution: it stops at 1e-6.
    assert np.isclose(finer_tolerance(np.concatenate([signal, np.full(16, 2e-5)]), 1e-5,
                                      100.0, 48, 48) or 0, 1e-6)
    own_floor = np.concatenate([signal, np.full(16, 0.05)])  # noise the API adds, say
    assert finer_tolerance(own_floor, 1e-3, 100.0, 48, 48) is None


def test_logprob_free_bisection_over_http_reads_token_ids(shield: Shield,
                                                          gateway: HttpClient) -> None:
    oracle = OpenAIOracle(str(gateway.base_url), key(shield, "nolp"), client=gateway)
    c = Collector(oracle, 1000, "bias-search", HiddenSize(variant="bias-search"),
                  np.random.default_rng(0))
    row = c.vectors([[5, 6, 7, 8]], np.array([10, 200]))[0]
    z = shield.lm.next_logits([[5, 6, 7, 8]])[0].astype(np.float64)
    assert np.allclose(row, z[[10, 200]] - z.max(), atol=2e-3)


def test_probing_detector_denies_a_bias_sweep_not_a_writer(shield: Shield) -> None:
    writer = ShieldLMOracle(shield, key(shield, "watched"))
    for i in range(30):
        writer.complete([[1, 2, i]], max_tokens=8, temperature=1.0, logit_bias={7: -5})
    assert writer.first_flag is None
    thief = ShieldLMOracle(shield, key(shield, "watched"))
    with pytest.raises(Refused) as info:
        HiddenSize(variant="topk-bias").run(thief, 50_000)
    assert info.value.status == 403 and thief.first_flag is not None
    # It packs its prompts many to a request; each prompt counts as one probe.
    assert thief.first_flag[1] == "probing"
    assert thief.first_flag[0] <= 64 * 11


def test_cli_attacks_the_running_gateway(shield: Shield, gateway: HttpClient,
                                         tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    r = run_cli("attack", "--target", str(gateway.base_url), "--api-key", key(shield, "top5"),
                "--attack", "llm-hidden-size", "--budget", "50000", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert json.loads(out.read_text())["hidden_size"] == 32


@pytest.mark.slow
def test_output_cloning_raises_agreement_with_the_tokens_spent(shield: Shield) -> None:
    import torch
    from transformers import GPT2LMHeadModel

    from modelshield.attacks.lm_cloning import clone_lm, fidelity
    from modelshield.victims.lm import LM_ZOO, corpus, lm_config, token_stream

    lm = shield.lm
    stream = token_stream(lm.tokenizer, corpus("held-out"))
    rng = np.random.default_rng(0)
    prompts = [stream[s:s + 8].tolist() for s in rng.integers(0, len(stream) - 8, 200)]
    texts = [stream[s:s + 32].tolist() for s in rng.integers(0, len(stream) - 32, 16)]
    torch.manual_seed(0)
    student = GPT2LMHeadModel(lm_config(LM_ZOO["lm-tiny"], lm.tokenizer))

    def evaluate(model: Any) -> tuple[float, float]:
        return fidelity(lm.sequence_logits, model, texts)

    before = evaluate(student)
    oracle = ShieldLMOracle(shield, key(shield, "top5"), price_per_1k_tokens=1.0)
    clone = clone_lm(oracle, student, prompts, [500, 3000], 16, evaluate, min_steps=40)
    first, last = clone.checkpoints
    assert first.tokens >= 496 and last.tokens >= 2992 and oracle.used == last.queries
    assert last.agreement > before[0] + 0.05 and last.kl < before[1]
    assert last.cost == pytest.approx(oracle.tokens / 1000)


def test_cli_projection_over_http_saves_W_and_checks_it_against_the_reference(
        shield: Shield, gateway: HttpClient, tmp_path: Path) -> None:
    out, w_file = tmp_path / "r.json", tmp_path / "W.npy"
    r = run_cli("attack", "--target", str(gateway.base_url), "--api-key", key(shield, "open"),
                "--attack", "llm-projection", "--victim", "lm-tiny", "--budget", "512",
                "--save-clone", str(w_file), "--json", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["true_hidden_size"] == result["hidden_size"] == 32
    assert result["W_error"]["relative_rms"] < 1e-3 and "W alignment error" in r.stdout
    W = np.load(w_file)
    assert W.shape == (shield.lm.W.shape[0], 32)
    assert alignment_error(W, shield.lm.W)["relative_rms"] < 1e-3


@pytest.mark.slow
def test_bisection_finds_the_weakest_directions_of_a_trained_spectrum(
        tmp_path: Path) -> None:
    """The last four singular values of W at 1e-3 of the largest: in the logits they lie
    near 4e-7 of the largest, under the floor of the default tolerance, which finds 28."""
    import torch

    s = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp_path}/a.db",
                      "tiers": {"nolp": {"llm": {"max_top_logprobs": 0}}}})
    weight = s.lm.model.get_output_embeddings().weight
    with torch.no_grad():
        u, sv, vt = torch.linalg.svd(weight, full_matrices=False)
        sv[-4:] = sv[0] * 1e-3
        weight.copy_(u @ torch.diag(sv) @ vt)
    oracle = ShieldLMOracle(s, s.store.create_key("nolp")[0])
    e = HiddenSize(variant="bias-search", n_tokens=48, prompts_per_round=16).run(
        oracle, 100_000)
    assert e.hidden_size == 32
    assert e.info["tolerance_refinements"] and e.info["tolerance"] < 1e-5
    assert e.info["hidden_at_start_tolerance"] != 32  # the starting tolerance alone misses
    s.close()


def test_in_process_a_request_past_the_context_is_refused_not_crashed(shield: Shield) -> None:
    """The HTTP routes refuse it first; the Shield's own check covers in-process callers."""
    from modelshield.answer import LMRequest
    from modelshield.errors import Denied

    too_long = LMRequest(prompts=[[1] * 100], max_tokens=shield.lm.context)
    with pytest.raises(Denied) as info:
        shield.handle_completion(key(shield, "top5"), too_long)
    assert info.value.status == 400 and info.value.code == "context_length_exceeded"
