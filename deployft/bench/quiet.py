"""Clean rounds: a timed round counts only if the rest of the machine stayed (almost) idle during it.

A round is bracketed by two readings of the machine's busy CPU time (`/proc/stat`: every core's time not
idle or waiting on I/O) and of the CPU time of our own processes (the benchmark and its workers). What the
machine spent beyond our own processes, divided by the round's wall time, is the share of a core that other
programs took. A round where that share exceeds `max_share` is rejected and repeated, up to `max_rejected`
times in a row; after that the round is kept and counted as dirty, so a machine that never goes quiet still
finishes, and the report says how many of its rounds were measured under load.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

__all__ = ["RoundMeter", "machine_busy_s", "process_cpu_s"]

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine_busy_s(stat: str = "/proc/stat") -> float | None:
    """Seconds of CPU time all cores spent busy since boot, or None where /proc/stat cannot be read."""
    try:
        with open(stat, encoding="ascii") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return (sum(values) - values[3] - values[4]) / _TICKS


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 for a process that has gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return 0.0
    after_name = text.rsplit(")", 1)[1].split()  # the name may hold spaces; fields resume after its ")"
    return (int(after_name[11]) + int(after_name[12])) / _TICKS


@dataclass
class RoundMeter:
    """Judges each round by the CPU other programs used during it."""

    own_pids: Callable[[], Iterable[int]] = lambda: ()
    """Our processes besides this one (bench workers), asked at every reading."""
    max_share: float = 0.05
    """Largest share of one core others may use during a clean round (5 %)."""
    max_rejected: int = 5
    """Rejections in a row after which a round is kept anyway (and counted as dirty)."""
    rejected: int = 0
    """Rounds thrown away and repeated."""
    dirty: int = 0
    """Rounds kept although others were busy (after `max_rejected` rejections in a row)."""
    kept: int = 0
    """Rounds kept."""
    shares: list[float] = field(default_factory=list)
    """Others' share of a core in every round measured, kept or not."""
    _streak: int = 0
    _start: tuple[float, float | None, float] | None = None

    @property
    def available(self) -> bool:
        return machine_busy_s() is not None

    def _reading(self) -> tuple[float, float | None, float]:
        own = process_cpu_s(os.getpid()) + sum(process_cpu_s(p) for p in self.own_pids())
        return time.perf_counter(), machine_busy_s(), own

    def start(self) -> None:
        """Call right before a round."""
        self._start = self._reading()

    def finish(self) -> bool:
        """Call right after the round; True when it is kept (clean, or dirty after too many rejections)."""
        if self._start is None:
            raise RuntimeError("RoundMeter.finish() without start()")
        (wall0, busy0, own0), (wall1, busy1, own1) = self._start, self._reading()
        self._start = None
        if busy0 is None or busy1 is None:  # no /proc/stat: every round is kept, none judged
            self.kept += 1
            return True
        share = max(0.0, (busy1 - busy0) - (own1 - own0)) / max(wall1 - wall0, 1e-9)
        self.shares.append(share)
        if share <= self.max_share:
            self._streak = 0
            self.kept += 1
            return True
        if self._streak < self.max_rejected:
            self._streak += 1
            self.rejected += 1
            return False
        self._streak = 0
        self.kept += 1
        self.dirty += 1
        return True

    def summary(self) -> dict[str, float | int | None]:
        """What a report records: rounds kept, rejected and dirty, the threshold, and the worst share kept."""
        return {"rounds_kept": self.kept, "rounds_rejected": self.rejected, "rounds_dirty": self.dirty,
                "max_other_share": self.max_share, "judged": bool(self.shares),
                "median_other_share": sorted(self.shares)[len(self.shares) // 2] if self.shares else None}
