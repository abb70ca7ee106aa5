import numpy as np
import pytest

from deployft.bench.timing import Stopwatch, interleave, percentile, rotated, summarize


@pytest.mark.parametrize("q", [0, 10, 50, 90, 99, 100])
def test_percentile_matches_numpy(q):
    samples = list(np.random.default_rng(0).exponential(size=37))
    assert percentile(samples, q) == pytest.approx(float(np.percentile(samples, q)))


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_percentiles_are_ordered():
    stats = summarize([0.5, 0.1, 0.3, 0.9, 0.2, 0.25, 3.0])
    assert stats["min"] <= stats["p50"] <= stats["p90"] <= stats["p99"] <= stats["max"]
    assert stats["n"] == 7 and stats["p50"] == 0.3


def test_rotation_gives_every_variant_every_place():
    names = ["a", "b", "c"]
    firsts = [rotated(names, i)[0] for i in range(3)]
    assert sorted(firsts) == names
    assert rotated([], 4) == []


def test_interleave_runs_round_by_round_in_rotating_order():
    calls = []
    result = interleave(["a", "b"], ["x", "y"], lambda v, c: calls.append((v, c)) or 1.0, repeats=2)
    assert calls == [("a", "x"), ("b", "x"), ("a", "y"), ("b", "y"),
                     ("b", "x"), ("a", "x"), ("b", "y"), ("a", "y")]
    assert result == {"a": {"x": [1.0, 1.0], "y": [1.0, 1.0]}, "b": {"x": [1.0, 1.0], "y": [1.0, 1.0]}}


def test_a_failing_variant_is_dropped_and_the_others_go_on():
    errors = {}

    def step(variant, cell):
        if variant == "bad" and cell == "y":
            raise RuntimeError("broken kernel")
        return 0.5

    result = interleave(["good", "bad"], ["x", "y"], step, repeats=3, on_error=lambda v, e: errors.setdefault(v, e))
    assert str(errors["bad"]) == "broken kernel"
    assert result["good"] == {"x": [0.5] * 3, "y": [0.5] * 3}
    assert result["bad"] == {"x": [0.5], "y": []}


def test_min_time_adds_rounds_until_each_cell_has_run_long_enough():
    result = interleave(["a"], ["x"], lambda v, c: 0.25, repeats=2, min_time=1.0)
    assert len(result["a"]["x"]) == 4


def test_stopwatch_synchronises_around_the_call():
    events = []
    watch = Stopwatch(sync=lambda: events.append("sync"))
    seconds, out = watch.time(lambda: events.append("call") or 42)
    assert events == ["sync", "call", "sync"] and out == 42 and seconds >= 0
