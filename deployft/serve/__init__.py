"""Serve a BUNDLE over HTTP, torch-free: `deployft serve BUNDLE` or `create_app(bundle)` inside another ASGI app.

FastAPI + uvicorn (`pip install "deployft[serve]"`): the OpenAI API for generators with continuous batching,
text-embeddings-inference's `/predict` for classifiers with dynamic batching, Prometheus `/metrics`, `/health`,
`/ready` and a playground page at `/`. Names are imported lazily, so `import deployft.serve` needs no fastapi.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ServeConfig": "deployft.serve.config",
    "create_app": "deployft.serve.app",
    "serve": "deployft.serve.server",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deployft.serve' has no attribute {name!r}")
