"""The baseline for the language-model gateway benchmark: the same model and the same
decoding loop behind a bare FastAPI completions endpoint (no key, limits, detector or log)."""

from __future__ import annotations

import os
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from modelshield.answer import LMRequest
from modelshield.defenses.llm import LLMPolicy, decode
from modelshield.victims.lm import load_lm

lm = load_lm(os.environ.get("BENCH_LM", "lm-h64"))
policy = LLMPolicy()
app = FastAPI()


class Body(BaseModel):
    model: str
    prompt: list[int]
    max_tokens: int = 16
    temperature: float = 1.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None


@app.post("/v1/completions")
async def completions(body: Body) -> dict[str, Any]:
    req = LMRequest([body.prompt], body.max_tokens, body.temperature, seed=body.seed,
                    logit_bias={int(k): v for k, v in (body.logit_bias or {}).items()})
    choices = await run_in_threadpool(decode, lm.next_logits, req, policy,
                                      lm.tokenizer.eos_token_id)
    return {"choices": [{"index": 0, "text": lm.decode(c.tokens)} for c in choices]}


@app.get("/v2/health/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
