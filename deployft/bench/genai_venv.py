"""onnxruntime-genai's model builder, run in a helper venv made once and cached.

onnxruntime-genai 0.18's builder wants transformers 5, and deployft runs on transformers 4.57, so the builder
lives in its own venv (`~/.cache/deployft/peers/venv-genai`, or `$DEPLOYFT_GENAI_VENV`) and runs as a
subprocess; its output is timed with onnxruntime-genai's runtime, which works in deployft's own environment.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .child import run_child

VENV_STEPS = (("torch==2.13.0",),
              ("onnxruntime-genai==0.18.0", "transformers==5.25.0", "onnx==1.23.2", "onnx_ir==1.1.0"))
"""pip installs, in order: torch first (CPU wheel), then the builder and what it imports, every version pinned (a
change of pins changes the marker, so an existing helper venv is made again)."""


def venv_root() -> Path:
    """Where the helper venv lives."""
    default = Path.home() / ".cache" / "deployft" / "peers" / "venv-genai"
    return Path(os.environ.get("DEPLOYFT_GENAI_VENV") or default)


def helper_python(root: Path | None = None) -> Path:
    """The helper venv's python, making the venv first when it is missing or was made with other packages."""
    root = root or venv_root()
    python, marker = root / "bin" / "python", root / "deployft-venv.json"
    wanted = json.dumps([list(step) for step in VENV_STEPS])
    if python.is_file() and marker.is_file() and marker.read_text(encoding="utf-8") == wanted:
        return python
    _run([sys.executable, "-m", "venv", "--clear", str(root)], "making the helper venv")
    for step in VENV_STEPS:
        _run([str(python), "-m", "pip", "install", "--quiet", *step], f"pip install {' '.join(step)} in {root}")
    marker.write_text(wanted, encoding="utf-8")
    return python


def build_genai_model(run: Path, target: Path, precision: str, block_size: int) -> None:
    """onnxruntime-genai's builder on the RUN: CPU, `precision` int8 or int4 with `block_size` weight blocks."""
    python = helper_python()
    target.mkdir(parents=True, exist_ok=True)
    # onnxruntime-genai 0.18 reads `block_size` and `accuracy_level` (older builders: int4_block_size, ...)
    options = [f"block_size={block_size}", "accuracy_level=4", "hf_token=false"]
    _run([str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(run), "-o", str(target),
          "-p", precision, "-e", "cpu", "-c", str(target / "builder-cache"), "--extra_options", *options],
         f"onnxruntime-genai's builder ({precision}, block {block_size})")


def _run(command: list[str], what: str) -> None:
    run_child(command, what, {"HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})
