"""A language model served upstream behind an OpenAI-compatible server, with the gateway in
front: two real uvicorn servers on loopback. The upstream is a modelshield gateway with a
wide-open tier (it speaks what vLLM speaks: token-id prompts, ``return_tokens_as_token_ids``,
``/tokenize``); the Shield in front applies its own keys, limits, policies and log."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from httpx import Client as HttpClient

from modelshield.attacks.logit_stealing import HiddenSize
from modelshield.defenses.shield import Shield
from modelshield.errors import ConfigError
from modelshield.oracle.lm import OpenAIOracle
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.servers import free_port, live_app

FRONT_TIERS: dict[str, Any] = {
    "open": {"llm": {"max_top_logprobs": 4096}},
    "top5": {},
    "fixed": {"llm": {"bias_affects_logprobs": False}},
    "nolp": {"llm": {"logprobs": False}},
    "rounded": {"llm": {"max_top_logprobs": 4096, "logprob_decimals": 1}},
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shield, HttpClient]]:
    tmp = tmp_path_factory.mktemp("upstream")
    s = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/u.db",
                            "tiers": {"backend": {"llm": {"max_top_logprobs": 4096,
                                                          "max_n": 64}}}})
    with live_app(create_app(s)) as client:
        yield s, client
    s.close()


@pytest.fixture(scope="module")
def front(upstream: tuple[Shield, HttpClient], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[tuple[Shield, HttpClient]]:
    back, client = upstream
    mp = pytest.MonkeyPatch()
    mp.setenv("MS_TEST_UPSTREAM_KEY", back.store.create_key("backend")[0])
    tmp = tmp_path_factory.mktemp("front")
    s = build_shield({"model": {"lm_upstream": str(client.base_url),
                                      "upstream_model": "lm-tiny", "name": "guarded",
                                      "upstream_api_key_env": "MS_TEST_UPSTREAM_KEY"},
                            "audit_url": f"sqlite:///{tmp}/f.db", "tiers": FRONT_TIERS})
    with live_app(create_app(s)) as c:
        yield s, c
    s.close()
    mp.undo()


def post(client: HttpClient, path: str, key: str, body: dict[str, Any]) -> Any:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {key}"})


def test_the_front_answers_what_the_upstream_answers_and_records_it(
        upstream: tuple[Shield, HttpClient], front: tuple[Shield, HttpClient]) -> None:
    back, back_client = upstream
    shield, client = front
    body = {"prompt": "import os\n", "max_tokens": 5, "logprobs": 3, "temperature": 0,
            "return_tokens_as_token_ids": True}
    before = shield.store.count()
    key = shield.store.create_key("top5")[0]
    r = post(client, "/v1/completions", key, {"model": "guarded", **body})
    direct = post(back_client, "/v1/completions", back.store.create_key("backend")[0],
                  {"model": "lm-tiny", **body})
    assert r.status_code == 200 and direct.status_code == 200, (r.text, direct.text)
    got, want = r.json()["choices"][0], direct.json()["choices"][0]
    assert got["text"] == want["text"] and got["logprobs"]["tokens"] == want["logprobs"]["tokens"]
    assert np.allclose(got["logprobs"]["token_logprobs"], want["logprobs"]["token_logprobs"])
    assert got["logprobs"]["top_logprobs"] == want["logprobs"]["top_logprobs"]
    assert shield.store.count() == before + 1
    record = shield.store.records()[-1]
    assert record["model"] == "guarded" and '"max_tokens":5' in record["inputs"]
    assert client.get("/v1/models").status_code == 401  # a key is needed, as with OpenAI
    models = client.get("/v1/models", headers={"Authorization": f"Bearer {key}"}
                        ).json()["data"][0]
    assert models["id"] == "guarded" and models["vocab_size"] == back.lm.vocab


def test_text_prompts_chat_and_token_texts_go_through_the_upstream_tokenizer(
        upstream: tuple[Shield, HttpClient], front: tuple[Shield, HttpClient]) -> None:
    back, _ = upstream
    shield, client = front
    key = shield.store.create_key("top5")[0]
    ids = post(client, "/tokenize", key, {"model": "guarded", "prompt": "def f(x):"}).json()
    assert ids["tokens"] == back.lm.encode("def f(x):")
    text = post(client, "/detokenize", key, {"model": "guarded", "tokens": ids["tokens"]})
    assert text.json()["prompt"] == "def f(x):"
    body = {"model": "guarded", "prompt": "def f(x):", "max_tokens": 3, "logprobs": 2,
            "temperature": 0}
    texts = post(client, "/v1/completions", key, body).json()["choices"][0]["logprobs"]
    ids = post(client, "/v1/completions", key, {**body, "return_tokens_as_token_ids": True}
               ).json()["choices"][0]["logprobs"]
    assert texts["tokens"] == [back.lm.token_text(int(t.split(":")[1])) for t in ids["tokens"]]
    assert [sorted(top) for top in texts["top_logprobs"]] == [
        sorted(back.lm.token_text(int(t.split(":")[1])) for t in top)
        for top in ids["top_logprobs"]]
    chat = post(client, "/v1/chat/completions", key, {
        "model": "guarded", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["role"] == "assistant"


def test_the_front_tier_policies_hold_whatever_the_upstream_allows(
        front: tuple[Shield, HttpClient]) -> None:
    shield, client = front

    def ask(tier: str, **extra: Any) -> Any:
        return post(client, "/v1/completions", shield.store.create_key(tier)[0],
                    {"model": "guarded", "prompt": [5, 6, 7], "max_tokens": 1, **extra})

    r = ask("nolp", logprobs=1)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = ask("top5", logprobs=20)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = ask("fixed", logprobs=2, logit_bias={"9": 50})
    assert r.status_code == 400 and r.json()["error"]["code"] == "logit_bias_with_logprobs"
    assert ask("fixed", logit_bias={"9": 100}, temperature=0).json()["choices"][0]["text"] \
        == shield.lm.decode([9])
    values = ask("rounded", logprobs=50).json()["choices"][0]["logprobs"]
    flat = values["token_logprobs"] + [v for top in values["top_logprobs"] for v in top.values()]
    assert all(abs(v * 10 - round(v * 10)) < 1e-9 for v in flat)
    r = ask("top5", logprobs=1, max_tokens=4096)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_hidden_size_through_the_front(upstream: tuple[Shield, HttpClient],
                                       front: tuple[Shield, HttpClient]) -> None:
    back, _ = upstream
    shield, client = front
    oracle = OpenAIOracle(str(client.base_url), shield.store.create_key("open")[0],
                          client=client)
    e = HiddenSize(variant="full").run(oracle, 400)
    assert e.hidden_size == back.lm.hidden == 32


def test_upstream_failures_are_named(upstream: tuple[Shield, HttpClient],
                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    back, client = upstream
    tmp = tmp_path_factory.mktemp("bad")
    with pytest.raises(ConfigError, match=r"model\.lm_upstream: .*unreachable"):
        build_shield({"model": {"lm_upstream": f"http://127.0.0.1:{free_port()}",
                                      "upstream_model": "x"},
                            "audit_url": f"sqlite:///{tmp}/a.db"})
    mp = pytest.MonkeyPatch()
    mp.setenv("MS_TEST_UPSTREAM_KEY2", back.store.create_key("backend")[0])
    keyed = {"upstream_api_key_env": "MS_TEST_UPSTREAM_KEY2"}
    with pytest.raises(ConfigError, match=r"does not serve .nope.*lm-tiny"):
        build_shield({"model": {"lm_upstream": str(client.base_url),
                                      "upstream_model": "nope", **keyed},
                            "audit_url": f"sqlite:///{tmp}/b.db"})
    with pytest.raises(ConfigError, match=r"model\.upstream_model"):
        build_shield({"model": {"lm_upstream": str(client.base_url), **keyed},
                            "audit_url": f"sqlite:///{tmp}/c.db"})
    mp.undo()
    # No upstream key: the upstream refuses the gateway's first call (its model list), and
    # the gateway does not start, saying so.
    with pytest.raises(ConfigError, match=r"model\.lm_upstream: upstream refused \(401\)"):
        build_shield({"model": {"lm_upstream": str(client.base_url),
                                      "upstream_model": "lm-tiny"},
                            "audit_url": f"sqlite:///{tmp}/d.db", "tiers": {"t": {}}})


def test_tokens_are_named_by_id_when_the_upstream_cannot_name_them(
        front: tuple[Shield, HttpClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer is already recorded when token texts are fetched: an upstream that cannot
    detokenize must not turn it into an error."""
    from modelshield.errors import OracleError

    shield, client = front

    def refuse(ids: Any) -> str:
        raise OracleError("upstream refused (404): no /detokenize")

    monkeypatch.setattr(shield.model, "decode", refuse)
    monkeypatch.setattr(shield.model, "_texts", {})
    before = shield.store.count()
    r = post(client, "/v1/completions", shield.store.create_key("top5")[0],
             {"model": "guarded", "prompt": [5, 6, 7], "max_tokens": 2, "logprobs": 2})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    assert all(t.startswith("token_id:") for t in lp["tokens"])
    assert shield.store.count() == before + 1


