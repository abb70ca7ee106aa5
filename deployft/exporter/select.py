"""Measured selection of a classifier's int8 file: build every int8 recipe ONNX Runtime offers, judge each with the
accuracy guard and the agreement goal, time the ones that meet both on this machine, keep the fastest (or smallest).

    model.onnx ─► plain                    dynamic int8 (DynamicQuantizeMatMul once loaded)
               ─► plain-per-channel        the same, weights scaled per output channel
               ─► static-qdq               static QDQ int8, calibrated on the RUN's training rows
    model_optimized.onnx ─► fused-qattention          dynamic int8 of the fused graph, its attention as QAttention
                                                      where ORTOptimizer fused it (the file's ops say, `recipes.py`)
                         ─► fused-qattention-per-channel   the same, weights scaled per output channel

Candidates are written into a scratch folder of the staged bundle; the kept one becomes `model_quantized.onnx`
and the rest are deleted. Every candidate's guard record, size and timing goes into `quantization.candidates`.
The task's remedies (`Task.int8_remedies`: per-channel; per-channel with the activations smoothed into the weights,
`smooth.py`; that with the head and embeddings in fp32 (a larger file, the same speed); that with the first layer
in fp32 instead; per-channel with the head, embeddings, first and last layer in fp32; that smoothed too) rebuild the
recipes they change, rung by rung (per-channel rebuilds only static-qdq, the later ones only the dynamic recipes),
until a rung has a file within the budget that also agrees with PyTorch on at least
--min-agreement of the rows (classify default 0.99); that rung's files meeting both are timed. The goal never
refuses: when no rung reaches it, the first rung with a file within budget is timed and kept, and the manifest says
so; when no rung is within budget, the export is refused with every attempt named. The rungs that smooth need
calibration rows and are skipped with the reason without them; the fused recipes are skipped when nothing was fused
(model_optimized.onnx then holds the plain graph). Candidates are timed on ONNX Runtime's default provider whatever
--provider says (`timing.PROVIDER` says why), and the manifest records it.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import StageError
from ..tasks import Remedy
from .config import VARIANT_FILES
from .guard import agreement_goal, attempt_record, meets_goal, refuse
from .recipes import RECIPES, Candidate, Recipe
from .state import ExportJob, ExportResult, VariantResult
from .timing import PROVIDER, Timer, TimingPlan, Timings, typical_shapes

logger = logging.getLogger(__name__)

SMOOTHING_BATCH = 16
"""Calibration rows per padded batch when smoothing measures activation ranges (`smooth.py` says why padded)."""
SCRATCH = "candidates.tmp"
"""The staged bundle's scratch folder for candidate files (deleted before the manifest is written)."""


Validate = Callable[[Path, bool], VariantResult]
"""Validate a file against PyTorch and judge it (`runner._report`): `(path, optimized) -> VariantResult`."""


