"""Static input shapes for the OpenVINO provider: one compiled session per (batch, length) bucket.

OpenVINO compiles a graph with dynamic batch and length into kernels that work for any shape; compiled for one
fixed shape, as optimum-intel's users run it, the default classifier's fp32 files ran 6-17 % faster at 1x32,
1x128 and 16x128 on an AMX Xeon (benchmarks/openvino_provider.py, results/openvino_provider.md). `ShapeSessions` behaves like an `InferenceSession` for a classifier: each call
is padded up to its bucket (lengths to a multiple of 32 up to 128, of 64 up to 256, of 128 beyond; batches to a
power of two), run on the session compiled for that shape (built the first time the shape is seen, in about half
a second, and kept in OpenVINO's model cache), and the padding rows are cut from the result. Padded positions get
the pad token and attention mask 0, which a sequence classifier ignores; only the most recently used
`max_sessions` compiled shapes are kept in memory (and the first, compiled at load). A graph OpenVINO runs only
part of (its inputs are then not the model's) cannot be fixed this way; `runtime/session.py` runs it with dynamic
shapes and says so.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

MAX_SESSIONS = 12
"""Compiled shapes kept in memory (each holds its own copy of the compiled weights)."""
LENGTH_STEPS = ((128, 32), (256, 64))
"""`(up to, step)`: a length up to 128 is padded to a multiple of 32, up to 256 to a multiple of 64."""
LONG_STEP = 128
"""Beyond the last entry of LENGTH_STEPS, lengths are padded to a multiple of this."""


def bucket_length(length: int, max_length: int | None) -> int:
    """The length a call of `length` tokens is padded to (never beyond `max_length`, never below `length`)."""
    step = next((s for limit, s in LENGTH_STEPS if length <= limit), LONG_STEP)
    padded = -(-length // step) * step
    return max(length, min(padded, max_length)) if max_length else padded


def bucket_batch(batch: int) -> int:
    """The batch size a call of `batch` rows is padded to: the next power of two."""
    return 1 << (batch - 1).bit_length()


def reshape_input(names: list[str], shape: tuple[int, int]) -> str:
    """The OpenVINO provider's `reshape_input` option fixing every input to `shape`."""
    return ",".join(f"{name}[{shape[0]},{shape[1]}]" for name in names)


class ShapeSessions:
    """Sessions compiled for fixed shapes, built on demand by `build(shape)`, least recently used dropped first.

    Speaks the part of `onnxruntime.InferenceSession` the classifier uses: `run`, `get_inputs`, `get_outputs`,
    `get_providers`, `get_provider_graph_assignment_info`; inputs are `(batch, length)` integer tensors.
    """

    def __init__(self, build: Callable[[tuple[int, int]], object], first: tuple[int, int],
                 max_length: int | None = None, max_sessions: int = MAX_SESSIONS):
        self._build, self.max_length, self.max_sessions = build, max_length, max_sessions
        self.pad_id = 0
        """Token id the padded positions of `input_ids` get (the Predictor sets its tokenizer's)."""
        self._lock = threading.Lock()
        self._sessions: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._first = self._session(first)

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The compiled shapes kept now, least recently used first."""
        return list(self._sessions)

    def bucket(self, batch: int, length: int) -> tuple[int, int]:
        return bucket_batch(batch), bucket_length(length, self.max_length)

    def _session(self, shape: tuple[int, int]):
        with self._lock:
            session = self._sessions.get(shape)
            if session is None:
                session = self._sessions[shape] = self._build(shape)
                while len(self._sessions) > self.max_sessions:
                    self._sessions.popitem(last=False)
            self._sessions.move_to_end(shape)
            return session

    def run(self, output_names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch, length = next(iter(feeds.values())).shape
        shape = self.bucket(batch, length)
        if shape != (batch, length):
            feeds = {name: self._pad(name, value, shape) for name, value in feeds.items()}
        outputs = self._session(shape).run(output_names, feeds)
        return [out[:batch] if out.ndim and out.shape[0] == shape[0] else out for out in outputs]

    def _pad(self, name: str, value: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        fill = self.pad_id if name == "input_ids" else 0
        padded = np.full(shape, fill, dtype=value.dtype)
        padded[:value.shape[0], :value.shape[1]] = value
        return padded

    def get_inputs(self):
        return self._first.get_inputs()

    def get_outputs(self):
        return self._first.get_outputs()

    def get_providers(self):
        return self._first.get_providers()

    def get_provider_graph_assignment_info(self):
        return self._first.get_provider_graph_assignment_info()
