"""``GET /v1/models`` and ``GET /v1/models/{model_id}``: the models served (a key is
needed, as with OpenAI's API)."""

from __future__ import annotations

from typing import Any

from modelshield.serve.context import GatewayDep
from modelshield.serve.openai.serving import LMServing, openai_router, serving

router = openai_router()


@router.get("/v1/models", metric="models", openai=True)
async def models(gw: GatewayDep) -> dict[str, Any]:
    """The language models served (a key is needed, as with OpenAI's API)."""
    return {"object": "list", "data": [LMServing(shield, gw).entry()
                                       for shield in gw.shields.values()
                                       if shield.lm is not None]}


@router.get("/v1/models/{model_id}", metric="models", openai=True)
async def model_entry(model_id: str, gw: GatewayDep) -> Any:
    return serving(gw, model_id).entry()
