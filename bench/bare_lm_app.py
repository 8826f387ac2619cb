"""The baseline for the language-model gateway benchmark: the same model and the same
decoding loop behind a bare FastAPI completions endpoint (no key, limits, detector or log).

It speaks the part of vLLM's OpenAI-compatible API that the gateway uses when it fronts an
upstream server, so it also stands in for vLLM there: ``/v1/models`` (with
``max_model_len``, and no vocabulary size, as vLLM), ``/v1/completions`` with token-id
prompts, logprobs, ``return_tokens_as_token_ids`` and ``return_token_ids``, and
``/tokenize``. It parses requests with the gateway's own request models.
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMRequest
from modelshield.defenses.llm import LLMPolicy, decode
from modelshield.serve.openai import CompletionRequest, TokenizeRequest
from modelshield.victims.lm import load_lm

NAME = os.environ.get("BENCH_LM", "lm-h64")
lm = load_lm(NAME)
policy = LLMPolicy(max_top_logprobs=1 << 20, max_n=64)
app = FastAPI()


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": NAME, "object": "model",
                                        "max_model_len": lm.context}]}


@app.post("/tokenize")
async def tokenize(body: TokenizeRequest) -> dict[str, Any]:
    ids = lm.encode(body.prompt)
    return {"tokens": ids, "count": len(ids), "max_model_len": lm.context}


@app.post("/v1/completions")
async def completions(body: CompletionRequest) -> dict[str, Any]:
    prompts = [body.prompt] if body.prompt and isinstance(body.prompt[0], int) else body.prompt
    req = LMRequest([list(p) for p in prompts], body.max_tokens,  # type: ignore[arg-type,union-attr]
                    body.temperature, body.top_p, body.n, body.seed, body.logprobs,
                    {int(k): v for k, v in (body.logit_bias or {}).items()})
    choices = await run_in_threadpool(decode, lm.next_logits, req, policy,
                                      lm.tokenizer.eos_token_id, None, lm.stepper)

    def name(t: int) -> str:
        return f"token_id:{t}" if body.return_tokens_as_token_ids else lm.token_text(t)

    out = []
    for i, c in enumerate(choices):
        item: dict[str, Any] = {"index": i, "text": lm.decode(c.tokens),
                                "finish_reason": c.finish_reason, "logprobs": None}
        if c.logprobs is not None and c.top_logprobs is not None:
            item["logprobs"] = {"tokens": [name(t) for t in c.tokens],
                                "token_logprobs": c.logprobs,
                                "top_logprobs": [{name(t): v for t, v in top}
                                                 for top in c.top_logprobs]}
        if body.return_token_ids:
            item["token_ids"] = c.tokens
        out.append(item)
    return {"object": "text_completion", "model": NAME, "choices": out}


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
