"""Slow: the default generator (SmolLM2-135M-Instruct) exported to fp32 ONNX decodes exactly like transformers."""

from __future__ import annotations

import pytest

from conftest import build_runtime_bundle
from deployft.runtime import Predictor

PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How many legs does a spider have?"]


@pytest.mark.slow
def test_default_generator_fp32_bundle_matches_transformers_greedy(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from deployft.data.defaults import default_model

    source = default_model("generate")
    bundle = build_runtime_bundle(source, tmp_path / "bundle", "generate", int8=False)
    predictor = Predictor.load(bundle)
    assert predictor.manifest["prompt_format"]["style"] == "chat"
    model = AutoModelForCausalLM.from_pretrained(source, torch_dtype=torch.float32).eval()
    for prompt in PROMPTS:
        ids = predictor.prompt_ids(prompt)
        ours = list(predictor.iter_token_ids(ids, max_new_tokens=32))
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=32, do_sample=False, num_beams=1, repetition_penalty=1.0)
        assert ours == out[0, len(ids):].tolist(), prompt
    assert "paris" in predictor.generate(PROMPTS[0], max_new_tokens=16).lower()
