"""Oracles for language models: what an attacker can do with a completions API.

``complete(prompts, ...)`` sends token-id prompts with the knobs logit stealing uses
(``max_tokens``, ``temperature``, ``logprobs``, ``logit_bias``) and returns, per prompt, the
sampled tokens with whatever logprobs the API lets out. Every oracle counts queries (one per
prompt), tokens (prompt plus completion) and dollars at a price per 1,000 tokens, and
refuses past its query budget.

- :class:`ShieldLMOracle`: a language model behind the Shield, in-process, with a key;
- :class:`OpenAIOracle`: any OpenAI-compatible ``/v1/completions`` endpoint: our gateway,
  a vLLM server, a vendor.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from modelshield.answer import LMRequest
from modelshield.errors import BudgetExhausted, ConfigError, Denied, OracleError, Refused
from modelshield.oracle.http import get_json, post_openai


@dataclass
class Completion:
    """One prompt's answer: sampled tokens; per token its logprob and the top logprobs."""

    tokens: list[int]
    logprobs: list[float] | None
    top_logprobs: list[dict[int, float]] | None


class Metered:
    """What every language-model oracle counts: queries against the budget, tokens billed,
    and dollars at a price per 1,000 tokens."""

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

    def _admit(self, queries: int) -> None:
        """Refuse ``queries`` more past the budget, before anything is sent."""
        if self.budget is not None and self.used + queries > self.budget:
            raise BudgetExhausted(queries, self.used, self.budget)

    def close(self) -> None:
        """Release connections, where there are any."""


def only_model(client: httpx.Client, headers: dict[str, str]) -> str:
    """The one model an OpenAI-compatible server lists, or ConfigError asking to name one."""
    models = [m["id"] for m in get_json(client, "/v1/models", headers).get("data", [])]
    if len(models) != 1:
        raise ConfigError(f"The target serves {models}; name one (model=...).")
    return str(models[0])


class LMOracle(Metered, ABC):
    """Base: budget (in queries, one per prompt), token and dollar accounting."""

    def __init__(self, vocab: int, *, budget: int | None = None,
                 price_per_1k_tokens: float = 0.0, name: str = "model") -> None:
        super().__init__(budget=budget, price_per_1k_tokens=price_per_1k_tokens, name=name)
        self.vocab = vocab
        self.requests = 0

    def complete(self, prompts: Sequence[Sequence[int]], *, max_tokens: int = 1,
                 temperature: float = 0.0, logprobs: int | None = None,
                 logit_bias: dict[int, float] | None = None) -> list[Completion]:
        self._admit(len(prompts))
        req = LMRequest([list(map(int, p)) for p in prompts], max_tokens, temperature,
                        logprobs=logprobs, logit_bias=dict(logit_bias or {}), seed=0)
        out, tokens = self._complete(req)
        self.used += len(prompts)
        self.requests += 1
        self.tokens += tokens
        return out

    @abstractmethod
    def _complete(self, req: LMRequest) -> tuple[list[Completion], int]:
        """Answers and the tokens the request was billed for."""


class ShieldLMOracle(LMOracle):
    """A language model behind ``shield``, as the holder of ``api_key``."""

    def __init__(self, shield: Any, api_key: str, *, client_ip: str = "127.0.0.1",
                 **kwargs: Any) -> None:
        super().__init__(shield.lm.vocab, name=shield.spec.name, **kwargs)
        self.shield, self.api_key, self.client_ip = shield, api_key, client_ip
        self.first_flag: tuple[int, str] | None = None

    def _complete(self, req: LMRequest) -> tuple[list[Completion], int]:
        try:
            choices, decision = self.shield.handle_completion(self.api_key, req,
                                                              self.client_ip)
        except Denied as exc:
            detector = exc.headers.get("X-Modelshield-Flag")
            if detector and self.first_flag is None:
                self.first_flag = (self.used + len(req.prompts), detector)
            raise Refused(exc.status, exc.code, str(exc), exc.headers.get("X-Error-Param"),
                          self.used) from None
        if decision.flags and self.first_flag is None:
            self.first_flag = (self.used + len(req.prompts), decision.flags[0].detector)
        out = [Completion(c.tokens, c.logprobs,
                          None if c.top_logprobs is None else [dict(t) for t in c.top_logprobs])
               for c in choices]
        return out, sum(len(p) for p in req.prompts) + sum(len(c.tokens) for c in choices)


