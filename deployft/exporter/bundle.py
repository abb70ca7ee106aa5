"""The BUNDLE's manifest (docs/folders.md) and model card, written from the typed export result.

Optimum's own files (config.json, tokenizer files, generation_config.json, model.onnx) are written by the export
itself, so `ORTModelForSequenceClassification` / `ORTModelForCausalLM.from_pretrained(BUNDLE, file_name=...)` load
a bundle as they load any Optimum export.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..manifest import file_table, library_versions, read_json, write_manifest
from ..tokens import special_ids
from .card import model_card
from .source import Source
from .state import ExportResult

MODEL_CARD = "README.md"


def write_bundle(folder: Path, source: Source, result: ExportResult) -> dict[str, Any]:
    """Write the model card and deployft.json into the staged bundle `folder`; return the manifest."""
    from .onnx_export import external_files

    variants = {name: {**variant.to_manifest(), "external_data": [p.name for p in external_files(folder / name)]}
                for name, variant in result.variants.items()}
    manifest = {
        "kind": "bundle",
        "task": source.task,
        "labels": source.labels,
        "max_length": source.max_length,
        "prompt_format": source.prompt_format,
        "model_type": source.model_type,
        "model_file": result.model_file,
        "device": result.device,
        "variants": variants,
        "opset": result.opset,
        "fusion": result.fusion,
        "quantization": result.quantization,
        "accuracy_budget": result.budget.to_manifest(),
        "guard": result.guard,
        "validation": {name: v["validation"] for name, v in variants.items()},
        "validation_inputs": result.validation_inputs,
        "generation": generation_block(folder, result.model_file) if source.spec.generates else None,
        "source_run": {"path": str(source.path), "is_run": source.is_run, **source.extra},
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (folder / MODEL_CARD).write_text(model_card(manifest), encoding="utf-8")
    manifest["files"] = file_table(folder)
    write_manifest(folder, manifest)
    return manifest


def generation_block(folder: Path, model_file: str) -> dict[str, Any]:
    """What a KV-cache loop needs, read from the ONNX inputs themselves and the generation config."""
    import onnx

    graph = onnx.load(str(folder / model_file), load_external_data=False).graph
    past = [i for i in graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")]
    dims = past[0].type.tensor_type.shape.dim
    config = read_json(folder / "config.json")
    ids = special_ids(config, read_json(folder / "generation_config.json"))
    return {
        "bos_token_id": ids.bos,
        "eos_token_id": ids.eos,
        "pad_token_id": ids.pad,
        "num_layers": len(past),
        "num_kv_heads": dims[1].dim_value,
        "head_dim": dims[3].dim_value,
        "inputs": [i.name for i in graph.input if not i.name.startswith("past_key_values.")],
    }
