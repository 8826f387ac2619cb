"""The language-model routes, round two of the gateway's hardening: no work before the
limits (the key, its suspension and its request limits come before a prompt is measured,
and the prompt's size in bytes before it is tokenized), the tokenizer routes limited and
recorded, logit vectors counted by the probing detector, and the parameters OpenAI's
clients send checked as OpenAI checks them. Over real sockets, with the official client
where the behaviour is what a client sees."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from httpx import Client as HttpClient

from modelshield.defenses.shield import Shield
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.llm.test_hardening_llm import completion, key, post
from tests.servers import live_app

TIERS: dict[str, Any] = {
    "plain": {"max_batch": 64},
    "tight": {"limits": {"requests": "2/minute"}, "max_batch": 64},
    "sipping": {"limits": {"tokens": "40/minute"}, "max_batch": 64},
    "full": {"llm": {"detect_probing": True, "max_top_logprobs": 2048},
             "on_flag": "deny", "max_batch": 64},
    "guarded": {"llm": {"max_top_logprobs": 3}},
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shield, HttpClient]]:
    tmp = tmp_path_factory.mktemp("llm-order")
    shield = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
                           "tiers": TIERS})
    with live_app(create_app(shield)) as client:
        yield shield, client
    shield.close()


@pytest.fixture
def encodes(served: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of characters handed to the tokenizer, call by call."""
    shield, _ = served
    calls: list[int] = []
    real = shield.lm.encode
    monkeypatch.setattr(shield.lm, "encode", lambda text: calls.append(len(text)) or real(text))
    return calls


def chat(**body: Any) -> dict[str, Any]:
    return {"model": "lm-tiny", "messages": [{"role": "user", "content": "hi"}], **body}


HUGE = "x " * 2_000_000  # 4 MB


# -- N1: key, suspension and request limits before any work on the prompt -------------------------
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_an_over_limit_key_s_huge_prompt_is_refused_untokenized(
        served: Any, encodes: list[int], path: str) -> None:
    shield, client = served
    k = key(shield, "tight")
    small = {"/v1/completions": completion(prompt="def f"), "/tokenize":
             {"model": "lm-tiny", "prompt": "def f"}, "/v1/chat/completions": chat(max_tokens=1)}
    for _ in range(2):
        assert post(client, path, k, small[path]).status_code == 200
    before = len(encodes)
    huge = {**small[path], "prompt": HUGE} if path != "/v1/chat/completions" else \
        chat(messages=[{"role": "user", "content": HUGE}])
    r = post(client, path, k, huge)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
    assert encodes[before:] == []  # not one character tokenized


def test_a_suspended_key_s_huge_prompt_is_refused_untokenized(
        served: Any, encodes: list[int]) -> None:
    shield, client = served
    k = key(shield, "full")
    key_id = shield.store.lookup(k).key_id
    shield.store.record_flag(key_id, "probing", 1.0, "flagged before")
    for path, body in [("/v1/completions", completion(prompt=HUGE)),
                       ("/v1/chat/completions", chat(messages=[{"role": "user",
                                                                "content": HUGE}])),
                       ("/tokenize", {"model": "lm-tiny", "prompt": HUGE})]:
        r = post(client, path, k, body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "extraction_suspected", \
            (path, r.text)
    assert encodes == []


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/v1/completions", completion(prompt=HUGE), "prompt"),
    ("/v1/completions", completion(prompt=["a", HUGE]), "prompt"),
    ("/v1/completions", completion(prompt=list(range(1, 1001))), "prompt"),
    ("/v1/chat/completions", chat(messages=[{"role": "user", "content": HUGE}]), "messages"),
    ("/tokenize", {"model": "lm-tiny", "prompt": HUGE}, "prompt"),
    ("/detokenize", {"model": "lm-tiny", "tokens": [5] * 5000}, "tokens"),
])
def test_a_prompt_past_the_size_bound_is_refused_before_it_is_tokenized(
        served: Any, encodes: list[int], path: str, body: dict[str, Any], param: str) -> None:
    shield, client = served
    r = post(client, path, key(shield), body)
    assert r.status_code == 413, r.text
    err = r.json()["error"]
    assert err["code"] == "prompt_too_large" and err["param"] == param
    assert str(shield.lm.context) in err["message"]
    assert encodes == []


def test_token_limits_are_charged_once_the_prompt_is_tokenized(served: Any) -> None:
    shield, client = served
    k = key(shield, "sipping")  # 40 tokens a minute
    assert post(client, "/v1/completions", k, completion(prompt="def f", max_tokens=8)
                ).status_code == 200
    r = post(client, "/v1/completions", k, completion(prompt="def f " * 8, max_tokens=20))
    assert r.status_code == 429 and "tokens" in r.json()["error"]["message"]


