"""Task objects: what differs between classify and generate, and the collators and metrics they hand out."""

from __future__ import annotations

import subprocess
import sys

import pytest

from deployft.collate import IGNORE_INDEX, format_prompt, prompt_format_for
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
    code = "import sys, deployft.tasks, deployft.data; sys.exit('torch' in sys.modules)"
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
    fmt = prompt_format_for(tokenizer, {"prompt": "prompt", "response": "response"})
    assert fmt["style"] == "chat"
    row = {"prompt": "what color is the sky", "response": "the sky is blue"}
    (feature,) = get_task("generate").encode([row], tokenizer, 64, prompt_format=fmt)
    prompt_ids = format_prompt(tokenizer, row["prompt"], fmt)
    n = len(prompt_ids)
    assert feature["input_ids"][:n] == prompt_ids
    assert feature["labels"][:n] == [IGNORE_INDEX] * n
    assert feature["labels"][n:] == feature["input_ids"][n:]
    assert feature["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode(feature["input_ids"][n:-1]).strip() == row["response"]


def test_generate_plain_and_text_formats_and_truncation(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gpt2"))
    plain = prompt_format_for(tokenizer, {"prompt": "p", "response": "r"})
    assert plain == {"style": "plain", "separator": "\n"}
    assert tokenizer.decode(format_prompt(tokenizer, "hello", plain)) == "hello\n"
    text = prompt_format_for(tokenizer, {"text": "t"})
    (feature,) = get_task("generate").encode([{"text": "the sky is blue " * 20}], tokenizer, 16, prompt_format=text)
    assert len(feature["input_ids"]) == 16 and feature["labels"] == feature["input_ids"]
    (long,) = get_task("generate").encode([{"prompt": "the sky " * 40, "response": "blue"}], tokenizer, 16,
                                          prompt_format=plain)
    assert len(long["input_ids"]) <= 16 and any(label != IGNORE_INDEX for label in long["labels"])


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
    got = accuracy_and_macro_f1([0, 1, 1, 2], [0, 1, 2, 2], num_labels=3)
    assert got["accuracy"] == 0.75
    assert got["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert accuracy_and_macro_f1([1, 1], [1, 1], num_labels=2)["macro_f1"] == 0.5  # absent class counts as 0
    assert perplexity(0.0) == 1.0 and perplexity(1e9) < float("inf")
