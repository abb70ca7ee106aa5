"""What a generation request is to the engine (`Ticket`) and what it gets back (`Chunk`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..runtime.sampling import GenerationOptions


@dataclass
class Chunk:
    """What the engine reports to a request: a piece of text, and at the end a finish reason (or an error)."""

    text: str = ""
    finish_reason: str | None = None
    """`stop` (end token or stop string), `length` (max_tokens or the model's positions), `cancelled`, `error`."""
    completion_tokens: int = 0
    """Tokens generated so far (set on the last chunk)."""
    error: str | None = None


@dataclass
class Ticket:
    """One generation request: its prompt ids, options and where its chunks go (called from the worker thread)."""

    prompt_ids: list[int]
    options: GenerationOptions
    sink: Callable[[Chunk], None]
    cancelled: bool = False
    """Set by the caller (client gone, timeout); the row leaves the batch after the current step."""
    joined_step: int | None = None
    """The engine step after which this row joined the running batch (None: finished in its prefill)."""
    left_step: int | None = None
    """The engine step after which this row left."""

    def cancel(self) -> None:
        self.cancelled = True
