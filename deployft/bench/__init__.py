"""`deployft bench`: the deployed model's speed and accuracy against the PyTorch original it came from.

    benchmark(BenchConfig(run=RUN, bundle=BUNDLE, report=DIR)) -> BenchReport

Every variant runs in its own worker process (its own memory and cold start), all driven in lockstep so
variants are interleaved round by round; see `runner.py` for the order of a benchmark.
"""

from __future__ import annotations

from .config import BenchConfig
from .report import BenchReport
from .runner import benchmark

__all__ = ["BenchConfig", "BenchReport", "benchmark"]
