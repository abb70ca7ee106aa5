"""How a BUNDLE describes itself: the model card (`README.md` in the bundle) and `deployft info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BundleError, first_line
from ..manifest import MANIFEST_NAME, read_manifest
from ..tasks import get_task
from .card_int8 import candidates_table, fmt as _fmt, selection_text, timing_note, why_selected
from .optimize import FUSED_OPS, OPTIMIZED_NAME, anything_fused, fused_attention

KEY_OPS = (*FUSED_OPS, "QAttention", "MatMulNBits", "MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear",
           "QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "MatMul", "Gemm")
"""Ops that tell how a file computes (fused, quantized or plain matrix products): listed first when it is described."""
TOP_OPS = 8
"""Op types listed when a file is described by its own op counts."""


def validation_table(manifest: dict[str, Any]) -> str:
    """The per-variant validation report as a Markdown table (the deployable file marked with *); `bound` is the
    guard's judged upper bound in the budget's unit."""
    if get_task(manifest["task"]).generates:
        cols = [("max abs Δlogit", "max_abs_logit_diff"), ("next-token agree", "top1_agreement"),
                ("perplexity", "perplexity"), ("PyTorch ppl", "perplexity_pytorch"),
                ("greedy identical", "greedy_identical")]
    else:
        cols = [("max abs Δlogit", "max_abs_logit_diff"), ("top-1 agree", "top1_agreement"),
                ("accuracy", "accuracy"), ("PyTorch acc", "accuracy_pytorch"), ("macro-F1", "macro_f1")]
    head = "| file | precision | fused | " + " | ".join(c for c, _ in cols) + " | bound |"
    lines = [head, "|" + " --- |" * (len(cols) + 4)]
    for name, variant in manifest["variants"].items():
        report = variant["validation"]
        mark = " *" if name == manifest["model_file"] else ""
        cells = [_fmt(report.get(key)) for _, key in cols]
        lines.append(f"| {name}{mark} | {variant['precision']} | {'yes' if variant['optimized'] else 'no'} | "
                     + " | ".join(cells) + f" | {_fmt(report.get('drop'))} |")
    return "\n".join(lines)


def provider_note(manifest: dict[str, Any]) -> str:
    """Which ONNX Runtime provider the files were validated through, when it is not the default one."""
    reports = [v.get("validation") or {} for v in manifest["variants"].values()]
    ran = {(r.get("provider", "default"), r.get("precision")) for r in reports} - {("default", None)}
    return "".join(f" Validated through ONNX Runtime's {p} provider ({precision})." for p, precision in sorted(ran))


def optimum_note(manifest: dict[str, Any]) -> str:
    """What Optimum cannot do with the deployable file: batches of prompts of different lengths when its attention
    rotates q and k itself (see deployft/runtime/padding.py)."""
    ops = (manifest.get("variants") or {}).get(manifest["model_file"], {}).get("ops") or {}
    if not ops.get("GroupQueryAttention") or ops.get("RotaryEmbedding"):  # the deployable file's own ops
        return ""
    return (" (one prompt per call: this file's attention rotates q and k itself, so the first step of a left-padded"
            " batch must run right-padded, as deployft's runtime and server do; Optimum's batched `generate` feeds it"
            " left-padded, so for batches give Optimum `model.onnx`)")


def model_card(manifest: dict[str, Any]) -> str:
    """The bundle's README.md: what it is, how to load it, and how it compares with PyTorch."""
    q = manifest["quantization"]
    quant = "none (fp32)" if q is None else f"{quantization_line(q)}, from {q.get('quantized_from')}"
    labels = ", ".join(manifest["labels"] or []) or "-"
    deployable = "\n".join(f"- {line}" for line in deployable_lines(manifest))
    guard = "\n".join(f"- {line}" for line in guard_lines(manifest))
    return f"""# deployft bundle: {manifest['model_type']} {manifest['task']}

Deployable model: `{manifest['model_file']}` (ONNX opset {manifest['opset']}, target {manifest['device']}).
Labels: {labels}. Max length: {manifest['max_length']} tokens. Source: `{manifest['source_run']['path']}`.

{deployable}

## Use it

```python
from deployft import Predictor
predictor = Predictor.load("path/to/this/bundle")
```

or `deployft predict BUNDLE "some text"`; Optimum loads it too:
`{get_task(manifest['task']).ort_model_class}.from_pretrained(BUNDLE, file_name="{manifest['model_file']}")`{optimum_note(manifest)}.
`deployft verify BUNDLE` checks every file against `deployft.json` (add `--public-key KEY` for a signed bundle).

## {optimized_title(manifest['fusion'])}

{fusion_heading(manifest)}{manifest['fusion']['summary']}. {' '.join(manifest['fusion']['notes'])}

Op counts model.onnx -> model_optimized.onnx: {op_changes(manifest['fusion'])}.

## Quantization

{quant}

{selection_text(manifest)}

## Validation against the PyTorch original

{guard}

Rows: {manifest['validation_inputs'] or ''}; * = deployable.{provider_note(manifest)}

{validation_table(manifest)}
"""


