"""The OpenAI-compatible surface of the gateway, for a language model behind the Shield:
``/v1/models``, vLLM's ``/tokenize`` and ``/detokenize``, ``/v1/completions`` and
``/v1/chat/completions``.

In the shape of vLLM's OpenAI server, one module a route family, each with its ``router``:
:mod:`.models`, :mod:`.tokenize`, :mod:`.completion`, :mod:`.chat`; with
:mod:`.protocol` (the requests), :mod:`.serving` (what the routes share) and
:mod:`.streaming` (server-sent events).
"""

from __future__ import annotations

from modelshield.serve.openai import chat, completion, models, tokenize
from modelshield.serve.openai.protocol import (
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from modelshield.serve.routing import GatewayRouter

ROUTERS: tuple[GatewayRouter, ...] = (models.router, tokenize.router, completion.router,
                                      chat.router)
"""The OpenAI-compatible routes, in the order the OpenAPI document lists them."""

__all__ = ["ROUTERS", "ChatRequest", "CompletionRequest", "DetokenizeRequest",
           "TokenizeRequest"]