def select_int8(job: ExportJob, result: ExportResult, validate: Validate, timer: Timer | None = None) -> str:
    """Build, judge and time every candidate; keep one as `model_quantized.onnx` and record them all.

    The task's remedies are climbed with all candidates at once: the first rung is every recipe as it is, each
    next rung rebuilds the recipes with the remedy applied, until one file is within budget and the agreement goal.

    Raises:
        AccuracyBudgetError: no candidate met the budget at any rung.
    """
    from .timing import time_files

    scratch = job.staging / SCRATCH
    scratch.mkdir()
    candidates: list[Candidate] = []
    seen: set[tuple] = set()
    smoothed: dict[str, dict[str, Any]] = {}
    goal = agreement_goal(job.config, job.task)
    first: list[Candidate] = []
    for rung, remedy in enumerate(job.task.int8_remedies):
        built = [_build(job, recipe, remedy, rung, scratch, validate, seen, smoothed) for recipe in RECIPES]
        candidates += [c for c in built if c is not None]
        passed = [c for c in built if c is not None and c.passed]
        first, meeting = first or passed, [c for c in passed if meets_goal(c.variant, goal)]
        if meeting:
            passed = meeting
            break
    else:
        tried = [attempt_record(c.name, c.variant) for c in candidates if c.variant]
        if not tried:
            raise StageError("no int8 candidate could be built (" + "; ".join(
                f"{c.name}: {c.skipped}" for c in candidates) + "); export with --quantize none")
        if not first:
            refuse("int8", tried, result.budget)
        passed = first
    timings = (timer or time_files)({c.name: c.variant.path for c in passed}, _plan(job))
    for c in passed:
        c.ms, c.score = timings.medians[c.name], timings.score(c.name)
    kept = _pick(passed, job.config.select or "fastest")
    kept.kept, reached = True, meets_goal(kept.variant, goal)
    if not reached:
        logger.warning("no int8 file within budget reached --min-agreement %g (the closest: %.4f); kept %s of the "
                       "first rung within budget (%.4f)", goal, max(c.agreement for c in candidates if c.passed),
                       kept.name, kept.agreement)
    target = job.staging / VARIANT_FILES["int8"]
    os.replace(kept.variant.path, target)
    variant = result.add(VariantResult(target, "int8", kept.recipe.base != "plain", kept.variant.validation,
                                       kept.variant.ops))
    shutil.rmtree(scratch)
    plain = next((c.score for c in passed if c.recipe is RECIPES[0]), None)
    graph_ops = result.variants[job.optimized.name].ops
    result.quantization = {
        **kept.settings, "mode": "int8", "recipe": kept.recipe.name, "remedy": kept.remedy,
        "attempts": [attempt_record(c.name, c.variant) for c in candidates if c.variant],
        "choice": kept.description(graph_ops), "candidates": [c.to_manifest(plain, graph_ops) for c in candidates],
        "selection": {**_selection(job, passed, kept, timings, plain,
                                   "within budget and the agreement goal" if goal and reached else "within budget"),
                      "agreement_goal": goal,
                      "agreement_goal_reached": reached}}
    logger.info("int8 candidate kept: %s (%s)", kept.name, variant.name)
    return variant.name


def _plan(job: ExportJob) -> TimingPlan:
    sequences = job.reference.samples.sequences
    tokens = sorted({t for seq in sequences for t in seq}) or [0]
    shapes = typical_shapes(job.source.max_length, [len(seq) for seq in sequences])
    return TimingPlan(shapes, job.config.select_seconds, tokens=tokens)


def _pick(passed: list[Candidate], rule: str) -> Candidate:
    if rule == "smallest":
        return min(passed, key=lambda c: (c.size, c.score))
    return min(passed, key=lambda c: c.score)


def _build(job: ExportJob, recipe: Recipe, remedy: Remedy, rung: int, scratch: Path, validate: Validate,
           seen: set[tuple], smoothed: dict[str, dict[str, Any]]) -> Candidate | None:
    """Quantize and validate one recipe at one rung of the remedy ladder; None when that file was already built
    (or the rung does not apply to the recipe); a recipe that cannot be built is recorded with the reason."""
    from .quantize import cpu_preset, quantize_static_int8
    from .samples import calibration_batches

    per_channel = recipe.per_channel or job.config.per_channel if remedy.per_channel is None else remedy.per_channel
    key = (recipe.base, recipe.static, per_channel, remedy.keep_fp32, remedy.smooth)
    if key in seen or (recipe.static and (remedy.keep_fp32 or remedy.smooth)):
        return None
    seen.add(key)
    preset = job.config.quantize_preset or cpu_preset()
    target = scratch / (f"{recipe.name}.onnx" if rung == 0 else f"{recipe.name}.remedy{rung}.onnx")
    candidate = Candidate(recipe, remedy.name, {})
    try:
        base = job.plain if recipe.base == "plain" else job.optimized
        if recipe.base == "fused" and not job.fused:
            candidate.skipped = f"not built: nothing was fused, so {base.name} holds the plain graph"
            return candidate
        if (recipe.static or remedy.smooth) and job.calibration is None:
            candidate.skipped = job.calibration_gap or "not built: no calibration rows"
            return candidate
        if recipe.static:
            candidate.settings = quantize_static_int8(base, target, preset, per_channel, calibration_batches(job))
        else:
            settings = _quantize_dynamic(job, remedy, base, target, preset, per_channel, smoothed)
            record = settings.get("smoothing") or {}
            if remedy.smooth and not record.get("smoothed"):
                candidate.skipped = (f"not built: none of the {record.get('activations_considered', 0)} activations "
                                     f"of {base.name} read by a weight has a channel at least "
                                     f"{record.get('min_outlier_ratio', 0):g}x its median one, so smoothing would "
                                     "rebuild the per-channel file unchanged")
                logger.info("int8 candidate %s %s", candidate.name, candidate.skipped)
                return candidate
            candidate.settings = settings
    except StageError as exc:
        logger.warning("int8 candidate %s not built: %s", candidate.name, exc)
        candidate.skipped = f"not built: {exc}"
        return candidate
    candidate.variant, candidate.size = validate(target, recipe.base != "plain"), target.stat().st_size
    return candidate


