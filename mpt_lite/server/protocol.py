"""The request bodies the server accepts (OpenAI's fields that it honours) and the responses it
sends. Unknown fields are accepted and ignored, as OpenAI does; fields whose meaning it cannot
honour (best_of > 1, logit_bias, tools, echo with logprobs) are refused with a 400."""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import bad_request

MAX_STOP_STRINGS = 4  # as in the OpenAI API
MAX_STOP_CHARS = 256  # per stop string: a stop is a marker, not a document
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 63) - 1  # OpenAI's seed is a signed 64-bit integer
MAX_CHOICES = 16  # n: each choice is a request of its own in the batch


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    include_usage: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    name: Optional[str] = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")  # {} (no schema): any JSON
    strict: Optional[bool] = None
    description: Optional[str] = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('type "json_schema" needs a json_schema object: {"name": ..., "schema": {...}}')
        return self

    def constraint_schema(self) -> dict[str, Any] | None:
        """The JSON schema the output must follow (None: free text)."""
        if self.type == "json_object":
            return {"type": "object"}
        if self.type == "json_schema":
            return self.json_schema.schema_
        return None


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = Field(None, ge=SEED_MIN, le=SEED_MAX)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    user: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    logit_bias: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    functions: Optional[list[Any]] = None

    @field_validator("logit_bias", "tools", "functions")
    @classmethod
    def _unsupported(cls, value: Any, info: Any) -> Any:
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server")
        return value

    @model_validator(mode="after")
    def _one_limit(self) -> "_Common":
        if None not in (self.max_tokens, self.max_completion_tokens) and self.max_tokens != self.max_completion_tokens:
            raise ValueError(f"max_tokens ({self.max_tokens}) and max_completion_tokens "
                             f"({self.max_completion_tokens}) disagree; send one of them")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(stops)}")
        if any(not s for s in stops):
            raise ValueError("stop strings must not be empty")
        if any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"a stop string has at most {MAX_STOP_CHARS} characters, got {max(map(len, stops))}")
        return stops

    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # the validator turned it into a list


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)
    role: str = Field(min_length=1)
    content: Union[str, list[TextPart]]

    @field_validator("content", mode="before")
    @classmethod
    def _not_null(cls, content: Any) -> Any:
        if content is None:
            raise ValueError("content must be a string or a list of text parts, not null")
        return content

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(_Common):
    messages: list[Message] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _top_needs_logprobs(self) -> "ChatRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def logprobs_wanted(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Common):
    prompt: Union[str, list[str], list[int]]
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    best_of: Optional[int] = None

    @field_validator("logprobs")
    @classmethod
    def _no_prompt_logprobs(cls, v: Optional[int], info: Any) -> Optional[int]:  # echo is validated first
        if v is not None and info.data.get("echo"):
            raise ValueError("echo with logprobs is not supported (the prompt's logprobs are not computed)")
        return v

    def logprobs_wanted(self) -> int | None:
        return self.logprobs

    @field_validator("best_of")
    @classmethod
    def _no_best_of(cls, best_of: int | None) -> int | None:
        if best_of not in (None, 1):
            raise ValueError(f"only best_of=1 is supported, got {best_of}")
        return best_of

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise ValueError(f"one prompt per request, got a list of {len(prompt)}")
            prompt = prompt[0]
        if not prompt:
            raise ValueError("the prompt is empty")
        return prompt


def parse(cls: type[BaseModel], data: Any) -> Any:
    """A validated request, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = [str(p) for p in err["loc"] if not _is_union_tag(p)]
        param = ".".join(loc) or None
        msg = err["msg"].removeprefix("Value error, ")
        raise bad_request(f"{param}: {msg}" if param else msg, param=param) from e


def _is_union_tag(p: Any) -> bool:  # pydantic names the union member tried: 'str', 'list[int]', ...
    return isinstance(p, str) and (p in ("str", "int", "bool", "float") or p.startswith(("list[", "function-")))


# ---- responses ----

def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """Builds the response objects of one request, chat or completion, whole or in chunks."""

    def __init__(self, chat: bool, model: str) -> None:
        self.chat, self.model = chat, model
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = int(time.time())

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def choice(self, index: int, text: str, finish_reason: str, logprobs: dict | None = None) -> dict[str, Any]:
        """One choice of a whole (non-streamed) response."""
        if self.chat:
            return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                    "finish_reason": finish_reason}
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}

    def whole(self, choices: list[dict[str, Any]], prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        out = self._base("chat.completion" if self.chat else "text_completion")
        return {**out, "choices": choices, "usage": usage(prompt_tokens, completion_tokens)}

    def chunk(self, text: str | None, finish_reason: str | None = None, first: bool = False, index: int = 0,
              logprobs: dict | None = None) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
            return {**self._base("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return {**self._base("text_completion"), "choices": [choice]}

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        obj = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._base(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
