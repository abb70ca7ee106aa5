"""benchmarks/finetune_throughput.py: every round (both trainings) is judged; a noisy round is thrown away and
repeated, and the result files record the rounds kept and rejected, the threshold, and a warning when rounds were
kept under load. The trainings are faked: only the judging and the bookkeeping are under test."""

from __future__ import annotations

import itertools
import json

import pytest
from noisy_rounds import script_noise


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("finetune_throughput")


@pytest.fixture
def trainings(script, monkeypatch):
    """Each training returns the next number as its samples/s, so a test can tell which attempt a run came from."""
    counter = itertools.count()

    def train_once(config, task, job, recipe, work):
        return {"recipe": recipe, "seconds": 1.0, "samples_per_s": float(next(counter)),
                "mean_tokens_per_example": 32.0, "threads": 1}

    monkeypatch.setattr(script, "_train_once", train_once)


def _report(runs: list[dict], quiet: dict) -> dict:
    return {"command": "python benchmarks/finetune_throughput.py", "created": "now",
            "machine": {"cpu": "x86_64", "cores": 2, "memory_gb": 8, "torch": "2", "torch_threads": 2,
                        "load_avg_1m_before": 0.1},
            "settings": {"steps": 2}, "runs": runs, "quiet": quiet, "load_avg_1m_after": 0.1,
            "summary": {"deployft_samples_per_s": 2.0, "baseline_samples_per_s": 1.0, "speedup": 2.0}}


def test_a_noisy_round_is_thrown_away_and_repeated(script, trainings, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: i == 1)  # the second round's two trainings ran while others were busy
    runs, quiet = script.measure(None, None, None, rounds=2, max_foreign=0.05, work=tmp_path)
    # attempt 1 (trainings 2 and 3) is gone; its repeat keeps round 2's order, baseline first
    assert [(r["round"], r["recipe"], r["samples_per_s"]) for r in runs] == [
        (1, "deployft", 0.0), (1, "baseline", 1.0), (2, "baseline", 4.0), (2, "deployft", 5.0)]
    assert (quiet["rounds_kept"], quiet["rounds_rejected"], quiet["rounds_dirty"]) == (2, 1, 0)
    assert quiet["max_other_share"] == 0.05 and quiet["warning"] is None
    script.write(_report(runs, quiet), tmp_path / "results")
    assert json.loads((tmp_path / "results" / "finetune_throughput.json").read_text())["quiet"] == quiet
    text = (tmp_path / "results" / "finetune_throughput.md").read_text()
    assert "Quiet rounds: 2 kept, 1 rejected and repeated" in text and "more than 5% of a core" in text
    assert "Warning" not in text


def test_a_round_kept_after_too_many_rejections_is_reported_as_noisy(script, trainings, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: True)  # others never leave the machine alone
    runs, quiet = script.measure(None, None, None, rounds=1, max_foreign=0.05, work=tmp_path)
    assert (quiet["rounds_kept"], quiet["rounds_rejected"], quiet["rounds_dirty"]) == (1, 5, 1)
    assert [r["samples_per_s"] for r in runs] == [10.0, 11.0]  # the sixth attempt, kept as dirty
    script.write(_report(runs, quiet), tmp_path / "results")
    saved = json.loads((tmp_path / "results" / "finetune_throughput.json").read_text())["quiet"]
    assert "1 of the 1 kept rounds were measured while other programs used more than 5%" in saved["warning"]
    assert f"**Warning: {saved['warning']}.**" in (tmp_path / "results" / "finetune_throughput.md").read_text()


def test_a_rejected_rounds_trainings_are_printed_marked_rejected(script, trainings, monkeypatch, tmp_path, capsys):
    script_noise(monkeypatch, lambda i: i == 0)  # the first round's two trainings ran while others were busy
    runs, _ = script.measure(None, None, None, rounds=1, max_foreign=0.05, work=tmp_path)
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(p["samples_per_s"], p.get("rejected")) for p in printed] == [(0.0, True), (1.0, True),
                                                                           (2.0, None), (3.0, None)]
    assert printed[2:] == runs and all("rejected" not in r for r in runs)  # the results hold the kept round only
