"""Checkpoints of a fine-tune: the interval in every mode, a kill mid-write, what --resume and a fresh start refuse."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import sentiment_rows, write_rows

from deployft.errors import DataError, OutputExistsError, UsageError
from deployft.train import FinetuneConfig, engine, finetune
from deployft.train.checkpoints import MARKER

KILL_DURING_A_CHECKPOINT_WRITE = """
import json, os, signal, sys
import transformers
from deployft.train import FinetuneConfig, finetune

kill_at = int(sys.argv[2])
save = transformers.Trainer._save_optimizer_and_scheduler

def save_or_die(self, output_dir):  # the weights of this checkpoint are written, its optimizer state half
    if self.state.global_step == kill_at:
        with open(os.path.join(output_dir, "optimizer.pt"), "wb") as handle:
            handle.write(b"the first bytes of an optimizer state")
        os.kill(os.getpid(), signal.SIGKILL)
    return save(self, output_dir)

transformers.Trainer._save_optimizer_and_scheduler = save_or_die
finetune(FinetuneConfig(**json.loads(sys.argv[1])))
"""


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _saved_steps(monkeypatch) -> list[int]:
    import transformers

    steps: list[int] = []
    save = transformers.Trainer._save_checkpoint

    def record(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "_save_checkpoint", record)
    return steps


@pytest.mark.parametrize("schedule, expected", [
    ({"max_steps": 5, "checkpoint_steps": 2}, [2, 4, 5]),  # was: only at the end
    ({"epochs": 1, "checkpoint_steps": 2}, [2, 4, 6, 7]),  # 216 rows / 32 = 7 steps: the epoch's end saved once
    ({"max_steps": 9, "checkpoint_steps": 4}, [4, 7, 8, 9]),  # was: no save at the epoch's end under max_steps
    ({"max_steps": 14, "checkpoint_steps": 7}, [7, 14]),  # an epoch's end on the interval and at max_steps: once
])
def test_a_checkpoint_every_interval_in_every_mode(tmp_path, tiny_model, classify_csv, monkeypatch, schedule,
                                                   expected):
    steps = _saved_steps(monkeypatch)
    finetune(FinetuneConfig(model=str(tiny_model("bert")), data=str(classify_csv), output=str(tmp_path / "run"),
                            batch_size=32, max_length=32, **schedule))
    assert steps == expected


@pytest.mark.parametrize("arch, task, data, shape", [  # 7 steps an epoch: the kill at step 12 is mid-epoch 2
    ("bert", "classify", "classify_csv", {"batch_size": 32, "max_length": 32}),  # 216 training rows
    ("llama", "generate", "qa_jsonl", {"batch_size": 16, "max_length": 64}),  # 108 training rows
])
def test_kill_during_a_checkpoint_write_resumes_to_the_same_weights(request, tmp_path, tiny_model, arch, task,
                                                                   data, shape):
    import torch

    settings = {"task": task, "model": str(tiny_model(arch)), "data": str(request.getfixturevalue(data)),
                "max_steps": 21, "checkpoint_steps": 3, "lr": 2e-3, "seed": 3, **shape}
    uninterrupted = _weights(finetune(FinetuneConfig(**settings, output=str(tmp_path / "straight"))))
    killed = {**settings, "output": str(tmp_path / "run")}
    done = subprocess.run([sys.executable, "-c", KILL_DURING_A_CHECKPOINT_WRITE, json.dumps(killed), "12"],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr[-2000:]
    checkpoints = tmp_path / ".run.work" / "checkpoints"
    # saved at 3, 6, 7 (the first epoch's end), 9; two kept; 12 half-written
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-12", "checkpoint-7", "checkpoint-9"]
    assert not (checkpoints / "checkpoint-12" / MARKER).exists() and (checkpoints / "checkpoint-9" / MARKER).exists()
    at_kill = _weights(checkpoints / "checkpoint-9")
    assert not (tmp_path / "run").exists()

    run = finetune(FinetuneConfig(**killed, resume=True))  # from checkpoint-9: the half-written 12 is dropped
    resumed = _weights(run)
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 21
    assert all(torch.allclose(resumed[k], uninterrupted[k], rtol=0, atol=1e-6) for k in uninterrupted)
    assert not all(torch.allclose(at_kill[k], uninterrupted[k]) for k in uninterrupted)  # steps 10-21 did count
    assert not (tmp_path / ".run.work").exists()


@pytest.fixture
def interrupted(tmp_path, tiny_model, classify_csv, monkeypatch):
    """The settings of a run cut off right after its first checkpoint (step 2), its work folder left behind."""
    import transformers

    class PowerCut(transformers.TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            raise RuntimeError("power cut")

    build = engine.build_trainer

    def build_and_cut(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(PowerCut())
        return trainer

    settings = {"model": str(tiny_model("bert")), "data": str(classify_csv), "output": str(tmp_path / "run"),
                "max_steps": 4, "checkpoint_steps": 2, "batch_size": 32, "max_length": 32}
    with monkeypatch.context() as patch:
        patch.setattr(engine, "build_trainer", build_and_cut)
        with pytest.raises(RuntimeError, match="power cut"):
            finetune(FinetuneConfig(**settings))
    assert (tmp_path / ".run.work" / "checkpoints" / "checkpoint-2" / MARKER).is_file()
    return settings


def test_a_fresh_start_refuses_to_delete_an_interrupted_runs_checkpoints(interrupted, tmp_path):
    with pytest.raises(OutputExistsError, match=r"checkpoint-2\); pass --resume to continue it, or --overwrite"):
        finetune(FinetuneConfig(**interrupted))
    assert (tmp_path / ".run.work" / "checkpoints" / "checkpoint-2" / MARKER).is_file()
    run = finetune(FinetuneConfig(**interrupted, overwrite=True))
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 4


def test_resume_on_other_data_is_refused(interrupted, tmp_path, classify_csv):
    write_rows(classify_csv, sentiment_rows(240, seed=1))  # same path and flags, other rows
    with pytest.raises(DataError, match=r"--resume: the data in .*reviews.csv is not what the interrupted run "
                                        r"trained on .* or run without --resume and with --overwrite"):
        finetune(FinetuneConfig(**interrupted, resume=True))
    assert (tmp_path / ".run.work" / "checkpoints" / "checkpoint-2" / MARKER).is_file()
    write_rows(classify_csv, sentiment_rows(240))  # the original data back: the resume goes through
    run = finetune(FinetuneConfig(**{**interrupted, "checkpoint_steps": 1}, resume=True))  # the interval may change
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 4


def test_resume_from_another_directory_with_other_spellings_of_the_same_paths(interrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "data")  # the interrupted run was given absolute paths
    relative = {**interrupted, "data": "./reviews.csv", "model": "../model-bert", "output": "../run"}
    run = finetune(FinetuneConfig(**relative, resume=True))
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 4


@pytest.mark.parametrize("spelled", ["as given", "absolute"])
def test_a_run_interrupted_before_the_distinct_row_split_is_named_as_such(interrupted, tmp_path, spelled):
    """A state.json from before: no `data_split`, a fingerprint hashed without the split, and (before --resume
    compared resolved paths) the data spelled as given; either way the message names the version, not the data."""
    state_file = tmp_path / ".run.work" / "state.json"
    state = json.loads(state_file.read_text())
    state.pop("data_split", None)  # absent from the state of a run started before
    state["data_fingerprint"] = "0" * 64
    if spelled == "as given":
        state["settings"]["data"] = "data/reviews.csv"
    state_file.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"interrupted run in .*\.run\.work predates deployft's distinct-row eval "
                                         r"split .* without --resume and with --overwrite .* the deployft version"):
        finetune(FinetuneConfig(**interrupted, resume=True))


def test_a_run_interrupted_under_the_earlier_split_is_named_as_such(interrupted, tmp_path):
    """A run started with the distinct-row split would resume on other rows: its state names that split and its
    fingerprint hashed it."""
    state_file = tmp_path / ".run.work" / "state.json"
    state = json.loads(state_file.read_text())
    state.update(data_split="distinct-rows", data_fingerprint="0" * 64)
    state_file.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"held out its eval rows by the 'distinct-rows' split of an earlier "
                                         r"deployft, this version's is 'every-class', so resuming would train on "
                                         r"other rows; run again without --resume and with --overwrite"):
        finetune(FinetuneConfig(**interrupted, resume=True))


def test_resume_compares_the_settings_training_resolved(interrupted, tmp_path):
    """`--epochs 1` beside `--max-steps`, a default given explicitly and a LoRA shape without --lora change nothing
    trained: the resume goes through (they were refused as "these differ: epochs, label_column, ...")."""
    same = {**interrupted, "epochs": 1, "text_column": "text", "label_column": "label", "lora_r": 4}
    run = finetune(FinetuneConfig(**same, resume=True))
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 4


def test_resume_on_other_settings_shows_each_change_old_to_new(interrupted, tmp_path):
    changed = {**interrupted, "lr": 1e-3, "max_steps": None, "label_column": "label"}
    with pytest.raises(UsageError, match=r"these differ: epochs \(no effect\) -> 3\.0, lr 5e-05 -> 0\.001, "
                                         r"max_steps 4 -> \(not set\); repeat its flags or run without --resume$"):
        finetune(FinetuneConfig(**changed, resume=True))
    assert (tmp_path / ".run.work" / "checkpoints" / "checkpoint-2" / MARKER).is_file()


def test_other_flags_are_refused_before_the_model_and_data_load(interrupted, monkeypatch):
    """Only the settings training resolves (model, data, max length, columns) wait for the load; a changed --lr or
    --batch-size is refused at once, and the same flags get past the early check."""
    from deployft.train import engine

    def loaded(*args, **kwargs):
        raise AssertionError("the model and data were loaded")

    monkeypatch.setattr(engine, "prepare", loaded)
    with pytest.raises(UsageError, match=r"these differ: batch_size 32 -> 4, lr 5e-05 -> 0\.001; repeat its flags"):
        finetune(FinetuneConfig(**{**interrupted, "lr": 1e-3, "batch_size": 4}, resume=True))
    with pytest.raises(AssertionError, match="loaded"):  # the same known settings: on to the load
        finetune(FinetuneConfig(**{**interrupted, "epochs": 1, "text_column": "text"}, resume=True))


def test_resolved_settings_fill_the_defaults_the_model_and_data_decide(tmp_path, tiny_model, classify_csv):
    from deployft.tasks import get_task
    from deployft.train.runner import _settings

    given = {"model": str(tiny_model("bert")), "data": str(classify_csv), "output": str(tmp_path / "run")}
    explicit = {**given, "max_length": 64, "text_column": "text", "label_column": "label"}  # the tiny defaults
    task = get_task("classify")
    resolved = [_settings(config, engine.prepare(config, task))
                for config in (FinetuneConfig(**given), FinetuneConfig(**explicit))]
    assert resolved[0] == resolved[1]
    assert resolved[0]["max_length"] == 64 and resolved[0]["columns"] == {"text": "text", "label": "label"}
    assert resolved[0]["epochs"] == 3.0 and "lora_r" not in resolved[0] and "text_column" not in resolved[0]


def test_a_run_started_before_resolved_settings_is_compared_on_its_flags(interrupted, tmp_path):
    from deployft.train.runner import _flags

    state_file = tmp_path / ".run.work" / "state.json"
    state = json.loads(state_file.read_text())
    state["settings"] = _flags(FinetuneConfig(**interrupted))  # what state.json recorded before
    state_file.write_text(json.dumps(state))
    with pytest.raises(UsageError, match=r"these differ: epochs 3\.0 -> 1; repeat its flags"):
        finetune(FinetuneConfig(**interrupted, epochs=1, resume=True))
    run = finetune(FinetuneConfig(**interrupted, resume=True))
    assert json.loads((run / "deployft.json").read_text())["training"]["steps"] == 4
