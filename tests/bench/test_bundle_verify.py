"""benchmarks/bundle_verify.py on a tiny bundle: every timed round (checks, loads and verify) is judged; a noisy
round is thrown away and repeated, and the result files record the rounds kept and rejected, the threshold, and a
warning when rounds were kept under load. Real loads, scripted machine readings."""

from __future__ import annotations

import itertools
import json

import pytest
from noisy_rounds import script_noise


@pytest.fixture(scope="module")
def script(benchmark_script):
    return benchmark_script("bundle_verify")


@pytest.fixture
def numbered(script, monkeypatch):
    """Every timing runs its call for real but reports the call's number as its wall time."""
    counter, real = itertools.count(), script._timed
    monkeypatch.setattr(script, "_timed", lambda call: (float(next(counter)), real(call)[1]))


def _written(script, result: dict, output) -> tuple[dict, str]:
    result.update(machine={"cpus": 2, "load_average": (0.1, 0.1, 0.1)}, load_average_after=(0.1, 0.1, 0.1), note="")
    script.write(result, output)
    return json.loads(output.with_suffix(".json").read_text()), output.with_suffix(".md").read_text()


def test_a_noisy_round_is_thrown_away_and_repeated(script, runtime_bundle, numbered, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: i == 1)
    result = script.measure(runtime_bundle("bert"), ["model.onnx", "model_int8.onnx"], rounds=2, threads=1)
    # 5 timings a round (check and load of each file, verify): 0-4 warm the cache, 5-9 kept, 10-14 rejected
    assert [wall for wall, _ in result["verify"]["all_wall_cpu_s"]] == [9.0, 19.0]
    assert [wall for wall, _ in result["loads"][0]["check_all_wall_cpu_s"]] == [5.0, 15.0]
    quiet = result["quiet"]
    assert (quiet["rounds_kept"], quiet["rounds_rejected"], quiet["rounds_dirty"]) == (2, 1, 0)
    assert quiet["max_other_share"] == result["max_foreign"] == 0.05 and quiet["warning"] is None
    saved, text = _written(script, result, tmp_path / "results" / "bundle_verify")
    assert saved["quiet"] == quiet
    assert "Quiet rounds: 2 kept, 1 rejected and repeated" in text and "Warning" not in text


def test_a_round_kept_after_too_many_rejections_is_reported(script, runtime_bundle, numbered, monkeypatch, tmp_path):
    script_noise(monkeypatch, lambda i: True)
    result = script.measure(runtime_bundle("bert"), ["model_int8.onnx"], rounds=1, threads=1, max_foreign=0.5)
    quiet = result["quiet"]
    assert (quiet["rounds_kept"], quiet["rounds_rejected"], quiet["rounds_dirty"]) == (1, 5, 1)
    assert [wall for wall, _ in result["verify"]["all_wall_cpu_s"]] == [20.0]  # 3 timings a round: the 6th judged
    saved, text = _written(script, result, tmp_path / "results" / "bundle_verify")
    assert "more than 50% of a core" in saved["quiet"]["warning"]
    assert f"**Warning: {saved['quiet']['warning']}.**" in text
