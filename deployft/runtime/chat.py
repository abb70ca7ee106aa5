"""Chat templates rendered with jinja2 the way transformers' `apply_chat_template` renders them.

Same sandboxed environment (trim_blocks, lstrip_blocks, loop controls), the same `tojson` filter and
`raise_exception` / `strftime_now` globals, and the tokenizer's special tokens (`bos_token`, ...) as variables.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from ..errors import BundleError, UsageError

ROLES_HINT = 'pass a list of {"role": ..., "content": ...} dicts'


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


def _raise_exception(message: str):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


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
    """Validate a chat: a non-empty list of dicts with `role` and `content`."""
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"chat messages must be a non-empty list; {ROLES_HINT}")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise UsageError(f"chat message {i} is {message!r}, not a dict with 'role' and 'content'; {ROLES_HINT}")
    return messages


def render_chat(template: str | None, messages: list[dict], special_tokens: dict[str, str],
                add_generation_prompt: bool = True) -> str:
    """Render `messages` with the template, as `tokenizer.apply_chat_template(..., tokenize=False)` does."""
    from jinja2.exceptions import TemplateError

    if template is None:
        raise BundleError("this bundle has no chat template (no chat_template.jinja or tokenizer_config.json "
                          "chat_template); pass a plain string prompt instead of messages")
    try:
        return _compile(template).render(messages=check_messages(messages),
                                         add_generation_prompt=add_generation_prompt, **special_tokens)
    except TemplateError as exc:
        raise UsageError(f"the bundle's chat template refused these messages: {exc}") from exc
