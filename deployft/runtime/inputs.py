"""Checks of what callers pass to a Predictor: texts to classify, prompts and chats, stop strings, batch sizes."""

from __future__ import annotations

from ..errors import UsageError


def check_texts(texts, call: str) -> list[str]:
    """Validate classification input: a list of strings (a single string is wrapped by the caller)."""
    if texts is None or not isinstance(texts, (list, tuple)):
        raise UsageError(f"{call} takes a string or a list of strings, got {type(texts).__name__}; "
                         'pass predict("some text") or predict(["a", "b"])')
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise UsageError(f"{call} item {bad[0]} is {type(texts[bad[0]]).__name__}, not a string; pass strings only")
    return list(texts)


def check_prompt(prompt) -> bool:
    """Validate a prompt; True when it is a batch (list of strings)."""
    if isinstance(prompt, str):
        return False
    if isinstance(prompt, list) and prompt and all(isinstance(p, dict) for p in prompt):
        return False
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return True
    raise UsageError(f"a prompt must be a string, a list of strings, or a chat (list of role/content dicts); "
                     f"got {type(prompt).__name__ if not isinstance(prompt, list) else 'an empty or mixed list'}")


def stop_strings(stop) -> list[str]:
    """Stop strings as a list: None, one string, or several."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


def check_batch_size(batch_size) -> int:
    """Validate a batch size: an integer >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be an integer >= 1, got {batch_size!r}; pass --batch-size 32")
    return batch_size
