"""Training features (deployft/train/collate.py): examples cut to --max-length are counted and reported once."""

from __future__ import annotations

import logging

from conftest import FAST_TRAINING, qa_rows, write_rows

from deployft.prompts import PromptFormat, TokenizerAdapter
from deployft.train import FinetuneConfig, finetune
from deployft.train.collate import encode_classify, encode_generate

LONG = " ".join(["the film was great and the cast was charming"] * 12)


def _warnings(caplog) -> list[str]:
    """deployft's warnings (transformers warns once per process of a sequence past the model's length too)."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("deployft")]


def test_texts_cut_to_max_length_are_one_warning_with_counts(tiny_model, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    encoder = TokenizerAdapter(tokenizer)
    whole = len(encoder.encode_one(LONG, True) + encoder.eos_ids)
    rows = [{"text": LONG}] * 20 + [{"text": "bees make honey"}] * 5
    with caplog.at_level(logging.WARNING):
        features = encode_generate(rows, tokenizer, 16, prompt_format=None, split="training")
    assert [len(f["input_ids"]) for f in features[:20]] == [16] * 20  # cut as before
    assert _warnings(caplog) == [f"20 of 25 training examples cut to --max-length 16 ({100 * (whole - 16) / whole:.0f}"
                                 " % of their tokens dropped); raise --max-length to keep them"]


def test_prompts_cut_are_counted_in_the_same_line(tiny_model, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    rows = [{"prompt": LONG, "response": "yes"}] * 3 + [{"prompt": "what do bees make", "response": "honey"}]
    with caplog.at_level(logging.INFO):
        features = encode_generate(rows, tokenizer, 16, prompt_format=PromptFormat("plain").to_manifest(),
                                   split="eval")
    assert len(features[0]["input_ids"]) <= 16
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("deployft")]  # no per-prompt line
    assert len(messages) == 1 and messages[0].startswith("3 of 4 eval examples cut to --max-length 16 (")
    assert messages[0].endswith("; 3 prompts kept only their last 8 tokens, half of --max-length); raise "
                                "--max-length to keep them")


def test_uncut_examples_warn_nothing(tiny_model, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    with caplog.at_level(logging.WARNING):
        encode_generate(qa_rows(10), tokenizer, 64, prompt_format=PromptFormat("plain").to_manifest())
    assert _warnings(caplog) == []


def test_finetune_warns_once_per_data_set(tmp_path, tiny_model, caplog):
    data = write_rows(tmp_path / "docs.csv", [{"text": f"{LONG} {i}"} for i in range(20)])
    with caplog.at_level(logging.WARNING):
        finetune(FinetuneConfig(task="generate", model=str(tiny_model("gpt2")), data=str(data),
                                output=str(tmp_path / "run"), **FAST_TRAINING))
    cut = [m for m in _warnings(caplog) if "cut to --max-length" in m]
    assert [m.split(" examples")[0] for m in cut] == ["18 of 18 training", "2 of 2 eval"]
    assert all("--max-length 32 (" in m and m.endswith("raise --max-length to keep them") for m in cut)


def test_classifier_texts_cut_to_max_length_are_one_warning_with_counts(tiny_model, caplog):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("bert"))
    whole = len(tokenizer(LONG)["input_ids"])
    rows = [{"text": LONG, "label": "pos"}] * 3 + [{"text": "a fine film", "label": "neg"}]
    with caplog.at_level(logging.WARNING):
        features = encode_classify(rows, tokenizer, 16, label2id={"neg": 0, "pos": 1}, split="eval")
    assert [len(f["input_ids"]) for f in features[:3]] == [16] * 3 and features[0]["labels"] == 1
    assert _warnings(caplog) == [f"3 of 4 eval examples cut to --max-length 16 ({100 * (whole - 16) / whole:.0f} % "
                                 "of their tokens dropped); raise --max-length to keep them"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        encode_classify(rows[3:], tokenizer, 16, label2id={"neg": 0, "pos": 1})
    assert _warnings(caplog) == []
