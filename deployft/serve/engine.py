"""Continuous (iteration-level) batching for a generator bundle.

One worker thread owns the decoder session and loops over steps. Before each step it admits waiting requests:
a prompt that begins like one prefilled before resumes from that prompt's cache (`PrefixCache`), the others are
prefilled together in groups of bounded padding, left-padded and masked like `Predictor.generate`'s batches
(`prefill`), and each row's cache joins the running batch's, left-padded to its length. Every row
keeps its own position ids and sampler, and the mask hides each row's padding, so a row decodes the same tokens
whatever else shares the batch (greedy output equals `Predictor.generate` of the request alone on fp32 files).

A row that finishes (end token, stop string, `max_tokens`, or a cancelled request) leaves at once: its request is
answered after the step that finished it, its prompt and answer go to the prefix cache (a chat's next turn begins
with them), and its slot is free for the next waiting request. On a file whose cache
may be shared (deployft's fused CPU decoders, `KVDecoder.shares_cache`) each layer's cache is one buffer, bound as
both past and present so a step writes its keys and values in place, with room for every live row's remaining
tokens plus `JOIN_HEADROOM` columns; a joining request is written into a finished row's slot in place when its
prompt and budget fit. Otherwise (and on other files) the cache is rebuilt through numpy: when requests join, or
when finished rows are `DROP_FINISHED_SHARE` of the batch, as `Predictor.generate` drops them (a compaction, which
also trims the columns that are padding in every live row; at the shipped half the batch never spends more than half
of a step on finished rows), and before a step that would make the mask wider than the model's positions (a finished
row is fed position 0 until then: the rotary table covers it).
"""

from __future__ import annotations

import logging

import numpy as np

from ..runtime.detokenize import TextTracker
from ..runtime.generation import DROP_FINISHED_SHARE
from ..runtime.kv_cache import kept_rows, with_room
from ..runtime.session import import_ort
from .prefill import PrefixCache, left_pad, prefill
from .queueing import QueueWorker
from .tickets import Chunk, Row, Ticket

logger = logging.getLogger("deployft.serve")

JOIN_HEADROOM = 64
"""Spare columns of a shared cache beyond its live rows' remaining tokens when it is rebuilt; each step uses one.
A request joins in place while the columns left cover its own budget."""


