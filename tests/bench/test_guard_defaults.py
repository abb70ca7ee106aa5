"""benchmarks/guard_defaults.py: what the rule allows, computed, and the recorded export as Markdown."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def guard(benchmark_script):
    return benchmark_script("guard_defaults")


def test_decision_table_counts_the_flips_each_budget_passes(guard):
    rows = {(r["rows"], r["budget"]): r for r in guard.decision_table()}
    assert rows[(300, 1.5)]["max_flips"] == 0 and rows[(600, 1.5)]["max_flips"] == 3
    assert rows[(2000, 1.5)]["max_flips"] == 20 and rows[(2000, 3.0)]["max_flips"] == 47
    assert rows[(300, 3.0)]["rows_needed"] == 99 and rows[(300, 1.5)]["rows_needed"] == 199
    assert guard.max_flips(10, 1.0) == -1  # a file that flips nothing still has a bound over 1 % on 10 rows


def _record(reached: bool) -> dict:
    check = {"rows": 2000, "flips": 17, "agreement": 0.9915, "agreement_lower_95": 0.9873, "min_agreement": 0.97,
             "passed": True}
    return {"command": "python benchmarks/guard_defaults.py --run R", "date": "d", "machine": "m", "run": "R",
            "decision_table": guard_table(),
            "export": {"model_file": "model_quantized.onnx", "remedy": "per-channel + activations smoothed",
                       "accuracy_budget": {"max_drop": 3.0, "origin": "the classify default"},
                       "guard": {"rows": 2000, "rows_source": "eval", "rule": "pass when ..."},
                       "files": {"model_quantized.onnx": {"precision": "int8", "nodes": 200, "attention_ops": {},
                                                          "guard": check, "accuracy": 0.78, "accuracy_pytorch": 0.79}},
                       "attempts": [{"remedy": "fused-qattention; per-channel + activations smoothed", "drop": 1.27,
                                     "guard": check}],
                       "candidates": [],
                       "selection": {"agreement_goal": 0.99, "agreement_goal_reached": reached}}}


def guard_table() -> list[dict]:
    return [{"rows": 300, "budget": 3.0, "max_flips": 3, "max_flip_share": 0.01, "rows_needed": 99}]


@pytest.mark.parametrize("reached, outcome", [(True, "0.99, reached."),
                                              (False, "0.99, not reached; the first rung within budget kept.")])
def test_markdown_names_the_budget_the_goal_and_each_attempt(guard, reached, outcome):
    text = guard.markdown(_record(reached))
    assert "Budget: 3 (the classify default)." in text
    assert f"Agreement goal (--min-agreement): {outcome}" in text
    assert ("- fused-qattention; per-channel + activations smoothed: 17 of 2000 flipped (99.15% agree), upper bound "
            "1.27 % -> pass") in text
