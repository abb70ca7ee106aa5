"""Static input shapes for the OpenVINO provider (opt-in): one compiled session per (batch, length bucket).

OpenVINO compiles a graph with dynamic batch and length into kernels that work for any shape; compiled for one
fixed shape, as optimum-intel's users run it, the default classifier's fp32 files took 11-25 % less time at 1x32,
1x128 and 16x128 on an AMX Xeon, and calls padded to a longer length (1x40, 3x100, 9x70) between the same and 9 %
more (benchmarks/openvino_provider.py, results/openvino_provider.md); padding the batch too cost up to 56 %.
So `ShapeSessions` pads only the length (to a multiple of 32 up to 128, of 64 up to 256, of 128 beyond, never
past the model's max_length) and keeps the batch as it comes: each (batch, length bucket) gets a session compiled
for it the first time it is seen (OpenVINO's model cache on disk keeps the compiled blob). Calls that repeat a few
batch sizes (one text at a time, `predict` in full batches) gain; a server, whose batches come in every size,
would compile anew for most of them, which is why the Predictor leaves this off unless asked.

Padded positions get the pad token and attention mask 0: an encoder classifier ignores them through the mask, and
a decoder classifier (which pools the last token that is not the pad token) through the pad id, the same one the
Predictor pads its batches with. The session compiled at load is always kept; of the others, the `max_sessions`
most recently used. A shape that fails to compile after load raises `DeviceError` from that call. A graph OpenVINO
runs only part of (its inputs are then not the model's) cannot be fixed this way at all: `runtime/session.py` runs
it with dynamic shapes and says so.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from ..errors import UsageError

MAX_SESSIONS = 24
"""Compiled shapes kept besides the first: every batch size from 1 to 6 at the four length buckets up to 128, say.
Each holds its own compiled copy of the weights: the default classifier's bench worker peaked at 833.4 MB with
static shapes against 358.8 MB with dynamic ones (fp32 file, the bench grid's 4 shapes;
benchmarks/results/xeon-amx/bench_classify_openvino_static.md and bench_classify_openvino.md)."""
LENGTH_STEPS = ((128, 32), (256, 64))
"""`(up to, step)`: a length up to 128 is padded to a multiple of 32, up to 256 to a multiple of 64."""
LONG_STEP = 128
"""Beyond the last entry of LENGTH_STEPS, lengths are padded to a multiple of this."""


def bucket_length(length: int, max_length: int | None) -> int:
    """The length a call of `length` tokens is padded to (never beyond `max_length`, never below `length`)."""
    step = next((s for limit, s in LENGTH_STEPS if length <= limit), LONG_STEP)
    padded = -(-length // step) * step
    return max(length, min(padded, max_length)) if max_length else padded


def reshape_input(names: list[str], shape: tuple[int, int]) -> str:
    """The OpenVINO provider's `reshape_input` option fixing every input to `shape`."""
    return ",".join(f"{name}[{shape[0]},{shape[1]}]" for name in names)


class ShapeSessions:
    """Sessions compiled for fixed shapes, built on demand by `build(shape)`.

    Speaks the part of `onnxruntime.InferenceSession` the classifier uses: `run`, `get_inputs`, `get_outputs`,
    `get_providers`, `get_provider_graph_assignment_info`; inputs are `(batch, length)` integer tensors. Safe to
    share across threads: a shape being compiled holds up only the calls that need that shape.
    """

    def __init__(self, build: Callable[[tuple[int, int]], object], first: tuple[int, int], pad_id: int,
                 max_length: int | None = None, max_sessions: int = MAX_SESSIONS):
        if max_sessions < 1:
            raise UsageError(f"max_sessions must be at least 1, got {max_sessions}")
        self._build, self.pad_id, self.max_length, self.max_sessions = build, pad_id, max_length, max_sessions
        self._lock = threading.Lock()
        self._building: dict[tuple[int, int], threading.Lock] = {}
        self._sessions: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._first_shape, self._first = first, build(first)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The compiled shapes kept now: the first, then the others, least recently used first."""
        with self._lock:
            return [self._first_shape, *self._sessions]

    def bucket(self, batch: int, length: int) -> tuple[int, int]:
        """The compiled shape a `(batch, length)` call runs on: its batch, its length padded to the bucket."""
        return batch, bucket_length(length, self.max_length)

    def _session(self, shape: tuple[int, int]):
        if shape == self._first_shape:
            return self._first
        with self._lock:
            if shape in self._sessions:
                self._sessions.move_to_end(shape)
                return self._sessions[shape]
            building = self._building.setdefault(shape, threading.Lock())
        with building:  # one thread compiles a shape; others asking for it wait, the rest run on
            with self._lock:
                if shape in self._sessions:
                    self._sessions.move_to_end(shape)
                    return self._sessions[shape]
            try:
                session = self._build(shape)
            finally:
                with self._lock:
                    self._building.pop(shape, None)
            with self._lock:
                self._sessions[shape] = session
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            return session

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run `feeds` with their length padded up to its bucket (a classifier's outputs do not depend on it)."""
        shape = self.bucket(*next(iter(feeds.values())).shape)
        if shape != next(iter(feeds.values())).shape:
            feeds = {name: self._pad(name, value, shape) for name, value in feeds.items()}
        return self._session(shape).run(output_names, feeds)

    def _pad(self, name: str, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        fill = self.pad_id if name == "input_ids" else 0
        padded = np.full(shape, fill, dtype=value.dtype)
        padded[:, :value.shape[1]] = value
        return padded

    def get_inputs(self):
        return self._first.get_inputs()

    def get_outputs(self):
        return self._first.get_outputs()

    def get_providers(self):
        return self._first.get_providers()

    def get_provider_graph_assignment_info(self):
        return self._first.get_provider_graph_assignment_info()
