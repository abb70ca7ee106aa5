"""The KV-cache decoding loop over an Optimum `text-generation-with-past` decoder.

The exported decoder (one `model.onnx` for gpt2- and llama-like models) takes `input_ids`, `attention_mask`,
`position_ids` and `past_key_values.N.key/value` and returns `logits` and `present.N.key/value`. A decode step
never copies the cache through numpy; a generation keeps it one of two ways:

- `SharedCache` (`kv_cache.py`), for deployft's attention-fused CPU files (their model metadata says
  `SHARED_CACHE_KEY`): one buffer per layer with room for the generation (at most the model's positions + 1
  columns), bound as both `past` and `present`, which GroupQueryAttention updates in place; the step's inputs and
  its logits are preallocated buffers bound once, so a decode step copies no cache and builds no feeds. The prefill
  feeds `logits_to_keep` 1 (only the last position's logits) through `run_with_ort_values`, because IO binding
  cannot bind that optional input (a left-padded first step of a file that rotates inside its attention runs
  right-padded and keeps enough positions for every row's last token: `padding.py`).
- `CopyingCache`, for every other file: each step's `present` outputs (where ONNX Runtime put them: on the GPU
  for CUDA) are fed back as the next step's `past`, through IO binding, or `run_with_ort_values` for fused files.

Batches are left-padded; position ids count only real tokens, as transformers computes them. Each row has the
budget its prompt has alone. Once finished rows are `DROP_FINISHED_SHARE` of the rows the cache holds, and before a
step would make the mask wider than the model's positions, the cache drops its finished rows and the columns that
are padding in all others (`compact`, with `kept_rows`, as the serve engine does, by the same share and the same
`past_the_table` test). The cache goes through numpy only where its layout changes: the right-padded first step of a
file that rotates inside its attention (`padding.py`), and each `compact`, which copies every layer to numpy and back
(device -> host -> device on CUDA) once per compaction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

from ..errors import BundleError
from .kv_cache import (KEEP_LAST, SHARED_CACHE, SHARED_CACHE_KEY, CopyingCache, SharedCache, positions_from_mask,
                       shared_padding)
from .padding import ROTARY_IN_ATTENTION, ROTARY_KEY, column_positions, left_padded, right_padded, to_left_padding
from .sampling import GenerationOptions, next_tokens

logger = logging.getLogger("deployft.runtime")

_PAST_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
DROP_FINISHED_SHARE = 0.5
"""A batch drops its finished rows (`compact`) once they are this share of the rows its cache holds: each later
step then runs only the rows still generating, for one copy of the cache (benchmarks/results/generate_uneven.md)."""


def position_budget(prompt_length, max_new_tokens: int, max_positions: int | None):
    """`max_new_tokens`, cut so every token fed to a model with `max_positions` positions fits them: the prompt
    and every generated token but the last (which is never fed back), as transformers counts them. Works on one
    prompt length or a numpy array of them; no cut where the model's positions are unknown (None or 0)."""
    if not max_positions:
        return max_new_tokens if np.ndim(prompt_length) == 0 else np.full(np.shape(prompt_length), max_new_tokens)
    return np.minimum(np.maximum(max_positions - np.asarray(prompt_length) + 1, 0), max_new_tokens)


