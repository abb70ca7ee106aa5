"""Worker processes: one variant each, driven over pipes; errors come back as one line."""

import numpy as np
import pytest

from deployft.bench.worker import WorkerFailed, WorkerHandle


def _handle(tmp_path, run, task, variant="pytorch", bundle=None):
    ids = np.arange(5, 5 + 2 * 12).reshape(2, 12) % 200
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, cell_2x12=ids, prompt_6=np.arange(5, 11), eval_ids=ids, eval_mask=np.ones_like(ids),
             eval_labels=np.array([0, 1]), eval_targets=np.ones_like(ids), agree_ids=ids[:1, :6],
             agree_mask=np.ones_like(ids[:1, :6]))
    spec = {"variant": variant, "run": str(run), "bundle": str(bundle or tmp_path), "task": task,
            "manifests": {"run": {"task": task}, "bundle": {"variants": {}}}, "device": "cpu", "threads": 1,
            "inputs": str(inputs)}
    return WorkerHandle(spec, tmp_path / f"{variant}.json", tmp_path / f"{variant}.log", timeout=300)


def test_classifier_worker_loads_times_scores_and_reports_memory(tiny_model, tmp_path):
    handle = _handle(tmp_path, tiny_model("bert"), "classify", "pytorch-int8")
    try:
        load = handle.call("load")
        assert load["cold_start_s"] >= load["load_s"] > 0 and load["size_bytes"] > 0
        times = [handle.call("classify", cell="cell_2x12", warmup=1)["seconds"] for _ in range(3)]
        assert all(t > 0 for t in times)
        calls = handle.call("classify", cell="cell_2x12", warmup=1, hot_calls=3)
        assert calls["seconds"] > 0 and len(calls["hot"]) == 3 and all(t > 0 for t in calls["hot"])
        assert handle.call("classify", cell="cell_2x12", warmup=1)["hot"] == []
        accuracy = handle.call("accuracy")
        assert accuracy["samples"] == len(accuracy["predictions"]) == 2
        assert accuracy["accuracy"] == pytest.approx(float(np.mean(np.array(accuracy["predictions"]) == [0, 1])))
        assert handle.call("stats")["peak_rss_bytes"] > 10_000_000
        with pytest.raises(WorkerFailed, match="cell_9x9"):
            handle.call("classify", cell="cell_9x9", warmup=0)
        assert handle.call("classify", cell="cell_2x12", warmup=0)["seconds"] > 0  # an error does not kill it
    finally:
        handle.close()


def test_generator_worker_times_every_token_and_scores_perplexity(tiny_model, tmp_path):
    handle = _handle(tmp_path, tiny_model("llama"), "generate")
    try:
        load = handle.call("load")
        assert 0 < load["weight_bytes_per_token"] <= load["size_bytes"]
        reply = handle.call("generate", cell="prompt_6", new_tokens=5, warmup=1)
        assert reply["tokens"] == 5 and len(reply["times"]) == 5
        assert reply["times"] == sorted(reply["times"]) and reply["times"][0] > 0
        metrics = handle.call("accuracy")
        assert metrics["perplexity"] > 1 and len(metrics["continuations"][0]) == 16
    finally:
        handle.close()


def test_a_variant_that_cannot_load_fails_with_one_line(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    handle = _handle(tmp_path, tmp_path / "not-a-model", "classify")
    try:
        with pytest.raises(WorkerFailed) as info:
            handle.call("load")
        assert "\n" not in str(info.value) and str(info.value)
    finally:
        handle.close()


def test_a_worker_that_dies_is_reported_with_its_exit_code(tiny_model, tmp_path):
    handle = _handle(tmp_path, tiny_model("bert"), "classify")
    handle.process.kill()
    handle.process.wait()
    with pytest.raises(WorkerFailed, match="exited with code"):
        handle.call("load")
    handle.close()