class GenerationEngine(QueueWorker):
    """The running batch of a generator `Predictor`, driven by `run_once` (the worker thread calls it in a loop)."""

    thread_name = "deployft-generate"

    def __init__(self, predictor, max_batch_size: int, max_queue: int, metrics=None, prefix_cache_bytes: int = 0):
        super().__init__(max_queue, metrics)
        self.prefix_cache = PrefixCache(prefix_cache_bytes) if prefix_cache_bytes > 0 else None
        self.predictor = predictor
        self.decoder = predictor.decoder
        self.max_batch_size = max_batch_size
        self.rows: list[Row] = []
        self.cache: list | None = None
        self._arrays: list[np.ndarray] = []
        """The memory `cache`'s OrtValues borrow on the CPU after `_set_cache` (empty once a copying step's outputs
        replace them): kept here, not only by the OrtValues' wrappers, so views of it stay valid."""
        self.mask: np.ndarray | None = None
        self.steps = 0
        self._ort = import_ort()

    @property
    def host(self) -> list[np.ndarray] | None:
        """A shared cache's buffers as numpy arrays over the same memory as `cache` (None otherwise)."""
        return self._arrays if self._arrays and self.decoder.shares_cache else None

    @property
    def active(self) -> int:
        """Live sequences in the running batch (finished rows awaiting compaction are not counted)."""
        return sum(not r.dead for r in self.rows)

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
        rows = self._take()
        try:
            rest = self._fill_free_slots(self._prefill(rows))
            if rest:
                self._join(rest)
        except Exception as exc:  # taken from the queue but not in the batch: `_fail_all` would not answer them
            for row in rows:
                if row.ticket.left_step is None and all(r.ticket is not row.ticket for r in self.rows):
                    self._end(row.ticket, Chunk(finish_reason="error", error=f"generation failed: {exc}"))
            raise

    def _take(self) -> list[Row]:
        """Rows of the waiting requests the batch has room for; a request that cannot start fails alone."""
        rows: list[Row] = []
        while self.active + len(rows) < self.max_batch_size:
            with self._wake:
                if not self.pending:
                    break
                ticket = self.pending.popleft()
            if ticket.cancelled:
                self._end(ticket, Chunk(finish_reason="cancelled"))
                continue
            try:
                row = self._new_row(ticket)
            except Exception as exc:  # this request's options, not the session: the running batch goes on
                logger.exception("a generation request could not start")
                self._end(ticket, Chunk(finish_reason="error", error=f"generation failed: {exc}"))
                continue
            rows += [row] if row is not None else []
        return rows

    def _new_row(self, ticket: Ticket) -> Row | None:
        ids = ticket.prompt_ids
        row = Row(ticket, TextTracker(self.predictor.codec.decode, ticket.options.stop, self.decoder.eos_set),
                  np.random.default_rng(ticket.options.seed),
                  self.decoder.budget(len(ids), ticket.options.max_new_tokens), len(ids))
        if row.budget < 1:
            self._finish(row, "length")
            return None
        return row

    def _prefill(self, rows: list[Row]) -> list[Row]:
        """Prefill the prompts of `rows`; returns the rows that go on decoding."""
        counted = sum(row.ticket.counted for row in rows)  # the warm-up's calls are not clients'
        reused = self.metrics.prefix_reused if self.metrics is not None and counted else (lambda tokens: None)
        results = prefill(self.decoder, self.predictor.codec, [row.ticket.prompt_ids for row in rows],
                          self.prefix_cache, lambda n: self._record(n if counted else 0, 0), reused)
        self._record(0, counted)  # one token each
        going = []
        for row, (logits, cache) in zip(rows, results):
            row.cache = cache
            row.advance(logits)
            if row.finish:
                self._finish(row, row.finish)
            else:
                going.append(row)
        return going

    def _step(self) -> None:
        if self.decoder.past_the_table(self.mask.shape[1] + 1):  # every live row fits (`budget`), the padding may not
            arrays, self.mask = self._live_cache()
            self._set_cache(arrays)
        ids = np.asarray([[self.decoder.pad_id if r.dead else r.last] for r in self.rows], dtype=np.int64)
        mask = np.concatenate([self.mask, np.ones((len(self.rows), 1), dtype=np.int64)], axis=1)
        # a finished row's output is dropped: position 0 keeps it inside the rotary table however long it stays
        positions = np.asarray([[0 if r.dead else r.position] for r in self.rows], dtype=np.int64)
        if self.decoder.shares_cache:  # `_set_cache` left room for every live row's remaining tokens
            logits = self.decoder.step_shared(ids, mask, positions, self.cache)
        else:
            logits, self.cache = self.decoder.step(ids, mask, positions, self.cache)
            self._arrays = []  # the cache is the step's outputs now
        self.mask = mask
        self.steps += 1
        counted = sum(not r.dead and r.ticket.counted for r in self.rows)
        self._record(len(self.rows) if counted else 0, counted)
        finished = []
        for i, row in enumerate(self.rows):
            row.position += 1
            if row.dead:
                continue
            if row.ticket.cancelled:
                row.finish = "cancelled"
            else:
                row.advance(logits[i:i + 1])
            if row.finish:
                self._finish(row, row.finish)
                finished.append(i)
                row.dead = True
        self._remember(finished)
        live = self.active
        if live == 0:
            self.rows, self.cache, self.mask, self._arrays = [], None, None, []
        elif len(self.rows) - live >= DROP_FINISHED_SHARE * len(self.rows):
            arrays, self.mask = self._live_cache()
            self._set_cache(arrays)

    def _finish(self, row: Row, reason: str) -> None:
        tail = row.tracker.flush() if reason != "cancelled" else ""
        row.ticket.left_step = self.steps
        self._end(row.ticket, Chunk(tail, reason, row.generated))

    def _end(self, ticket: Ticket, last: Chunk) -> None:
        """Count a request's finish reason, then answer its last chunk (so a client that has its answer finds the
        generation in /metrics)."""
        if self.metrics is not None and ticket.counted:
            self.metrics.generation_end(last.finish_reason)
        ticket.sink(last)

    def withdraw(self, ticket: Ticket) -> bool:
        """Take a cancelled request out of the queue (counted as a cancelled generation)."""
        withdrawn = super().withdraw(ticket)
        if withdrawn and self.metrics is not None:
            self.metrics.generation_end("cancelled")
        return withdrawn

    # ---- the batch's KV cache ---------------------------------------------------------------------------

    def _remember(self, indices: list[int]) -> None:
        """Keep the finished rows' prompts and answers (the tokens fed back) in the prefix cache: a chat's next turn
        begins with both."""
        if self.prefix_cache is None or not indices:
            return
        arrays = self._host_cache()  # out of a copying cache once for all of them
        for index in indices:
            row, columns = self.rows[index], self.mask[index].astype(bool)
            ids = (row.ticket.prompt_ids + row.tracker.ids)[:int(columns.sum())]
            if len(ids) == columns.sum():
                self.prefix_cache.store(ids, [a[index:index + 1][:, :, columns, :] for a in arrays])

    def _fill_free_slots(self, joined: list[Row]) -> list[Row]:
        """Write joined rows into finished rows' slots of a shared cache in place (right-aligned, masked before);
        return those that do not fit (no free slot, a prompt wider than the batch, too little room left)."""
        if self.host is None or not self.rows:
            return joined
        width, rest = self.mask.shape[1], []
        room = self.host[0].shape[2] - width
        free = [i for i, r in enumerate(self.rows) if r.dead]
        for row in joined:
            remaining = row.budget - row.generated
            too_wide = self.decoder.past_the_table(width + remaining)
            if not free or row.position > width or remaining + 1 > room or too_wide:
                rest.append(row)
                continue
            slot, start = free.pop(0), width - row.position
            for buffer, part in zip(self.host, row.cache):  # the finished row's columns before `start` are masked
                buffer[slot, :, start:width, :] = part[0]
            self.mask[slot, :start], self.mask[slot, start:] = 0, 1
            self.rows[slot], row.cache, row.ticket.joined_step = row, None, self.steps
        return rest

    def _join(self, joined: list[Row]) -> None:
        live = self._live_cache() if self.rows else None  # (arrays, mask) of the rows already running
        parts, masks = ([live[0]], [live[1]]) if live else ([], [])
        for row in joined:
            parts.append(row.cache)
            masks.append(np.ones((1, row.position), dtype=np.int64))
            row.cache, row.ticket.joined_step = None, self.steps
        width = max(m.shape[1] for m in masks)
        self.mask = np.concatenate([left_pad(m, width, 1) for m in masks], axis=0)
        self.rows.extend(joined)
        self._set_cache([np.concatenate([left_pad(p[n], width, 2) for p in parts], axis=0)
                         for n in range(len(parts[0]))])

    def _live_cache(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Drop finished rows: the live rows' cache and mask, less the columns padding all of them (`kept_rows`)."""
        keep = [i for i, r in enumerate(self.rows) if not r.dead]
        arrays, mask = kept_rows(self._host_cache(), self.mask, keep)
        self.rows = [self.rows[i] for i in keep]
        return arrays, mask

    def _host_cache(self) -> list[np.ndarray]:
        """The cache as numpy (a shared cache's own arrays: no copy), its columns cut to the mask's width."""
        arrays = self.host or [v.numpy() if hasattr(v, "numpy") else v for v in self.cache]
        return [a[:, :, :self.mask.shape[1], :] for a in arrays]

    def _set_cache(self, arrays: list[np.ndarray]) -> None:
        """Make `arrays` (as wide as the mask) the batch's cache; a shared one gets room (see JOIN_HEADROOM)."""
        device = self.decoder.device
        if self.decoder.shares_cache:
            room = max((r.budget - r.generated for r in self.rows if not r.dead), default=0) + 1 + JOIN_HEADROOM
            arrays = with_room(arrays, room)
        arrays = [np.ascontiguousarray(a) for a in arrays]
        # on the CPU an OrtValue made from a numpy array uses the array's memory: `host` writes reach the session
        self._arrays = arrays if device == "cpu" else []
        self.cache = [self._ort.OrtValue.ortvalue_from_numpy(a, device, 0) for a in arrays]

    def _fail_all(self, message: str, reason: str = "error") -> None:
        rows, self.rows, self.cache, self.mask, self._arrays = self.rows, [], None, None, []
        for ticket in [r.ticket for r in rows if not r.dead] + self.take_waiting():
            self._end(ticket, Chunk(finish_reason=reason, error=message))

    def _record(self, batch: int, tokens: int) -> None:
        """Count a decoder call over `batch` rows (0: none to count) and `tokens` tokens generated for clients."""
        if self.metrics is not None:
            self.metrics.generation_step(batch, tokens)

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue(len(self.pending), self.active)
