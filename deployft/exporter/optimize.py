"""Graph fusion through ORTOptimizer at the portable level 2, and the fusion report: op counts before and after.

Level 2 fuses attention and Gelu/FastGelu for encoders and writes only ops every ONNX Runtime build has; level
99 would write hardware-specific layouts, so it is never used for a bundle. An encoder's residual Add and
LayerNormalization stay two ops: the CPU kernel of the SkipLayerNormalization they would fuse into is a scalar
loop, measured 2.7x-4.8x slower than the pair (benchmarks/skip_layernorm.py), and deployft's CPU sessions keep ONNX
Runtime from fusing them at load (`runtime.session.CPU_DISABLED_OPTIMIZERS`); a CUDA session fuses them there.
An encoder's feed-forward bias Add and Gelu stay two ops too: in a dynamic int8 file ONNX Runtime folds that Add
into the quantized MatMul before it (DynamicQuantizeMatMul's bias) instead of running its BiasGelu kernel, which
took the default classifier's int8 file 1.01x-1.09x the time, most at b16x128
(benchmarks/results/xeon-amx/int8_recipes.md); its CPU and CUDA providers fuse the pair into BiasGelu when they
load the fp32 file, so that file runs as it did. A classifier whose head reads the first position alone gets its
last layer computed for that position only (`first_position`).
Decoders get LayerNorm and activation fusions only from Optimum's optimizer; their attention is fused afterwards by
`decoder_fusion` (GroupQueryAttention with its rotary embedding) where the architecture is supported, and the report
says which happened and why. Where nothing is fused (a model type ORTOptimizer has no fusions for, its attention left
unfused), model_optimized.onnx holds the plain graph: `anything_fused` tells, and the bundle says so.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import StageError, reraise_as
from ..manifest import read_json
from .first_position import keep_first_position

if TYPE_CHECKING:
    from .decoder_fusion import AttentionShape

OPTIMIZATION_LEVEL = 2
OPTIMIZED_NAME = "model_optimized.onnx"

FUSED_OPS = (
    "Attention", "MultiHeadAttention", "GroupQueryAttention", "QAttention", "EmbedLayerNormalization",
    "SkipLayerNormalization", "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization",
    "LayerNormalization", "BiasGelu", "FastGelu", "Gelu", "QuickGelu", "BiasSplitGelu", "RotaryEmbedding",
)
"""Ops whose appearance after optimization means a fusion happened (contrib ops plus LayerNormalization)."""

ATTENTION_OPS = ("Attention", "MultiHeadAttention", "GroupQueryAttention", "QAttention")
"""Ops that carry a whole attention block (QAttention: a dynamic int8 file's quantized Attention); `fused_attention`
is the one test of whether a file's attention is fused."""
NOTHING_FUSED = "nothing fused"
"""The fusion summary when the optimizer fused nothing."""

ENCODER_FUSIONS_LEFT_OUT = {"disable_skip_layer_norm_fusion": True, "disable_bias_skip_layer_norm_fusion": True,
                           "disable_bias_gelu_fusion": True}
"""ORTOptimizer's fusions an encoder's graph is written without (see the module's docstring)."""
SKIP_LAYER_NORM_NOTE = ("residual Add and LayerNormalization left as two ops: ONNX Runtime's SkipLayerNormalization "
                        "CPU kernel is a scalar loop, slower than the pair; deployft's CPU sessions keep them apart, "
                        "a CUDA session fuses them at load")
"""The fusion note of an encoder's bundle (the figures are in benchmarks/results/skip_layernorm.md)."""
BIAS_GELU_NOTE = ("feed-forward bias Add and Gelu left as two ops: a dynamic int8 file then folds the bias into its "
                  "quantized MatMul instead of running ONNX Runtime's BiasGelu kernel; ONNX Runtime's CPU and CUDA "
                  "providers fuse the pair into BiasGelu when they load the fp32 file")
"""The fusion note after SKIP_LAYER_NORM_NOTE when a BiasGelu (or biased FastGelu) was split (figures:
benchmarks/results/xeon-amx/int8_recipes.md)."""


def op_counts(path: str | Path) -> dict[str, int]:
    """`{op type: count}` of an ONNX file's main graph, most frequent first."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def optimize(onnx_path: Path, decoder: bool, attention: AttentionShape | None = None,
             unfused_reason: str | None = None, first_position: bool = True) -> tuple[Path, dict[str, Any]]:
    """Fuse `onnx_path` with ORTOptimizer (level 2) into `model_optimized.onnx` beside it.

    Model types ORTOptimizer has no fusions for (Qwen2, ...) start from a copy of the plain export instead of
    failing; the report says so.

    Args:
        onnx_path: the plain export (`model.onnx`), in a folder that also holds its config.json.
        decoder: the model is a causal LM.
        attention: a decoder's `decoder_fusion.AttentionShape`: its attention is then fused into
            GroupQueryAttention with its rotary embedding after ORTOptimizer.
        unfused_reason: why a decoder's attention is not fused (None when `attention` is given).
        first_position: an encoder's last layer may be computed for the first position alone where its head reads
            only that (`first_position.keep_first_position`; export asks for it on CPU targets, where it is
            validated).

    Returns:
        The optimized file and the fusion report `{"before", "after", "summary", "notes"}`.

    Raises:
        StageError: ORTOptimizer failed.
    """
    folder = onnx_path.parent
    target = folder / OPTIMIZED_NAME
    skipped = _ort_optimizer_skip(folder)
    split, position_note = 0, None
    if not skipped:
        _ort_optimize(onnx_path, target, **({} if decoder else ENCODER_FUSIONS_LEFT_OUT))
        if not decoder:
            split = split_bias_gelu(target)
            position_note = keep_first_position(target) if first_position else None
    rewritten: list[str] = []
    if skipped or attention is not None:
        rewritten = _rewrite(onnx_path if skipped else target, target, attention)
    report = fusion_report(op_counts(onnx_path), op_counts(target), decoder, unfused_reason)
    after_attention_note = 1 if decoder else 0
    report["notes"][after_attention_note:after_attention_note] = [*([skipped] if skipped else []), *rewritten]
    if not decoder and not skipped:
        report["notes"][0:0] = [SKIP_LAYER_NORM_NOTE, *([BIAS_GELU_NOTE] if split else []),
                                *([position_note] if position_note else [])]
    report["first_position"] = position_note is not None  # its FLOPs are fewer (bench's fraction of peak)
    return target, report


def _ort_optimizer_skip(folder: Path) -> str | None:
    """Why ORTOptimizer cannot optimize this model type (it raises for types it has no fusions for), or None."""
    from optimum.onnxruntime.configuration import OptimizationConfig
    from optimum.onnxruntime.utils import ORTConfigManager

    model_type = read_json(folder / "config.json", StageError).get("model_type")
    try:
        ORTConfigManager.check_optimization_supported_model(model_type, OptimizationConfig(OPTIMIZATION_LEVEL))
    except (KeyError, NotImplementedError):
        return (f"ORTOptimizer has no graph optimizations for model type {model_type!r}: the plain export is the "
                "base of the optimized file (ONNX Runtime still fuses normalizations and activations when it loads it)")
    return None


def _ort_optimize(onnx_path: Path, target: Path, **disabled: bool) -> None:
    """ORTOptimizer at level 2 (with the fusions `disabled` names turned off), written as `target`."""
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import OptimizationConfig

    folder = onnx_path.parent
    # inside the (staged) folder, never beside it: a kill leaves the scratch where the staging cleanup removes it
    with tempfile.TemporaryDirectory(dir=folder, prefix=".ort-optimizer-") as scratch:
        with reraise_as(StageError, f"ORTOptimizer (level {OPTIMIZATION_LEVEL}) failed on {onnx_path.name}: "
                                    "{reason}"):
            optimizer = ORTOptimizer.from_pretrained(folder, file_names=[onnx_path.name])
            optimizer.optimize(OptimizationConfig(optimization_level=OPTIMIZATION_LEVEL, **disabled), save_dir=scratch)
        written = Path(scratch) / f"{onnx_path.stem}_optimized.onnx"
        if not written.is_file():
            raise StageError(f"ORTOptimizer did not write {written.name} for {onnx_path.name}")
        for path in Path(scratch).glob(f"{written.name}*"):  # the graph and, past 2 GB, its external weights
            shutil.move(str(path), target if path == written else target.parent / path.name)


def split_bias_gelu(path: Path) -> int:
    """Rewrite every BiasGelu of `path`, and every FastGelu given a bias, as the Add and the activation it fused, in
    place; returns how many.

    ONNX Runtime's own load-time fusions (which ORTOptimizer runs first at level 2) fuse the pair whatever the
    optimizer's `disable_bias_gelu_fusion` says (kept in ENCODER_FUSIONS_LEFT_OUT for its own Python fusions), so the
    encoder's file is split after the optimizer.

    Raises:
        StageError: the file could not be read or written.
    """
    import onnx
    from onnx import helper

    from .onnx_export import external_files, save_model

    with reraise_as(StageError, f"splitting the bias Add from the Gelu of {path.name} failed: {{reason}}"):
        model = onnx.load(str(path))
        nodes, split = [], 0
        for node in model.graph.node:
            biased = node.op_type == "BiasGelu" or (node.op_type == "FastGelu" and len(node.input) > 1
                                                      and node.input[1])
            if not biased:
                nodes.append(node)
                continue
            split += 1
            name, added = node.name or node.output[0], f"{node.output[0]}/bias_added"
            activation = "Gelu" if node.op_type == "BiasGelu" else "FastGelu"
            nodes += [helper.make_node("Add", list(node.input[:2]), [added], name=f"{name}/Add"),
                      helper.make_node(activation, [added], list(node.output), name=f"{name}/{activation}",
                                       domain="com.microsoft")]
        if split:
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            save_model(model, path, external_files(path))
    return split


def _rewrite(src: Path, dst: Path, attention: AttentionShape | None) -> list[str]:
    """Load `src` once, fuse its decoder attention when `attention` is given (then pack its sibling projections
    and give its LM head the optional `logits_to_keep` input), and save it as `dst`; returns the fusion notes.

    `dst` gets its own external weights when it needs them, never shares `src`'s, and leaves no stale weight file.
    """
    import onnx

    from .decoder_fusion import fuse_attention, mark_shared_cache
    from .decoder_graph import add_logits_to_keep, attention_reads_packed_qkv, lm_head, pack_projections
    from .onnx_export import external_files, save_model

    stale = external_files(dst) if dst.exists() else []
    model = onnx.load(str(src))
    notes = []
    if attention is not None:
        try:
            fuse_attention(model, attention)
            mark_shared_cache(model)
            head = lm_head(model)
            packed = pack_projections(model, exclude={head} if head else set())
            reading_packed = attention_reads_packed_qkv(model)
            if head:
                add_logits_to_keep(model, head)
        except ValueError as exc:
            raise StageError(f"fusing the decoder attention of {src.name} failed: {exc}; "
                             "export with --no-fuse-attention to keep the exported attention") from exc
        if packed:
            notes.append(f"{sum(map(len, packed))} projections that read the same activation packed into "
                         f"{len(packed)} MatMuls ({', '.join(sorted({f'{len(g)} to 1' for g in packed}))}: a "
                         "layer's q/k/v, its MLP's gate/up), each followed by a Split unless the attention "
                         "reads it (below)")
        if reading_packed:
            notes.append(f"GroupQueryAttention reads the packed q/k/v of {reading_packed} layers (their Split "
                         "dropped) and rotates q and k itself")
        notes.append("the LM head computes the last `logits_to_keep` positions when that optional input is fed "
                     "(the runtime feeds 1; 0, the default, computes every position)" if head else
                     "the LM head could not be found: every step computes every position's logits")
        notes.append("the KV cache is marked shareable: the runtime binds one buffer per layer as past and present "
                     "and GroupQueryAttention updates it in place")
    save_model(model, dst, stale, external=attention is not None)  # a fused decoder: weights mapped, not parsed
    return notes


def fusion_report(before: dict[str, int], after: dict[str, int], decoder: bool,
                  unfused_reason: str | None = None) -> dict[str, Any]:
    """What the optimizer fused, as counts and as one readable line, with plain notes on what it did not."""
    fused = _fused(before, after)
    summary = ", ".join(f"{op} ×{n}" for op, n in fused.items()) or NOTHING_FUSED
    notes = []
    has_attention = bool(fused_attention(after))
    if decoder and after.get("GroupQueryAttention", 0) > before.get("GroupQueryAttention", 0):
        rotary = (f"with RotaryEmbedding ×{after['RotaryEmbedding']} (q and k)" if after.get("RotaryEmbedding")
                  else "(each rotating q and k itself)")
        notes.append(f"decoder attention fused by deployft: GroupQueryAttention ×{after['GroupQueryAttention']} "
                     f"{rotary}; ORTOptimizer fused the normalizations and activations")
    elif decoder and has_attention:
        notes.append(f"decoder attention fused by ORTOptimizer: {', '.join(fused_attention(after))}")
    elif decoder:
        notes.append(f"attention is not fused: {unfused_reason or 'no attention fusion for this decoder'}; "
                     + (f"ORTOptimizer fused only {', '.join(fused)}" if fused else "nothing else was fused either"))
    elif not decoder and not has_attention:
        notes.append("attention was not fused for this encoder; the deployable model runs unfused attention")
    removed = sum(before.values()) - sum(after.values())
    notes.append(f"{sum(before.values())} nodes before, {sum(after.values())} after ({removed} removed)")
    return {"level": OPTIMIZATION_LEVEL, "before": before, "after": after, "summary": summary, "notes": notes}


def _fused(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The fused op types the optimizer added, with their counts after it."""
    return {op: n for op, n in after.items() if op in FUSED_OPS and n > before.get(op, 0)}


def anything_fused(report: dict[str, Any]) -> bool:
    """Whether the optimized file holds any fusion; False when it is the plain export's graph (a model type
    ORTOptimizer has no fusions for, its attention left unfused), which the bundle then says it is."""
    return bool(_fused(report["before"], report["after"]))


def fused_attention(ops: dict[str, int]) -> dict[str, int]:
    """The attention ops among a file's op counts `ops`, with their counts; empty when its attention is not fused.

    The one definition of "attention is fused" behind the fusion report, the card, `info`, the int8 candidates'
    descriptions and a generator's `quantization.choice`.
    """
    return {op: ops[op] for op in ATTENTION_OPS if ops.get(op)}


def attention_fused(report: dict[str, Any]) -> bool:
    """True when the optimized graph holds a fused attention op (`fused_attention`)."""
    return bool(fused_attention(report["after"]))


def fusion_text(report: dict[str, Any]) -> str:
    """What the fused graph holds, in words: `attention fused (GroupQueryAttention ×2)`, `attention not fused;
    SimplifiedLayerNormalization ×5 fused`, or `nothing fused`."""
    attention = fused_attention(report["after"])
    if attention:
        return f"attention fused ({', '.join(f'{op} ×{n}' for op, n in attention.items())})"
    fused = _fused(report["before"], report["after"])
    if fused:
        return f"attention not fused; {', '.join(f'{op} ×{n}' for op, n in fused.items())} fused"
    return NOTHING_FUSED
