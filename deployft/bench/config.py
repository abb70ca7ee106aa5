"""`BenchConfig`: everything `deployft bench` needs to know, validated before any model is loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UsageError
from ..runtime.session import PROVIDERS

TORCH_VARIANTS = ("pytorch", "pytorch-int8", "pytorch-compile")
"""The PyTorch variants built from the RUN; every other variant name is an `.onnx` file of the BUNDLE."""

DEVICES = ("cpu", "cuda")


def _int_tuple(value, flag: str) -> tuple[int, ...]:
    """Accept `"1,8,32"`, `[1, 8, 32]` or `8`; refuse empty, non-integer and non-positive values."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, int):
        parts = [value]
    else:
        parts = list(value)
    try:
        numbers = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} expects comma-separated positive integers, got {value!r}; "
                         f"pass e.g. {flag} 1,8,32") from None
    if not numbers:
        raise UsageError(f"{flag} is empty, so the benchmark grid has no cells; pass at least one value, e.g. {flag} 8")
    if min(numbers) < 1:
        raise UsageError(f"{flag} values must be positive, got {value!r}; pass e.g. {flag} 1,8,32")
    return tuple(dict.fromkeys(numbers))


def _name_tuple(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))
    if not names:
        raise UsageError("--variants is empty; pass variant names, e.g. --variants pytorch,model.onnx, "
                         "or leave it out to bench them all")
    return names


@dataclass
class BenchConfig:
    """How to benchmark a BUNDLE against the RUN it was exported from."""

    run: str | Path
    """RUN folder written by `deployft finetune`: the PyTorch original."""
    bundle: str | Path
    """BUNDLE folder written by `deployft export` from that RUN."""
    report: str | Path
    """Output folder for report.json, report.md, report.html and the plots."""
    variants: tuple[str, ...] | None = None
    """Variants to time: pytorch, pytorch-int8, pytorch-compile, `.onnx` file names of the bundle and peer engines
    (openvino, ort-genai, llama.cpp or one of their variants, see `peers.py`); None = all but the peers."""
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Classification: batch sizes of the grid."""
    seq_lens: tuple[int, ...] = (16, 64, 128)
    """Classification: sequence lengths of the grid (real eval token ids cut or repeated to length)."""
    prompt_lens: tuple[int, ...] = (16, 64)
    """Generation: prompt lengths of the grid (real eval token ids cut or repeated to length)."""
    new_tokens: tuple[int, ...] = (32,)
    """Generation: tokens generated per call (greedy, KV cache)."""
    threads: int = field(default_factory=lambda: min(4, os.cpu_count() or 1))
    """Intra-op threads, the same for torch (set_num_threads) and ONNX Runtime (intra_op_num_threads)."""
    repeats: int = 20
    """Timed runs per variant and cell, after warm-up."""
    min_time: float = 0.0
    """Keep adding rounds until every cell of every variant has been timed for at least this many seconds."""
    warmup: int = 3
    """Untimed runs per variant and cell before timing."""
    settle: float = 0.05
    """Idle seconds before each timed call, so the previous variant's spinning threads (OpenMP, ONNX Runtime) stop."""
    hot_calls: int = 5
    """Classification: back-to-back calls timed right after each settled call; their median is the round's hot
    latency (what a busy server sees: thread pools awake, caches warm), the figure the tables show. 0: settled only."""
    eval_samples: int = 200
    """Eval rows of the RUN used for the accuracy of every variant (generators: fewer are generated from)."""
    device: str = "cpu"
    """cpu or cuda (CUDA timings synchronise the device around each call)."""
    provider: str = "default"
    """ONNX Runtime provider of the `.onnx` variants: default or openvino (the OpenVINO plugin, CPU)."""
    static_shapes: bool = False
    """openvino, classifiers: run the `.onnx` variants as `Predictor.load(static_shapes=True)` does (a session
    compiled per input shape, lengths padded to a bucket; each shape compiles in its first call, a warm-up one
    unless --warmup is 0)."""
    peak: bool = True
    """Measure the machine's ceilings (peak matmul rate: fp32 torch, int8 ONNX Runtime; memory copy bandwidth) and
    each variant's fraction of them (classifiers: of the matmul peak; decode: of the memory roofline)."""
    plots: bool = True
    """Write PNG plots and embed them in report.html."""
    overwrite: bool = False
    """Replace an existing non-empty report folder."""
    peer_cache: str | Path | None = None
    """Folder where peer models are built once and reused across runs; None = this run's scratch folder."""

    def __post_init__(self) -> None:
        self.run, self.bundle, self.report = Path(self.run), Path(self.bundle), Path(self.report)
        self.peer_cache = None if self.peer_cache is None else Path(self.peer_cache)
        self.variants = _name_tuple(self.variants)
        self.batch_sizes = _int_tuple(self.batch_sizes, "--batch-sizes")
        self.seq_lens = _int_tuple(self.seq_lens, "--seq-lens")
        self.prompt_lens = _int_tuple(self.prompt_lens, "--prompt-lens")
        self.new_tokens = _int_tuple(self.new_tokens, "--new-tokens")
        for flag, value, low in (("--threads", self.threads, 1), ("--repeats", self.repeats, 1),
                                 ("--warmup", self.warmup, 0), ("--eval-samples", self.eval_samples, 0),
                                 ("--hot-calls", self.hot_calls, 0)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise UsageError(f"{flag} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.settle, (int, float)) or self.settle < 0:
            raise UsageError(f"--settle must be a number of seconds >= 0, got {self.settle!r}")
        if not isinstance(self.min_time, (int, float)) or self.min_time < 0:
            raise UsageError(f"--min-time must be a number of seconds >= 0, got {self.min_time!r}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.provider not in PROVIDERS:
            raise UsageError(f"--provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.provider == "openvino" and self.device != "cpu":
            raise UsageError("--provider openvino runs on the CPU, not CUDA; pass --device cpu")
        if self.static_shapes and self.provider != "openvino":
            raise UsageError("--static-shapes compiles the graph per input shape on OpenVINO; pass --provider "
                             "openvino or leave --static-shapes out")
