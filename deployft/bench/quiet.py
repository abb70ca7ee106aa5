"""Clean rounds: a timed round counts only if the rest of the machine stayed (almost) idle during it.

A round is bracketed by two readings of the machine's busy CPU time (`/proc/stat`: every core's time not
idle or waiting on I/O) and of the CPU time of our own processes (the benchmark, its workers, and the children it
has reaped, so a worker that exits mid-round still counts as ours). What the machine spent beyond our own
processes, divided by the round's wall time, is the share of a core that other programs took. A round where that
share exceeds `max_share` is rejected and repeated, up to `max_rejected` times in a row; after that the round is
kept and counted as dirty, so a machine that never goes quiet still finishes, and the report says how many of its
rounds were measured under load.

`kept_rounds` is the loop a timed script runs around its rounds; `rounds_note` is the line its report writes about
them, with `noisy_warning`, the sentence a report must carry when some of its figures come from dirty or unjudged
rounds.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["RoundMeter", "kept_rounds", "machine_busy_s", "noisy_warning", "process_cpu_s", "rounds_note"]

T = TypeVar("T")

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
    times = _cpu_times(pid)
    return 0.0 if times is None else times[0]


def _cpu_times(pid: int) -> tuple[float, float, int] | None:
    """(own CPU s, CPU s of its children it has reaped, parent pid) from /proc/PID/stat; None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    after_name = text.rsplit(")", 1)[1].split()  # the name may hold spaces; fields resume after its ")"
    own = (int(after_name[11]) + int(after_name[12])) / _TICKS  # utime stime
    reaped = (int(after_name[13]) + int(after_name[14])) / _TICKS  # cutime cstime
    return own, reaped, int(after_name[1])


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
    kept_shares: list[float] = field(default_factory=list)
    """Others' share of a core in every kept round (dirty ones included)."""
    _streak: int = 0
    _start: tuple[float, float | None, float] | None = None
    _last: dict[int, float] = field(default_factory=dict)
    """The last CPU seconds read of each own pid that is not our child (see `_reading`)."""

    @property
    def available(self) -> bool:
        return machine_busy_s() is not None

    def _reading(self) -> tuple[float, float | None, float]:
        """(wall, machine busy, our own CPU). A worker that exits mid-round must not hand its CPU time to "others":
        our own children's time moves, once reaped, into this process's children's time, which is counted; a pid
        that is not our child and has gone keeps its last reading."""
        me = os.getpid()
        own_cpu, reaped, _ = _cpu_times(me) or (0.0, 0.0, 0)
        own = own_cpu + reaped
        for pid in self.own_pids():
            times = _cpu_times(pid)
            if times is None:
                own += self._last.get(pid, 0.0)
                continue
            own += times[0]
            if times[2] != me:
                self._last[pid] = times[0]
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
        if share > self.max_share and self._streak < self.max_rejected:
            self._streak += 1
            self.rejected += 1
            return False
        if share > self.max_share:
            self.dirty += 1
        self._streak = 0
        self.kept += 1
        self.kept_shares.append(share)
        return True

    def summary(self, what: str = "round") -> dict[str, float | int | str | None]:
        """What a report records: rounds kept, rejected and dirty, the threshold and the bound on rejections, and
        the largest share of a core others used during a kept round (None where no round was judged), and
        `noisy_warning`'s sentence (None when every kept round was judged and clean). `what` names a round in that
        sentence, as the report's `rounds_note` names it, so the JSON and the Markdown say the same ("step")."""
        summary = {"rounds_kept": self.kept, "rounds_rejected": self.rejected, "rounds_dirty": self.dirty,
                   "max_other_share": self.max_share, "max_rejected_in_a_row": self.max_rejected,
                   "judged": bool(self.shares), "worst_kept_other_share": max(self.kept_shares, default=None)}
        return {**summary, "warning": noisy_warning(summary, what)}


def kept_rounds(meter: RoundMeter, needed: int, run_round: Callable[[int], T],
                on_judged: Callable[[T, bool], None] | None = None) -> list[T]:
    """Run `run_round(k)` between `meter.start()` and `meter.finish()` until `needed` rounds were kept.

    `k` is the number of rounds kept so far (the same `k` again when a round is repeated, so an interleaving
    order derived from it repeats too). Returns what the kept rounds returned, in order; a rejected round's
    result is dropped, after `on_judged(result, kept)` has seen it: called after every round, outside the
    meter's bracket (to log a round only once it is judged, keep the rejected ones, pause before a repeat).
    The loop ends: the meter keeps a round after `max_rejected` rejections in a row.
    """
    kept: list[T] = []
    while len(kept) < needed:
        meter.start()
        measured = run_round(len(kept))
        verdict = meter.finish()
        if on_judged is not None:
            on_judged(measured, verdict)
        if verdict:
            kept.append(measured)
    return kept


def noisy_warning(summary: dict, what: str = "round") -> str | None:
    """The sentence a report must carry when a kept round was dirty or no round could be judged; None when every
    round was judged and clean. `summary` is `RoundMeter.summary()` (one recorded before the bound on rejections
    was, too); `what` names a round, as in `rounds_note`."""
    if summary["rounds_kept"] and not summary["judged"]:
        return (f"the {what}s were not judged (no /proc/stat here): other programs may have used the CPU during "
                "any of them")
    if summary["rounds_dirty"]:
        bound = summary.get("max_rejected_in_a_row")
        after = f"after {bound} rejections in a row" if bound is not None else "after repeated rejections"
        return (f"{summary['rounds_dirty']} of the {summary['rounds_kept']} kept {what}s were measured while other "
                f"programs used more than {summary['max_other_share']:.0%} of a core (each kept {after}): these "
                "figures carry their load; rerun on a quiet machine")
    return None


def rounds_note(summary: dict, what: str = "round", with_warning: bool = True) -> str:
    """One line for a report: rounds kept and rejected, the threshold and the bound, and `noisy_warning` in bold
    when there is one (unless `with_warning` is False: a report that lists its warnings apart). `summary` is
    `RoundMeter.summary()`, or one recorded before the bound and the worst share were; `what` names a round
    ("step": "Quiet steps: ...")."""
    bound = summary.get("max_rejected_in_a_row")
    text = (f"Quiet {what}s: {summary['rounds_kept']} kept, {summary['rounds_rejected']} rejected and repeated (a "
            f"{what} is rejected when other programs used more than {summary['max_other_share']:.0%} of a core "
            "during it" + (f", at most {bound} times in a row)" if bound is not None else ")"))
    if summary.get("worst_kept_other_share") is not None:
        text += f"; others used at most {summary['worst_kept_other_share']:.1%} of a core during a kept {what}"
    warning = noisy_warning(summary, what) if with_warning else None
    return text + "." + (f" **Warning: {warning}.**" if warning else "")
