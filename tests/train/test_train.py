"""finetune on tiny models: the RUN folder contract, both tasks, seeds, atomicity, --resume, DDP.

The base models themselves (encoders, decoders without a pad token, LoRA, models that cannot load) are in
test_models.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import FAST_TRAINING, qa_rows, run_manifest, sentiment_rows, sibling_names, write_rows

from deployft.errors import OutputExistsError, UsageError
from deployft.train import FinetuneConfig, finetune

def test_classify_run_folder_follows_the_contract(tiny_classify_run):
    run = tiny_classify_run
    for name in ("config.json", "model.safetensors", "tokenizer.json", "eval.json", "deployft.json"):
        assert (run / name).is_file(), name
    manifest = run_manifest(run)
    assert manifest["format_version"] == 2 and manifest["kind"] == "run" and manifest["task"] == "classify"
    assert manifest["labels"] == ["negative", "positive"] and manifest["prompt_format"] is None
    assert manifest["model_type"] == "bert" and manifest["max_length"] == 32
    assert manifest["columns"] == {"text": "text", "label": "label"}
    assert manifest["data"]["train"]["format"] == "csv" and len(manifest["data"]["train"]["sha256"]) == 64
    assert manifest["training"]["steps"] > 0 and manifest["versions"]["torch"]
    assert manifest["training"]["device"] in ("cpu", "cuda")
    assert set(manifest["metrics"]) >= {"accuracy", "macro_f1", "eval_loss"}
    assert json.loads((run / "eval.json").read_text())["accuracy"] == manifest["metrics"]["accuracy"]
    assert not list(run.parent.glob(".*"))  # no staging or work folder left behind


def test_classify_run_loads_back_and_predicts(tiny_classify_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from deployft.data.examples import load_run_examples

    model = AutoModelForSequenceClassification.from_pretrained(tiny_classify_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_classify_run)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    rows = load_run_examples(tiny_classify_run, "eval")
    with torch.no_grad():
        logits = model(**tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")).logits
    predicted = [model.config.id2label[i] for i in logits.argmax(-1).tolist()]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy >= 0.9
    assert accuracy == pytest.approx(run_manifest(tiny_classify_run)["metrics"]["accuracy"])


def test_three_labels_with_integer_names(tmp_path, tiny_model):
    rows = [{"text": r["text"], "stars": {"negative": 1, "neutral": 3, "positive": 5}[r["label"]]}
            for r in sentiment_rows(90, labels=("negative", "neutral", "positive"))]
    data = write_rows(tmp_path / "stars.jsonl", rows)
    run = finetune(FinetuneConfig(model=str(tiny_model("bert")), data=str(data), label_column="stars",
                                  output=str(tmp_path / "run"), **FAST_TRAINING))
    assert run_manifest(run)["labels"] == ["1", "3", "5"]
    assert json.loads((run / "config.json").read_text())["id2label"] == {"0": "1", "1": "3", "2": "5"}


@pytest.mark.parametrize("fixture, style", [("tiny_generate_run", "chat"), ("tiny_gpt2_generate_run", "plain")])
def test_generate_runs_load_back_and_generate(request, fixture, style):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deployft.prompts import PromptFormat, TokenizerAdapter, prompt_ids

    run = request.getfixturevalue(fixture)
    manifest = run_manifest(run)
    assert manifest["prompt_format"]["style"] == style and manifest["labels"] is None
    assert set(manifest["metrics"]) >= {"eval_loss", "perplexity"}
    assert (run / "generation_config.json").is_file()
    model, tokenizer = AutoModelForCausalLM.from_pretrained(run), AutoTokenizer.from_pretrained(run)
    ids = torch.tensor([prompt_ids("what do bees make", PromptFormat.from_manifest(manifest["prompt_format"]),
                                   TokenizerAdapter(tokenizer), manifest["max_length"])])
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] > ids.shape[1]


def test_generation_lowers_the_eval_loss(tmp_path, tiny_model, qa_jsonl):
    # qa_jsonl repeats six pairs, and the split holds copies of a pair out together: an unseen pair is not
    # learnable from five others, so the eval file here holds training pairs on purpose (memorisation is the point)
    model, evals = tiny_model("llama"), str(write_rows(tmp_path / "eval.jsonl", qa_rows(12, seed=1)))
    before = finetune(FinetuneConfig(task="generate", model=str(model), data=str(qa_jsonl), eval_data=evals,
                                     lr=1e-9, output=str(tmp_path / "before"), max_steps=1, batch_size=16,
                                     max_length=64))
    after = finetune(FinetuneConfig(task="generate", model=str(model), data=str(qa_jsonl), eval_data=evals, lr=5e-3,
                                    epochs=2, output=str(tmp_path / "after"), batch_size=16, max_length=64))
    assert run_manifest(after)["metrics"]["eval_loss"] < run_manifest(before)["metrics"]["eval_loss"] - 0.5


def test_plain_language_modelling(tmp_path, tiny_model):
    data = write_rows(tmp_path / "text.csv", [{"text": f"{q} {a}"} for q, a in
                                              ((r["prompt"], r["response"]) for r in qa_rows(40))])
    run = finetune(FinetuneConfig(task="generate", model=str(tiny_model("gpt2")), data=str(data),
                                  output=str(tmp_path / "run"), **FAST_TRAINING))
    assert run_manifest(run)["prompt_format"]["style"] == "text" and run_manifest(run)["columns"] == {"text": "text"}


def test_same_seed_same_weights(tmp_path, tiny_model, classify_csv):
    from safetensors.torch import load_file

    model = str(tiny_model("bert"))
    runs = [finetune(FinetuneConfig(model=model, data=str(classify_csv), output=str(tmp_path / f"r{i}"),
                                    seed=seed, **FAST_TRAINING)) for i, seed in enumerate((1, 1, 2))]
    weights = [load_file(r / "model.safetensors") for r in runs]
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])
    assert not all(weights[0][k].equal(weights[2][k]) for k in weights[0])


def test_existing_output_is_refused_before_training(tmp_path, tiny_model, classify_csv):
    output = tmp_path / "run"
    output.mkdir()
    (output / "keep.txt").write_text("mine")
    # Paths work too
    config = FinetuneConfig(model=tiny_model("bert"), data=classify_csv, output=output, **FAST_TRAINING)
    with pytest.raises(OutputExistsError, match="pass --overwrite"):
        finetune(config)
    assert sibling_names(output) == ["data", "model-bert", "run"]  # no staging or work folder
    config.overwrite = True
    assert (finetune(config) / "deployft.json").is_file() and not (output / "keep.txt").exists()


@pytest.mark.parametrize("settings, message", [
    ({"task": "translate"}, "--task must be one of classify, generate"),
    ({"epochs": 0}, "--epochs must be positive"),
    ({"eval_fraction": 1.5}, "--eval-fraction must be between 0 and 1"),
    ({"lora": True}, "apply to --task generate only"),
    ({"max_length": 2}, "--max-length must be at least 8"),
    ({"seed": -1}, "--seed must be between 0 and 4294967295, got -1"),
    ({"seed": 2**32}, "--seed must be between 0 and 4294967295"),
    ({"task": "generate", "lora_dropout": 1.5}, "--lora-dropout must be at least 0 and below 1"),
    ({"lora_alpha": 0}, "--lora-alpha must be positive"),
    ({"max_samples": 2.5}, "--max-samples must be a whole number, got 2.5"),
    ({"batch_size": "16"}, "--batch-size must be a whole number, got '16'"),
    ({"lr": "5e-5"}, "--lr must be a number, got '5e-5'"),
])
def test_config_validation(settings, message):
    with pytest.raises(UsageError, match=message):
        FinetuneConfig(**settings)


def test_a_crash_mid_training_leaves_no_run_folder(tmp_path, tiny_model, classify_csv, monkeypatch):
    import transformers

    def crash(self, *args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(transformers.Trainer, "train", crash)
    out, model = tmp_path / "runs" / "run", str(tiny_model("bert"))
    with pytest.raises(RuntimeError, match="power cut"):
        finetune(FinetuneConfig(model=model, data=str(classify_csv), output=str(out), **FAST_TRAINING))
    assert not out.exists()
    with pytest.raises(UsageError, match="--resume found no checkpoint"):
        finetune(FinetuneConfig(model=model, data=str(classify_csv), output=str(out), resume=True, **FAST_TRAINING))


KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
import transformers
from deployft.train import engine
from deployft.train import FinetuneConfig, finetune

class Kill(transformers.TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        os.kill(os.getpid(), signal.SIGKILL)

build = engine.build_trainer
def build_and_arm(*args, **kwargs):
    trainer = build(*args, **kwargs)
    trainer.add_callback(Kill())
    return trainer
engine.build_trainer = build_and_arm
finetune(FinetuneConfig(**__import__("json").loads(sys.argv[1])))
"""


