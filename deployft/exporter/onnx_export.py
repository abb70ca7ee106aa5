"""Optimum's ONNX export of a source, and the file-level helpers every exporter step shares.

The export itself is Optimum's `main_export`: `text-classification` for classifiers, `text-generation-with-past`
(the decoder with its KV cache as inputs and outputs) for generators.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import StageError, reraise_as
from .source import Source

def export_onnx(source: Source, output: Path, opset: int | None = None) -> Path:
    """Export `source` with Optimum into `output` (model.onnx, config, tokenizer files); return model.onnx's path."""
    from optimum.exporters.onnx import main_export

    with reraise_as(StageError, f"ONNX export of {source.path} ({source.model_type}, {source.export_task}) "
                                "failed: {reason}"):
        main_export(str(source.path), output, task=source.export_task, opset=opset, do_validation=False,
                    local_files_only=True, library_name="transformers")
    onnx_path = output / "model.onnx"
    if not onnx_path.is_file():
        raise StageError(f"Optimum's export wrote no model.onnx into {output}")
    return onnx_path


def onnx_opset(path: Path) -> int:
    """The default-domain opset of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


EXTERNAL_DATA_BYTES = 1_800_000_000
"""Weights above this size go to `<file>_data` beside the .onnx file: one protobuf cannot exceed 2 GB."""


def external_files(path: Path) -> list[Path]:
    """The files beside `path` that hold its external weights (none for a model saved in one file)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    names = {entry.value for tensor in graph.initializer if tensor.data_location == onnx.TensorProto.EXTERNAL
             for entry in tensor.external_data if entry.key == "location"}
    return [path.parent / name for name in sorted(names)]


def save_model(model, path: Path, stale: list[Path] = (), external: bool = False) -> None:
    """Save an in-memory ONNX model to `path`, its weights in `<name>_data` when they are too large for one file
    or `external` asks for it.

    `stale`: external-weight files the model was read from (now in memory); they are removed once it is saved.
    `external`: weights in `<name>_data` whatever their size. ONNX Runtime then maps them instead of reading them
    into the protobuf it parses, so a session of a blockwise-quantized decoder holds about half the memory
    (benchmarks/results/session_memory.md).
    """
    import onnx

    data = path.with_name(f"{path.name}_data")
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if data.exists():
        data.unlink()
    if external or weights > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    else:
        onnx.save(model, str(path))
    for old in stale:
        if old != data and old.exists():
            old.unlink()
