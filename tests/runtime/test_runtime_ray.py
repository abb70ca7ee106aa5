"""`deployft predict --ray`: Ray Data predictions equal the single-process file's, and bad input is one line."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from conftest import qa_rows, sentiment_rows, write_rows
from deployft.runtime import GenerationOptions, Predictor
from deployft.runtime.files import predict_file
from ray_helpers import assert_same as _assert_same, jsonl_rows as _jsonl, parquet as _parquet, run as _run
from ray_helpers import local_ray  # noqa: F401 (a fixture)


@pytest.mark.slow
def test_ray_data_classifies_a_parquet_file_like_the_single_process_path(local_ray, runtime_bundle, tmp_path):
    bundle = runtime_bundle("bert")
    rows = [{"stars": i % 5, "text": r["text"] * (1 + i % 3)} for i, r in enumerate(sentiment_rows(300))]
    data = _parquet(tmp_path / "reviews.parquet", rows)
    result = _run("predict", bundle, "--input", data, "--output", tmp_path / "out", "--ray", "--workers", "2",
                  "--batch-size", "16", "--no-progress")
    assert result.exit_code == 0, result.output
    assert "wrote 300 prediction(s)" in result.output
    local = tmp_path / "local.jsonl"
    predict_file(Predictor.load(bundle), write_rows(tmp_path / "reviews.jsonl", rows), local, batch_size=16,
                 progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["predictions.jsonl"]
    _assert_same(_jsonl(tmp_path / "out" / "predictions.jsonl"), _jsonl(local))


@pytest.mark.slow
def test_ray_data_completes_prompts_into_parquet_like_the_single_process_path(local_ray, runtime_bundle, tmp_path):
    import pyarrow.parquet as pq

    bundle = runtime_bundle("llama")
    data = write_rows(tmp_path / "qa.jsonl", [{"prompt": r["prompt"], "answer": r["response"]}
                                              for r in qa_rows(24)])
    result = _run("predict", bundle, "--input", data, "--output", tmp_path / "out", "--ray", "--workers", "2",
                  "--batch-size", "4", "--max-new-tokens", "8", "--output-format", "parquet", "--no-progress")
    assert result.exit_code == 0, result.output
    local = tmp_path / "local.jsonl"
    predict_file(Predictor.load(bundle), data, local, batch_size=4, progress=False,
                 options=GenerationOptions(max_new_tokens=8))
    ray_rows = pq.read_table(tmp_path / "out" / "predictions.parquet").to_pylist()
    assert ray_rows == _jsonl(local)
    assert any(r["completion"] for r in ray_rows)


# texts that a reader inferring column types changes: numbers, a boolean, words read as null, an empty cell
@pytest.mark.slow
def test_ray_data_names_a_missing_column_and_writes_nothing(local_ray, runtime_bundle, tmp_path):
    data = _parquet(tmp_path / "reviews.parquet", [{"review": "fine"}, {"review": "dull"}])
    result = _run("predict", runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray",
                  "--no-progress")
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {data} has no column 'text' (columns: review); pass --column NAME")
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


@pytest.mark.slow
def test_a_worker_that_cannot_load_the_bundle_is_one_error_line(local_ray, runtime_bundle, tmp_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: --device cuda loads on the workers")
    data = _parquet(tmp_path / "reviews.parquet", sentiment_rows(8))
    result = _run("predict", runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray",
                  "--workers", "1", "--device", "cuda", "--no-progress")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]  # among Ray's own log
    assert len(errors) == 1, result.output
    assert errors[0].startswith("Error: device cuda asked for but ") and errors[0].endswith("or pass --device cpu")
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_ray_without_ray_installed_names_the_extra(runtime_bundle, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    data = write_rows(tmp_path / "reviews.jsonl", sentiment_rows(4))
    result = _run("predict", runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray")
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: ray is not installed; install it with: pip install "deployft[ray]"'
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (("--input", "in.parquet", "--output", "out", "--workers", "2"), "--workers: only used with --ray"),
    (("some text", "--ray"), "--ray predicts a file: pass --input FILE"),
    (("--input", "missing.parquet", "--output", "out", "--ray"), "input file missing.parquet not found"),
    (("--input", "in.txt", "--output", "out", "--ray"), "has extension '.txt'; with --ray pass a .parquet"),
    (("--input", "in.parquet", "--output", "out", "--ray", "--workers", "0"), "workers must be an integer >= 1"),
])
def test_ray_flags_are_checked_before_ray_starts(runtime_bundle, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.parquet").write_bytes(b"")
    (tmp_path / "in.txt").write_text("x")
    result = _run("predict", runtime_bundle("bert"), *args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_ray_is_imported_only_when_asked_for():
    import subprocess

    code = ("import sys, deployft, deployft.runtime, deployft.runtime.ray_predict, deployft.serve.ray_app, "
            "deployft.cli.predict, deployft.cli.serve; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("command, flags", [
    ("predict", ("--ray", "--workers", "--ray-address", "--output-format")),
    ("serve", ("--ray", "--replicas", "--min-replicas", "--max-replicas", "--ray-address")),
])
def test_help_lists_the_ray_flags(command, flags):
    result = _run(command, "--help")
    assert result.exit_code == 0
    assert all(flag in result.output for flag in flags)


def test_workers_check_the_signature_of_the_bundle_they_load(runtime_bundle, tmp_path):
    """The driver checks the signature before any worker starts; each worker checks what it loads itself."""
    import shutil

    from deployft.errors import BundleError
    from deployft.runtime import ray_predict
    from deployft.signing import generate_keys, load_private_key, sign_bundle

    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    private, public = generate_keys(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    other, _ = generate_keys(tmp_path / "o.pem", tmp_path / "o.pub.pem")
    sign_bundle(bundle, load_private_key(private))
    config = ray_predict.RayPredictConfig(bundle=bundle, input=write_rows(tmp_path / "in.jsonl", sentiment_rows(4)),
                                          output=tmp_path / "out", public_key=public)
    workers = {}

    class Dataset:
        def schema(self):
            return SimpleNamespace(names=["text"])

        def select_columns(self, columns):
            return self

        def map_batches(self, fn, fn_constructor_kwargs, **settings):
            workers.update(fn_constructor_kwargs)
            return self

    data = SimpleNamespace(
        DataContext=SimpleNamespace(get_current=lambda: SimpleNamespace(execution_options=SimpleNamespace())),
        read_datasource=lambda source, **settings: Dataset(), ActorPoolStrategy=lambda **sizes: None)
    ray_predict._dataset(data, config, "classify")
    # the workers get the key's bytes, not the driver's path: a worker on another node has no such file
    assert workers["public_key"] == public.read_bytes()
    public.unlink()
    assert ray_predict.BundleWorker(**workers)({"text": ["fine"]})["record"]
    sign_bundle(bundle, load_private_key(other))  # the bundle changes after the driver's check
    with pytest.raises(BundleError, match=r"does not match deployft.json and the public key \(PEM bytes\): the "):
        ray_predict.BundleWorker(**workers)


def test_an_output_folder_whose_file_is_the_input_is_refused(runtime_bundle, tmp_path):
    from deployft.errors import UsageError
    from deployft.runtime.ray_predict import RayPredictConfig

    source = write_rows(tmp_path / "out" / "predictions.jsonl", sentiment_rows(4))
    with pytest.raises(UsageError, match=r"^--output .*predictions.jsonl is the --input file .*pass another --output "
                                         "folder$"):
        RayPredictConfig(bundle=runtime_bundle("bert"), input=source, output=tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="^--output .* cannot be created: .*file is a file, not a folder"):
        RayPredictConfig(bundle=runtime_bundle("bert"), input=source, output=tmp_path / "file" / "out")
