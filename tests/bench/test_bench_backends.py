"""Backends: timing generation runs to exactly --new-tokens on every variant."""

import numpy as np

from deployft.bench.backends import OnnxBackend, TorchBackend


class FakeDecoder:
    def __init__(self):
        self.eos_ids = np.array([2], dtype=np.int64)
        self.eos_set = {2}
        self.pad_id = 0


class FakePredictor:
    """Emits 5, 2 (an end token), 7, 7, ...; stops at an end token as the runtime's loop does."""

    task = "generate"

    def __init__(self):
        self.decoder = FakeDecoder()

    def iter_token_ids(self, prompt_ids, max_new_tokens, ignore_eos=False):
        for i in range(max_new_tokens):
            token = [5, 2][i] if i < 2 else 7
            yield token
            if not ignore_eos and token in self.decoder.eos_set:
                return


def test_onnx_generation_runs_past_end_tokens_only_when_timing():
    backend = OnnxBackend("model.onnx", bundle=".", precision="fp32", device="cpu", threads=1)
    backend.predictor = FakePredictor()
    tokens, times = backend.generate([1, 2, 3], 4)
    assert tokens == [5, 2, 7, 7] and len(times) == 4 and times == sorted(times)
    assert backend.generate([1], 4, stop_at_eos=True)[0] == [5, 2]


def test_torch_generation_runs_past_end_tokens_only_when_timing(tiny_model):
    import torch

    backend = TorchBackend("pytorch", tiny_model("llama"), "generate", "cpu", 1)
    backend.load()
    eos = backend.model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    with torch.no_grad():  # make the end token the greedy choice at every step
        backend.model.lm_head.weight[eos] += 100.0
    tokens, times = backend.generate([5, 6, 7], 4)
    assert tokens == [eos] * 4 and len(times) == 4
    assert backend.generate([5, 6, 7], 4, stop_at_eos=True)[0] == [eos]
