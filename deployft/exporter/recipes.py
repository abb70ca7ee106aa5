"""A classifier's int8 recipes and the candidate files they make (`select.py` builds, judges and times them).

A recipe that quantizes the fused graph is named for the attention it quantizes (`fused-qattention`), but what its
file holds depends on what ORTOptimizer fused and on the nodes a remedy keeps in fp32, so a candidate describes
itself from its own file's op counts (`attention_text`), never from its recipe's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .first_position import FIRST_POSITION
from .optimize import fused_attention
from .state import VariantResult

__all__ = ["RECIPES", "Candidate", "Recipe", "attention_text"]

FUSED_GRAPH = "dynamic int8 of the fused graph (model_optimized.onnx)"


@dataclass(frozen=True)
class Recipe:
    """One way to make the int8 file."""

    name: str
    """How the manifest, `export` and `info` name the candidate."""
    base: str
    """The graph it quantizes: `plain` (model.onnx) or `fused` (model_optimized.onnx)."""
    description: str
    """What the file is, in words (the manifest's `quantization.choice` when it is kept); `{attention}` is filled
    in from the file's own op counts (`Candidate.description`)."""
    per_channel: bool = False
    """Weights scaled per output channel (always, whatever --per-channel says)."""
    static: bool = False
    """Static QDQ int8 with calibrated activation ranges, instead of dynamic int8."""


RECIPES = (
    Recipe("plain", "plain", "dynamic int8 of the plain export (model.onnx): attention not fused; ONNX Runtime fuses "
                             "the quantized MatMuls when it loads the file (DynamicQuantizeMatMul)"),
    Recipe("plain-per-channel", "plain", "dynamic int8 of the plain export, weights scaled per output channel",
           per_channel=True),
    Recipe("fused-qattention", "fused", f"{FUSED_GRAPH}, {{attention}}"),
    Recipe("fused-qattention-per-channel", "fused", f"{FUSED_GRAPH}, {{attention}}, weights scaled per output channel",
           per_channel=True),
    Recipe("static-qdq", "plain", "static int8 (QDQ) of the plain export, activation ranges calibrated (min/max) on "
                                  "the RUN's training rows", static=True),
)
"""The candidates, in the order they are built and listed."""


def attention_text(ops: dict[str, int] | None, graph_ops: dict[str, int], excluded: list[str] = ()) -> str:
    """What a file quantized from the fused graph holds for attention, read from its op counts `ops` (None: the
    file was not built, and the fused graph's `graph_ops` say whether it has a fused attention to quantize) and
    the nodes its quantization `excluded` (a first-position MultiHeadAttention reads its q/k/v MatMuls' precision)."""
    if ops is None:
        fused = fused_attention(graph_ops)
        return f"its attention fused ({', '.join(fused)})" if fused else "attention not fused"
    fused = fused_attention(ops)
    quantized = fused.pop("QAttention", 0)
    first = fused.pop("MultiHeadAttention", 0)
    fp32 = [f"{op} ×{n}" for op, n in fused.items()]
    if quantized and fp32:
        text = f"its fused attention quantized (QAttention ×{quantized}) but for {', '.join(fp32)} kept in fp32"
    elif quantized:
        text = f"its fused attention quantized{'' if first else ' too'} (QAttention ×{quantized})"
    elif fp32:
        text = f"its fused attention kept in fp32 ({', '.join(fp32)})"
    else:
        text = "" if first else "attention not fused"
    if first:
        precision = "fp32" if any(FIRST_POSITION in name for name in excluded) else "int8"
        last = (f"the last layer's first position in MultiHeadAttention ×{first} over {precision} q/k/v "
                "projections")
        text = f"{text}, {last}" if text else last
    return text


@dataclass
class Candidate:
    """One recipe's file at one rung of the remedy ladder, and what was found about it."""

    recipe: Recipe
    remedy: str
    """The remedy applied (`none` on the first rung)."""
    settings: dict[str, Any]
    variant: VariantResult | None = None
    """The validated file; None when the recipe could not be built (`skipped` says why)."""
    skipped: str | None = None
    ms: dict[str, float] | None = None
    """Median ms per shape, for candidates within budget."""
    score: float | None = None
    """The geometric mean of `ms` (what --select fastest compares)."""
    kept: bool = False
    size: int | None = None
    """The file's bytes."""

    @property
    def name(self) -> str:
        """The recipe's name, with the remedy after a semicolon past the first rung."""
        return self.recipe.name if self.remedy == "none" else f"{self.recipe.name}; {self.remedy}"

    @property
    def passed(self) -> bool:
        return self.variant is not None and bool(self.variant.validation["guard"]["passed"])

    @property
    def agreement(self) -> float:
        """Top-1 agreement with PyTorch on the validation rows (0 when the file was not built)."""
        return float(self.variant.validation["top1_agreement"]) if self.variant is not None else 0.0

    def description(self, graph_ops: dict[str, int]) -> str:
        """What the file is, in words: the recipe's, its attention as its own op counts say (`attention_text`;
        `graph_ops`: the fused graph's, for a file that was not built)."""
        ops = self.variant.ops if self.variant is not None else None
        excluded = self.settings.get("nodes_excluded") or []
        return self.recipe.description.format(attention=attention_text(ops, graph_ops, excluded))

    def to_manifest(self, plain_score: float | None, graph_ops: dict[str, int]) -> dict[str, Any]:
        validation = self.variant.validation if self.variant else {}
        vs_plain = plain_score / self.score if plain_score and self.score else None
        return {"name": self.name, "recipe": self.recipe.name, "remedy": self.remedy,
                "description": self.description(graph_ops),
                "quantized_from": self.settings.get("quantized_from"), "per_channel": self.settings.get("per_channel"),
                "static": self.recipe.static, "bytes": self.size, "drop": validation.get("drop"),
                "guard": dict(validation.get("guard") or {}), "passed": self.passed, "skipped": self.skipped,
                "ms": self.ms, "score_ms": self.score, "vs_plain": vs_plain, "kept": self.kept}
