"""Serve a BUNDLE with ONNX Runtime alone: `Predictor.load(bundle).predict(...)` / `.generate(...)`.

Imports only onnxruntime, tokenizers, numpy and jinja2 (never torch or transformers), so a service
needs nothing but `pip install "deployft[runtime]"`.
"""

from __future__ import annotations

from .integrity import verify_bundle
from .predictor import Prediction, Predictor
from .sampling import GenerationOptions
from .session import SessionOptions

__all__ = ["GenerationOptions", "Prediction", "Predictor", "SessionOptions", "verify_bundle"]
