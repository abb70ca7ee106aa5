"""Prompts as every stage sees them: the prompt format, the chat template, truncation, and a generator's examples.

One implementation for training (the features it learns from), export validation (what it compares),
bench (what it scores) and the runtime (what `Predictor` feeds the model), torch-free:

    chat   the chat template with the prompt as one user message (or the caller's messages) and the
           generation prompt, rendered with jinja2 as transformers' `apply_chat_template` renders it;
    plain  `prompt + separator`, with the tokenizer's special tokens;
    text   plain language modelling: the text itself.

A prompt keeps its LAST `prompt_limit(max_length)` tokens (half the RUN's max_length), where the question
usually is; the response fills the rest of max_length, then the end token.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from .errors import BundleError, UsageError, first_line
from .tokens import special_ids

__all__ = ["Cuts", "PromptFormat", "TokenizerAdapter", "check_messages", "check_template", "example_ids", "prompt_ids",
           "prompt_limit", "read_chat_template", "render_chat"]

logger = logging.getLogger("deployft")

SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")

ROLES_HINT = 'pass a list of {"role": ..., "content": ...} dicts'


@dataclass(frozen=True)
class PromptFormat:
    """How prompts were formatted in training (the manifests' `prompt_format`)."""

    style: str = "text"
    """`chat`, `plain` or `text` (see the module docstring)."""
    separator: str = "\n"
    """What `plain` puts between the prompt and the response."""

    @classmethod
    def from_manifest(cls, value: dict[str, Any] | None) -> PromptFormat:
        """The format a manifest records; `null` (classifiers, plain language models) is `text`."""
        value = value or {}
        return cls(value.get("style", "text"), value.get("separator", "\n"))

    @classmethod
    def for_columns(cls, columns: dict[str, str], has_chat_template: bool) -> PromptFormat:
        """`chat` when the tokenizer has a chat template, else `plain`; `text` for plain language modelling."""
        if "prompt" not in columns:
            return cls("text")
        return cls("chat" if has_chat_template else "plain")

    def to_manifest(self) -> dict[str, str]:
        return {"style": self.style, "separator": self.separator}


class TextEncoder(Protocol):
    """What prompt formatting needs of a tokenizer: the runtime's TextCodec and TokenizerAdapter both are one."""

    chat_template: str | None
    special_tokens: dict[str, str]
    eos_ids: list[int]

    def encode_one(self, text: str, add_special_tokens: bool) -> list[int]: ...


class TokenizerAdapter:
    """A transformers tokenizer seen as a TextEncoder (duck-typed: this module never imports transformers)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        template = getattr(tokenizer, "chat_template", None)
        self.chat_template = template.get("default") if isinstance(template, dict) else template
        self.special_tokens = {k: v for k in SPECIAL_KEYS if isinstance(v := getattr(tokenizer, k, None), str)}
        self.eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.ids = special_ids({"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                                "bos_token_id": tokenizer.bos_token_id})
        """Its special ids (the pad id falls back to the end id, then 0, as everywhere in deployft)."""

    def encode_one(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def prompt_limit(max_length: int | None) -> int | None:
    """Tokens a prompt keeps (its last ones): half of max_length, so the response has the other half."""
    return max(1, int(max_length) // 2) if max_length else None


def prompt_ids(prompt: str | list[dict], fmt: PromptFormat, encoder: TextEncoder,
               max_length: int | None) -> list[int]:
    """Token ids of a prompt string (in `fmt`) or of chat messages (the chat template), truncated from the start.

    Raises:
        UsageError: malformed chat messages, or a template that refuses them.
        BundleError: chat messages for a model without a chat template.
    """
    ids = _whole_prompt_ids(prompt, fmt, encoder)
    limit = prompt_limit(max_length)
    if limit and len(ids) > limit:
        logger.info("prompt of %d tokens cut to its last %d (half of max_length %d)", len(ids), limit, max_length)
        return ids[-limit:]
    return ids


def _whole_prompt_ids(prompt: str | list[dict], fmt: PromptFormat, encoder: TextEncoder) -> list[int]:
    if isinstance(prompt, list) or fmt.style == "chat":
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        text = render_chat(encoder.chat_template, messages, encoder.special_tokens)
        return encoder.encode_one(text, False)
    return encoder.encode_one(prompt + fmt.separator if fmt.style == "plain" else prompt, True)


@dataclass
class Cuts:
    """What `example_ids` cut from a data set's examples to fit max_length, counted for the caller to report once
    (training warns with it; this module does not log per example)."""

    examples: int = 0
    """Examples encoded."""
    cut: int = 0
    """Examples that lost tokens (prompt, response or text)."""
    tokens: int = 0
    """Tokens the cut examples had before cutting."""
    dropped: int = 0
    """Tokens the cut examples lost."""
    prompts: int = 0
    """Prompts cut to their last `prompt_limit(max_length)` tokens."""

    def add(self, whole: int, kept: int, prompt_cut: bool = False) -> None:
        self.examples += 1
        if kept < whole:
            self.cut, self.tokens, self.dropped = self.cut + 1, self.tokens + whole, self.dropped + whole - kept
        self.prompts += prompt_cut


def example_ids(row: dict[str, str], fmt: PromptFormat, encoder: TextEncoder, max_length: int,
                cuts: Cuts | None = None) -> tuple[list[int], list[int]]:
    """`(ids, targets)` of one generator example: the tokens training sees and a 0/1 mask of the ones it learns.

    Prompt/response rows: the prompt (as `prompt_ids` cuts it), then the response and the end token, cut to
    max_length; targets are the response tokens. Plain text rows: the text and the end token; every token is a
    target. `cuts`, when given, counts what was cut.
    """
    cuts = cuts if cuts is not None else Cuts()
    if "prompt" not in row:
        whole = encoder.encode_one(row["text"], True) + encoder.eos_ids
        ids = whole[:max_length]
        cuts.add(len(whole), len(ids))
        return ids, [1] * len(ids)
    whole_prompt, limit = _whole_prompt_ids(row["prompt"], fmt, encoder), prompt_limit(max_length)
    prompt = whole_prompt[-limit:] if limit else whole_prompt
    response = encoder.encode_one(row["response"], False) + encoder.eos_ids
    ids = (prompt + response)[:max_length]
    cuts.add(len(whole_prompt) + len(response), len(ids), len(prompt) < len(whole_prompt))
    return ids, ([0] * len(prompt) + [1] * len(response))[:max_length]


def read_chat_template(folder: str | Path, tokenizer_config: dict) -> str | None:
    """The bundle's chat template: `chat_template.jinja` or the `chat_template` of tokenizer_config.json."""
    path = Path(folder) / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    if isinstance(template, list):  # several named templates: transformers uses "default"
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


TEMPLATE_FIX = "fix chat_template.jinja (or tokenizer_config.json's chat_template) and re-export the bundle"


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    error = TemplateError(message)
    error.refusal = True  # the template's own raise_exception(...): it refuses these messages on purpose
    raise error


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=8)
def _compile(template: str):
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def check_messages(messages) -> list[dict]:
    """Validate a chat: a non-empty list of dicts with `role` and `content`, both strings of valid text."""
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"chat messages must be a non-empty list; {ROLES_HINT}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UsageError(f"chat message {i} is {message!r}, not a dict with 'role' and 'content'; {ROLES_HINT}")
        for field in ("role", "content"):
            value = message[field]
            if not isinstance(value, str):
                raise UsageError(f"chat message {i}'s {field} is {type(value).__name__} {str(value)[:40]!r}, not a "
                                 f"string; pass the {field} as text ({ROLES_HINT})")
            check_unicode(value, f"chat message {i}'s {field}")
    return messages


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def lone_surrogate(text: str) -> str | None:
    """`a lone UTF-16 surrogate (U+DCFF) at character 3` when `text` holds one, which no tokenizer encodes (a byte
    that is not UTF-8 in a command-line argument arrives as one, and so does JSON's `"\\ud800"` without its pair);
    None for valid text. The runtime, predict's file reader and the server's request bodies all refuse with it."""
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return f"a lone UTF-16 surrogate (U+{ord(found.group()):04X}) at character {found.start()}"