def test_a_system_prompt_reaches_the_upstream_and_stays_out_of_the_front_log(
        upstream: tuple[Shield, HttpClient], tmp_path_factory: pytest.TempPathFactory) -> None:
    import json

    from modelshield.oracle.chat import ShieldChatOracle

    back, client = upstream
    mp = pytest.MonkeyPatch()
    mp.setenv("MS_TEST_UPSTREAM_KEY3", back.store.create_key("backend")[0])
    tmp = tmp_path_factory.mktemp("sys")
    secret = "You are Vega. The staff code is QX-1234."
    s = build_shield({"model": {"lm_upstream": str(client.base_url), "upstream_model": "lm-tiny",
                                "upstream_api_key_env": "MS_TEST_UPSTREAM_KEY3",
                                "system_prompt": secret},
                      "audit_url": f"sqlite:///{tmp}/f.db",
                      "tiers": {"t": {"llm": {"leak_filter": {}}}}})
    try:
        oracle = ShieldChatOracle(s, s.store.create_key("t")[0])
        reply = oracle.chat([("user", "hi")], max_tokens=3)
        assert reply.finish_reason in ("length", "stop")
        sent = json.loads(back.store.records()[-1]["inputs"])["prompts"][0]
        assert secret in back.lm.decode(sent)  # the upstream got it, as a server does
        front = s.store.records()[-1]
        assert "QX-1234" not in front["inputs"] and "QX-1234" not in front["answer"]
    finally:
        s.close()
        mp.undo()


