"""Continuous (iteration-level) batching for a generator bundle.

One worker thread owns the decoder session and loops over steps. Before each step it admits waiting requests:
their prompts are prefilled together, in as few model calls as keeps padding bounded (`prefill_groups`: sorted by
length, a group's padded tokens at most `MAX_PREFILL_PADDING` times its real ones), left-padded and masked like
`Predictor.generate`'s batches; each row's cache, without its padding columns, is then left-padded to the running
batch's cache length and concatenated along the batch axis. Every row keeps its own position ids and its own
sampler, and the attention mask hides each row's padding, so a row decodes the same tokens whatever else shares
the batch (greedy output equals `Predictor.generate` of the request alone, up to float rounding between batch
shapes).

A row that finishes (end token, stop string, `max_tokens`, or a cancelled request) leaves at once: its request is
answered after the step that finished it and its slot is free for the next waiting request. Its cache rows are
dropped at the next compaction: when requests join (the cache is copied then anyway) or when finished rows are as
many as live ones, so the batch never spends more than half of a step on finished rows and the cache is copied
through numpy only when rows join or that bound is reached. A compaction also trims the cache columns that are
padding for every live row, so the cache is never longer than the longest live sequence. Between compactions the
cache stays in ONNX Runtime's own values. On a file whose cache may be shared (deployft's fused CPU decoders,
`KVDecoder.shares_cache`), each layer's cache is one buffer with room for every live row's remaining tokens, bound
as both past and present, so a step writes its keys and values in place instead of copying the whole cache.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..runtime.generation import TextTracker, positions_from_mask
from ..runtime.sampling import GenerationOptions, next_tokens
from ..runtime.session import import_ort
from .prefill import left_pad, prefill_groups
from .queueing import QueueWorker

logger = logging.getLogger("deployft.serve")


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


@dataclass
class _Row:
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


class GenerationEngine(QueueWorker):
    """The running batch of a generator `Predictor`, driven by `run_once` (the worker thread calls it in a loop)."""

    thread_name = "deployft-generate"

    def __init__(self, predictor, max_batch_size: int, max_queue: int, metrics=None):
        super().__init__(max_queue, metrics)
        self.predictor = predictor
        self.decoder = predictor.decoder
        self.eos = set(int(e) for e in self.decoder.eos_ids)
        self.max_batch_size = max_batch_size
        self.rows: list[_Row] = []
        self.cache: list | None = None
        self.mask: np.ndarray | None = None
        self.steps = 0
        self._ort = import_ort()

    # ---- the caller's side (event loop) ---------------------------------------------------------------

    @property
    def active(self) -> int:
        """Live sequences in the running batch (finished rows awaiting compaction are not counted)."""
        return sum(not r.dead for r in self.rows)

    # ---- the worker's side ----------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.pending and not self.rows:
                    self._wake.wait()
                if self._stopping:
                    break
            try:
                self.run_once()
            except Exception as exc:  # an ONNX Runtime failure: answer every live request, keep serving
                logger.exception("generation step failed")
                self._fail_all(f"generation failed: {exc}")
        self._fail_all("the server is shutting down", reason="cancelled")

    def run_once(self) -> None:
        """Admit waiting requests (prefill each, join the batch), then decode one step of the running batch."""
        self._admit()
        if self.rows:
            self._step()
        self._gauge()

    def _admit(self) -> None:
        tickets = []
        while self.active + len(tickets) < self.max_batch_size:
            with self._wake:
                if not self.pending:
                    break
                ticket = self.pending.popleft()
            if ticket.cancelled:
                ticket.sink(Chunk(finish_reason="cancelled"))
                continue
            tickets.append(ticket)
        rows = [row for row in map(self._new_row, tickets) if row is not None]
        joined = [row for group in prefill_groups(rows) for row in self._prefill(group)]
        if joined:
            self._join(joined)

    def _new_row(self, ticket: Ticket) -> _Row | None:
        ids = ticket.prompt_ids
        row = _Row(ticket, TextTracker(self.predictor.codec.decode, ticket.options.stop, self.eos),
                   np.random.default_rng(ticket.options.seed),
                   self.decoder.budget(len(ids), ticket.options.max_new_tokens), len(ids))
        if row.budget < 1:
            self._finish(row, "length")
            return None
        return row

    def _prefill(self, rows: list[_Row]) -> list[_Row]:
        """One model call over the prompts of `rows` (left-padded); returns the rows that go on decoding."""
        batch, mask = self.predictor.codec.pad([row.ticket.prompt_ids for row in rows], side="left")
        width = batch.shape[1]
        logits, present = self.decoder.step(batch, mask, positions_from_mask(mask), None)
        host = [v.numpy() for v in present]
        self._record(len(rows), len(rows))
        going = []
        for i, row in enumerate(rows):
            row.cache = [h[i:i + 1, :, width - row.position:, :] for h in host]
            self._advance(row, logits[i:i + 1])
            if row.finish:
                self._finish(row, row.finish)
            else:
                going.append(row)
        return going

    def _step(self) -> None:
        ids = np.asarray([[self.decoder.pad_id if r.dead else r.last] for r in self.rows], dtype=np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
        positions = np.asarray([[r.position] for r in self.rows], dtype=np.int64)
        if self.decoder.shares_cache:  # `_set_cache` left room for every live row's remaining tokens
            logits = self.decoder.step_shared(ids, mask, positions, self.cache)
        else:
            logits, self.cache = self.decoder.step(ids, mask, positions, self.cache)
        self.mask = mask
        self.steps += 1
        self._record(len(self.rows), self.active)
        for i, row in enumerate(self.rows):
            row.position += 1
            if row.dead:
                continue
            if row.ticket.cancelled:
                row.finish = "cancelled"
            else:
                self._advance(row, logits[i:i + 1])
            if row.finish:
                self._finish(row, row.finish)
                row.dead = True
        live = self.active
        if live == 0:
            self.rows, self.cache, self.mask = [], None, None
        elif len(self.rows) - live >= live:
            arrays, self.mask = self._live_cache()
            self._set_cache(arrays)

    def _advance(self, row: _Row, logits: np.ndarray) -> None:
        """Pick the row's next token (its own sampler), report the text that is safe to show."""
        token = int(next_tokens(logits, row.ticket.options, row.rng)[0])
        row.generated += 1
        row.last = token
        piece = row.tracker.add(token)
        if piece:
            row.ticket.sink(Chunk(piece))
        if row.tracker.finished:
            row.finish = "stop"
        elif row.generated >= row.budget:
            row.finish = "length"

    def _finish(self, row: _Row, reason: str) -> None:
        tail = row.tracker.flush() if reason != "cancelled" else ""
        row.ticket.left_step = self.steps
        row.ticket.sink(Chunk(tail, reason, row.generated))
        if self.metrics is not None:
            self.metrics.generation_end(reason)

    # ---- the batch's KV cache ---------------------------------------------------------------------------

    def _join(self, joined: list[_Row]) -> None:
        parts, masks = [], []
        if self.rows:
            arrays, mask = self._live_cache()
            parts, masks = [arrays], [mask]
        for row in joined:
            parts.append(row.cache)
            masks.append(np.ones((1, row.position), dtype=np.int64))
            row.cache = None
            row.ticket.joined_step = self.steps
        width = max(m.shape[1] for m in masks)
        self.mask = np.concatenate([left_pad(m, width, 1) for m in masks], axis=0)
        self.rows.extend(joined)
        self._set_cache([np.concatenate([left_pad(p[n], width, 2) for p in parts], axis=0)
                         for n in range(len(parts[0]))])

    def _live_cache(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Drop finished rows: the live rows' cache and mask, less the columns that are padding in all of them."""
        keep = [i for i, r in enumerate(self.rows) if not r.dead]
        whole = len(keep) == len(self.rows)
        self.rows = [self.rows[i] for i in keep]
        mask = self.mask[keep]
        start = int(mask.argmax(axis=1).min())  # leading columns that are padding in every live row
        whole = whole and start == 0
        return [v if whole else v[keep][:, :, start:, :] for v in self._host_cache()], mask[:, start:]

    def _host_cache(self) -> list[np.ndarray]:
        """The cache as numpy, its columns cut to the mask's width (a shared buffer has unused room after it)."""
        width = self.mask.shape[1]
        return [(v.numpy() if hasattr(v, "numpy") else v)[:, :, :width, :] for v in self.cache]

    def _set_cache(self, arrays: list[np.ndarray]) -> None:
        """Make `arrays` (as wide as the mask) the running batch's cache; a shared one gets room for every live
        row's remaining tokens."""
        device = self.decoder.device
        if self.decoder.shares_cache:
            room = max((r.budget - r.generated for r in self.rows if not r.dead), default=0) + 1
            arrays = [np.concatenate([a, np.zeros((*a.shape[:2], room, a.shape[3]), dtype=a.dtype)], axis=2)
                      for a in arrays]
        self.cache = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), device, 0) for a in arrays]

    def _fail_all(self, message: str, reason: str = "error") -> None:
        rows, self.rows, self.cache, self.mask = self.rows, [], None, None
        for ticket in [r.ticket for r in rows if not r.dead] + self.take_waiting():
            ticket.sink(Chunk(finish_reason=reason, error=message))

    def _record(self, batch: int, live: int) -> None:
        if self.metrics is not None:
            self.metrics.generation_step(batch, live)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue(len(self.pending), self.active)
