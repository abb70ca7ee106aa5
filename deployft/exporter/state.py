"""Typed export state: what the export of one RUN works on (`ExportJob`) and what it found (`ExportResult`).

One `VariantResult` per `.onnx` file; `bundle.write_bundle` turns the result into the manifest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..tasks import Task
from .config import ExportConfig
from .source import Source


@dataclass(frozen=True)
class Budget:
    """The accuracy guard's limit: how much worse than PyTorch the deployable file may be."""

    max_drop: float
    """The limit, in `measure`."""
    measure: str
    """The unit (`accuracy points`, `perplexity increase %`)."""
    origin: str = "--max-accuracy-drop"
    """Where the limit came from: the flag, or which of the task's defaults and why."""

    def to_manifest(self) -> dict[str, Any]:
        return {"max_drop": self.max_drop, "measure": self.measure, "origin": self.origin}


@dataclass
class VariantResult:
    """One `.onnx` file of the bundle and its validation against PyTorch."""

    path: Path
    """The file, in the staging folder."""
    precision: str
    """`fp32`, `int8`, `int4`, `int8-static` or `fp16`."""
    optimized: bool
    """Whether it derives from the fused (ORTOptimizer / attention-fused) graph."""
    validation: dict[str, Any]
    """The validation report (`deployft.exporter.validate.compare`), with `drop` (the judged bound, in the budget's
    unit) and `guard` (`deployft.exporter.guard.judge`)."""
    ops: dict[str, int] = field(default_factory=dict)
    """The file's own op counts (`{op type: count}`), what `info` and the model card describe it by."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def drop(self) -> float:
        return self.validation["drop"]

    def to_manifest(self) -> dict[str, Any]:
        return {"precision": self.precision, "optimized": self.optimized, "ops": self.ops,
                "validation": self.validation}


@dataclass
class ExportJob:
    """What the export of one source works on, set up before the first file is written."""

    config: ExportConfig
    source: Source
    task: Task
    staging: Path
    """The temporary BUNDLE folder (renamed into place when complete)."""
    reference: Any
    """The PyTorch original's outputs on the validation rows (`deployft.exporter.validate.Reference`)."""
    budget: Budget
    """The accuracy budget every file is judged against (`guard.budget_for`)."""
    calibration: Any = None
    """int8-static, and a classifier's int8 candidates: the encoded calibration rows
    (`deployft.exporter.samples.Samples`)."""
    calibration_gap: str | None = None
    """Why a classifier's int8 has no calibration rows (its static-qdq candidate and its smoothing rungs are then
    skipped with this reason)."""
    plain: Path | None = None
    """model.onnx, once exported."""
    optimized: Path | None = None
    """model_optimized.onnx, once written."""
    fused: bool = True
    """Whether model_optimized.onnx holds any fusion (`optimize.anything_fused`); False: it is the plain graph, and
    neither it nor a file made from it is recorded as optimized."""
    base: Path | None = None
    """The fp32 graph a generator's blockwise int8 / int4 and an fp16 file are made from: model_optimized.onnx, or
    model.onnx when a generator's fused graph failed its exactness check (`guard.fused_fp32_mismatch`)."""

    @property
    def base_fused(self) -> bool:
        """Whether a file made from `base` derives from a graph holding a fusion (its `optimized` flag)."""
        return self.fused and self.base == self.optimized


@dataclass
class ExportResult:
    """Everything the manifest says about the files: fusion, quantization, validation, the deployable file."""

    opset: int
    fusion: dict[str, Any]
    device: str
    budget: Budget
    variants: dict[str, VariantResult] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    model_file: str | None = None
    validation_inputs: str | None = None
    guard: dict[str, Any] = field(default_factory=dict)
    """The accuracy guard's rule, rows and warnings (the manifest's `guard`)."""

    def add(self, variant: VariantResult) -> VariantResult:
        """Record a validated file (a later attempt at the same file replaces the earlier one)."""
        self.variants[variant.name] = variant
        return variant
