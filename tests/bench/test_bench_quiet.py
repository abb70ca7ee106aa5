"""Clean rounds: the meter's arithmetic on fake readings, interleave and kept_rounds repeating rejected rounds, and
the line a report writes about them."""

from __future__ import annotations

import os
import subprocess
import sys
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
    assert meter.summary()["worst_kept_other_share"] == pytest.approx(0.02)  # the rejected 30 % is not kept


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
    assert meter.summary()["worst_kept_other_share"] == pytest.approx(2.0)  # the dirty round is a kept one


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
    ours = os.times()  # the same clock read by the kernel's own call: /proc's ticks must be converted right
    assert process_cpu_s(os.getpid()) == pytest.approx(ours.user + ours.system, abs=0.05)


_BUSY_CHILD = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end:\n    pass\n"


def _exited(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie: exited, not yet reaped


@pytest.mark.skipif(machine_busy_s() is None, reason="no /proc/stat on this system")
@pytest.mark.parametrize("reaped", [True, False])
def test_a_busy_worker_that_exits_mid_round_stays_our_own_cpu(reaped):
    """A worker that burns CPU and exits during a round (reaped or still a zombie when the round ends): its time
    is ours, not "others'" (it used to read 0 once gone, taking the machine's busy time with it)."""
    child = subprocess.Popen([sys.executable, "-c", _BUSY_CHILD])
    meter = RoundMeter(own_pids=lambda: [child.pid])
    before = process_cpu_s(child.pid)  # its start-up, before the round
    meter.start()
    if reaped:
        child.wait()
    while not reaped and not _exited(child.pid):
        time.sleep(0.01)
    own = meter._reading()[2] - meter._start[2]
    child.wait()
    assert own >= 0.5 - before - 0.05  # the child's CPU during the round, whether or not it was reaped


def test_a_gone_pid_that_is_not_our_child_keeps_its_last_reading(monkeypatch):
    """Its time never reaches our children's time, so it must not drop to 0 (others would get it)."""
    me = os.getpid()
    readings = {me: [(1.0, 0.0, 1), (1.0, 0.0, 1)], 4242: [(7.0, 0.0, 1), None]}
    monkeypatch.setattr(quiet, "_cpu_times", lambda pid: readings[pid].pop(0))
    monkeypatch.setattr(quiet, "machine_busy_s", lambda: 100.0)
    meter = RoundMeter(own_pids=lambda: [4242])
    assert meter._reading()[2] == meter._reading()[2] == 8.0


def test_kept_rounds_repeats_a_rejected_round_with_the_same_index(monkeypatch):
    # others took 30 % of a core in the second round measured, 2 % in the rest
    _fake_readings(monkeypatch, [(0.0, 0.0, 0.0), (1.0, 0.02, 0.0), (1.0, 0.02, 0.0), (2.0, 0.32, 0.0),
                                 (2.0, 0.32, 0.0), (3.0, 0.34, 0.0)])
    calls = []
    meter = RoundMeter()
    assert quiet.kept_rounds(meter, 2, lambda k: calls.append(k) or len(calls)) == [1, 3]
    assert calls == [0, 1, 1] and (meter.kept, meter.rejected) == (2, 1)


def test_the_report_line_warns_about_dirty_and_unjudged_rounds(monkeypatch):
    _fake_readings(monkeypatch, [(float(i), 2.0 * i, 0.0) for i in range(4)])  # others always use 2 cores
    meter = RoundMeter(max_rejected=1)
    quiet.kept_rounds(meter, 1, lambda k: None)
    summary = meter.summary()
    assert (summary["rounds_kept"], summary["rounds_rejected"], summary["max_rejected_in_a_row"]) == (1, 1, 1)
    assert summary["warning"] == quiet.noisy_warning(summary) and "1 of the 1 kept rounds" in summary["warning"]
    line = quiet.rounds_note(summary, "step")
    assert line.startswith("Quiet steps: 1 kept, 1 rejected and repeated (a step is rejected when other programs "
                           "used more than 5% of a core during it, at most 1 times in a row)")
    assert line.endswith(f"**Warning: {quiet.noisy_warning(summary, 'step')}.**") and "1 of the 1 kept steps" in line
    _fake_readings(monkeypatch, [(0.0, None, 0.0), (1.0, None, 0.0)])
    unjudged = RoundMeter()
    quiet.kept_rounds(unjudged, 1, lambda k: None)
    assert "not judged" in unjudged.summary()["warning"]
    clean = {**summary, "rounds_dirty": 0, "judged": True}
    assert quiet.noisy_warning(clean) is None and "Warning" not in quiet.rounds_note(clean)


def test_the_summary_names_its_rounds_as_the_report_does(monkeypatch):
    """checkpoint_cost's JSON said "kept rounds" where its Markdown said "kept steps": the word is the caller's."""
    _fake_readings(monkeypatch, [(float(i), 2.0 * i, 0.0) for i in range(4)])  # others always use 2 cores
    meter = RoundMeter(max_rejected=1)
    quiet.kept_rounds(meter, 1, lambda k: None)
    summary = meter.summary("checkpoint write")
    assert summary["warning"] == quiet.noisy_warning(summary, "checkpoint write")
    assert "1 of the 1 kept checkpoint writes were measured" in summary["warning"]
    assert "rounds" not in summary["warning"]
    assert f"**Warning: {summary['warning']}.**" in quiet.rounds_note(summary, "checkpoint write")
    assert "1 of the 1 kept rounds" in meter.summary()["warning"]  # the default word is unchanged


def test_kept_rounds_hands_every_round_and_its_verdict_to_on_judged_after_the_bracket(monkeypatch):
    _fake_readings(monkeypatch, [(0.0, 0.0, 0.0), (1.0, 0.3, 0.0), (1.0, 0.3, 0.0), (2.0, 0.32, 0.0)])
    meter, seen = RoundMeter(), []

    def judged(result, kept):
        assert meter._start is None  # the meter has finished: what on_judged does is not timed (a pause, a log)
        seen.append((result, kept))

    assert quiet.kept_rounds(meter, 1, lambda k: f"try {len(seen)}", on_judged=judged) == ["try 1"]
    assert seen == [("try 0", False), ("try 1", True)]


def test_the_report_line_can_leave_the_warning_to_a_list_of_warnings_and_reads_older_summaries():
    older = {"rounds_kept": 10, "rounds_rejected": 1, "rounds_dirty": 1, "max_other_share": 0.05, "judged": True,
             "median_other_share": 0.02}  # a report.json recorded before the bound and the worst share were
    line = quiet.rounds_note(older, with_warning=False)
    assert line == ("Quiet rounds: 10 kept, 1 rejected and repeated (a round is rejected when other programs used "
                    "more than 5% of a core during it).")
    assert "each kept after repeated rejections" in quiet.noisy_warning(older)
    assert quiet.rounds_note(older).startswith(line + " **Warning: 1 of the 10 kept rounds")
