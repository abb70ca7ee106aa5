"""Percentiles and the interleaved timing schedule.

Variants are timed round by round: in each round every variant runs each cell once, in an order that
rotates between rounds, so a burst of load on a shared machine hits every variant alike instead of
whichever happened to run during it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from .quiet import RoundMeter


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99, mean, min, max and count of a list of seconds."""
    return {
        "p50": percentile(samples, 50), "p90": percentile(samples, 90), "p99": percentile(samples, 99),
        "mean": sum(samples) / len(samples), "min": min(samples), "max": max(samples), "n": len(samples),
    }


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """`names` rotated left by `round_index`: each variant takes each place in the order equally often."""
    if not names:
        return []
    shift = round_index % len(names)
    return [*names[shift:], *names[:shift]]


Step = Callable[[str, Any], Any]
"""`step(variant, cell) -> measurement` runs one timed call; it raises to mark the variant failed."""


def interleave(variants: Sequence[str], cells: Sequence[Any], step: Step, *, repeats: int, min_time: float = 0.0,
               elapsed: Callable[[Any], float] = float, on_error: Callable[[str, Exception], None] | None = None,
               on_round: Callable[[int], None] | None = None, max_rounds: int = 10_000,
               meter: RoundMeter | None = None) -> dict[str, dict[Any, list]]:
    """Run `step` round by round over `variants` × `cells` and collect every measurement.

    At least `repeats` rounds are kept; more follow until every live variant has spent `min_time` seconds
    (as read from each measurement by `elapsed`) in every cell. With a `meter`, a round during which other
    programs used the CPU is thrown away and run again (see `quiet.RoundMeter`). A variant whose step raises
    is handed to `on_error` and dropped from later rounds; what it measured in kept rounds stays in the
    result. `on_round` hears the number of each kept round (for progress messages).
    """
    results: dict[str, dict[Any, list]] = {v: {c: [] for c in cells} for v in variants}
    spent: dict[str, dict[Any, float]] = {v: {c: 0.0 for c in cells} for v in variants}
    live = list(variants)
    kept = 0
    for _ in range(max_rounds):
        if not live or (kept >= repeats and _enough(live, cells, spent, min_time)):
            break
        if meter is not None:
            meter.start()
        measured = []
        for cell in cells:
            for variant in rotated(live, kept):
                if variant not in live:
                    continue
                try:
                    measured.append((variant, cell, step(variant, cell)))
                except Exception as exc:  # noqa: BLE001 - one broken variant must not stop the others
                    live.remove(variant)
                    if on_error is not None:
                        on_error(variant, exc)
        if meter is not None and not meter.finish():
            continue
        for variant, cell, measurement in measured:
            results[variant][cell].append(measurement)
            spent[variant][cell] += elapsed(measurement)
        kept += 1
        if on_round is not None:
            on_round(kept)
    return results


def _enough(live: Sequence[str], cells: Sequence[Any], spent: dict, min_time: float) -> bool:
    return all(spent[v][c] >= min_time for v in live for c in cells)


class Stopwatch:
    """Times one call; on CUDA it synchronises before starting and before stopping the clock."""

    def __init__(self, sync: Callable[[], None] | None = None):
        self._sync = sync or (lambda: None)

    def time(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        self._sync()
        start = time.perf_counter()
        out = fn()
        self._sync()
        return time.perf_counter() - start, out
