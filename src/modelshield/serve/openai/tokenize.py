"""vLLM's tokenizer routes, ``POST /tokenize`` and ``POST /detokenize``: a valid key is
needed, and each request passes the key's suspension and request limits, the size bound and
its token limits, and is recorded, as a completion is (defenses/lm_stages.py)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from modelshield.answer import LMRequest
from modelshield.defenses.lm_stages import DETOKENIZE_STAGES, TOKENIZE_STAGES
from modelshield.serve.context import GatewayDep, refusal
from modelshield.serve.openai.protocol import DetokenizeRequest, TokenizeRequest
from modelshield.serve.openai.serving import openai_router, serving

router = openai_router()


@router.post("/tokenize", metric="tokenize", openai=True)
async def tokenize(body: TokenizeRequest, request: Request, gw: GatewayDep) -> Any:
    """vLLM's tokenizer route: text to token ids (limited and recorded like a query)."""
    served = serving(gw, body.model)
    req = LMRequest([], max_tokens=0, raw_prompts=[body.prompt])
    call = await served.tokenizer(request, req, body.model, TOKENIZE_STAGES)
    ids = call.lm_request.prompts[0]
    return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": served.lm.context},
                        headers=call.decision.headers)


@router.post("/detokenize", metric="detokenize", openai=True)
async def detokenize(body: DetokenizeRequest, request: Request, gw: GatewayDep) -> Any:
    """vLLM's detokenizer route: token ids to text (limited and recorded like a query)."""
    served = serving(gw, body.model)
    lm = served.lm
    if lm is not None and any(not 0 <= t < lm.vocab for t in body.tokens):
        raise refusal(400, "invalid_value", f"token ids must be in [0, {lm.vocab}).", "tokens")
    req = LMRequest([list(body.tokens)], max_tokens=0)
    call = await served.tokenizer(request, req, body.model, DETOKENIZE_STAGES)
    return JSONResponse({"prompt": call.choices[0].text}, headers=call.decision.headers)