class KVDecoder:
    """Runs one decoder session step by step, with its KV cache kept on the session's device."""

    def __init__(self, session, device: str, eos_ids: list[int], pad_id: int, max_positions: int | None):
        self.session = session
        self.device = device
        self.eos_ids = np.array(sorted(set(eos_ids)), dtype=np.int64)
        self.eos_set = set(self.eos_ids.tolist())
        """The end tokens as a set of ints, for per-token tests."""
        self.pad_id = pad_id
        self.max_positions = max_positions
        inputs = {i.name: i for i in session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past_key_values.")]
        if "input_ids" not in inputs or not self.past_names:
            raise BundleError(f"the model has inputs {', '.join(inputs)}, not a decoder with a KV cache "
                              "(input_ids, past_key_values.N.key/value); re-export with task text-generation-with-past")
        first = inputs[self.past_names[0]]
        self.past_dtype = _PAST_DTYPES.get(first.type, np.float32)
        self.kv_heads, self.head_dim = int(first.shape[1]), int(first.shape[3])
        self.has_positions = "position_ids" in inputs
        # deployft's fused decoders (CPU) take an optional `logits_to_keep` (default 0: every position); a step
        # feeds 1, so a prefill projects only its last position onto the vocabulary. IO binding cannot bind an
        # optional input, so those steps run through run_with_ort_values, which on CPU keeps the cache as OrtValues
        # just the same; CUDA steps keep IO binding (their presents stay on the device) and every position.
        self.keeps_last = device == "cpu" and any(
            i.name == "logits_to_keep" for i in session.get_overridable_initializers())
        self.output_names = [o.name for o in session.get_outputs()]
        self.logits_dtype = next((_PAST_DTYPES.get(o.type, np.float32) for o in session.get_outputs()
                                  if o.name == "logits"), np.float32)
        self.present_names = ["present" + n[len("past_key_values"):] for n in self.past_names]
        metadata = session.get_modelmeta().custom_metadata_map
        self.shares_cache = (session.get_providers()[0] == "CPUExecutionProvider"
                             and metadata.get(SHARED_CACHE_KEY) == SHARED_CACHE)
        """Generations bind one cache buffer per layer as past and present (`SharedCache`)."""
        self.rotates_in_attention = metadata.get(ROTARY_KEY) == ROTARY_IN_ATTENTION
        """First steps of left-padded batches run right-padded (`padding.py`)."""

    def full_logits(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Logits at every position of a batch (batch, length, vocab): one call with an empty KV cache."""
        lengths = None
        if self.rotates_in_attention and left_padded(mask):
            ids, mask, lengths = right_padded(ids, mask, self.pad_id)
        feeds = {"input_ids": ids, "attention_mask": mask}
        if self.has_positions:
            feeds["position_ids"] = positions_from_mask(mask) if lengths is None else column_positions(mask)
        empty = self._empty_past(ids.shape[0])
        feeds.update({name: empty for name in self.past_names})
        logits = self.session.run(["logits"], feeds)[0].astype(np.float32)
        return logits if lengths is None else to_left_padding(logits, lengths, axis=1)

    def _bind_step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None,
                   shared: bool = False):
        """The step's IO binding; `shared`: each of `past` is bound as its layer's present too (written in place)."""
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(ids))
        binding.bind_cpu_input("attention_mask", np.ascontiguousarray(mask))
        if self.has_positions:
            binding.bind_cpu_input("position_ids", np.ascontiguousarray(positions))
        if past is None:
            empty = self._empty_past(ids.shape[0])
            for name in self.past_names:
                binding.bind_cpu_input(name, empty)
        else:
            for name, value in zip(self.past_names, past):
                binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for index, name in enumerate(self.present_names):
            if shared:
                binding.bind_ortvalue_output(name, past[index])
            else:
                binding.bind_output(name, self.device)
        return binding

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None):
        """One forward pass; returns `(last-position logits as float32, present cache values)`."""
        if past is None and self.rotates_in_attention and left_padded(mask):
            return self._first_step_right_padded(ids, mask)
        logits, presents = self._run(ids, mask, positions, past, KEEP_LAST)
        return logits[:, -1, :].astype(np.float32), presents

    def step_shared(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, buffers: list) -> np.ndarray:
        """One step with each of `buffers` (an OrtValue per past input, its length axis at least the mask's width)
        bound as both past and present: GroupQueryAttention writes the step's keys and values into it in place at
        column `mask.shape[1] - 1`. Returns the last position's logits as float32. Needs `shares_cache`."""
        binding = self._bind_step(ids, mask, positions, buffers, shared=True)
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()[:, -1, :].astype(np.float32)

    def _run(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list | None, keep: np.ndarray):
        """One call: `(logits as returned, present cache values)`; a fused CPU file computes the last `keep`
        positions' logits, any other file every position's."""
        if not self.keeps_last:
            binding = self._bind_step(ids, mask, positions, past)
            self.session.run_with_iobinding(binding)
            outputs = dict(zip(self.output_names, binding.get_outputs()))
            return outputs["logits"].numpy(), [outputs[name] for name in self.present_names]
        from onnxruntime import OrtValue

        feeds = {"input_ids": ids, "attention_mask": mask, "logits_to_keep": keep}
        if self.has_positions:
            feeds["position_ids"] = positions
        feeds = {name: OrtValue.ortvalue_from_numpy(np.require(value, requirements="C"))  # a scalar stays one
                 for name, value in feeds.items()}
        if past is None:
            empty = OrtValue.ortvalue_from_numpy(self._empty_past(ids.shape[0]))
            feeds.update({name: empty for name in self.past_names})
        else:
            feeds.update(zip(self.past_names, past))
        outputs = dict(zip(self.output_names, self.session.run_with_ort_values(self.output_names, feeds)))
        return outputs["logits"].numpy(), [outputs[name] for name in self.present_names]

    def _first_step_right_padded(self, ids: np.ndarray, mask: np.ndarray):
        """`step` of a left-padded batch without a past, run right-padded (see `padding.py`): the same logits and
        the same left-padded cache layout, with every key rotated by its own position."""
        right_ids, right_mask, lengths = right_padded(ids, mask, self.pad_id)
        width = mask.shape[1]
        ends = np.maximum(lengths, 1) - 1  # each row's last token (an empty row: its first column)
        keep = np.array(width - int(ends.min()), dtype=np.int64)  # the window holds every row's last token
        logits, presents = self._run(right_ids, right_mask, column_positions(right_mask), None, keep)
        last = logits[np.arange(len(lengths)), ends - (width - logits.shape[1])].astype(np.float32)
        return last, [self._owned(to_left_padding(value.numpy(), lengths, axis=2)) for value in presents]

    def _owned(self, array: np.ndarray):
        """An OrtValue on the session's device holding its own copy of `array`. One made by `ortvalue_from_numpy`
        on the CPU borrows the array's memory and only its Python wrapper keeps the array alive, so a `.numpy()`
        view of it (kept after the wrapper is gone, as a step's callers keep presents) would read freed memory."""
        from onnxruntime import OrtValue

        value = OrtValue.ortvalue_from_shape_and_type(array.shape, array.dtype, self.device, 0)
        value.update_inplace(np.ascontiguousarray(array))
        return value

    def _empty_past(self, batch: int) -> np.ndarray:
        """The cache of a first step: length 0."""
        return np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=self.past_dtype)

    def past_the_table(self, width: int) -> bool:
        """A mask `width` columns wide is more than the model's positions: the fused attention's rotary table (its
        cos/sin caches) covers `max_positions` columns, and left padding counts."""
        return bool(self.max_positions) and width > self.max_positions

    def budget(self, prompt_length: int, max_new_tokens: int) -> int:
        """`position_budget` of one prompt on this model's positions; a cut is logged."""
        allowed = int(position_budget(prompt_length, max_new_tokens, self.max_positions))
        if max_new_tokens > allowed:
            logger.warning("max_new_tokens %d cut to %d: the model has %d positions and the prompt uses %d",
                           max_new_tokens, allowed, self.max_positions, prompt_length)
        return allowed

    def budgets(self, mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """`budget` of each row of a left-padded batch: on its own prompt, not the batch's padded width. A batch of
        several rows logs one line for all the rows it cuts."""
        lengths = mask.sum(axis=1).astype(np.int64)
        if len(lengths) == 1 or not self.max_positions:
            return np.array([self.budget(int(n), max_new_tokens) for n in lengths], dtype=np.int64)
        budgets = position_budget(lengths, max_new_tokens, self.max_positions)
        cut = budgets < max_new_tokens
        if cut.any():
            logger.warning("max_new_tokens %d cut to %s for %d of %d prompts: the model has %d positions and they "
                           "use %s", max_new_tokens, _span(budgets[cut]), cut.sum(), len(cut), self.max_positions,
                           _span(lengths[cut]))
        return budgets

    def iter_batch(self, ids: np.ndarray, mask: np.ndarray, options: GenerationOptions,
                   done: np.ndarray, ignore_eos: bool = False) -> Iterator[np.ndarray]:
        """Yield the next token of every row, step by step, for a left-padded batch.

        `done` (bool, one per row) is shared with the caller: the loop marks rows that produced an end token or
        used their budget, the caller may mark rows that hit a stop string, and the loop ends when all rows are
        done. Finished rows keep receiving the pad token, as in transformers: a caller reads a row's tokens while
        its `done` is false (a row is marked after the step that finished it). Each row has the budget its prompt
        has alone (`budget`), so a short prompt goes on after a long one beside it reached the model's positions.
        `ignore_eos` runs every row to its budget, end tokens
        included (what a benchmark times). Each row samples from its own generator seeded with `options.seed`
        (fresh entropy when None), so a row gets the text its prompt gets alone, whatever else shares the batch.
        """
        rngs = [np.random.default_rng(options.seed) for _ in range(ids.shape[0])]
        budgets = self.budgets(mask, options.max_new_tokens)
        done |= budgets <= 0
        rows = np.flatnonzero(~done)  # the batch's rows that the cache holds, in order
        if not len(rows):
            return
        start = shared_padding(mask[rows])  # a prompt that gets no token may be longer than the positions
        ids, mask, steps = ids[rows, start:], mask[rows, start:], int(budgets.max())
        cache = SharedCache(self, ids, mask, steps) if self.shares_cache else CopyingCache(self, ids, mask)
        logits = cache.prefill()
        for generated in range(1, steps + 1):
            tokens = np.full(len(done), self.pad_id, dtype=np.int64)
            tokens[rows] = np.where(done[rows], self.pad_id, next_tokens(logits, options, [rngs[i] for i in rows]))
            yield tokens
            if not ignore_eos:
                done |= np.fromiter((int(t) in self.eos_set for t in tokens), dtype=bool, count=len(tokens))
            done |= budgets == generated
            if done.all():
                return
            finished = done[rows]
            # at the positions' limit the next mask would be wider than the positions (the fused attention's rotary
            # table): every row left fits (`budget`), the padding beside it does not
            if self.past_the_table(cache.width + 1) or finished.sum() >= DROP_FINISHED_SHARE * len(rows):
                keep = np.flatnonzero(~finished)
                rows = rows[keep]
                cache.compact(keep, int(budgets[rows].max()) - generated)
            logits = cache.advance(tokens[rows])


def _span(values: np.ndarray) -> str:
    """`values`' range as text: `5`, or `3-7`."""
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"
