"""`export(ExportConfig) -> BUNDLE`: ONNX export, fusion, quantization, validation against PyTorch, accuracy guard.

    RUN ─► model.onnx (Optimum) ─► model_optimized.onnx (ORTOptimizer level 2; Llama / Mistral / Qwen2 decoders:
           attention fused into GroupQueryAttention with its rotary embedding by deployft; fusion report)
        ─► --quantize int8: model_quantized.onnx (classifiers: the fastest, or with --select smallest the smallest,
           of the int8 candidates within the accuracy budget, timed on this machine (`select.py`); generators:
           blockwise int8 MatMulNBits of model_optimized.onnx) | int4 (generators): model_int4.onnx, 4-bit
           MatMulNBits of model_optimized.onnx | int8-static: model_int8_static.onnx | fp16: model_fp16.onnx;
           a generator's fused graph more than 1e-2 from PyTorch in logits is not deployable, and its int8, int4
           and fp16 files are made from model.onnx instead (`guard.fused_fp32_mismatch`)
        ─► every file validated against the PyTorch original through the runtime's own session and decoder
        ─► the accuracy guard (`guard.py`) picks the deployable file ─► BUNDLE, written atomically (and, with
           --sign-key, its manifest signed inside the same atomic step: deployft.json.sig)
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..staging import atomic_folder, check_apart, check_output_free
from ..tasks import Remedy
from .config import VARIANT_FILES, ExportConfig
from .guard import (FP32_MISMATCH, attempt_record, budget_for, check_decidable, climb, first_within_budget,
                    fused_fp32_mismatch, guard_record, judge)
from .preflight import check_device, check_task_flags, signer
from .state import ExportJob, ExportResult, VariantResult

logger = logging.getLogger(__name__)

BLOCKWISE_NOTE = "blockwise int8 (MatMulNBits: 8-bit weights, one scale per block along K, int8 compute) of {base}"
"""What the `quantization.choice` field says about a generator's int8 (formatted with `_base_text`)."""
INT4_NOTE = ("blockwise int4 (MatMulNBits: 4-bit weights, one scale per block along K, int8 compute; the LM head "
             "at {head_bits} bits, the token embedding as `embedding` says) of {base}")
"""What the `quantization.choice` field says about int4 (formatted with the head's width and `_base_text`)."""


def export(config: ExportConfig) -> Path:
    """Export, optimize, quantize and validate a RUN into a BUNDLE folder, written atomically.

    Returns:
        The BUNDLE folder.

    Raises:
        ModelError: not a RUN/model folder, unreadable weights, an architecture Optimum cannot export.
        DataError: int8-static calibration on a RUN whose data is gone.
        OutputExistsError: the output folder exists (pass overwrite).
        UsageError: bad flags, an --output that is or holds an input (the RUN, its data, --sign-key), a budget
            the validation rows cannot decide (`guard.check_decidable`); an unusable --sign-key (all checked before
            any work).
        DeviceError, MissingDependencyError: --device cuda or --provider openvino that this machine cannot run
            (checked before any work, `preflight.check_device`).
        AccuracyBudgetError: no variant met --max-accuracy-drop (no bundle is written).
    """
    from .bundle import write_bundle
    from .samples import validation_samples
    from .source import check_exportable, data_paths, load_tokenizer, load_torch_model, read_source
    from .validate import reference

    source = read_source(config.run, config.task)
    check_apart(config.output, data_paths(source))  # the RUN and --sign-key: `ExportConfig`
    task = source.spec
    check_exportable(source)
    check_task_flags(config, task)
    check_output_free(config.output, config.overwrite)
    key = signer(config)
    check_device(config)
    tokenizer = load_tokenizer(source)
    calibration, gap = _calibration(config, source, tokenizer)
    limit = config.validate_samples or task.validation_rows
    held_out = validation_samples(source, tokenizer, limit)
    budget, rows = budget_for(config, task), len(held_out.sequences)
    check_decidable(task, budget, rows, limit)
    model = load_torch_model(source)
    ref = reference(source, model, tokenizer, held_out)
    attention = _decoder_attention(config, source, model)
    with atomic_folder(config.output, config.overwrite) as staging:
        job = ExportJob(config, source, task, staging, ref, budget, calibration, gap)
        result = _build(job, attention)
        result.validation_inputs = held_out.origin
        result.guard = guard_record(task, budget, rows, held_out.source)
        write_bundle(staging, source, result)
        if key is not None:
            from ..signing import sign_bundle

            sign_bundle(staging, key)
    return config.output.resolve()


