"""Task objects: what differs between classify and generate, and the collators and metrics they hand out."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from deployft.prompts import PromptFormat, TokenizerAdapter, prompt_ids
from deployft.train.collate import IGNORE_INDEX
from deployft.errors import UsageError
from deployft.metrics import accuracy_and_macro_f1, perplexity
from deployft.tasks import TASKS, get_task


def test_task_names_and_optimum_names():
    classify, generate = get_task("classify"), get_task("generate")
    assert (classify.export_task, classify.ort_model_class) == ("text-classification",
                                                                "ORTModelForSequenceClassification")
    assert (generate.export_task, generate.ort_model_class) == ("text-generation-with-past", "ORTModelForCausalLM")
    assert classify.model_class().__name__ == "AutoModelForSequenceClassification"
    assert generate.model_class().__name__ == "AutoModelForCausalLM"
    assert set(TASKS) == {"classify", "generate"}
    with pytest.raises(UsageError, match="pass --task classify or --task generate"):
        get_task("summarize")


def test_importing_tasks_does_not_import_torch():
    code = "import sys, deployft.tasks, deployft.data.examples; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_classify_encoding_keeps_only_model_inputs(tiny_model):
    from transformers import AutoTokenizer

    folder = tiny_model("bert")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    rows = [{"text": "the film was great", "label": "positive"}, {"text": "dull", "label": "negative"}]
    task = get_task("classify")
    label2id = {"negative": 0, "positive": 1}
    full = task.encode(rows, tokenizer, 16, label2id=label2id, input_names=None)
    assert "token_type_ids" in full[0] and [f["labels"] for f in full] == [1, 0]
    trimmed = task.encode(rows, tokenizer, 16, label2id=label2id, input_names={"input_ids", "attention_mask"})
    assert set(trimmed[0]) == {"input_ids", "attention_mask", "labels"}
    batch = task.build_collator(tokenizer)(trimmed)
    assert batch["input_ids"].shape == (2, len(full[0]["input_ids"]))  # padded to the longest, not max_length


def test_generate_loss_only_on_response_with_eos(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("llama"))
    fmt = PromptFormat.for_columns({"prompt": "prompt", "response": "response"}, bool(tokenizer.chat_template))
    assert fmt.style == "chat"
    row = {"prompt": "what color is the sky", "response": "the sky is blue"}
    (feature,) = get_task("generate").encode([row], tokenizer, 64, prompt_format=fmt.to_manifest())
    ids = prompt_ids(row["prompt"], fmt, TokenizerAdapter(tokenizer), 64)
    n = len(ids)
    assert ids == tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}],
                                                add_generation_prompt=True)  # the template, as transformers renders it
    assert feature["input_ids"][:n] == ids
    assert feature["labels"][:n] == [IGNORE_INDEX] * n
    assert feature["labels"][n:] == feature["input_ids"][n:]
    assert feature["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(feature["input_ids"][n:-1]).strip() == row["response"]


def test_generate_plain_and_text_formats_and_truncation(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    plain = PromptFormat.for_columns({"prompt": "p", "response": "r"}, False).to_manifest()
    assert plain == {"style": "plain", "separator": "\n"}
    assert tokenizer.decode(prompt_ids("hello", PromptFormat("plain"), TokenizerAdapter(tokenizer), 64)) == "hello\n"
    text = PromptFormat.for_columns({"text": "t"}, True).to_manifest()
    (feature,) = get_task("generate").encode([{"text": "the sky is blue " * 20}], tokenizer, 16, prompt_format=text)
    assert len(feature["input_ids"]) == 16 and feature["labels"] == feature["input_ids"]
    (long,) = get_task("generate").encode([{"prompt": "the sky " * 40, "response": "blue"}], tokenizer, 16,
                                          prompt_format=plain)
    assert len(long["input_ids"]) <= 16 and any(label != IGNORE_INDEX for label in long["labels"])
    assert long["labels"][:8] == [IGNORE_INDEX] * 8 and long["labels"][8] != IGNORE_INDEX  # prompt: its last 16 // 2


def test_generate_collator_pads_labels_with_ignore_index(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    collator = get_task("generate").build_collator(tokenizer)
    batch = collator([{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
                      {"input_ids": [5], "attention_mask": [1], "labels": [5]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, tokenizer.pad_token_id, tokenizer.pad_token_id]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [5, -100, -100]]


def test_metrics():
    got = accuracy_and_macro_f1([0, 1, 1, 2], [0, 1, 2, 2])
    assert got["accuracy"] == 0.75
    assert got["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert accuracy_and_macro_f1([1, 1], [1, 1])["macro_f1"] == 1.0  # a class absent from both is skipped
    assert accuracy_and_macro_f1([0, 1], [1, 1])["macro_f1"] == pytest.approx((0 + 2 / 3) / 2)  # predicted-only counts


def test_perplexity_counts_targets_only_and_weighs_tokens():
    logprobs = np.log(np.array([[0.5, 0.25, 0.1], [0.5, 0.5, 0.5]]))
    targets = np.array([[0, 1, 1], [1, 1, 0]])
    expected = np.exp(-(np.log(0.25) + np.log(0.1) + 2 * np.log(0.5)) / 4)  # token-weighted, prompt/padding out
    assert perplexity(logprobs, targets) == pytest.approx(expected)
    assert perplexity([logprobs[0], logprobs[1]], [targets[0], targets[1]]) == pytest.approx(expected)
    assert np.isnan(perplexity(logprobs, np.zeros_like(targets)))
    assert perplexity(np.array([-1e9]), np.array([1])) < float("inf")


def test_token_logprobs_of_a_uniform_model():
    from deployft.metrics import token_logprobs

    logits = np.zeros((1, 4, 8))
    assert np.allclose(token_logprobs(logits, np.array([[1, 2, 3, 4]])), np.log(1 / 8))
