"""`BenchConfig`: everything `deployft bench` needs to know, validated before any model is loaded."""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from ..errors import UsageError
from ..runtime.session import PROVIDERS

TORCH_VARIANTS = ("pytorch", "pytorch-int8", "pytorch-compile")
"""The PyTorch variants built from the RUN; every other variant name is an `.onnx` file of the BUNDLE."""

DEVICES = ("cpu", "cuda")

TASK_SETTINGS = {"classify": ("batch_sizes", "seq_lens", "hot_calls"), "generate": ("prompt_lens", "new_tokens")}
"""The settings only one task's timings use: a RUN of the other task would ignore them."""


def _int_tuple(value, flag: str) -> tuple[int, ...]:
    """Accept `"1,8,32"`, `[1, 8, 32]` or `8`; refuse empty, non-integer (1.5, None, True) and non-positive values."""
    example = f"pass e.g. {flag} 1,8,32"
    if isinstance(value, str):
        parts: list = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    found: list[int] = []
    for part in parts:
        if isinstance(part, str) and part.isdigit():
            part = int(part)
        if not isinstance(part, numbers.Integral) or isinstance(part, bool):
            raise UsageError(f"{flag} expects comma-separated positive integers, got {value!r}; {example}")
        found.append(int(part))
    if not found:
        raise UsageError(f"{flag} is empty, so the benchmark grid has no cells; pass at least one value, e.g. {flag} 8")
    if min(found) < 1:
        raise UsageError(f"{flag} values must be positive, got {value!r}; {example}")
    return tuple(dict.fromkeys(found))


def _name_tuple(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        parts = value.split(",")
    elif isinstance(value, (list, tuple)) and all(isinstance(p, str) for p in value):
        parts = list(value)
    else:
        raise UsageError(f"--variants expects comma-separated variant names, got {value!r}; "
                         "pass e.g. --variants pytorch,model.onnx")
    names = tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))
    if not names:
        raise UsageError("--variants is empty; pass variant names, e.g. --variants pytorch,model.onnx, "
                         "or leave it out to bench them all")
    return names


def _path(value, flag: str, optional: bool = False) -> Path | None:
    if value is None and optional:
        return None
    if not isinstance(value, (str, Path)) or not str(value):
        raise UsageError(f"{flag} expects a folder path, got {value!r}")
    return Path(value)


def _seconds(value, flag: str) -> float:
    """A finite number of seconds >= 0 (nan would make every call fail, inf would time until the round cap)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"{flag} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


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
        self.run, self.bundle = _path(self.run, "--run"), _path(self.bundle, "--bundle")
        self.report = _path(self.report, "--report")
        self.peer_cache = _path(self.peer_cache, "--peer-cache", optional=True)
        if self.peer_cache is not None:
            existing = next(p for p in (self.peer_cache, *self.peer_cache.parents) if p.exists() or p == p.parent)
            if existing.exists() and not existing.is_dir():
                raise UsageError(f"--peer-cache {self.peer_cache}: {existing} is a file, not a folder; pass a folder "
                                 "(it is created if missing) or leave --peer-cache out")
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
        self.settle, self.min_time = _seconds(self.settle, "--settle"), _seconds(self.min_time, "--min-time")
        for name in ("static_shapes", "peak", "plots", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"--{name.replace('_', '-')} must be true or false, got {getattr(self, name)!r}")
        if self.device not in DEVICES:
            raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.provider not in PROVIDERS:
            raise UsageError(f"--provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}")
        if self.provider == "openvino" and self.device != "cpu":
            raise UsageError("--provider openvino runs on the CPU, not CUDA; pass --device cpu")
        if self.static_shapes and self.provider != "openvino":
            raise UsageError("--static-shapes compiles the graph per input shape on OpenVINO; pass --provider "
                             "openvino or leave --static-shapes out")

    def check_task(self, task: str) -> None:
        """Refuse settings the RUN's task never uses (`TASK_SETTINGS`) set to anything but their default, naming
        the flags, as `deployft predict` refuses flags its bundle would ignore."""
        defaults = {f.name: f.default for f in fields(self)}
        unused = [name for other, names in TASK_SETTINGS.items() if other != task for name in names
                  if getattr(self, name) != defaults[name]]
        if unused:
            used = ", ".join(f"--{n.replace('_', '-')}" for n in TASK_SETTINGS.get(task, ()))
            raise UsageError(f"{', '.join('--' + n.replace('_', '-') for n in unused)}: not used by a {task} RUN "
                             f"(its timings take {used}); leave them out")
