"""vLLM's tokenizer routes, ``POST /tokenize`` and ``POST /detokenize``: a valid key is
needed, no query is spent."""

from __future__ import annotations

from typing import Any

from fastapi import Request

from modelshield.serve.context import GatewayDep, refusal
from modelshield.serve.openai.protocol import DetokenizeRequest, TokenizeRequest
from modelshield.serve.openai.serving import openai_router, serving

router = openai_router()


@router.post("/tokenize", metric="tokenize", openai=True)
async def tokenize(body: TokenizeRequest, request: Request, gw: GatewayDep) -> Any:
    """vLLM's tokenizer route: text to token ids (a valid key is needed; no query is
    spent)."""
    served = serving(gw, body.model)
    await served.check(request, body.model)
    lm = served.lm
    ids = await served.offload(lambda: [lm.encode(body.prompt)])
    return {"tokens": ids[0], "count": len(ids[0]), "max_model_len": lm.context}


@router.post("/detokenize", metric="detokenize", openai=True)
async def detokenize(body: DetokenizeRequest, request: Request, gw: GatewayDep) -> Any:
    """vLLM's detokenizer route: token ids to text."""
    served = serving(gw, body.model)
    await served.check(request, body.model)
    lm = served.lm
    if any(not 0 <= t < lm.vocab for t in body.tokens):
        raise refusal(400, "invalid_value", f"token ids must be in [0, {lm.vocab}).", "tokens")
    return {"prompt": await served.offload(lambda: lm.decode(body.tokens), "tokens")}
