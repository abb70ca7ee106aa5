"""benchmarks/serve_engine_join.py on a tiny fused generator: both engines run the workload, joins are counted."""

from __future__ import annotations

import pytest

from deployft.runtime import Predictor


@pytest.fixture(scope="module")
def join_bench(benchmark_script):
    return benchmark_script("serve_engine_join")


@pytest.fixture(scope="module")
def predictor(tiny_generate_run, tmp_path_factory):
    from deployft.exporter import ExportConfig, export

    bundle = export(ExportConfig(run=tiny_generate_run, output=tmp_path_factory.mktemp("join") / "bundle",
                                 quantize="none", validate_samples=8))
    return Predictor.load(bundle, model_file="model_optimized.onnx")


def test_both_engines_run_the_workload_and_only_one_joins_in_place(join_bench, predictor):
    # the tiny RUN's model runs on with these prompts (it ends most others within two tokens); budgets of 3 and 8
    # make rows leave at different steps, so finished slots open while others decode
    prompts = [predictor.prompt_ids(p) for p in ("where do fish live and what do they eat every day",
                                                 "what is the best way to cook rice")]
    runs = {mode: join_bench.workload(predictor, mode, prompts, 3, 9, [3, 8, 8]) for mode in join_bench.MODES}
    for run in runs.values():
        assert run["tokens"] > 9 and run["tokens_per_s"] > 0 and run["rebuilds"] >= 1
    assert runs["rebuild"]["in_place_joins"] == 0 and runs["in-place"]["in_place_joins"] > 0
    assert runs["in-place"]["rebuilds"] < runs["rebuild"]["rebuilds"]
    assert runs["in-place"]["tokens"] == runs["rebuild"]["tokens"]  # an fp32 file: the same greedy tokens
