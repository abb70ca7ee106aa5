"""Read what is being exported (a RUN folder, or any local Hugging Face model folder with a task), and export it to ONNX.

The export itself is Optimum's `main_export`: `text-classification` for classifiers, `text-generation-with-past`
(the decoder with its KV cache as inputs and outputs) for generators.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError, StageError, UsageError
from .manifest import MANIFEST_NAME, read_manifest, sha256_file

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


@dataclass
class Source:
    """What `export` reads: the folder, its task and what the RUN manifest says about it."""

    path: Path
    """The RUN or model folder."""
    task: str
    """`classify` or `generate`."""
    model_type: str
    """`config.model_type` (`bert`, `llama`, ...)."""
    manifest: dict[str, Any] | None = None
    """The RUN's deployft.json; None for a plain model folder."""
    labels: list[str] | None = None
    """Classify: label names in class-id order."""
    max_length: int = 128
    """Tokens per example; validation and calibration truncate to it."""
    prompt_format: dict[str, Any] | None = None
    """Generate: how prompts were formatted in training (see docs/folders.md)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """base_model and weights_sha256, recorded as the bundle's source_run."""

    @property
    def is_run(self) -> bool:
        return self.manifest is not None

    @property
    def export_task(self) -> str:
        from .tasks import get_task

        return get_task(self.task).export_task


def read_source(path: str | Path, task: str | None = None) -> Source:
    """Describe a RUN folder (task from its manifest) or a plain model folder (task from `--task`).

    Raises:
        ModelError: not a folder, no config.json, no weights, or a task that disagrees with the RUN.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder; pass a RUN folder written by deployft finetune or a local model folder")
    config = _read_config(path)
    weights = _weights_file(path)
    if (path / MANIFEST_NAME).is_file():
        return _run_source(path, config, weights, task)
    if task is None:
        raise UsageError(f"{path} is a model folder without a deployft.json, so its task is unknown; "
                         "pass --task classify or --task generate")
    labels = _labels_from_config(path) if task == "classify" else None
    max_length = int(config.get("max_position_embeddings") or 512)
    return Source(path, task, config.get("model_type", "?"), labels=labels, max_length=min(max_length, 512),
                  extra={"base_model": str(path), "weights_sha256": sha256_file(weights)})


def _run_source(path: Path, config: dict, weights: Path, task: str | None) -> Source:
    manifest = read_manifest(path, "run")
    if task is not None and task != manifest.get("task"):
        raise UsageError(f"--task {task} disagrees with RUN {path}, whose task is {manifest.get('task')}; "
                         "leave --task out for a RUN folder")
    return Source(path, manifest["task"], manifest.get("model_type") or config.get("model_type", "?"),
                  manifest=manifest, labels=manifest.get("labels"), max_length=int(manifest.get("max_length") or 128),
                  prompt_format=manifest.get("prompt_format"),
                  extra={"base_model": manifest.get("base_model"), "weights_sha256": sha256_file(weights)})


def _read_config(path: Path) -> dict:
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{path} has no config.json, so it is not a RUN or Hugging Face model folder; "
                         "pass the folder written by deployft finetune (or save_pretrained)")
    try:
        return json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{config_path} is not valid JSON ({exc}); re-create the folder") from exc


def _weights_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ModelError(f"{path} has no model weights ({' or '.join(WEIGHT_FILES)}); "
                     "pass a folder written by deployft finetune or save_pretrained")


def _labels_from_config(path: Path) -> list[str] | None:
    """Label names in class-id order from the model config (transformers fills LABEL_i when none are saved)."""
    from transformers import AutoConfig

    try:
        id2label = AutoConfig.from_pretrained(path).id2label
    except Exception as exc:
        raise ModelError(f"cannot read {path / 'config.json'} as a transformers config ({exc}); "
                         "re-save the model with save_pretrained") from exc
    return [str(id2label[i]) for i in sorted(id2label)] if id2label else None


def check_exportable(source: Source) -> None:
    """Refuse an architecture Optimum cannot export for the task, naming the type and the supported ones."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    export_task = source.export_task
    supported = sorted(TasksManager.get_supported_model_type_for_task(export_task, exporter="onnx"))
    normalized = source.model_type.replace("_", "-")
    if normalized not in supported and source.model_type not in supported:
        raise ModelError(f"model type '{source.model_type}' cannot be exported by Optimum for {export_task} "
                         f"(task {source.task}); supported types: {', '.join(supported)}; "
                         "fine-tune one of these, or check --task")


def load_torch_model(source: Source):
    """Load the PyTorch original in fp32, eval mode; unreadable weights become a ModelError."""
    from .tasks import get_task

    cls = get_task(source.task).model_class()
    try:
        model = cls.from_pretrained(source.path, dtype="float32")
    except Exception as exc:  # safetensors, torch and transformers each raise their own type for bad weights
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load the model weights in {source.path} ({first_line}); "
                         "the files are corrupted or incomplete: re-run deployft finetune or re-save the model") from exc
    return model.eval()


def load_tokenizer(source: Source):
    """The source's tokenizer; a folder without one is a ModelError."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source.path)
    except Exception as exc:
        raise ModelError(f"cannot load a tokenizer from {source.path} ({type(exc).__name__}); "
                         "the folder needs tokenizer.json/tokenizer_config.json as save_pretrained writes them") from exc


def export_onnx(source: Source, output: Path, opset: int | None = None) -> Path:
    """Export `source` with Optimum into `output` (model.onnx, config, tokenizer files); return model.onnx's path."""
    from optimum.exporters.onnx import main_export

    try:
        main_export(str(source.path), output, task=source.export_task, opset=opset, do_validation=False,
                    local_files_only=True, library_name="transformers")
    except Exception as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StageError(f"ONNX export of {source.path} ({source.model_type}, {source.export_task}) failed: "
                         f"{message}") from exc
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


def save_model(model, path: Path, stale: list[Path] = ()) -> None:
    """Save an in-memory ONNX model to `path`, its weights in `<name>_data` when they are too large for one file.

    `stale`: external-weight files the model was read from (now in memory); they are removed once it is saved.
    """
    import onnx

    data = path.with_name(f"{path.name}_data")
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    if data.exists():
        data.unlink()
    if weights > EXTERNAL_DATA_BYTES:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name)
    else:
        onnx.save(model, str(path))
    for old in stale:
        if old != data and old.exists():
            old.unlink()