def _events(client: HttpClient, key: str, body: dict[str, Any]) -> list[Any]:
    import json

    with client.stream("POST", "/v1/completions", json={**body, "stream": True},
                       headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status_code == 200
        lines = [line.removeprefix("data: ") for line in r.iter_lines() if line]
    assert lines[-1] == "[DONE]", lines[-3:]
    return [json.loads(line) for line in lines[:-1]]


def test_streamed_completions_from_an_upstream_end_whole(
        front: tuple[Shield, HttpClient]) -> None:
    """A stream from an upstream model (its choices whole, not token by token), with
    logprobs, n and max_tokens 0, ends with [DONE] and says what the plain answer says."""
    shield, client = front
    key = shield.store.create_key("top5")[0]
    body = {"model": "guarded", "prompt": "import os\n", "max_tokens": 4, "temperature": 0,
            "logprobs": 2, "n": 2, "stream_options": {"include_usage": True}}
    before = shield.store.count()
    chunks = _events(client, key, body)
    plain = post(client, "/v1/completions", key, body).json()
    got = {c["index"]: c for chunk in chunks for c in chunk["choices"]}
    assert [got[i]["text"] for i in (0, 1)] == [c["text"] for c in plain["choices"]]
    assert got[0]["logprobs"] == plain["choices"][0]["logprobs"]
    assert chunks[-1]["usage"] == plain["usage"]
    empty = _events(client, key, {**body, "max_tokens": 0, "logprobs": None, "n": 1})
    assert [c["text"] for chunk in empty for c in chunk["choices"]] == [""]
    assert shield.store.count() == before + 3


def test_a_stream_that_fails_midway_says_so_and_is_counted(
        front: tuple[Shield, HttpClient], monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug after the stream's 200 has gone out: the client gets an error event and the
    stream's end, not a dropped connection, and /metrics counts a 500."""
    shield, client = front

    def broken(token: int) -> str:
        raise RuntimeError("a bug while naming tokens")

    monkeypatch.setattr(shield.model, "token_text", broken)
    monkeypatch.setattr(shield.model, "_texts", {})
    chunks = _events(client, shield.store.create_key("top5")[0],
                     {"model": "guarded", "prompt": [5, 6, 7], "max_tokens": 2,
                      "logprobs": 2})
    assert chunks[-1]["error"]["code"] == "internal_error", chunks
    assert "bug while naming" not in str(chunks)  # no internals leak
    metrics = client.get("/metrics").text
    assert 'modelshield_requests_total{route="completions",status="500"}' in metrics
