"""Request bodies (pydantic): the OpenAI completions API, and the classification routes.

Every text of a body must be valid Unicode: a lone UTF-16 surrogate (JSON's `"\\ud800"` not followed by its
pair) is refused with a 400 that names the field. The OpenAI fields deployft does not implement are refused with a
400 naming the field unless they are left out, null or at their neutral value: `n` (1), `logprobs` (false or 0),
`top_logprobs`, `frequency_penalty` and `presence_penalty` (0), `logit_bias`, `tools` and `functions` (empty),
`response_format` (`{"type": "text"}`), `best_of` (1), and for completions `echo` (false) and `suffix` (empty);
`/predict`'s `raw_scores` likewise (false). So a request is never answered with something other than what it
asked for. Any other field a body holds is ignored (`user`, `metadata`, `store`, ...). A chat message's role is
`system`, `developer` (given to the template as `system`), `user` or `assistant`, and its content is required
(null only for an assistant's): another role or a message without content is a 400 naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..prompts import lone_surrogate

LONE_SURROGATE = "lone_surrogate"
"""The pydantic error type of a text holding a lone UTF-16 surrogate (`install_error_handlers` names its field)."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class _Request(_Body):
    """A whole request body: its texts are checked for lone surrogates before any field is validated (the
    tokenizer cannot encode them, and they cannot be written back as UTF-8)."""

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _check_text(data, ())
        return data


def _check_text(value: Any, path: tuple) -> None:
    if isinstance(value, str):
        if found := lone_surrogate(value):
            raise PydanticCustomError(LONE_SURROGATE, "{found} is not valid text; send Unicode text (a surrogate "
                                      "only as half of a pair)", {"field": ".".join(map(str, path)) or "body",
                                                                  "found": found})
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, path)
            _check_text(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_text(item, (*path, index))


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    """One chat message, as OpenAI's API takes it: its role and text (an assistant's content may be null, as OpenAI
    allows; this server takes no tool messages). A `developer` message is OpenAI's newer name for a system one and
    reaches the chat template as `system`, the role templates know."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None

    @model_validator(mode="after")
    def _content_given(self) -> Message:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a {self.role} message needs its content (only an assistant's may be null)")
        return self

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, value):
        for index, part in enumerate(value if isinstance(value, list) else []):
            kind = part.get("type") if isinstance(part, dict) else None
            if isinstance(kind, str) and kind != "text":
                raise ValueError(f"content part {index} is of type {kind!r}: this server takes text only; send "
                                 'the content as a string or as parts {"type": "text", "text": "..."}')
        return value

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool | None = False


class _Generation(_Request):
    """The fields both completion routes share; every field OpenAI's API marks nullable takes null (the `openai`
    client sends null for an argument passed as None), null meaning the field's default."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(1.0, ge=0.0, le=2.0)
    """OpenAI's default is 1 (sampling); send 0 for greedy decoding."""
    top_p: float | None = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    """Not in OpenAI's API (vLLM and TGI take it too): sample among the k most likely tokens."""
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(1, ge=1, le=1, description="only 1 is supported")
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    tools: list | None = None
    functions: list | None = None
    response_format: dict | None = None
    best_of: int | None = None
    user: str | None = None

    @field_validator("temperature", "top_p", "stream", "n")
    @classmethod
    def _null_is_default(cls, value, info):
        return cls.model_fields[info.field_name].default if value is None else value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings are allowed")
        return stops

    @field_validator("logprobs", "top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias", "tools",
                     "functions")
    @classmethod
    def _neutral(cls, value, info):
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server; leave {info.field_name} out")
        return value

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, value):
        if value and value.get("type", "text") != "text":
            raise ValueError("only text answers are supported by this server; leave response_format out")
        return value

    @field_validator("best_of")
    @classmethod
    def _one_best(cls, value):
        if value not in (None, 1):
            raise ValueError("best_of is not supported by this server (one completion per request); leave it out")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def chat(self) -> list[dict]:
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in self.messages]

    def requested_tokens(self) -> int | None:
        """The max_tokens the client asked for (None: left out)."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool | None = False
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("pass one prompt (a string, or a list of one string); send one request per prompt")
        return value

    @field_validator("echo", "suffix")
    @classmethod
    def _unsupported(cls, value, info):
        if value:
            raise ValueError(f"{info.field_name} is not supported by this server; leave it out")
        return value

    def text(self) -> str:
        return self.prompt[0] if isinstance(self.prompt, list) else self.prompt

    def requested_tokens(self) -> int | None:
        """The max_tokens the client asked for (None: left out)."""
        return self.max_tokens


class PredictRequest(_Request):
    """text-embeddings-inference's `/predict`: one text or a list of texts."""

    inputs: str | list[str]
    truncate: bool = False
    """Cut texts longer than the bundle's max_length instead of refusing them."""
    raw_scores: bool = False

    @field_validator("raw_scores")
    @classmethod
    def _probabilities_only(cls, value):
        if value:
            raise ValueError("raw_scores are not supported; scores are probabilities (leave raw_scores out)")
        return value


class ClassifyRequest(_Request):
    """`/v1/classify`: one text or a list of texts."""

    model: str | None = None
    input: str | list[str]
    truncate: bool = False