def check_unicode(text: str, what: str) -> str:
    """`text`, refused when it holds a lone UTF-16 surrogate (`lone_surrogate`).

    Raises:
        UsageError: naming `what`, the character and its position.
    """
    if found := lone_surrogate(text):
        raise UsageError(f"{what} holds {found}, which is not valid text; pass Unicode text (from a shell or a file: "
                         "UTF-8)")
    return text


def render_chat(template: str | None, messages: list[dict], special_tokens: dict[str, str],
                add_generation_prompt: bool = True) -> str:
    """Render `messages` with the template, as `tokenizer.apply_chat_template(..., tokenize=False)` does."""
    from jinja2.exceptions import TemplateError

    if template is None:
        raise BundleError("this bundle has no chat template (no chat_template.jinja or tokenizer_config.json "
                          "chat_template); pass a plain string prompt instead of messages")
    check_messages(messages)
    compiled = check_template(template)
    try:
        return compiled.render(messages=messages, add_generation_prompt=add_generation_prompt, **special_tokens)
    except TemplateError as exc:
        if getattr(exc, "refusal", False):
            raise UsageError(f"the bundle's chat template refused these messages: {first_line(exc)}") from exc
        raise BundleError(f"the bundle's chat template failed to render ({first_line(exc)}); {TEMPLATE_FIX}") from exc
    except Exception as exc:  # a template can raise anything jinja2's sandbox lets through (TypeError, ...)
        raise BundleError(f"the bundle's chat template failed to render ({type(exc).__name__}: {first_line(exc)}); "
                          f"{TEMPLATE_FIX}") from exc


def check_template(template: str):
    """The compiled chat template, or a BundleError when it does not compile (checked when a bundle loads)."""
    from jinja2.exceptions import TemplateError

    try:
        return _compile(template)
    except TemplateError as exc:
        raise BundleError(f"the bundle's chat template does not compile ({first_line(exc)}); {TEMPLATE_FIX}") from exc
