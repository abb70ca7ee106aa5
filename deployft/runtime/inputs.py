"""Checks of what callers pass to a Predictor: texts to classify, prompts and chats, token ids, stop strings, batch
sizes."""

from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..prompts import check_unicode


def check_texts(texts, call: str) -> list[str]:
    """Validate classification input: a list of strings (a single string is wrapped by the caller)."""
    if texts is None or not isinstance(texts, (list, tuple)):
        raise UsageError(f"{call} takes a string or a list of strings, got {type(texts).__name__}; "
                         'pass predict("some text") or predict(["a", "b"])')
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UsageError(f"{call} item {bad[0]} is {type(texts[bad[0]]).__name__}, not a string; pass strings only")
    return [check_unicode(text, f"{call} item {i}") for i, text in enumerate(texts)]


def check_prompt(prompt) -> bool:
    """Validate a prompt; True when it is a batch (a list or tuple of strings). A chat's messages are checked when it
    is rendered (`prompts.check_messages`)."""
    if isinstance(prompt, str):
        check_unicode(prompt, "the prompt")
        return False
    if isinstance(prompt, list) and prompt and all(isinstance(p, dict) for p in prompt):
        return False
    if isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, str) for p in prompt):
        for i, text in enumerate(prompt):
            check_unicode(text, f"prompt {i}")
        return True
    ids = isinstance(prompt, (list, tuple)) and prompt and all(isinstance(p, int) for p in prompt)
    raise UsageError("a prompt must be a string, a list of strings, or a chat (list of role/content dicts); got "
                     + _described(prompt) + ("; pass token ids to iter_token_ids()" if ids else ""))


def _described(value) -> str:
    """What a refused prompt is: its type, or what a list holds (`a list of int`, `an empty list`)."""
    if not isinstance(value, (list, tuple)):
        return type(value).__name__
    if not value:
        return f"an empty {type(value).__name__}"
    return f"a {type(value).__name__} of {', '.join(sorted({type(v).__name__ for v in value}))}"


def stop_strings(stop) -> tuple[str, ...]:
    """Stop strings as a tuple without empty ones: None, one string, or a list or tuple of strings."""
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop) if isinstance(stop, (list, tuple)) else None
    bad = [s for s in stops if not isinstance(s, str)] if stops is not None else [stop]
    if bad:
        raise UsageError(f"stop must be a string or a list of strings, got {type(bad[0]).__name__} {bad[0]!r}; "
                         'pass stop="END" or stop=["END", "###"] (on the command line: --stop END)')
    return tuple(s for s in stops if s)


def check_token_ids(ids, vocab_size: int, call: str) -> list[int]:
    """Validate one row of token ids: a list of integers in [0, vocab_size)."""
    if not isinstance(ids, (list, tuple, np.ndarray)):
        raise UsageError(f"{call} takes a list of token ids, got {type(ids).__name__}; pass e.g. "
                         "predictor.codec.encode_one(text, True)")
    for position, token in enumerate(ids):
        if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)) \
                or not 0 <= token < vocab_size:
            raise UsageError(f"{call} token id {token!r} at position {position} is not an integer in [0, {vocab_size})"
                             f" (the model's vocabulary); pass ids from the bundle's tokenizer")
    return [int(t) for t in ids]


def check_batch_size(batch_size) -> int:
    """Validate a batch size: an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}; pass --batch-size 32")
    return batch_size