def test_resume_after_sigkill_ends_with_the_same_steps(tmp_path, tiny_model, classify_csv):
    settings = {"model": str(tiny_model("bert")), "data": str(classify_csv), "output": str(tmp_path / "run"),
                "epochs": 3, "batch_size": 32, "max_length": 32, "lr": 2e-3}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_CHECKPOINT, json.dumps(settings)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    work = tmp_path / ".run.work"
    assert [p.name for p in (work / "checkpoints").iterdir()] == ["checkpoint-7"]
    assert not (tmp_path / "run").exists()
    with pytest.raises(UsageError, match="same settings"):
        finetune(FinetuneConfig(**{**settings, "lr": 1e-3}, resume=True))
    run = finetune(FinetuneConfig(**settings, resume=True))
    assert run_manifest(run)["training"]["steps"] == 21  # 216 rows / 32 = 7 steps per epoch, 3 epochs
    assert not work.exists()


def test_ddp_with_torchrun_on_cpu(tmp_path, tiny_model, classify_csv):
    """`torchrun --nproc_per_node 2 -m deployft finetune` trains with DDP over gloo; rank 0 writes the RUN."""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
               "-m", "deployft", "finetune", "--model", str(tiny_model("bert")), "--data", str(classify_csv),
               "--output", str(out), "--max-steps", "3", "--batch-size", "8", "--max-length", "32"]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = run_manifest(out)
    assert manifest["training"]["world_size"] == 2 and manifest["training"]["steps"] == 3
    assert "RUN written to" in done.stdout


