import pytest

from deployft.bench.peak import classify_flops, decode_flops, fraction_of_peak, measure_peaks
from deployft.runtime.openvino import cpu_precision


def test_peaks_are_the_best_size_and_recorded_with_their_threads():
    peaks = measure_peaks(threads=1, seconds=0.02, sizes=(128, 256), sweeps=2)
    assert peaks["fp32"] == max(peaks["fp32_by_size"].values()) > 1e8
    assert peaks["int8"] == max(peaks["int8_by_size"].values()) > 1e8
    assert set(peaks["int8_by_size"]) == {"128", "256"} and peaks["read_bytes_per_s"] > 1e8
    assert peaks["threads"] == 1 and "MatMulInteger" in peaks["method"] and "128x256" in peaks["method"]
    if cpu_precision() == "bf16":  # measured only where the CPU has bf16 matmul (AMX or AVX512-BF16)
        assert peaks["bf16"] == max(peaks["bf16_by_size"].values()) > 1e8
    else:
        assert peaks["bf16"] is None and "bf16_by_size" not in peaks


def test_a_variant_is_judged_against_the_peak_of_what_it_computes_in():
    from deployft.bench.report import _peak_for

    peak = {"fp32": 1.0, "bf16": 2.0, "int8": 3.0}
    assert _peak_for(peak, {"precision": "fp32"}) == 1.0
    assert _peak_for(peak, {"precision": "fp32", "details": {"inference_precision": "bf16"}}) == 2.0
    assert _peak_for(peak, {"precision": "int8", "details": {"inference_precision": "bf16"}}) == 3.0
    assert _peak_for(peak, {"precision": "int4"}) == 3.0
    # a bf16 run on a machine where no bf16 peak was measured gets no fraction, never the fp32 one
    assert _peak_for({**peak, "bf16": None}, {"precision": "fp32", "details": {"inference_precision": "bf16"}}) is None


def test_classify_flops_grow_with_batch_and_length(tiny_model):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model("bert")).eval()
    one, four = classify_flops(model, 1, 16), classify_flops(model, 4, 16)
    assert one > 0 and four == 4 * one
    assert classify_flops(model, 1, 64) > 4 * one * 0.9
    # 2 layers x (4 hidden x hidden + 2 hidden x intermediate) matmuls, 2 FLOPs per multiply-add, per token
    hidden, inter, layers = 32, 64, 2
    assert one >= 16 * layers * 2 * (4 * hidden * hidden + 2 * hidden * inter)


def test_first_position_saving_is_the_last_layers_work_for_the_other_positions(tiny_model):
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForSequenceClassification

    from deployft.bench.peak import first_position_saving

    # eager attention, as bench's `_flops` loads the model: torch counts its q.k and p.v (not SDPA's CPU kernel)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model("bert"), attn_implementation="eager")
    batch, seq = 3, 12
    ids = torch.ones(batch, seq, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids))
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    last = next(name for name in by_module if name.endswith("encoder.layer.1"))
    per_position = sum(by_module[f"{last}.{part}"] for part in ("attention.self.query", "attention.output.dense",
                                                                 "intermediate.dense", "output.dense"))
    scores = by_module[f"{last}.attention.self"] - sum(by_module[f"{last}.attention.self.{p}"]
                                                       for p in ("query", "key", "value"))  # q.k and p.v
    # every position but the first: its projections and feed-forward, and its row of the attention
    assert first_position_saving(model.config, batch, seq) == (per_position + scores) * (seq - 1) // seq
    assert first_position_saving(type("Config", (), {})(), batch, seq) is None  # no widths: not counted


def test_decode_flops_count_prefill_and_one_step(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model("llama")).eval()
    flops = decode_flops(model, prompt_len=8, new_tokens=4)
    assert flops["prefill"] > flops["decode_token"] > 0


def test_fraction_of_peak():
    assert fraction_of_peak(1e9, 0.01, 1e12) == pytest.approx(0.1)
    assert fraction_of_peak(1e9, 0.01, None) is None