def _quantize_dynamic(job: ExportJob, remedy: Remedy, base: Path, target: Path, preset: str, per_channel: bool,
                      smoothed: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Dynamic int8 of `base` into `target` with the remedy's fp32 nodes, its activations smoothed first when the
    remedy says so; returns the file's settings, or only `{"smoothing": record}`, writing no file, when the remedy
    smooths and no activation has outliers. A base is smoothed once per export: its smoothed fp32 graph stays in the
    scratch folder beside `target`, and `smoothed` keeps its record, for the later rungs that smooth it again."""
    from .quantize import quantize_dynamic_int8, sensitive_nodes
    from .samples import calibration_batches
    from .smooth import smooth_activations

    nodes = sensitive_nodes(base, job.source.num_layers, remedy.keep_fp32) if remedy.keep_fp32 else []
    if not remedy.smooth:
        return quantize_dynamic_int8(base, target, preset, per_channel, nodes)
    graph = target.parent / f"{base.stem}.smoothed-fp32.onnx"
    if base.name not in smoothed:
        smoothed[base.name] = smooth_activations(base, graph, calibration_batches(job, base, SMOOTHING_BATCH))
    smoothing = smoothed[base.name]
    if not smoothing["smoothing"]["smoothed"]:
        return smoothing
    return {**quantize_dynamic_int8(graph, target, preset, per_channel, nodes), **smoothing,
            "quantized_from": base.name}


def _selection(job: ExportJob, passed: list[Candidate], kept: Candidate, timings: Timings, plain: float | None,
               among: str) -> dict[str, Any]:
    """How the kept file was chosen: the rule, the shapes and threads, and what it is worth against the others."""
    return {"rule": job.config.select or "fastest", "kept": kept.name,
            "score": "geometric mean over the shapes of each file's median ms (lower is faster)",
            "threads": "onnxruntime default (one per physical core), no spin-waiting, the same for every file",
            "timed_on": PROVIDER,
            "seconds_budget": job.config.select_seconds, "shapes": list(timings.medians[kept.name]),
            "rounds": timings.rounds, "seconds": round(timings.seconds, 2),
            "note": _note(passed, kept, plain, among)}


def _note(passed: list[Candidate], kept: Candidate, plain: float | None, among: str) -> str:
    """What the kept file is worth against the other kind of graph (plain vs fused) of the timed files (`among`
    says which those were), in measured time."""
    fused = [c for c in passed if c.recipe.base != "plain"]
    if kept.recipe.base == "plain":
        if not fused:
            return f"a file quantized from the plain export was kept: no fused candidate was {among}"
        best = min(fused, key=lambda c: c.score)
        return (f"a file quantized from the plain export was kept: the fastest fused candidate {among} "
                f"({best.name}) measured {best.score / kept.score:.2f}x its time")
    if plain is None:
        return f"a fused file was kept; dynamic int8 of the plain export was not {among}"
    return f"a fused file was kept: {plain / kept.score:.2f}x faster than dynamic int8 of the plain export"
