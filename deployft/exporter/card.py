"""How a BUNDLE describes itself: the model card (`README.md` in the bundle) and `deployft info`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..manifest import read_manifest
from ..tasks import get_task


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-2 and value != 0 else f"{value:.4f}"
    return str(value)


def validation_table(manifest: dict[str, Any]) -> str:
    """The per-variant validation report as a Markdown table (the deployable file marked with *)."""
    if get_task(manifest["task"]).generates:
        cols = [("max abs Δlogit", "max_abs_logit_diff"), ("next-token agree", "top1_agreement"),
                ("perplexity", "perplexity"), ("PyTorch ppl", "perplexity_pytorch"),
                ("greedy identical", "greedy_identical")]
    else:
        cols = [("max abs Δlogit", "max_abs_logit_diff"), ("top-1 agree", "top1_agreement"),
                ("accuracy", "accuracy"), ("PyTorch acc", "accuracy_pytorch"), ("macro-F1", "macro_f1")]
    head = "| file | precision | fused | " + " | ".join(c for c, _ in cols) + " | drop |"
    lines = [head, "|" + " --- |" * (len(cols) + 4)]
    for name, variant in manifest["variants"].items():
        report = variant["validation"]
        mark = " *" if name == manifest["model_file"] else ""
        cells = [_fmt(report.get(key)) for _, key in cols]
        lines.append(f"| {name}{mark} | {variant['precision']} | {'yes' if variant['optimized'] else 'no'} | "
                     + " | ".join(cells) + f" | {_fmt(report.get('drop'))} |")
    return "\n".join(lines)


def model_card(manifest: dict[str, Any]) -> str:
    """The bundle's README.md: what it is, how to load it, and how it compares with PyTorch."""
    q = manifest["quantization"]
    budget = manifest["accuracy_budget"]
    quant = "none (fp32)" if q is None else f"{quantization_line(q)}, from {q.get('quantized_from')}"
    labels = ", ".join(manifest["labels"] or []) or "-"
    return f"""# deployft bundle: {manifest['model_type']} {manifest['task']}

Deployable model: `{manifest['model_file']}` (ONNX opset {manifest['opset']}, target {manifest['device']}).
Labels: {labels}. Max length: {manifest['max_length']} tokens. Source: `{manifest['source_run']['path']}`.

## Use it

```python
from deployft import Predictor
predictor = Predictor.load("path/to/this/bundle")
```

or `deployft predict BUNDLE "some text"`; Optimum loads it too:
`{get_task(manifest['task']).ort_model_class}.from_pretrained(BUNDLE, file_name="{manifest['model_file']}")`.
`deployft verify BUNDLE` checks every file against `deployft.json` (add `--public-key KEY` for a signed bundle).

## Fusion (ORTOptimizer level {manifest['fusion']['level']})

{manifest['fusion']['summary']}. {' '.join(manifest['fusion']['notes'])}

Op counts before -> after: {op_changes(manifest['fusion'])}.

## Quantization

{quant}

## Validation against the PyTorch original

{manifest['validation_inputs'] or ''}; accuracy budget: {budget['max_drop']} ({budget['measure']}); * = deployable.

{validation_table(manifest)}
"""


def quantization_line(q: dict[str, Any]) -> str:
    """One line on how a bundle was quantized: `int8 (blockwise int8 ..., block 32), remedy: none, 0 nodes in fp32`."""
    how = (f"{q['method']}, block {q.get('block_size')}" if q.get("method")
           else f"preset {q.get('preset')}, per-channel {q.get('per_channel')}")
    return (f"{q['mode']} ({how}), remedy: {q.get('remedy')}, "
            f"{len(q.get('nodes_excluded') or [])} nodes kept in fp32")


def op_changes(fusion: dict[str, Any]) -> str:
    """The op types whose count the optimizer changed, largest change first: `MatMul 16->6, Softmax 2->0`."""
    before, after = fusion["before"], fusion["after"]
    changed = [(op, before.get(op, 0), after.get(op, 0)) for op in {**before, **after}
               if before.get(op, 0) != after.get(op, 0)]
    changed.sort(key=lambda item: -abs(item[1] - item[2]))
    return ", ".join(f"{op} {b}->{a}" for op, b, a in changed) or "unchanged"


def info_text(bundle: str | Path) -> str:
    """`deployft info`: task, labels, files with sizes, fusion, quantization and validation of a BUNDLE."""
    manifest = read_manifest(bundle, "bundle")
    q = manifest.get("quantization")
    lines = [f"BUNDLE {Path(bundle).resolve()}",
             f"task: {manifest['task']}   model type: {manifest['model_type']}   max length: {manifest['max_length']}",
             f"labels: {', '.join(manifest['labels'] or []) or '-'}",
             f"deployable: {manifest['model_file']}   opset {manifest['opset']}   device {manifest.get('device')}",
             f"fusion: {manifest['fusion']['summary']}"]
    lines.append(f"  op counts before -> after: {op_changes(manifest['fusion'])}")
    lines += [f"  note: {note}" for note in manifest["fusion"]["notes"]]
    lines.append(f"quantization: {quantization_line(q) if q else 'none'}")
    lines.append("files:")
    lines += [f"  {name:<32} {entry['bytes'] / 1e6:9.2f} MB" for name, entry in manifest["files"].items()]
    lines += ["validation:", validation_table(manifest)]
    return "\n".join(lines)
