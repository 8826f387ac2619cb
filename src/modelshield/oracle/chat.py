"""Oracles for chat assistants: what a customer of a chat API can do.

``chat(messages)`` sends the customer's messages (the deployment's system prompt, if any,
is added on the server's side and never seen) and returns the assistant's reply. Every
oracle counts queries (one per request), tokens and dollars at a price per 1,000 tokens,
and refuses past its budget.

- :class:`ShieldChatOracle`: a language model behind the Shield, in-process, with a key;
- :class:`OpenAIChatOracle`: any OpenAI-compatible ``/v1/chat/completions`` endpoint: our
  gateway, a vLLM server, a vendor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from modelshield.answer import LMRequest
from modelshield.errors import Denied, OracleError, Refused
from modelshield.oracle.http import post_openai
from modelshield.oracle.lm import Metered, only_model
from modelshield.victims.chat import Message


@dataclass(frozen=True)
class Reply:
    """The assistant's reply and why it ended (``content_filter``: the gateway redacted
    it)."""

    text: str
    finish_reason: str


class ChatOracle(Metered, ABC):
    """Base: budget (in requests), token and dollar accounting."""

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 200,
             temperature: float = 0.0) -> Reply:
        self._admit(1)
        reply, tokens = self._chat([(str(r), str(t)) for r, t in messages], max_tokens,
                                   temperature)
        self.used += 1
        self.tokens += tokens
        return reply

    @abstractmethod
    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        """The reply and the tokens the request was billed for."""


class ShieldChatOracle(ChatOracle):
    """A language model behind ``shield``, as the holder of ``api_key``."""

    def __init__(self, shield: Any, api_key: str, *, client_ip: str = "127.0.0.1",
                 **kwargs: Any) -> None:
        super().__init__(name=shield.spec.name, **kwargs)
        self.shield, self.api_key, self.client_ip = shield, api_key, client_ip

    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        lm = self.shield.lm
        # As the chat route sends it: the Shield builds the prompt from the messages.
        req = LMRequest([], max_tokens, temperature, seed=0, messages=messages)
        try:
            choices, decision = self.shield.handle_completion(self.api_key, req,
                                                              self.client_ip)
        except Denied as exc:
            raise Refused(exc.status, exc.code, str(exc), exc.headers.get("X-Error-Param"),
                          self.used) from None
        c = choices[0]
        text = c.text if c.text is not None else lm.decode(c.tokens)
        # Billed as a vendor bills: the prompt as answered (the system prompt in it).
        return Reply(text, c.finish_reason), decision.prompt_tokens + len(c.tokens)


class OpenAIChatOracle(ChatOracle):
    """An OpenAI-compatible chat endpoint (``/v1/chat/completions``)."""

    def __init__(self, url: str, api_key: str, *, model: str | None = None,
                 client: httpx.Client | None = None, timeout: float = 60.0,
                 **kwargs: Any) -> None:
        self._owns = client is None
        self.client = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.model = model or only_model(self.client, self.headers)
        super().__init__(name=self.model, **kwargs)

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "seed": 0, "messages": [{"role": r, "content": t} for r, t in messages]}
        data = post_openai(self.client, "/v1/chat/completions", body, self.headers, self.used)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise OracleError(f"not a chat completion: {str(data)[:200]}") from None
        return (Reply(str(text), str(choice.get("finish_reason"))),
                int(data.get("usage", {}).get("total_tokens", 0)))
