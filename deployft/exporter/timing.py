"""Timing ONNX files against each other at a bundle's typical shapes, through the runtime's own session.

Every file gets one session from `deployft.runtime.session.create_session` (what the Predictor runs), all with the
same thread setting and none spin-waiting between calls: the threads of the file called last would otherwise spin
on a core the next file needs. After a warm-up, rounds are interleaved: each round calls every file once per shape,
in an order rotated round by round, so a burst of load on a shared machine lands on every file alike. Rounds stop
at the time budget (after at least `MIN_ROUNDS`) or at `MAX_ROUNDS`; each file's time per shape is the median of
its rounds. Inputs are token ids drawn from the validation rows, every row padded to the shape's length (no padding),
which is the model call alone: tokenization is the same for every file.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

WARMUP = 2
"""Untimed calls per file and shape before the first round."""
MIN_ROUNDS = 3
"""Rounds run even when they take longer than the budget."""
MAX_ROUNDS = 50
"""Rounds after which timing stops even when budget is left."""
LARGE_BATCH = 16
"""The batch of the many-rows shape (a request batch, or the serve batcher's group)."""
LARGE_LENGTH = 128
"""The length of the many-rows shape, capped at the bundle's max length."""
PROVIDER = "default"
"""The ONNX Runtime provider every file is timed on, whatever --provider the files were validated through: the
candidates are dynamic int8 files, which the default provider runs as they are, while a Predictor given provider
openvino runs the fused fp32 file instead (`deployft.runtime.openvino.pick_model_file`), so OpenVINO timings of
them would describe a path nothing runs. The manifest records it (`quantization.selection.timed_on`)."""


@dataclass(frozen=True)
class Shape:
    """One input shape the files are timed at."""

    batch: int
    length: int

    @property
    def label(self) -> str:
        return f"b{self.batch}x{self.length}"


def typical_shapes(max_length: int, lengths: list[int]) -> list[Shape]:
    """One text at the validation rows' median token length, one at the bundle's max length, and a batch of
    `LARGE_BATCH` at `min(LARGE_LENGTH, max_length)`; repeated shapes are dropped."""
    median = max(1, min(max_length, int(statistics.median(lengths)))) if lengths else max_length
    shapes = [Shape(1, median), Shape(1, max_length), Shape(LARGE_BATCH, min(LARGE_LENGTH, max_length))]
    return list(dict.fromkeys(shapes))


@dataclass
class TimingPlan:
    """How the files are timed."""

    shapes: list[Shape]
    """The shapes every file is called at."""
    seconds: float
    """The time budget for the rounds (warm-up not counted)."""
    threads: int | None = None
    """Intra-op threads of every session; None: ONNX Runtime's default (one per physical core), as the Predictor."""
    tokens: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Token ids the inputs are drawn from (the validation rows' ids)."""


@dataclass
class Timings:
    """Median milliseconds per file and shape, and how they were measured."""

    medians: dict[str, dict[str, float]]
    """`{file key: {shape label: median ms}}`."""
    rounds: int
    seconds: float
    """Wall time the rounds took."""

    def score(self, key: str) -> float:
        """The geometric mean of a file's medians over the shapes: every shape weighs the same, whatever its size."""
        values = list(self.medians[key].values())
        return math.exp(sum(math.log(v) for v in values) / len(values))


Timer = Callable[[dict[str, Path], TimingPlan], Timings]
"""What times the files: `time_files` here, a fake with known timings in tests."""


def time_files(files: dict[str, Path], plan: TimingPlan) -> Timings:
    """Time every file at every shape of `plan`, interleaved (see the module docstring)."""
    from ..runtime.session import SessionOptions, create_session

    options = SessionOptions(threads=plan.threads, spinning=False, provider=PROVIDER)
    sessions = {key: create_session(path, options)[0] for key, path in files.items()}
    feeds = {shape: _feeds(next(iter(sessions.values())), shape, plan.tokens) for shape in plan.shapes}
    for session in sessions.values():
        for feed in feeds.values():
            for _ in range(WARMUP):
                session.run(None, feed)
    samples: dict[str, dict[Shape, list[float]]] = {key: {s: [] for s in plan.shapes} for key in sessions}
    keys, start, rounds = list(sessions), time.perf_counter(), 0
    while rounds < MAX_ROUNDS and (rounds < MIN_ROUNDS or time.perf_counter() - start < plan.seconds):
        order = keys[rounds % len(keys):] + keys[:rounds % len(keys)]
        for shape, feed in feeds.items():
            for key in order:
                began = time.perf_counter()
                sessions[key].run(None, feed)
                samples[key][shape].append(1000 * (time.perf_counter() - began))
        rounds += 1
    medians = {key: {s.label: statistics.median(v) for s, v in per.items()} for key, per in samples.items()}
    return Timings(medians, rounds, time.perf_counter() - start)


def _feeds(session, shape: Shape, tokens: list[int]) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ids = rng.choice(np.asarray(tokens, dtype=np.int64), size=(shape.batch, shape.length))
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {i.name: feed[i.name] for i in session.get_inputs()}
