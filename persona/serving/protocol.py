"""The API's types (pydantic, as FastAPI and vLLM declare theirs): the request of ``POST /v1/chat/completions``, its
answers (whole and streamed), the model list and the errors, in OpenAI's shapes.

Types, ranges and finite numbers are checked here; what depends on the server (the ``max_tokens`` cap, the model
served) and on the conversation's shape (roles alternating, the user's last) by :mod:`persona.serving.openai_api`.

The numbers, field by field (each bound keeps every score finite, so no legal request can break the decoding):

- ``temperature``: 0 to 2 (OpenAI's range); below 1e-5, 0 included, the reply is greedy (vLLM's rule: dividing the
  scores by less overflows them).
- ``top_p``: 0 to 1; 0 keeps the likeliest token only.
- ``presence_penalty``, ``frequency_penalty``: -2 to 2 (OpenAI's), over the reply's own tokens.
- ``repetition_penalty``: 0.01 to 10 (1: off; below 1 favours repeating), over the prompt's and the reply's tokens.
- ``persona_weight``: 0 to 10 (0: off), persona's own field: each token guided by the persona (a paired row without
  it; persona's own engine only, an engine behind ``--engine_url`` refuses it with a 400 naming it).
- ``rerank_samples``: 1 to 8 (1: off), persona's own field: that many sampled replies, the one the trained
  multiple-choice head ranks first the answer (sampling only; persona's own engine with a trained model only, an
  engine behind ``--engine_url`` refuses it with a 400 naming it).
- ``max_tokens`` / ``max_completion_tokens``: at least 1, at most the server's ``--max_tokens_cap``.
- ``seed``: what ``torch.manual_seed`` takes, -2**63 to 2**64 - 1.
- ``n``: 1 to 8; ``top_logprobs``: 0 to 20, with ``logprobs: true``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from persona.data.conversation import MessageError, message_text

SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.manual_seed accepts
MAX_CHOICES = 8  # ``n``: replies generated for one request (rows of the running batch)
MAX_TOP_LOGPROBS = 20  # OpenAI's limit

Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]


class Message(BaseModel):
    """One chat message; ``content`` is a string or a list of text parts (``{"type": "text", "text": ...}``)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str

    @field_validator("content", mode="before")
    @classmethod
    def text_of_parts(cls, content: Any) -> str:
        """The content as one text, by the conversation model's rule
        (:func:`persona.data.conversation.message_text`)."""
        try:
            return message_text(content)
        except MessageError:
            raise ValueError("must be a string or a list of text parts ({'type': 'text', 'text': '...'})") from None


class StreamOptions(BaseModel):
    """``stream_options``: whether the last chunk carries the usage."""

    include_usage: Annotated[bool, Field(strict=True)] = False


class ChatCompletionRequest(BaseModel):
    """The fields of a chat-completions request that persona reads; others are accepted and ignored (logged)."""

    model_config = ConfigDict(extra="allow")

    messages: Annotated[list[Message], Field(min_length=1)]
    model: str | None = None
    temperature: Annotated[Number | None, Field(ge=0, le=2)] = None
    top_p: Annotated[Number | None, Field(ge=0, le=1)] = None
    max_tokens: Annotated[int | None, Field(strict=True, ge=1)] = None
    max_completion_tokens: Annotated[int | None, Field(strict=True, ge=1)] = None
    seed: Annotated[int | None, Field(strict=True, ge=SEED_RANGE[0], le=SEED_RANGE[1])] = None
    stop: list[str] = []
    stream: Annotated[bool, Field(strict=True)] = False
    stream_options: StreamOptions | None = None
    n: Annotated[int, Field(strict=True, ge=1, le=MAX_CHOICES)] = 1
    presence_penalty: Annotated[Number | None, Field(ge=-2, le=2)] = None
    frequency_penalty: Annotated[Number | None, Field(ge=-2, le=2)] = None
    repetition_penalty: Annotated[Number | None, Field(ge=0.01, le=10)] = None  # not OpenAI's: vLLM's and HF's extra
    persona_weight: Annotated[Number | None, Field(ge=0, le=10)] = None  # persona's own: guidance by the persona
    rerank_samples: Annotated[int | None, Field(strict=True, ge=1, le=MAX_CHOICES)] = None  # persona's own
    logprobs: Annotated[bool, Field(strict=True)] = False
    top_logprobs: Annotated[int | None, Field(strict=True, ge=0, le=MAX_TOP_LOGPROBS)] = None

    @field_validator("stop", mode="before")
    @classmethod
    def stop_strings(cls, stop: Any) -> list[str]:
        """A string or a list of at most 4 strings (OpenAI's limit), as a list."""
        if stop is None:
            return []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop):
            raise ValueError("must be a string or a list of at most 4 strings")
        return stop

    @field_validator("top_logprobs")
    @classmethod
    def top_logprobs_need_logprobs(cls, top_logprobs: int | None, info: ValidationInfo) -> int | None:
        """``top_logprobs`` only with ``logprobs: true``, as OpenAI has it."""
        if top_logprobs is not None and info.data.get("logprobs") is not True:
            raise ValueError("needs logprobs: true")
        return top_logprobs

    def ignored_fields(self) -> list[str]:
        """The request's fields that persona does not read."""
        return sorted(self.model_extra or {})


