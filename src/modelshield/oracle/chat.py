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
from modelshield.errors import BudgetExhausted, ConfigError, Denied, OracleError, Refused
from modelshield.oracle.http import get_json
from modelshield.victims.chat import Message, chat_ids


@dataclass(frozen=True)
class Reply:
    """The assistant's reply and why it ended (``content_filter``: the gateway redacted
    it)."""

    text: str
    finish_reason: str


class ChatOracle(ABC):
    """Base: budget (in requests), token and dollar accounting."""

    def __init__(self, *, budget: int | None = None, price_per_1k_tokens: float = 0.0,
                 name: str = "model") -> None:
        if price_per_1k_tokens < 0:
            raise ConfigError.invalid("price_per_1k_tokens", "a number >= 0",
                                      price_per_1k_tokens)
        self.budget, self.price_per_1k_tokens, self.name = budget, price_per_1k_tokens, name
        self.used = 0
        self.tokens = 0

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.used

    @property
    def cost(self) -> float:
        return self.tokens * self.price_per_1k_tokens / 1000.0

    def chat(self, messages: Sequence[Message], *, max_tokens: int = 200,
             temperature: float = 0.0) -> Reply:
        if self.budget is not None and self.used + 1 > self.budget:
            raise BudgetExhausted(1, self.used, self.budget)
        reply, tokens = self._chat([(str(r), str(t)) for r, t in messages], max_tokens,
                                   temperature)
        self.used += 1
        self.tokens += tokens
        return reply

    @abstractmethod
    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        """The reply and the tokens the request was billed for."""

    def close(self) -> None:
        """Release connections, where there are any."""


class ShieldChatOracle(ChatOracle):
    """A language model behind ``shield``, as the holder of ``api_key``."""

    def __init__(self, shield: Any, api_key: str, *, client_ip: str = "127.0.0.1",
                 **kwargs: Any) -> None:
        super().__init__(name=shield.spec.name, **kwargs)
        self.shield, self.api_key, self.client_ip = shield, api_key, client_ip

    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        lm = self.shield.lm
        req = LMRequest([chat_ids(lm, messages)], max_tokens, temperature, seed=0,
                        messages=messages)
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
        self.model = model or self._only_model()
        super().__init__(name=self.model, **kwargs)

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def _only_model(self) -> str:
        models = [m["id"] for m in get_json(self.client, "/v1/models", self.headers)
                  .get("data", [])]
        if len(models) != 1:
            raise ConfigError(f"The target serves {models}; name one (model=...).")
        return str(models[0])

    def _chat(self, messages: list[Message], max_tokens: int, temperature: float
              ) -> tuple[Reply, int]:
        body = {"model": self.model, "max_tokens": max_tokens, "temperature": temperature,
                "seed": 0, "messages": [{"role": r, "content": t} for r, t in messages]}
        try:
            resp = self.client.post("/v1/chat/completions", json=body, headers=self.headers)
        except httpx.HTTPError as exc:
            raise OracleError(f"the target did not answer: {exc}") from None
        try:
            data = resp.json()
        except ValueError:
            raise OracleError(f"HTTP {resp.status_code} without JSON: {resp.text[:200]}"
                              ) from None
        if resp.status_code != 200:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            raise Refused(resp.status_code, str(err.get("code")), str(err.get("message")),
                          err.get("param"), self.used)
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise OracleError(f"not a chat completion: {str(data)[:200]}") from None
        return (Reply(str(text), str(choice.get("finish_reason"))),
                int(data.get("usage", {}).get("total_tokens", 0)))
