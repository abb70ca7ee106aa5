"""Clean rounds: the meter's arithmetic on fake readings, and interleave repeating rejected rounds."""

from __future__ import annotations

import os
import time

import pytest

from deployft.bench import quiet
from deployft.bench.quiet import RoundMeter, machine_busy_s, process_cpu_s
from deployft.bench.timing import interleave


def _fake_readings(monkeypatch, readings):
    """Each RoundMeter reading pops (wall, machine busy, own cpu) from `readings`."""
    it = iter(readings)
    monkeypatch.setattr(RoundMeter, "_reading", lambda self: next(it))


def test_a_round_where_others_used_the_cpu_is_rejected(monkeypatch):
    # wall 1 s; machine busy 1.30 s of which our own 1.00 s: others took 30 % of a core
    _fake_readings(monkeypatch, [(0.0, 10.0, 5.0), (1.0, 11.3, 6.0), (1.0, 11.3, 6.0), (2.0, 12.32, 7.0)])
    meter = RoundMeter(max_share=0.05)
    meter.start()
    assert meter.finish() is False
    meter.start()
    assert meter.finish() is True  # others took 2 %
    assert (meter.kept, meter.rejected, meter.dirty) == (1, 1, 0)
    assert meter.shares == pytest.approx([0.30, 0.02])


def test_after_too_many_rejections_in_a_row_the_round_is_kept_as_dirty(monkeypatch):
    busy = [(float(i), 2.0 * i, 0.0) for i in range(8)]  # others always use 2 cores
    _fake_readings(monkeypatch, busy)
    meter = RoundMeter(max_rejected=2)
    verdicts = []
    for _ in range(3):
        meter.start()
        verdicts.append(meter.finish())
    assert verdicts == [False, False, True]
    assert meter.summary()["rounds_dirty"] == 1 and meter.summary()["rounds_rejected"] == 2


def test_without_proc_stat_every_round_is_kept_unjudged(monkeypatch):
    _fake_readings(monkeypatch, [(0.0, None, 0.0), (1.0, None, 0.0)])
    meter = RoundMeter()
    meter.start()
    assert meter.finish() is True
    assert meter.summary()["judged"] is False


def test_interleave_repeats_rejected_rounds_and_keeps_only_clean_ones():
    class Scripted(RoundMeter):
        def __init__(self, verdicts):
            super().__init__()
            self.verdicts = iter(verdicts)

        def start(self):
            pass

        def finish(self):
            return next(self.verdicts)

    values = iter(range(100))
    result = interleave(["a"], ["x"], lambda v, c: next(values), repeats=2, meter=Scripted([False, True, False, True]))
    assert result["a"]["x"] == [1, 3]  # the measurements of rounds 0 and 2 were thrown away


@pytest.mark.skipif(machine_busy_s() is None, reason="no /proc/stat on this system")
def test_real_readings_count_our_own_work():
    start_busy, start_own = machine_busy_s(), process_cpu_s(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert process_cpu_s(os.getpid()) - start_own >= 0.2
    assert machine_busy_s() - start_busy >= 0.2
    assert process_cpu_s(2**22 + 12345) == 0.0  # a pid that does not exist
    assert quiet._TICKS > 0
