"""The requests of the OpenAI-compatible routes, as pydantic models.

They follow the OpenAI API, with vLLM's extensions ``return_tokens_as_token_ids`` (each
token named ``token_id:N``, so that tokens that decode to the same text stay apart) and
``return_token_ids`` (the sampled token ids added to each choice whether or not logprobs
are on). A field this gateway does not know is refused (400, naming it), never ignored;
so is a parameter it knows but does not implement, set to a value that would matter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Prompt = str | list[str] | list[int] | list[list[int]]


class _Request(BaseModel):
    """A field this gateway does not know is refused (400, naming it), never ignored."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Request):
    include_usage: bool = False


# Parameters of the OpenAI API the gateway does not implement, with the value that means
# "not used": a request that sets another value is refused with 400 and the name.
_UNSUPPORTED = {"best_of": (None, 1), "suffix": (None,), "presence_penalty": (None, 0),
                "frequency_penalty": (None, 0), "tools": (None,), "tool_choice": (None,),
                "functions": (None,), "function_call": (None,), "response_format": (None,),
                "parallel_tool_calls": (None,)}


class CompletionRequest(_Request):
    model: str
    prompt: Prompt
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    echo: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_tokens_as_token_ids: bool = False
    return_token_ids: bool = False
    user: str | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class TokenizeRequest(_Request):
    model: str
    prompt: str
    add_special_tokens: bool = False


class DetokenizeRequest(_Request):
    model: str
    tokens: list[int]


class TextPart(_Request):
    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        """The message's text; a list of parts is joined (only text parts are taken)."""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Request):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)  # OpenAI's cap; the tier's too
    logit_bias: dict[str, float] | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    return_tokens_as_token_ids: bool = False
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: Any = None
    parallel_tool_calls: bool | None = None


def unsupported(body: BaseModel) -> str | None:
    """The first parameter ``body`` sets that the gateway does not implement."""
    for name, unset in _UNSUPPORTED.items():
        if name in type(body).model_fields and getattr(body, name) not in unset:
            return name
    return None


def stops(stop: str | list[str] | None) -> list[str]:
    """The stop strings of ``stop``, empty ones left out."""
    return [s for s in ([stop] if isinstance(stop, str) else list(stop or [])) if s]
