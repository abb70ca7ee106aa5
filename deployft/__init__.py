"""deployft: from your labelled text to a fast, small, verified model in production.

    finetune(FinetuneConfig(...)) -> RUN folder        (PyTorch, transformers Trainer)
    export(ExportConfig(...))     -> BUNDLE folder     (Optimum ONNX, optimized, quantized, validated)
    Predictor.load(BUNDLE)                             (ONNX Runtime; no torch)
    verify_bundle(BUNDLE)         -> BundleCheck       (every file against deployft.json, without loading)
    benchmark(BenchConfig(...))   -> BenchReport       (against the PyTorch original)

Names are imported lazily: `import deployft` (and `import deployft.runtime`) never imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "ExportConfig": "deployft.exporter",
    "export": "deployft.exporter",
    "FinetuneConfig": "deployft.train",
    "finetune": "deployft.train",
    "Predictor": "deployft.runtime",
    "Prediction": "deployft.runtime",
    "verify_bundle": "deployft.runtime",
    "BenchConfig": "deployft.bench",
    "BenchReport": "deployft.bench",
    "benchmark": "deployft.bench",
}

__all__ = sorted([*_LAZY, "errors", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "errors":
        return importlib.import_module("deployft.errors")
    raise AttributeError(f"module 'deployft' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
