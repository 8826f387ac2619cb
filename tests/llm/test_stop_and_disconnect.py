"""What a choice cut short holds: a stop sequence's cut leaves logprobs that cover exactly the
returned text (whole or streamed), and a client that hangs up mid-stream stops its
generation, which is recorded as far as it went."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from modelshield.answer import LMRequest
from modelshield.defenses.shield import Shield
from modelshield.serve.app import create_app
from modelshield.serve.factory import build_shield
from tests.servers import live_app


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Shield, httpx.Client]]:
    tmp = tmp_path_factory.mktemp("llm-stop")
    shield = build_shield({"model": {"lm": "lm-tiny"}, "audit_url": f"sqlite:///{tmp}/a.db",
                           "tiers": {"plain": {"llm": {"max_n": 8}}}})
    with live_app(create_app(shield)) as client:
        yield shield, client
    shield.close()


def post(client: httpx.Client, k: str, body: dict[str, Any], path: str = "/v1/completions"
         ) -> Any:
    r = client.post(path, json=body, headers={"Authorization": f"Bearer {k}"})
    assert r.status_code == 200, r.text
    return r


def body(**more: Any) -> dict[str, Any]:
    return {"model": "lm-tiny", "prompt": "The ", "max_tokens": 40, "seed": 7,
            "logprobs": 1, **more}  # seeded: the same tokens up to any cut


def stops(shield: Shield, client: httpx.Client, k: str) -> tuple[list[str], str, str]:
    """The uncut completion's tokens, a stop that starts at a token's start and one that
    starts inside a token (each found first where it is)."""
    full = post(client, k, body()).json()["choices"][0]
    tokens, text = full["logprobs"]["tokens"], full["text"]
    assert "".join(tokens) == text
    starts = [sum(len(t) for t in tokens[:j]) for j in range(len(tokens))]
    aligned = inside = None
    for j, (s, t) in enumerate(zip(starts, tokens, strict=True)):
        if j < 2:
            continue
        if aligned is None and t.strip() and text.index(text[s:s + 2]) == s:
            aligned = text[s:s + 2]
        if inside is None and len(t) >= 2 and text.index(text[s + 1:s + 3]) == s + 1 \
                and len(text[s + 1:s + 3]) == 2:
            inside = text[s + 1:s + 3]
    assert aligned and inside, tokens
    return tokens, aligned, inside


def test_a_stop_cut_leaves_logprobs_covering_exactly_the_text(served: Any) -> None:
    shield, client = served
    k = shield.store.create_key("plain")[0]
    tokens, aligned, inside = stops(shield, client, k)
    full = "".join(tokens)
    for stop in (aligned, inside):
        c = post(client, k, body(stop=[stop])).json()["choices"][0]
        assert c["finish_reason"] == "stop"
        assert "".join(c["logprobs"]["tokens"]) == c["text"]  # exactly, no token past it
        assert full[:full.index(stop)].startswith(c["text"])
        assert len(full[:full.index(stop)]) - len(c["text"]) < max(map(len, tokens))
        assert len(c["logprobs"]["token_logprobs"]) == len(c["logprobs"]["tokens"])
    cut = post(client, k, body(stop=[aligned])).json()
    assert cut["choices"][0]["text"] == full[:full.index(aligned)]
    assert cut["usage"]["completion_tokens"] == len(cut["choices"][0]["logprobs"]["tokens"])


def test_a_streamed_stop_cut_sends_what_the_whole_answer_holds(served: Any) -> None:
    shield, client = served
    k = shield.store.create_key("plain")[0]
    _, aligned, inside = stops(shield, client, k)
    for stop in (aligned, inside):
        whole = post(client, k, body(stop=[stop])).json()["choices"][0]
        r = post(client, k, body(stop=[stop], stream=True))
        chunks = [json.loads(line[6:])["choices"][0] for line in r.text.splitlines()
                  if line.startswith("data: {")]
        assert "".join(c["text"] for c in chunks) == whole["text"]
        streamed = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
        assert streamed == whole["logprobs"]["tokens"]


def test_a_chat_stop_cut_leaves_content_logprobs_covering_the_reply(served: Any) -> None:
    shield, client = served
    k = shield.store.create_key("plain")[0]
    chat = {"model": "lm-tiny", "messages": [{"role": "user", "content": "The "}],
            "max_tokens": 40, "seed": 7, "logprobs": True}
    reply = post(client, k, chat, "/v1/chat/completions").json()["choices"][0]
    content = reply["message"]["content"]
    stop = content[len(content) // 2:len(content) // 2 + 2]
    cut = post(client, k, {**chat, "stop": [stop]}, "/v1/chat/completions").json()["choices"][0]
    assert "".join(t["token"] for t in cut["logprobs"]["content"]) == cut["message"]["content"]
    assert content[:content.index(stop)].startswith(cut["message"]["content"])


# -- N9: a client that hangs up ------------------------------------------------------------------
def test_the_shield_stops_generating_when_the_stream_s_reader_is_gone(served: Any) -> None:
    shield, _ = served
    k = shield.store.create_key("plain")[0]
    eos = shield.lm.tokenizer.eos_token_id
    req = LMRequest([[1, 2, 3]], max_tokens=100, n=2, logit_bias={eos: -100.0})
    steps: list[int] = []

    def reader(decision: Any, deltas: Any) -> bool:
        steps.append(len(deltas))
        return len(steps) < 3  # the reader is gone after the third step

    choices, decision = shield.handle_completion(k, req, on_step=reader)
    assert decision.disconnected and len(steps) == 3 and [len(c.tokens) for c in choices] == [3, 3]
    assert {c.finish_reason for c in choices} == {"abort"}
    record = shield.store.records()[-1]
    assert json.loads(record["decision"])["disconnected"] is True
    assert [len(c["tokens"]) for c in json.loads(record["answer"])] == [3, 3]


def test_a_client_that_hangs_up_mid_stream_stops_its_generation(served: Any) -> None:
    shield, client = served
    k = shield.store.create_key("plain")[0]
    key_id = shield.store.lookup(k).key_id
    eos = shield.lm.tokenizer.eos_token_id
    request = {"model": "lm-tiny", "prompt": [[1, 2, 3]] * 8, "max_tokens": 120, "n": 1,
               "logit_bias": {str(eos): -100}, "logprobs": 5, "stream": True,
               "stop": ["\x00\x01"]}  # a stop sequence: the text is decoded every step
    with httpx.Client(base_url=str(client.base_url), timeout=30) as hangup, hangup.stream(
            "POST", "/v1/completions", json=request,
            headers={"Authorization": f"Bearer {k}"}) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: {"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        records = shield.store.records(key_id=key_id)
        if len(records) == 2:
            break
        time.sleep(0.05)
    assert len(records) == 2, "the completion was never recorded"
    assert json.loads(records[1]["decision"]).get("disconnected") is True
    generated = [len(c["tokens"]) for c in json.loads(records[1]["answer"])]
    assert max(generated) < 120, generated  # stopped well before max_tokens
