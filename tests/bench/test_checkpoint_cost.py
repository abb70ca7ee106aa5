"""benchmarks/checkpoint_cost.py on a tiny bert: every timed step and checkpoint write is judged by its own meter; a
noisy one is thrown away and training goes on until enough were kept, and the result files record the counts, the
threshold, and a warning when some were kept under load. Real training, scripted machine readings."""

from __future__ import annotations

import argparse
import json

import pytest
from noisy_rounds import script_noise


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("checkpoint_cost")


def _args(model, data, steps: int, every: int) -> argparse.Namespace:
    return argparse.Namespace(task="classify", model=str(model), data=str(data), steps=steps, every=every,
                              batch_size=8, max_samples=None, max_foreign=0.05)


def _written(script, result: dict, folder) -> tuple[dict, str]:
    result.update(date="now", load_before=0.1, load_after=0.1, machine="x86_64")
    script.write(result, "python benchmarks/checkpoint_cost.py", folder)
    return (json.loads((folder / "checkpoint_cost_classify.json").read_text()),
            (folder / "checkpoint_cost_classify.md").read_text())


def test_a_noisy_step_and_a_noisy_write_are_thrown_away(script, tiny_model, classify_csv, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: i == 0)  # the first step and the first write ran while others were busy
    result = script._measure(_args(tiny_model("bert"), classify_csv, steps=4, every=2))
    # writes at steps 2 (rejected), 4 and 6; training stops after the write at 6: 5 steps kept of 6
    assert (result["steps_trained"], result["steps"], result["checkpoints"]) == (6, 5, 2)
    assert len(result["step_seconds"]) == 5 and len(result["checkpoint_seconds"]) == 2
    steps, writes = result["quiet"]["steps"], result["quiet"]["checkpoints"]
    assert (steps["rounds_kept"], steps["rounds_rejected"], steps["rounds_dirty"]) == (5, 1, 0)
    assert (writes["rounds_kept"], writes["rounds_rejected"], writes["rounds_dirty"]) == (2, 1, 0)
    assert steps["max_other_share"] == writes["max_other_share"] == 0.05
    saved, text = _written(script, result, tmp_path / "results")
    assert saved["quiet"] == result["quiet"]
    assert "Quiet steps: 5 kept, 1 rejected and repeated" in text
    assert "Quiet checkpoint writes: 2 kept, 1 rejected and repeated" in text and "Warning" not in text


def test_steps_and_writes_kept_under_load_are_reported(script, tiny_model, classify_csv, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: True)  # others never leave the machine alone
    result = script._measure(_args(tiny_model("bert"), classify_csv, steps=1, every=1))
    assert result["steps_trained"] == 6  # 5 rejections in a row, then the sixth step and write are kept
    for judged in result["quiet"].values():
        assert (judged["rounds_kept"], judged["rounds_rejected"], judged["rounds_dirty"]) == (1, 5, 1)
    assert "1 of the 1 kept steps were measured while other programs" in result["quiet"]["steps"]["warning"]
    assert "1 of the 1 kept checkpoint writes were measured" in result["quiet"]["checkpoints"]["warning"]
    saved, text = _written(script, result, tmp_path / "results")
    # the JSON's warnings are the Markdown's, word for word (the JSON used to say "kept rounds" for both)
    for judged in saved["quiet"].values():
        assert f"**Warning: {judged['warning']}.**" in text