def error_param(location: tuple) -> str | None:
    """A pydantic error location as OpenAI names a parameter: ``("messages", 0, "role")`` -> ``messages[0].role``."""
    param = ""
    for part in location:
        if isinstance(part, int):
            param += f"[{part}]"
        elif part in ("str", "int", "float", "bool") or "[" in str(part) or "-" in str(part):
            break  # the member of a union that failed (str, list[...], function-before...), not a field
        else:
            param += f".{part}" if param else str(part)
    return param or None


def first_error(error: ValidationError) -> tuple[str, str | None]:
    """The message and parameter of a validation error's first problem, for the 400 answer."""
    problem = error.errors(include_url=False)[0]
    param = error_param(tuple(problem["loc"]))
    message = problem["msg"].removeprefix("Value error, ")
    return (f"{param}: {message}" if param else message), param


class ErrorDetail(BaseModel):
    """OpenAI's error fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """An error's JSON body."""

    error: ErrorDetail


class APIError(Exception):
    """A request the API refuses: the HTTP status, OpenAI's error fields and the headers that go with it
    (``Retry-After``, ``Allow``)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.detail = ErrorDetail(message=message, type=type, param=param, code=code)

    @property
    def message(self) -> str:
        """What the error says."""
        return self.detail.message

    def body(self) -> dict:
        """The error's JSON body, as OpenAI sends it."""
        return ErrorResponse(error=self.detail).model_dump()

    def response(self) -> JSONResponse:
        """The error as OpenAI sends it."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def body_too_large(limit: int) -> APIError:
    """The 413 of a request body over ``limit`` bytes."""
    return APIError(413, f"the request body is over {limit} bytes", code="request_too_large")


class ModelCard(BaseModel):
    """``GET /v1/models/{id}``: the one model served."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "persona"


class ModelList(BaseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class Usage(BaseModel):
    """The tokens of a request: its prompt once, all its choices' completions."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    """A choice's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One choice of a whole answer; ``logprobs`` holds OpenAI's ``{"content": [...]}`` when asked for."""

    index: int
    message: AssistantMessage
    logprobs: dict | None = None
    finish_reason: str | None


class CompletionHead(BaseModel):
    """What every answer to one request carries: its id (``chatcmpl-...``), when it was made, the model."""

    id: str
    created: int
    model: str


class ChatCompletion(CompletionHead):
    """The whole answer of a request that is not streamed."""

    object: Literal["chat.completion"] = "chat.completion"
    choices: list[Choice]
    usage: Usage


class Delta(BaseModel):
    """What a streamed chunk adds to a choice (the role first, then content)."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice's part of a streamed chunk."""

    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict | None = None


class ChatCompletionChunk(CompletionHead):
    """A streamed chunk: a choice's delta, its end, or (with ``include_usage``) the usage with no choices."""

    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChunkChoice]
    usage: Usage | None = None

    def event(self) -> str:
        """The chunk as a server-sent event, as OpenAI streams it: a delta without its absent role or content, a choice
        without absent log-probabilities, no usage but in the usage chunk (a ``finish_reason`` of null is sent)."""
        body = self.model_dump()
        if body["usage"] is None:
            del body["usage"]
        for choice in body["choices"]:
            choice["delta"] = {name: value for name, value in choice["delta"].items() if value is not None}
            if choice["logprobs"] is None:
                del choice["logprobs"]
        return f"data: {json.dumps(body)}\n\n"