class OpenAIOracle(LMOracle):
    """An OpenAI-compatible completions endpoint. Tokens come back as ``token_id:N`` (vLLM's
    ``return_tokens_as_token_ids``); for a server without it, pass ``vocabulary`` (token text
    -> id) to map the strings back."""

    def __init__(self, url: str, api_key: str, *, model: str | None = None,
                 vocab: int | None = None, vocabulary: dict[str, int] | None = None,
                 client: httpx.Client | None = None, timeout: float = 60.0,
                 **kwargs: Any) -> None:
        self._owns = client is None
        self.client = client or httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.vocabulary = vocabulary
        try:
            self.model = model or only_model(self.client, self.headers)
            if vocab is None:
                vocab = self._vocab()
        except Exception:
            self.close()
            raise
        super().__init__(vocab, name=self.model, **kwargs)

    def close(self) -> None:
        if self._owns:
            self.client.close()

    def _get(self, path: str) -> Any:
        return get_json(self.client, path, self.headers)


    def _vocab(self) -> int:
        meta = self._get("/v1/models")
        for m in meta.get("data", []):
            if m.get("id") == self.model and "vocab_size" in m:
                return int(m["vocab_size"])
        if self.vocabulary:
            return len(self.vocabulary)
        raise ConfigError(f"The target does not state {self.model!r}'s vocabulary size (its "
                          "/v1/models entry has no vocab_size, as vLLM's has none); give it: "
                          "--vocab N at the command line, vocab=N in Python.")

    def _token(self, text: str) -> int:
        if text.startswith("token_id:"):
            return int(text[9:])
        if self.vocabulary is not None and text in self.vocabulary:
            return self.vocabulary[text]
        raise OracleError(f"cannot map token {text!r} to an id: the server does not return "
                          "token ids and no vocabulary was given")

    def _complete(self, req: LMRequest) -> tuple[list[Completion], int]:
        body: dict[str, Any] = {
            "model": self.model, "prompt": req.prompts, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "seed": req.seed,
            "return_tokens_as_token_ids": True, "return_token_ids": True}
        if req.logprobs is not None:
            body["logprobs"] = req.logprobs
        if req.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in req.logit_bias.items()}
        try:
            data = post_openai(self.client, "/v1/completions", body, self.headers, self.used)
        except Refused as exc:
            if exc.status == 400 and "out of vocab" in str(exc).lower():
                raise ConfigError(f"The target refused a token id the attack took from a "
                                  f"vocabulary of {self.vocab:,} ({exc}): --vocab (vocab=) "
                                  "is larger than the model's vocabulary.") from None
            raise _plain_refusal(exc) from None
        out: list[Completion] = []
        for choice in sorted(data["choices"], key=lambda c: c["index"]):
            lp = choice.get("logprobs")
            if lp is None:
                ids = choice.get("token_ids")
                # Without logprobs the sampled tokens are in token_ids (vLLM) or the text.
                out.append(Completion(list(ids) if ids is not None
                                      else self._tokens_of_text(choice["text"]), None, None))
                continue
            out.append(Completion(
                [self._token(t) for t in lp["tokens"]], list(lp["token_logprobs"]),
                [{self._token(t): v for t, v in top.items()} for top in lp["top_logprobs"]]))
        return out, int(data.get("usage", {}).get("total_tokens", 0))

    def _tokens_of_text(self, text: str) -> list[int]:
        """The text of a one-token answer as its token id (logprobs off)."""
        if self.vocabulary is not None and text in self.vocabulary:
            return [self.vocabulary[text]]
        raise OracleError("the answer carries no token ids (logprobs are off); pass the "
                          "model's vocabulary (token text -> id) to read them from the text")


def _plain_refusal(exc: Refused) -> Refused:
    """A 400 that names a sampling parameter, in the OpenAI dialect (``invalid_value``):
    vLLM words its codes as numbers (``"code": 400``), and a gateway passing an upstream's
    refusal on says ``upstream_error``; either way the API refused that parameter's value
    (vLLM: logprobs past ``--max-logprobs``)."""
    if exc.status == 400 and exc.param in ("logprobs", "logit_bias", "top_logprobs") \
            and exc.code != "invalid_value":
        message = str(exc).split(": ", 1)[-1]
        return Refused(400, "invalid_value", message, exc.param, exc.used)
    return exc
