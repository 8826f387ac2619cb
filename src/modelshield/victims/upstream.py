"""Models served elsewhere, as adapters: the gateway sits in front of them, every request
passes the Shield here, and only the model's work goes upstream.

* :class:`V2Upstream`: a classifier over the Open Inference Protocol (KServe v2),
  ``POST {url}/v2/models/{name}/infer``. The upstream must return an output named
  ``probabilities`` (or, failing that, the first FP output) of shape (n, c).
* :class:`OpenAIUpstream`: a language model behind an OpenAI-compatible server such as
  vLLM, ``POST {url}/v1/completions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np

from modelshield.answer import FloatArray, LMChoice, LMRequest, Prediction
from modelshield.errors import OracleError, UpstreamError


class V2Upstream:
    """A classifier on a KServe v2 server (MLServer, Triton, KServe). ``output``: the
    output that holds the class probabilities, asked for by name (MLServer's scikit-learn
    runtime: ``predict_proba``); without it, the output named ``probabilities`` or else
    the first floating-point one."""

    def __init__(self, url: str, model: str, timeout: float = 30.0,
                 output: str | None = None) -> None:
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)
        self.path = f"/v2/models/{model}/infer"
        self.output = output

    def predict(self, inputs: FloatArray) -> Prediction:
        body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": list(inputs.shape),
                                            "datatype": "FP64", "data": inputs.ravel().tolist()}]}
        if self.output:
            body["outputs"] = [{"name": self.output}]
        try:
            resp = self.client.post(self.path, json=body)
            resp.raise_for_status()
            outputs = resp.json()["outputs"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            raise OracleError(f"upstream model failed: {exc}") from None
        wanted = [self.output] if self.output else ["probabilities"]
        out = next((o for o in outputs if o.get("name") in wanted),
                   None if self.output else
                   next((o for o in outputs if str(o.get("datatype", "")).startswith("FP")),
                        None))
        if out is None:
            raise OracleError(
                f"upstream returned no class probabilities (outputs: "
                f"{[o.get('name') for o in outputs]}); set model.upstream_output to the "
                "output that holds them (MLServer's scikit-learn runtime: predict_proba).")
        probs = np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
        if probs.ndim == 1 or probs.shape[1:] == (1,):  # a binary model's P(class 1) alone
            p = probs.reshape(-1)  # (MLServer's LightGBM runtime answers so for two classes)
            if ((p < 0) | (p > 1)).any():
                raise OracleError(f"upstream output {out.get('name')!r} holds one value a row, "
                                  "not in [0, 1]: not a probability of class 1; set "
                                  "model.upstream_output to the output of probabilities.")
            probs = np.column_stack([1.0 - p, p])
        return Prediction(probabilities=probs)

    def close(self) -> None:
        self.client.close()


class OpenAIUpstream:
    """A language model served elsewhere behind an OpenAI-compatible API (vLLM, say), as
    the gateway's model: every request passes the Shield here, then goes upstream.

    The upstream is asked for what the Shield needs to judge and record a request:
    prompts as token ids (``/tokenize`` turns text into ids, as vLLM serves it),
    ``return_tokens_as_token_ids`` (vLLM) so each logprob names its token id, and
    ``return_token_ids`` for the sampled ids. ``/v1/models`` gives the context length
    (``max_model_len``) and, where the server says it, the vocabulary size.
    """

    def __init__(self, url: str, model: str, *, api_key: str | None = None,
                 vocab: int | None = None, timeout: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout, headers=headers)
        self.name = model
        self._texts: dict[int, str] = {}
        try:
            entry = self._model_entry(model)
            size = vocab or entry.get("vocab_size")
            if not size:
                raise OracleError(f"upstream {url}: /v1/models does not give {model!r}'s "
                                  "vocab_size; set model.upstream_vocab in the config.")
        except OracleError:
            self.client.close()
            raise
        self.vocab = int(size)
        self.context = int(entry.get("max_model_len") or entry.get("context_length") or 2048)

    def _model_entry(self, model: str) -> dict[str, Any]:
        data = self._call("GET", "/v1/models")
        for entry in data.get("data", []):
            if entry.get("id") == model:
                return dict(entry)
        served = ", ".join(str(e.get("id")) for e in data.get("data", []))
        raise OracleError(f"upstream does not serve {model!r} (it serves: {served or 'none'}).")

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            resp = self.client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise OracleError(f"upstream unreachable: {exc}") from None
        if resp.status_code >= 400:
            try:
                error = resp.json()["error"]
                message, param = error["message"], error.get("param")
            except (ValueError, KeyError, TypeError):
                message, param = resp.text[:300], None
            raise UpstreamError(resp.status_code, f"upstream refused ({resp.status_code}): "
                                f"{message}", param if isinstance(param, str) else None)
        return resp.json()

    def encode(self, text: str) -> list[int]:
        out = self._call("POST", "/tokenize", {"model": self.name, "prompt": text,
                                               "add_special_tokens": False})
        return [int(t) for t in out["tokens"]]

    def decode(self, ids: Sequence[int]) -> str:
        if not ids:
            return ""
        out = self._call("POST", "/detokenize", {"model": self.name, "tokens": list(ids)})
        return str(out["prompt"])

    def token_text(self, token: int) -> str:
        """One token's text (asked upstream once per token, then kept)."""
        if token not in self._texts:
            self._texts[token] = self.decode([token])
        return self._texts[token]

    def complete(self, req: LMRequest) -> list[LMChoice]:
        """Every choice of ``req``, generated upstream, as the Shield's value type. With
        ``max_tokens`` 0 the choices are empty, as a local model gives them (vLLM refuses
        to generate nothing)."""
        if req.max_tokens == 0:
            empty: list[Any] | None = [] if req.logprobs is not None else None
            return [LMChoice(i // req.n, [], empty, empty, "length", text="")
                    for i in range(len(req.prompts) * req.n)]
        body: dict[str, Any] = {
            "model": self.name, "prompt": req.prompts, "max_tokens": req.max_tokens,
            "temperature": req.temperature, "top_p": req.top_p, "n": req.n,
            "return_tokens_as_token_ids": True, "return_token_ids": True}
        if req.seed is not None:
            body["seed"] = req.seed
        if req.logprobs is not None:
            body["logprobs"] = req.logprobs
        if req.logit_bias:
            body["logit_bias"] = {str(k): v for k, v in req.logit_bias.items()}
        if req.stop:
            body["stop"] = list(req.stop)
        out = self._call("POST", "/v1/completions", body)
        choices = sorted(out["choices"], key=lambda c: c["index"])
        if len(choices) != len(req.prompts) * req.n:
            raise OracleError(f"upstream returned {len(choices)} choices for "
                              f"{len(req.prompts)} prompt(s) x n={req.n}.")
        return [self._choice(c, i // req.n, req.logprobs is not None)
                for i, c in enumerate(choices)]

    def _choice(self, c: dict[str, Any], prompt: int, wants_logprobs: bool) -> LMChoice:
        """One upstream choice; its logprobs and top logprobs by token id."""
        lp = c.get("logprobs")
        tokens = c.get("token_ids")
        if tokens is None and lp is not None:
            tokens = [_token_id(t) for t in lp["tokens"]]
        if tokens is None:
            tokens = self.encode(c.get("text", ""))
        logprobs = tops = None
        if wants_logprobs:
            if lp is None:
                raise OracleError("upstream returned no logprobs though they were asked.")
            logprobs = [float(v) for v in lp["token_logprobs"]]
            tops = [sorted(((_token_id(t), float(v)) for t, v in (top or {}).items()),
                           key=lambda e: -e[1]) for top in lp["top_logprobs"]]
        return LMChoice(prompt, [int(t) for t in tokens], logprobs, tops,
                        str(c.get("finish_reason") or "length"), text=c.get("text"))

    def close(self) -> None:
        self.client.close()


def _token_id(token: str) -> int:
    if not token.startswith("token_id:"):
        raise OracleError(f"upstream named a token {token!r}, not 'token_id:N': it must "
                          "support vLLM's return_tokens_as_token_ids.")
    return int(token.removeprefix("token_id:"))
