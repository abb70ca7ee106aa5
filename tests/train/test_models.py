"""finetune's base models (deployft/train/models.py): encoders without token_type_ids, decoders without a pad token,
LoRA merged back into a plain model, and a model or input that cannot load refused before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import FAST_TRAINING, run_manifest, sibling_names

from deployft.errors import DataError, ModelError, UsageError
from deployft.train import FinetuneConfig, finetune


@pytest.mark.parametrize("arch", ["distilbert", "roberta"])
def test_encoders_without_token_type_ids(tmp_path, tiny_model, classify_csv, arch):
    run = finetune(FinetuneConfig(model=str(tiny_model(arch)), data=str(classify_csv),
                                  output=str(tmp_path / "run"), **FAST_TRAINING))
    assert run_manifest(run)["model_type"] == arch and run_manifest(run)["training"]["steps"] == 2


def test_lora_is_merged_into_a_plain_model(tmp_path, tiny_model, qa_jsonl):
    from safetensors.torch import load_file

    base = tiny_model("llama")
    run = finetune(FinetuneConfig(task="generate", model=str(base), data=str(qa_jsonl), lora=True, lr=1e-2,
                                  output=str(tmp_path / "run"), **FAST_TRAINING))
    assert not list(run.glob("adapter_*")) and run_manifest(run)["training"]["lora"]["r"] == 8
    tuned, original = load_file(run / "model.safetensors"), load_file(base / "model.safetensors")
    assert not any("lora" in key for key in tuned)
    assert set(tuned) == set(original)
    assert any(not tuned[k].equal(original[k]) for k in tuned if "q_proj" in k)


@pytest.mark.parametrize("settings, error, message", [
    ({"model": "MISSING"}, ModelError, r"model folder .*nowhere not found"),
    ({"model": "NOCONFIG"}, ModelError, r"has no config.json; pass a folder written by save_pretrained"),
    ({"max_length": 4096}, UsageError, r"--max-length 4096 is above the position limit .* \(128 tokens\)"),
    ({"data": "EMPTY"}, DataError, r"empty.csv is empty"),
    ({"model": "some-org/not-on-this-machine"}, ModelError, r"could not be loaded"),
])
def test_bad_input_writes_nothing(tmp_path, tiny_model, classify_csv, settings, error, message):
    values = {"model": str(tiny_model("bert")), "data": str(classify_csv), **FAST_TRAINING, **settings}
    if values["model"] == "MISSING":
        values["model"] = str(tmp_path / "nowhere")
    if values["model"] == "NOCONFIG":
        (tmp_path / "noconfig").mkdir()
        values["model"] = str(tmp_path / "noconfig")
    if values["data"] == "EMPTY":
        (tmp_path / "empty.csv").write_text("")
        values["data"] = str(tmp_path / "empty.csv")
    out = tmp_path / "out" / "run"
    with pytest.raises(error, match=message):
        finetune(FinetuneConfig(output=str(out), **values))
    assert not (tmp_path / "out").exists() or sibling_names(out) == []


def _without_pad_token(folder: Path, eos: bool = True) -> Path:
    """A decoder saved as GPT-2 and Llama checkpoints are: no pad token (and, with `eos=False`, no EOS either)."""
    drop = ("pad_token",) if eos else ("pad_token", "eos_token")
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if path.is_file():
            values = json.loads(path.read_text())
            path.write_text(json.dumps({k: v for k, v in values.items() if k not in drop}))
    config = json.loads((folder / "config.json").read_text())
    config.update({"pad_token_id": None, **({} if eos else {"eos_token_id": None})})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_classifier_from_a_decoder_without_a_pad_token_pads_with_eos(tmp_path, tiny_model, classify_csv, arch):
    from transformers import AutoTokenizer

    model = _without_pad_token(tiny_model(arch))
    assert AutoTokenizer.from_pretrained(model).pad_token is None
    run = finetune(FinetuneConfig(model=str(model), data=str(classify_csv), output=str(tmp_path / "run"),
                                  **FAST_TRAINING))
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert tokenizer.pad_token == tokenizer.eos_token == "</s>"
    assert json.loads((run / "config.json").read_text())["pad_token_id"] == tokenizer.eos_token_id


@pytest.mark.parametrize("task, data", [("classify", "classify_csv"), ("generate", "qa_jsonl")])
def test_a_tokenizer_without_pad_and_eos_is_refused_before_training(request, tmp_path, tiny_model, task, data):
    model = _without_pad_token(tiny_model("gpt2"), eos=False)
    out = tmp_path / "out" / "run"
    with pytest.raises(ModelError, match=r"has no pad token and no end-of-sequence token .*set tokenizer.pad_token"):
        finetune(FinetuneConfig(task=task, model=str(model), data=str(request.getfixturevalue(data)),
                                output=str(out), **FAST_TRAINING))
    assert not (tmp_path / "out").exists() or sibling_names(out) == []


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "qwen2"])
def test_the_tiny_decoders_are_causal_lms(tiny_model, arch):
    from transformers import AutoConfig

    from deployft.train.models import check_causal

    check_causal(AutoConfig.from_pretrained(tiny_model(arch)), arch)  # refuses nothing


@pytest.mark.parametrize("model_type, settings, found", [
    ("bert", {}, r"an encoder \(bert\)"),
    ("roberta", {}, r"an encoder \(roberta\)"),
    ("distilbert", {}, r"an encoder \(distilbert\)"),  # no causal-LM class at all
    ("bart", {}, r"an encoder-decoder \(bart\)"),  # BartForCausalLM exists, but it is half of a seq2seq model
    ("t5", {}, r"an encoder-decoder \(t5\)"),
    ("bert", {"is_decoder": True}, None),  # configured as a decoder: attends causally
    ("llama", {}, None),  # the default generator's type (SmolLM2)
])
def test_a_generator_base_must_be_a_causal_lm(model_type, settings, found):
    from transformers import AutoConfig

    from deployft.train.models import check_causal

    config = AutoConfig.for_model(model_type, **settings)
    if found is None:
        check_causal(config, "m")
        return
    with pytest.raises(ModelError, match=rf"^--model m is {found}; --task generate needs a causal LM such as "
                                         r"SmolLM2, .*: pass one to --model, or use --task classify$"):
        check_causal(config, "m")


def test_generate_from_an_encoder_is_refused_before_training(tmp_path, tiny_model, qa_jsonl):
    out = tmp_path / "out" / "run"
    with pytest.raises(ModelError, match=r"--model .*model-bert is an encoder \(bert\); --task generate needs"):
        finetune(FinetuneConfig(task="generate", model=str(tiny_model("bert")), data=str(qa_jsonl), output=str(out),
                                **FAST_TRAINING))
    assert not (tmp_path / "out").exists() and not (tmp_path / ".run.work").exists()