def _calibration(config: ExportConfig, source, tokenizer):
    """`(rows, None)` for int8-static and a classifier's int8 candidates; for the candidates, `(None, why)` when
    the RUN has no data to calibrate on (int8-static refuses that instead)."""
    from .samples import calibration_samples

    if config.quantize == "int8-static":
        return calibration_samples(source, tokenizer, config.calibration_samples), None
    if config.quantize != "int8" or source.spec.int8_method != "dynamic":
        return None, None
    if not source.is_run:
        return None, "not built: a plain model folder has no training rows to calibrate on"
    try:
        return calibration_samples(source, tokenizer, config.calibration_samples), None
    except DataError as exc:
        return None, f"not built: the RUN's training rows are unreadable ({exc})"


def _decoder_attention(config: ExportConfig, source, model) -> tuple[Any, str | None]:
    """`(AttentionShape, None)` when a decoder's attention will be fused, else `(None, why not)`."""
    from ..manifest import read_json
    from .decoder_fusion import attention_shape

    if not source.spec.generates:
        return None, None
    if config.fuse_attention is False:
        return None, "--no-fuse-attention was given"
    if config.device == "cuda":
        return None, ("deployft fuses decoder attention for --device cpu only (GroupQueryAttention has no fp32 CUDA "
                      "kernel, and its fp16 CUDA path is not validated here)")
    return attention_shape(read_json(source.path / "config.json"), model)


def _build(job: ExportJob, attention) -> ExportResult:
    """Write every .onnx variant into the staging folder, validate each, and pick the deployable one."""
    from .onnx_export import export_onnx, onnx_opset
    from .optimize import anything_fused, optimize

    job.plain = export_onnx(job.source, job.staging, job.config.opset)
    shape, unfused_reason = attention
    job.optimized, fusion = optimize(job.plain, decoder=job.task.generates, attention=shape,
                                     unfused_reason=unfused_reason, first_position=job.config.device == "cpu")
    job.fused = anything_fused(fusion)  # False: model_optimized.onnx holds the plain graph, and says so
    result = ExportResult(onnx_opset(job.plain), fusion, job.config.device, job.budget)
    for path, optimized in ((job.plain, False), (job.optimized, job.fused)):
        _validated(job, result, path, "fp32", optimized)
    job.base = _base(job, result)
    build = {"none": _fp32, "int8": _int8, "int4": _int4, "int8-static": _int8_static,
             "fp16": _fp16}[job.config.quantize]
    result.model_file = build(job, result)
    return result


def _validated(job: ExportJob, result: ExportResult, path: Path, precision: str, optimized: bool) -> VariantResult:
    """Validate `path` against PyTorch, judge it, and record it in the result."""
    return result.add(_report(job, result, path, precision, optimized))


def _report(job: ExportJob, result: ExportResult, path: Path, precision: str, optimized: bool) -> VariantResult:
    """Validate `path` against PyTorch and judge it: the file with its drop (the judged bound) and op counts."""
    from .optimize import op_counts
    from .validate import compare

    report = compare(job.reference, path, job.config.device, job.config.provider)
    report["drop"], report["guard"] = judge(job.task, report, result.budget)
    report["drop_measure"] = result.budget.measure
    logger.info("%s: %s", path.name, report)
    return VariantResult(path, precision, optimized, report, op_counts(path))


def _base(job: ExportJob, result: ExportResult) -> Path:
    """The graph a generator's blockwise int8 / int4 and an fp16 file are made from: model_optimized.onnx, unless a
    generator's fused fp32 file fails its exactness check (`guard.fused_fp32_mismatch`): then model.onnx, and the
    fusion notes say why."""
    if not (job.task.generates and job.fused):
        return job.optimized
    derived = VARIANT_FILES.get(job.config.quantize) if job.config.quantize != "int8-static" else None
    why = fused_fp32_mismatch(result.variants[job.optimized.name], derived)
    if not why:
        return job.optimized
    logger.warning(why)  # the card and `info` print the fusion notes
    result.fusion["notes"].append(why)
    return job.plain


def _base_text(job: ExportJob, fusion: dict[str, Any]) -> str:
    """Which graph a generator's quantized file was made from and what it holds fused (`optimize.fusion_text`), as
    its `quantization.choice` says."""
    from .optimize import fusion_text

    if job.base == job.optimized:
        return f"{job.optimized.name}, " + (fusion_text(fusion) if job.fused
                                           else "the plain export's graph (nothing fused)")
    return (f"{job.plain.name}, the plain export (attention not fused): {job.optimized.name} failed its exactness "
            "check, as the fusion notes say")


def _fp32(job: ExportJob, result: ExportResult) -> str:
    names = [job.optimized.name, job.plain.name]
    return first_within_budget(result, names if job.base == job.optimized else names[1:], job.source.path.name,
                               FP32_MISMATCH)


def _int8(job: ExportJob, result: ExportResult) -> str:
    """Classifiers: measured selection among the int8 candidates (`select.py`). Generators: blockwise int8,
    climbing the remedy ladder until the budget is met."""
    if job.task.int8_method == "dynamic":
        from .select import select_int8

        return select_int8(job, result, lambda path, fused: _report(job, result, path, "int8", fused))
    return _ladder(job, result, "int8", job.task.int8_remedies, _blockwise_int8,
                   BLOCKWISE_NOTE.format(base=_base_text(job, result.fusion)))