def test_the_tokenizer_routes_are_limited_and_recorded(served: Any) -> None:
    shield, client = served
    k = key(shield, "tight")
    key_id = shield.store.lookup(k).key_id
    r = post(client, "/tokenize", k, {"model": "lm-tiny", "prompt": "def f():"})
    assert r.status_code == 200 and r.headers["RateLimit-Limit"] == "2"
    ids = r.json()["tokens"]
    r = post(client, "/detokenize", k, {"model": "lm-tiny", "tokens": ids})
    assert r.status_code == 200 and r.json()["prompt"] == "def f():"
    r = post(client, "/detokenize", k, {"model": "lm-tiny", "tokens": ids})
    assert r.status_code == 429
    records = shield.store.records(key_id=key_id)
    answers = [json.loads(rec["answer"]) for rec in records]
    assert answers[:2] == [{"tokenize": ids}, {"detokenize": "def f():"}]
    assert answers[2] is None and json.loads(records[2]["decision"])["status"] == 429
    assert json.loads(records[0]["inputs"])["prompts"] == [ids]


# -- N10: logit vectors, not single-token requests ---------------------------------------------------
def test_two_token_full_logit_vectors_are_probing(served: Any) -> None:
    shield, client = served
    k = key(shield, "full")
    codes = [post(client, "/v1/completions", k, completion(
        prompt=[[i, j, 3] for j in range(64)], max_tokens=2, logprobs=2048)).status_code
        for i in range(4)]
    assert codes[0] == 403 or codes[:2] == [200, 403], codes
    flag = shield.store.lookup(k).flag
    assert flag is not None and "logit vectors" in flag["reason"]


def test_an_honest_completion_with_a_few_logprobs_is_not(served: Any) -> None:
    shield, client = served
    k = key(shield, "full")
    for i in range(20):
        r = post(client, "/v1/completions", k, completion(prompt=[1, 2, i + 3], max_tokens=40,
                                                          logprobs=5))
        assert r.status_code == 200, (i, r.text)


# -- F14, L10/L11: what OpenAI's clients send ------------------------------------------------------
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_max_tokens_zero_is_zero(served: Any, field: str) -> None:
    shield, client = served
    r = post(client, "/v1/chat/completions", key(shield), chat(**{field: 0}))
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 0
    assert r.json()["choices"][0]["message"]["content"] == ""


def test_top_logprobs_is_capped_at_20_and_the_tier_cap_names_it(served: Any) -> None:
    shield, client = served
    api = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key(shield, "full"),
                        max_retries=0)
    messages: Any = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.BadRequestError) as bad:
        api.chat.completions.create(model="lm-tiny", messages=messages, max_tokens=1,
                                    logprobs=True, top_logprobs=21)
    assert bad.value.param == "top_logprobs" and "20" in bad.value.message  # type: ignore[attr-defined]
    guarded = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=key(shield, "guarded"),
                            max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        guarded.chat.completions.create(model="lm-tiny", messages=messages, max_tokens=1,
                                        logprobs=True, top_logprobs=4)
    assert bad.value.param == "top_logprobs"  # type: ignore[attr-defined]
    assert "top_logprobs must be between 0 and 3" in bad.value.message
    ok = guarded.chat.completions.create(model="lm-tiny", messages=messages, max_tokens=2,
                                         logprobs=True, top_logprobs=3)
    assert ok.choices[0].logprobs is not None
    assert all(len(t.top_logprobs) == 3 for t in ok.choices[0].logprobs.content or [])


# -- N17: the wording of refusals -------------------------------------------------------------------
def test_an_expired_key_is_told_so_in_plain_words(served: Any) -> None:
    shield, client = served
    k = shield.store.create_key("plain", ttl_seconds=-1)[0]
    r = post(client, "/v1/completions", k, completion())
    assert r.status_code == 403
    assert r.json()["error"]["message"] == "The API key has expired."


def test_an_out_of_domain_value_is_quoted_as_a_number(tmp_path: Any) -> None:
    from modelshield.errors import Denied

    shield = build_shield({"model": {"builtin": "digits-lr", "enforce_domain": True},
                           "audit_url": f"sqlite:///{tmp_path}/a.db", "tiers": {"t": {}}})
    try:
        with pytest.raises(Denied) as info:
            shield.handle(shield.store.create_key("t")[0], [[0.0] * 63 + [17.5]])
        assert "inputs[0][63] = 17.5 is outside" in str(info.value), str(info.value)
        assert "np." not in str(info.value)
    finally:
        shield.close()
