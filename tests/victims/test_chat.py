"""The chat assistant's conversations: the secret prompts are not among those it is trained
on, and every kind of turn is drawn."""

from __future__ import annotations

import numpy as np

from modelshield.victims.chat import chat_examples, chat_prompt, secret_prompts
from modelshield.victims.lm import LM_ZOO


def test_the_secret_prompts_are_not_in_the_training_conversations() -> None:
    entry = LM_ZOO["chat-assistant"]
    drawn = chat_examples(np.random.default_rng([0, 31]))  # train_chat's stream for seed 0
    seen = {next(drawn)[0].split("\n")[1] for _ in range(entry.steps * 32)}
    for seed in (0, 1):
        assert not seen & set(secret_prompts(12, seed))


def test_the_turns_follow_the_template() -> None:
    drawn = chat_examples(np.random.default_rng(5))
    pairs = [next(drawn) for _ in range(400)]
    for prompt, _ in pairs:
        system, user = prompt.split("\n")[1], prompt.split("\n")[3]
        assert prompt == chat_prompt([("system", system), ("user", user)])
    replies = [(p.split("\n")[1], r) for p, r in pairs]
    assert any(r == s for s, r in replies)  # repeated whole
    assert any(r == s.upper() and r != s for s, r in replies)  # in capitals
    assert any(r == "\n".join(s.split()) for s, r in replies)  # a word per line
    assert any(r != s and r in s and r.endswith(".") for s, r in replies)  # one sentence
