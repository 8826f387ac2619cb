"""The red-team findings against the language-model routes, each reproduced as reported, and
the OpenAI surface seen through the official ``openai`` client, over real sockets."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from httpx import Client as HttpClient

from modelshield.defenses.shield import Shield
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from modelshield.victims.chat import chat_ids
from tests.servers import live_app

TIERS: dict[str, Any] = {
    "plain": {"max_batch": 64},
    "watched": {"llm": {"detect_probing": True, "probe_single_token_requests": 100},
                "on_flag": "deny", "max_batch": 64},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shield, HttpClient]]:
    tmp = tmp_path_factory.mktemp("llm-hard")
    shield = build_shield({"model": {"lm": "lm-tiny"},
                                 "audit_url": f"sqlite:///{tmp}/a.db", "tiers": TIERS})
    with live_app(create_app(shield)) as client:
        yield shield, client
    shield.close()


def key(shield: Shield, tier: str = "plain") -> str:
    return shield.store.create_key(tier)[0]


def post(client: HttpClient, path: str, k: str | None, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {k}"} if k else {})


def completion(**body: Any) -> dict[str, Any]:
    return {"model": "lm-tiny", "prompt": [1, 2, 3], "max_tokens": 1, **body}


# -- work before authentication, and max_batch ----------------------------------------------------
def test_a_thousand_prompts_in_one_request_are_refused_by_max_batch(served: Any) -> None:
    shield, client = served
    before = shield.store.count(answered=True)
    r = post(client, "/v1/completions", key(shield), completion(prompt=[[1, 2]] * 1000))
    assert r.status_code == 413 and r.json()["error"]["code"] == "batch_too_large"
    assert r.json()["error"]["param"] == "prompt"
    r = post(client, "/v1/completions", key(shield), completion(prompt=[[1, 2]] * 40, n=2))
    assert r.status_code == 413  # prompts times n
    assert shield.store.count(answered=True) == before


def test_a_keyless_2mb_prompt_is_refused_before_it_is_tokenized(
        served: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    shield, client = served
    calls: list[str] = []
    monkeypatch.setattr(shield.lm, "encode", lambda text: calls.append(text) or [1])
    r = post(client, "/v1/completions", None, completion(prompt="x " * 1_000_000))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = post(client, "/v1/completions", "wrong", completion(prompt="x " * 1_000_000))
    assert r.status_code == 401 and calls == []


def test_packed_single_token_probes_count_per_prompt(served: Any) -> None:
    shield, client = served
    k = key(shield, "watched")
    codes = [post(client, "/v1/completions", k, completion(
        prompt=[[i, j, 3] for j in range(64)], logprobs=1)).status_code for i in range(3)]
    assert codes == [200, 403, 403]  # 128 one-token probes in two requests


def test_one_fixed_ban_list_is_not_a_sweep(served: Any) -> None:
    shield, client = served
    k = key(shield, "watched")
    ban = {str(t): -100 for t in range(100, 170)}  # 70 tokens, the same every time
    for i in range(30):
        r = post(client, "/v1/completions", k, completion(prompt=[1, 2, i], max_tokens=4,
                                                          logit_bias=ban))
        assert r.status_code == 200, (i, r.text)


def test_a_sweep_of_new_tokens_is(served: Any) -> None:
    shield, client = served
    k = key(shield, "watched")
    codes = [post(client, "/v1/completions", k, completion(
        prompt=[1, 2, i], max_tokens=4, logit_bias={str(10 * i + j): 5 for j in range(10)})
    ).status_code for i in range(12)]
    assert 403 in codes and codes.index(403) <= 8


@pytest.mark.parametrize(("body", "param"), [
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"max_tokens": "abc"}, "max_tokens"),
    ({"tools": [{"type": "function"}]}, "tools"), ({"best_of": 3}, "best_of"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"suffix": "x"}, "suffix"),
    ({"frobnicate": 1}, "frobnicate"), ({"echo": True, "logprobs": 1}, "echo"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": "x" * 300}, "stop"),
])
def test_bad_and_unsupported_parameters_are_named(served: Any, body: dict[str, Any],
                                                  param: str) -> None:
    shield, client = served
    r = post(client, "/v1/completions", key(shield), completion(**body))
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["code"]


def test_chat_refuses_what_it_does_not_implement(served: Any) -> None:
    shield, client = served
    r = post(client, "/v1/chat/completions", key(shield), {
        "model": "lm-tiny", "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "response_format"


# -- the OpenAI surface --------------------------------------------------------------------------
def test_stop_echo_and_usage_in_the_stream(served: Any) -> None:
    shield, client = served
    k = key(shield)
    full = post(client, "/v1/completions", k, completion(prompt="def f", max_tokens=24,
                                                          temperature=0)).json()
    text = full["choices"][0]["text"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    cut = post(client, "/v1/completions", k, completion(prompt="def f", max_tokens=24,
                                                         temperature=0, stop=[stop])).json()
    choice = cut["choices"][0]
    assert choice["text"] == text[:text.index(stop)] and choice["finish_reason"] == "stop"
    echoed = post(client, "/v1/completions", k, completion(prompt="def f", max_tokens=3,
                                                            temperature=0, echo=True)).json()
    assert echoed["choices"][0]["text"].startswith("def f")
    r = post(client, "/v1/completions", k, completion(
        max_tokens=3, stream=True, stream_options={"include_usage": True}))
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: {")]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


def test_models_need_a_key_and_one_model_can_be_read(served: Any) -> None:
    shield, client = served
    assert client.get("/v1/models").status_code == 401
    h = {"Authorization": f"Bearer {key(shield)}"}
    assert client.get("/v1/models", headers=h).json()["data"][0]["id"] == "lm-tiny"
    one = client.get("/v1/models/lm-tiny", headers=h).json()
    assert one["id"] == "lm-tiny" and one["context_length"] == shield.lm.context
    r = client.get("/v1/models/gpt-9", headers=h)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_the_official_openai_client(served: Any) -> None:
    shield, client = served
    api = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key(shield), max_retries=0)
    assert [m.id for m in api.models.list()] == ["lm-tiny"]
    assert api.models.retrieve("lm-tiny").id == "lm-tiny"
    c = api.completions.create(model="lm-tiny", prompt="import os\n", max_tokens=5,
                               logprobs=2, temperature=0)
    assert c.choices[0].logprobs is not None and len(c.choices[0].logprobs.tokens or []) == 5
    chat = api.chat.completions.create(
        model="lm-tiny", max_tokens=4, logprobs=True, top_logprobs=2,
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": [{"type": "text", "text": "hello"}]}])
    assert chat.choices[0].message.role == "assistant"
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
    chunks = list(api.chat.completions.create(
        model="lm-tiny", max_tokens=4, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "hi"}]))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="lm-tiny", messages=[{"role": "user", "content": "x"}],
                                    tools=[{"type": "function", "function": {"name": "f"}}])
    assert bad.value.param == "tools"  # type: ignore[attr-defined]
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="gpt-9", prompt="x", max_tokens=1)
    wrong = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.completions.create(model="lm-tiny", prompt="x", max_tokens=1)


# -- models the project did not build --------------------------------------------------------------
def test_a_llama_directory_gives_its_own_context_and_chat_template(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from modelshield.victims.lm import LMVictim, load_tokenizer

    tokenizer = load_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
                               "{% endfor %}{% if add_generation_prompt %}[assistant] "
                               "{% endif %}")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32,
                                         intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2,
                                         max_position_embeddings=256))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    lm = LMVictim.from_directory(tmp_path, name="llama-tiny")
    assert lm.context == 256
    ids = chat_ids(lm, [("user", "hello")])
    assert lm.decode(ids) == "[user] hello\n[assistant] "
    from modelshield.answer import LMRequest
    from modelshield.defenses.llm import LLMPolicy, decode

    req = LMRequest([ids, ids[:3]], max_tokens=8, temperature=0.0, logprobs=1)
    plain = decode(lm.next_logits, req, LLMPolicy(), lm.tokenizer.eos_token_id)
    cached = decode(lm.next_logits, req, LLMPolicy(), lm.tokenizer.eos_token_id,
                    stepper=lm.stepper)
    assert [c.tokens for c in plain] == [c.tokens for c in cached]


# -- generation with the key/value cache, and streaming ---------------------------------------------
def test_the_kv_cache_generates_what_recomputing_generates(served: Any) -> None:
    from modelshield.answer import LMRequest
    from modelshield.defenses.llm import LLMPolicy, decode

    shield, _ = served
    lm = shield.lm
    req = LMRequest([[5, 6, 7, 8], [9, 10]], max_tokens=12, temperature=0.0, n=2, logprobs=3)
    plain = decode(lm.next_logits, req, LLMPolicy(), lm.tokenizer.eos_token_id)
    cached = decode(lm.next_logits, req, LLMPolicy(), lm.tokenizer.eos_token_id,
                    stepper=lm.stepper)
    for a, b in zip(plain, cached, strict=True):
        assert a.tokens == b.tokens  # the second prompt is left-padded in the batch
        assert np.allclose(a.logprobs or [], b.logprobs or [], atol=1e-4)


def test_a_stream_sends_each_token_and_records_admission_then_answer(served: Any) -> None:
    shield, client = served
    k = key(shield)
    body = completion(prompt="def f", max_tokens=24, temperature=0)
    text = post(client, "/v1/completions", k, body).json()["choices"][0]["text"]
    stop = text[len(text) // 2: len(text) // 2 + 2]
    before = shield.store.count()
    r = post(client, "/v1/completions", k, {**body, "stream": True, "stop": [stop],
                                             "logprobs": 1})
    chunks = [json.loads(line[6:])["choices"][0] for line in r.text.splitlines()
              if line.startswith("data: {")]
    assert "".join(c["text"] for c in chunks) == text[:text.index(stop)]
    assert chunks[-1]["finish_reason"] == "stop" and len(chunks) > 2
    lps = [c["logprobs"] for c in chunks if c["logprobs"] is not None]
    assert all(v <= 0 for lp in lps for v in lp["token_logprobs"])
    assert "".join(t for lp in lps for t in lp["tokens"]) == text[:text.index(stop)]
    records = shield.store.records()[before:]
    assert [json.loads(r["answer"]) == {"stream": "started"} for r in records] == [True, False]
    chat = post(client, "/v1/chat/completions", k, {
        "model": "lm-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
        "stream": True})
    deltas = [json.loads(line[6:])["choices"][0]["delta"] for line in chat.text.splitlines()
              if line.startswith("data: {")]
    assert deltas[0] == {"role": "assistant", "content": ""} and len(deltas) == 1 + 5


def test_a_degraded_key_loses_its_logprobs(tmp_path: Path) -> None:
    from modelshield.serve.factory import build_shield

    shield = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp_path}/a.db",
                           "tiers": {"d": {"on_flag": "degrade",
                                           "detectors": [{"probing": {
                                               "single_token_prompts": 10}}]}}})
    k = key(shield, "d")
    with live_app(create_app(shield)) as client:
        probe = completion(prompt=[[i, 2, 3] for i in range(6)], logprobs=1)
        assert post(client, "/v1/completions", k, probe).status_code == 200
        # The request that trips the detector already meets the tier's action.
        r = post(client, "/v1/completions", k, probe)
        assert r.status_code == 403 and r.json()["error"]["code"] == "logprobs_withdrawn"
        r = post(client, "/v1/completions", k, completion(max_tokens=3))
        assert r.status_code == 200  # still served, without logprobs
    shield.close()