def _int4(job: ExportJob, result: ExportResult) -> str:
    """Blockwise int4 of a decoder's base graph (`_base`), climbing the task's int4 ladder until the budget is met."""
    return _ladder(job, result, "int4", job.task.int4_remedies, _blockwise_int4,
                   INT4_NOTE.format(head_bits=_head_bits(job), base=_base_text(job, result.fusion)))


def _ladder(job: ExportJob, result: ExportResult, mode: str, remedies: tuple[Remedy, ...], quantize,
            note: str) -> str:
    """Try `remedies` in order with `quantize`, skipping one that changes nothing, and record the one that passed."""
    seen: set[tuple] = set()

    def attempt(remedy: Remedy):
        settings = _effective(job, remedy, mode)
        if settings in seen:
            return None
        seen.add(settings)
        return quantize(job, result, remedy)

    remedy, settings, tried = climb(remedies, result.budget, attempt, mode)
    result.quantization = {**settings, "remedy": remedy.name, "attempts": tried, "choice": note}
    return VARIANT_FILES[mode]


def _effective(job: ExportJob, remedy: Remedy, mode: str) -> tuple:
    """What a generator's remedy changes in the file: two remedies with the same settings build the same file."""
    return _block_size(job, remedy, mode), remedy.keep_head, remedy.eight_bit_edges


def _block_size(job: ExportJob, remedy: Remedy, mode: str) -> int:
    """The remedy's block size, else --block-size, else the mode's default (int8 64, int4 32)."""
    from .int4 import INT4_BLOCK_SIZE
    from .quantize import BLOCK_SIZE

    return remedy.block_size or job.config.block_size or {"int8": BLOCK_SIZE, "int4": INT4_BLOCK_SIZE}[mode]


def _blockwise_int8(job: ExportJob, result: ExportResult, remedy: Remedy) -> tuple[dict, VariantResult]:
    """Blockwise int8 of a decoder's base graph (`_base`)."""
    from .quantize import head_matmuls, quantize_blockwise_int8

    target = job.staging / VARIANT_FILES["int8"]
    excluded = head_matmuls(job.base) if remedy.keep_head else []
    settings = quantize_blockwise_int8(job.base, target, _block_size(job, remedy, "int8"), excluded)
    return settings, _validated(job, result, target, "int8", job.base_fused)


def _blockwise_int4(job: ExportJob, result: ExportResult, remedy: Remedy) -> tuple[dict, VariantResult]:
    """4-bit MatMulNBits of a decoder's base graph (`_base`), the LM head at --head-bits (and with the remedy, the
    edge layers at 8)."""
    from .int4 import edge_layer_matmuls, quantize_int4, width_of
    from .quantize import head_matmuls

    target = job.staging / VARIANT_FILES["int4"]
    head = head_matmuls(job.base)
    eight_bit = list(head) if _head_bits(job) == 8 else []
    if remedy.eight_bit_edges:
        eight_bit += edge_layer_matmuls(job.base, job.source.num_layers)
    settings = quantize_int4(job.base, target, _block_size(job, remedy, "int4"), eight_bit)
    settings["head_bits"] = width_of(target, head)  # read back from the file
    return settings, _validated(job, result, target, "int4", job.base_fused)


def _head_bits(job: ExportJob) -> int:
    """The LM head's width under int4: --head-bits, else 8."""
    return job.config.head_bits or 8


def _int8_static(job: ExportJob, result: ExportResult) -> str:
    from .quantize import cpu_preset, quantize_nncf_int8, quantize_static_int8
    from .samples import calibration_batches

    target = job.staging / VARIANT_FILES["int8-static"]
    if job.config.provider == "openvino":  # the file OpenVINO runs as int8: quantized the way OpenVINO's users do
        settings = quantize_nncf_int8(job.plain, target, calibration_batches(job))
    else:
        settings = quantize_static_int8(job.plain, target, job.config.quantize_preset or cpu_preset(),
                                        job.config.per_channel, calibration_batches(job))
    variant = _validated(job, result, target, "int8-static", False)
    result.quantization = {**settings, "remedy": "none", "attempts": [attempt_record("none", variant)]}
    return first_within_budget(result, [target.name], job.source.path.name)


def _fp16(job: ExportJob, result: ExportResult) -> str:
    from .quantize import convert_fp16

    target = job.staging / VARIANT_FILES["fp16"]
    settings = convert_fp16(job.base, target)
    variant = _validated(job, result, target, "fp16", job.base_fused)
    result.quantization = {**settings, "remedy": "none", "attempts": [attempt_record("none", variant)]}
    return first_within_budget(result, [target.name], job.source.path.name)