def deployable_lines(manifest: dict[str, Any]) -> list[str]:
    """The deployable file described by itself: precision, whether its attention is fused, its op counts, and why
    it is the one."""
    name = manifest["model_file"]
    variant = manifest["variants"][name]
    ops = variant.get("ops")
    if not ops:
        return [f"{name}: {variant['precision']} (op counts not recorded by the deployft that wrote this bundle)"]
    fused = [f"{op} ×{n}" for op, n in fused_attention(ops).items()]
    attention = f"attention fused ({', '.join(fused)})" if fused else "attention not fused"
    ranked = sorted(ops, key=lambda op: (op not in KEY_OPS, -ops[op]))
    top = ", ".join(f"{op} {ops[op]}" for op in ranked[:max(TOP_OPS, sum(op in KEY_OPS for op in ops))])
    return [f"{name}: {variant['precision']}, {attention}, {sum(ops.values())} nodes ({top}, ...)",
            f"why this file: {_why(manifest)}"]


def _why(manifest: dict[str, Any]) -> str:
    q, name = manifest["quantization"], manifest["model_file"]
    if q and q.get("selection"):
        return why_selected(q)
    if q:
        how = q.get("choice") or f"{q['mode']} of {q.get('quantized_from')}"
        return f"{how}; it passed the accuracy guard (remedy: {q.get('remedy')})"
    fused = anything_fused(manifest["fusion"])
    if name == OPTIMIZED_NAME:
        graph = "the fused fp32 graph" if fused else "the plain fp32 graph (nothing was fused)"
        return f"{graph}, the first fp32 file that passed the accuracy guard"
    optimized = "the fused graph" if fused else f"{OPTIMIZED_NAME} (the same graph, nothing fused)"
    record = manifest["variants"].get(OPTIMIZED_NAME, {}).get("validation", {}).get("guard") or {}
    if record.get("within_budget"):  # `guard.fused_fp32_mismatch`
        return (f"the plain fp32 export: {optimized} is within the accuracy budget but not exact (max |Δlogit| "
                f"{record['max_abs_logit_diff']:.3g} vs {record['max_fp32_logit_diff']:g})")
    return f"the plain fp32 export: {optimized} did not pass the accuracy guard"


def optimized_title(fusion: dict[str, Any]) -> str:
    """What model_optimized.onnx is, as the card's heading says it: the fused graph, or the plain one."""
    if anything_fused(fusion):
        return f"The fused graph, {OPTIMIZED_NAME} (ORTOptimizer level {fusion['level']})"
    return f"{OPTIMIZED_NAME}: the plain export's graph, nothing fused"


def fusion_heading(manifest: dict[str, Any]) -> str:
    """A warning, when the fused graph is not the deployable file, that the fusion report is about another file."""
    if manifest["model_file"] == "model_optimized.onnx":
        return ""
    return f"Not the deployable file ({manifest['model_file']} is; see above). "


def guard_lines(manifest: dict[str, Any]) -> list[str]:
    """The accuracy guard's rule, rows, warnings and per-file decision, as `export`, `info` and the card print them."""
    guard = manifest.get("guard")
    if not guard:
        budget = manifest["accuracy_budget"]
        return [f"accuracy budget {budget['max_drop']} ({budget['measure']}); no confidence bound recorded"]
    lines = [f"rule: {guard['rule']}", f"rows: {guard['rows']} ({guard['rows_source']} rows)"]
    lines += [f"warning: {warning}" for warning in guard["warnings"]]
    for name, variant in manifest["variants"].items():
        record = variant["validation"].get("guard") or {}
        mark = " (deployable)" if name == manifest["model_file"] else ""
        lines.append(f"{name}{mark}: {_decision(record)}")
    return lines


def _decision(g: dict[str, Any]) -> str:
    verdict = "pass" if g.get("passed") else "FAIL"
    if "flips" in g:
        return (f"{g['rows'] - g['flips']}/{g['rows']} predictions agree ({g['agreement']:.4f}, {g['flips']} flipped), "
                f"95 % lower bound {g['agreement_lower_95']:.4f} vs {g['min_agreement']:.4f}: {verdict}")
    greedy = g.get("greedy_token_agreement")
    budget = "pass" if g.get("within_budget", g.get("passed")) else "FAIL"  # the exactness check may fail alone
    return (f"perplexity ratio {g['perplexity_ratio']:.4f} over {g['rows']} sequences, 95 % upper bound "
            f"{g['perplexity_ratio_upper_95']:.4f} vs {g['max_perplexity_ratio']:.4f}: {budget}{_exactness(g)}; "
            f"greedy tokens matched before the first divergence: {'-' if greedy is None else f'{greedy:.3f}'}")


