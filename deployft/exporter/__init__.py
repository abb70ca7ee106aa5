"""Stage 2, `export(ExportConfig) -> BUNDLE`: ONNX export, fusion, quantization, validation against PyTorch.

    config.py          ExportConfig, the one source of the stage's defaults
    runner.py          export(): the variants built in order, the deployable one chosen, the BUNDLE written
    guard.py           the accuracy guard: budget, decision rule per file, the int8 / int4 remedy ladders, the refusal
    agreement.py       its confidence bounds: exact binomial (flipped predictions), paired bootstrap (perplexity)
    state.py           typed export state: one VariantResult per .onnx file, the ExportResult
    source.py          what is exported (a RUN or a model folder), the PyTorch original and its tokenizer
    onnx_export.py     Optimum's export, opset, external weights
    optimize.py        ORTOptimizer level 2 and the op-count report
    decoder_fusion.py  decoder attention -> GroupQueryAttention with its rotary embedding
    quantize.py        dynamic / static / blockwise int8 and fp16
    int4.py            generator int4: 4-bit MatMulNBits, the LM head at 8 bits (or 4: --head-bits)
    samples.py         the rows validation and calibration feed, encoded as training encoded them
    validate.py        every file against PyTorch, run through the runtime's own session and decoder
    bundle.py          the manifest; card.py the model card and `deployft info`

Importing this package does not import torch; `export` does.
"""

from __future__ import annotations

from .config import ExportConfig
from .runner import export

__all__ = ["ExportConfig", "export"]
