"""Request bodies (pydantic): the OpenAI completions API, and the classification routes.

Fields clients commonly send but deployft does not implement are accepted only at their neutral value
(`n` 1, no `logprobs`), so a request is never answered with something other than what it asked for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: str
    content: str | list[TextPart] | None = ""

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    """OpenAI's default is 1 (sampling); send 0 for greedy decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    """Not in OpenAI's API (vLLM and TGI take it too): sample among the k most likely tokens."""
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="only 1 is supported")
    logprobs: bool | int | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings are allowed")
        return stops

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value):
        if value:
            raise ValueError("logprobs are not supported by this server; leave logprobs out")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Generation):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def chat(self) -> list[dict]:
        return [{"role": m.role, "content": m.text()} for m in self.messages]

    def requested_tokens(self, default: int) -> int:
        return self.max_completion_tokens or self.max_tokens or default


class CompletionRequest(_Generation):
    prompt: str | list[str]
    echo: bool = False
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

    def requested_tokens(self, default: int) -> int:
        return self.max_tokens or default


class PredictRequest(_Body):
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


class ClassifyRequest(_Body):
    """`/v1/classify`: one text or a list of texts."""

    model: str | None = None
    input: str | list[str]
    truncate: bool = False