@pytest.mark.gpu
def test_finetune_on_cuda(tmp_path, tiny_model, classify_csv):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    run = finetune(FinetuneConfig(model=str(tiny_model("bert")), data=str(classify_csv),
                                  output=str(tmp_path / "run"), **FAST_TRAINING))
    assert run_manifest(run)["training"]["device"] == "cuda"


@pytest.mark.parametrize("case, message", [
    ("data inside", r"--output proj holds --data proj/train.csv: writing there would delete it; pass another "
                    r"--output outside it$"),
    ("eval data inside", r"--output proj holds --eval-data proj/eval.csv"),
    ("output is the model", r"--output model-bert is --model model-bert"),
    ("output is the data file", r"--output proj/train.csv is --data proj/train.csv"),
    ("a symlink to the project", r"--output alias holds --data proj/train.csv"),
    ("data through a symlink", r"--output proj holds --data link.csv"),
])
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_is_or_holds_an_input_is_refused(tmp_path, tiny_model, monkeypatch, case, message,
                                                        overwrite):
    """`--output proj --overwrite` with `--data proj/train.csv` deleted the data (and a base model folder given as
    --output was replaced): refused before anything, with or without --overwrite, on resolved paths."""
    tiny_model("bert")
    monkeypatch.chdir(tmp_path)  # relative spellings, as a user types them
    data = write_rows(tmp_path / "proj" / "train.csv", sentiment_rows(40))
    write_rows(tmp_path / "proj" / "eval.csv", sentiment_rows(20, seed=1))
    write_rows(tmp_path / "other.csv", sentiment_rows(40, seed=2))
    (tmp_path / "alias").symlink_to(tmp_path / "proj", target_is_directory=True)
    (tmp_path / "link.csv").symlink_to(data)
    settings = {"model": "model-bert", "data": "proj/train.csv", "output": "proj"}
    settings.update({"eval data inside": {"data": "other.csv", "eval_data": "proj/eval.csv"},
                     "output is the model": {"output": "model-bert"},
                     "output is the data file": {"output": "proj/train.csv"},
                     "a symlink to the project": {"output": "alias"},
                     "data through a symlink": {"data": "link.csv"}}.get(case, {}))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    with pytest.raises(UsageError, match=message):
        finetune(FinetuneConfig(**settings, overwrite=overwrite, **FAST_TRAINING))
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")} == before  # nothing written, nothing deleted


def test_a_hub_name_is_not_a_path_the_output_could_hold(tmp_path, classify_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match=r"model 'some-org/not-on-this-machine' could not be loaded"):
        finetune(FinetuneConfig(model="some-org/not-on-this-machine", data=str(classify_csv), output="some-org",
                                **FAST_TRAINING))
