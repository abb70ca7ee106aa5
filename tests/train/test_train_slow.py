"""Slow tier: fine-tune the real embedded defaults and load the RUN folders back."""

from __future__ import annotations

import json

import pytest

from deployft.data.examples import load_run_examples

pytestmark = pytest.mark.slow


def test_default_classifier_run_loads_back_and_predicts(real_classify_run):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    manifest = json.loads((real_classify_run / "deployft.json").read_text())
    assert manifest["labels"] == ["fresh", "rotten"] and manifest["model_type"] == "bert"
    assert manifest["data"]["train"]["format"] == "default:rotten_tomatoes" and manifest["data"]["train"]["rows"] == 297
    model = AutoModelForSequenceClassification.from_pretrained(real_classify_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(real_classify_run)
    rows = load_run_examples(real_classify_run, "eval")
    assert len(rows) == manifest["metrics"]["eval_samples"] == 33
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in rows], padding=True, truncation=True,
                          max_length=manifest["max_length"], return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).tolist()
    accuracy = sum(model.config.id2label[p] == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    assert accuracy == pytest.approx(manifest["metrics"]["accuracy"], abs=1e-6)


def test_default_generator_run_loads_back_and_generates(real_generate_run):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from deployft.prompts import PromptFormat, TokenizerAdapter, prompt_ids

    manifest = json.loads((real_generate_run / "deployft.json").read_text())
    assert manifest["prompt_format"]["style"] == "chat" and manifest["model_type"] == "llama"
    assert manifest["training"]["steps"] == 2 and manifest["metrics"]["perplexity"] < 100
    model = AutoModelForCausalLM.from_pretrained(real_generate_run).eval()
    tokenizer = AutoTokenizer.from_pretrained(real_generate_run)
    eos = model.generation_config.eos_token_id
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id in (eos if isinstance(eos, list) else [eos])
    prompt = load_run_examples(real_generate_run, "eval", limit=1)[0]["prompt"]
    ids = torch.tensor([prompt_ids(prompt, PromptFormat.from_manifest(manifest["prompt_format"]),
                                   TokenizerAdapter(tokenizer), manifest["max_length"])])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    answer = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert answer.strip(), "the fine-tuned default generator answers with text"
