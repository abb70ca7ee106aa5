"""A running batch at the model's position limit: requests that reach `max_position_embeddings` finish with the
tokens they get alone, and neither they nor the rows that finished before them break the batch."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import short_decoder
from deployft.runtime import GenerationOptions, Predictor
from deployft.serve.engine import GenerationEngine, Ticket

POSITIONS = 32
WORKLOAD = [(10, 22), (4, 28), (4, 30), (4, 28)]
"""(prompt length, max_new_tokens): the first leaves while the others decode on to the position limit (the 30 cut
to 29: its last token, predicted at the last position, is never fed back)."""


@pytest.fixture(scope="module", params=["llama", "mistral"])
def fused_predictor(request, tmp_path_factory):
    """deployft's fused export (GroupQueryAttention; Mistral's heads of 8 add RotaryEmbedding nodes)."""
    from deployft.exporter import ExportConfig, export

    folder = tmp_path_factory.mktemp(f"limit-{request.param}")
    bundle = export(ExportConfig(run=short_decoder(request.param, folder, POSITIONS), output=folder / "bundle",
                                 task="generate", quantize="none", validate_samples=4, max_accuracy_drop=1000))
    predictor = Predictor.load(bundle, model_file="model_optimized.onnx")
    assert predictor.decoder.max_positions == POSITIONS and predictor.decoder.shares_cache
    return predictor


def test_requests_reaching_the_position_limit_finish_with_the_tokens_they_get_alone(fused_predictor):
    rng = np.random.default_rng(0)
    requests = [(rng.integers(3, 300, size=length).tolist(), n) for length, n in WORKLOAD]
    engine = GenerationEngine(fused_predictor, max_batch_size=4, max_queue=8)
    sinks = []
    for prompt, n in requests:
        sinks.append([])
        engine.submit(Ticket(prompt, GenerationOptions(n), sinks[-1].append))
    for _ in range(60):
        if all(s and s[-1].finish_reason for s in sinks):
            break
        engine.run_once()
    for (prompt, n), chunks in zip(requests, sinks):
        alone = list(fused_predictor.iter_token_ids(prompt, max_new_tokens=n))
        assert chunks[-1].error is None and chunks[-1].finish_reason == "length"
        assert chunks[-1].completion_tokens == len(alone) == min(n, POSITIONS - len(prompt) + 1)
        assert "".join(c.text for c in chunks) == fused_predictor.codec.decode(alone)
    assert engine.rows == []