def _exactness(g: dict[str, Any]) -> str:
    """A fused fp32 generator file's exactness check (`guard.fused_fp32_mismatch`), when it was held to one."""
    if "max_fp32_logit_diff" not in g:
        return ""
    diff, bound = g["max_abs_logit_diff"], g["max_fp32_logit_diff"]
    return (f"; max |Δlogit| {diff:.3g} vs {bound:g} (a fused fp32 file is exact but for float rounding): "
            f"{'pass' if diff <= bound else 'FAIL'}")


def quantization_line(q: dict[str, Any]) -> str:
    """One line on how a bundle was quantized: `int8 (blockwise int8 ..., block 64), remedy: none, 0 nodes in fp32`."""
    block = f", block {q['block_size']}" if q.get("block_size") else ""
    how = (f"{q['method']}{block}" if q.get("method")
           else f"preset {q.get('preset')}, per-channel {q.get('per_channel')}")
    if q.get("bits") is not None:  # int4: the widths counted from the file, and what stayed fp32
        widths = ", ".join(f"{bits}-bit ×{count}" for bits, count in q["bits"].items()) or "none"
        head = f"; LM head {q['head_bits']}-bit" if q.get("head_bits") else ""
        how += f"; MatMulNBits {widths}{head}; token embedding {q.get('embedding', '-').split(':')[0]}"
    recipe = f" candidate {q['recipe']}" if q.get("recipe") else ""
    smoothing = q.get("smoothing")
    if smoothing:
        how += (f"; {smoothing['activations_smoothed']} of {smoothing['activations_considered']} activations "
                f"smoothed into the weights (alpha {smoothing['alpha']:g}, {smoothing['calibration_rows']} "
                "calibration rows)")
    return (f"{q['mode']}{recipe} ({how}), remedy: {q.get('remedy')}, "
            f"{len(q.get('nodes_excluded') or [])} nodes kept in fp32")


def op_changes(fusion: dict[str, Any]) -> str:
    """The op types whose count the optimizer changed, largest change first: `MatMul 16->6, Softmax 2->0`."""
    before, after = fusion["before"], fusion["after"]
    changed = [(op, before.get(op, 0), after.get(op, 0)) for op in {**before, **after}
               if before.get(op, 0) != after.get(op, 0)]
    changed.sort(key=lambda item: -abs(item[1] - item[2]))
    return ", ".join(f"{op} {b}->{a}" for op, b, a in changed) or "unchanged"


def info_text(bundle: str | Path) -> str:
    """`deployft info`: task, labels, files with sizes, fusion, quantization and validation of a BUNDLE.

    Raises:
        BundleError: the manifest was edited after export (the line `deployft verify` gives: nothing it says can be
            trusted, so nothing is printed), or lacks a field it describes.
    """
    from ..runtime.integrity import REEXPORT, check_manifest

    folder = Path(bundle)
    manifest = read_manifest(folder, "bundle")
    check_manifest(folder, manifest)
    try:
        return _info(bundle, manifest)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:  # a field missing or of another type
        what = (f"no field {exc.args[0]!r}" if isinstance(exc, KeyError) and exc.args
                else f"a field of an unexpected type ({first_line(exc)})")
        raise BundleError(f"{folder / MANIFEST_NAME} has {what}, which deployft info reads; {REEXPORT}") from exc


def _info(bundle: str | Path, manifest: dict[str, Any]) -> str:
    q = manifest.get("quantization")
    lines = [f"BUNDLE {Path(bundle).resolve()}",
             f"task: {manifest['task']}   model type: {manifest['model_type']}   max length: {manifest['max_length']}",
             f"labels: {', '.join(manifest['labels'] or []) or '-'}",
             f"deployable: {manifest['model_file']}   opset {manifest['opset']}   device {manifest.get('device')}"]
    lines += [f"  {line}" for line in deployable_lines(manifest)]
    graph = (f"fused graph {OPTIMIZED_NAME}: {manifest['fusion']['summary']}" if anything_fused(manifest["fusion"])
             else f"{OPTIMIZED_NAME}: the plain export's graph, nothing fused")
    lines.append(graph + ("" if manifest["model_file"] == OPTIMIZED_NAME else " (not the deployable file)"))
    lines.append(f"  op counts model.onnx -> model_optimized.onnx: {op_changes(manifest['fusion'])}")
    lines += [f"  note: {note}" for note in manifest["fusion"]["notes"]]
    lines.append(f"quantization: {quantization_line(q) if q else 'none'}")
    table = candidates_table(q)
    lines += [f"  {line}" for line in [*table.splitlines(), timing_note(manifest)] if line]
    lines.append("files:")
    lines += [f"  {name:<32} {entry['bytes'] / 1e6:9.2f} MB" for name, entry in manifest["files"].items()]
    lines += ["accuracy guard:", *[f"  {line}" for line in guard_lines(manifest)]]
    lines += ["validation:", validation_table(manifest)]
    return "\n".join(lines)
