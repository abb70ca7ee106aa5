"""What a generation request is to the engine (`Ticket`), what it gets back (`Chunk`), and its state while it
decodes in the running batch (`Row`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..runtime.detokenize import TextTracker
from ..runtime.sampling import GenerationOptions, next_tokens


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
    counted: bool = True
    """False for the server's own warm-up: kept out of /metrics, which count clients' generations."""

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class Row:
    """A request in the engine's running batch: its text so far, its sampler, its token budget and position."""

    ticket: Ticket
    tracker: TextTracker
    rng: np.random.Generator
    budget: int
    position: int
    last: int = 0
    generated: int = 0
    finish: str | None = None
    cache: list | None = None
    dead: bool = False
    """Finished and answered; its cache row waits for the next compaction."""

    def advance(self, logits: np.ndarray) -> None:
        """Pick the next token (this row's own sampler), report the text that is safe to show, set `finish` when
        the row is done (a stop, or its budget spent)."""
        token = int(next_tokens(logits, self.ticket.options, self.rng)[0])
        self.generated += 1
        self.last = token
        piece = self.tracker.add(token)
        if piece:
            self.ticket.sink(Chunk(piece))
        if self.tracker.finished:
            self.finish = "stop"
        elif self.generated >= self.budget:
            self.finish = "length"
