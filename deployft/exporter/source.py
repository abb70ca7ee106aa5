"""What `export` reads: a RUN folder (task from its manifest) or a local Hugging Face model folder (task from
`--task`), the PyTorch original in fp32 and its tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError, reraise_as
from ..manifest import MANIFEST_NAME, read_json, read_manifest, sha256_file
from ..tasks import Task, get_task

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
    def spec(self) -> Task:
        """The task object of `task`."""
        return get_task(self.task)

    @property
    def export_task(self) -> str:
        return self.spec.export_task

    @property
    def num_layers(self) -> int:
        """Transformer layers, from config.json."""
        config = read_json(self.path / "config.json", ModelError)
        return int(config.get("num_hidden_layers") or config.get("n_layer") or config.get("n_layers") or 1)


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
    labels = None if get_task(task).generates else _labels_from_config(path)
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
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json, so it is not a RUN or Hugging Face model folder; "
                         "pass the folder written by deployft finetune (or save_pretrained)")
    return read_json(path / "config.json", ModelError)


def _weights_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ModelError(f"{path} has no model weights ({' or '.join(WEIGHT_FILES)}); "
                     "pass a folder written by deployft finetune or save_pretrained")


def _labels_from_config(path: Path) -> list[str] | None:
    """Label names in class-id order from the model config (transformers fills LABEL_i when none are saved)."""
    from transformers import AutoConfig

    with reraise_as(ModelError, f"cannot read {path / 'config.json'} as a transformers config ({{reason}}); "
                                "re-save the model with save_pretrained"):
        id2label = AutoConfig.from_pretrained(path).id2label
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
    """Load the PyTorch original in fp32, eval mode; unreadable weights, or weights the folder lacks (transformers
    would draw them at random on every load, so no exported file could match the original), become a ModelError."""
    cls = source.spec.model_class()
    # safetensors, torch and transformers each raise their own type for bad weights
    with reraise_as(ModelError, f"cannot load the model weights in {source.path} ({{reason}}); the files are "
                                "corrupted or incomplete: re-run deployft finetune or re-save the model"):
        model, info = cls.from_pretrained(source.path, dtype="float32", output_loading_info=True)
    buffers = {name for name, _ in model.named_buffers()}  # set the same way on every load
    missing = sorted(set(info.get("missing_keys") or ()) - buffers)
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        fix = ("the RUN is incomplete: re-run deployft finetune" if source.is_run else
               f"fine-tune it first (deployft finetune --model {source.path}) and export the RUN")
        raise ModelError(f"{source.path} has no weights for {shown}, which a {source.task} model needs "
                         f"(transformers would initialize them at random on every load, so no export could match it): "
                         f"{fix}")
    return model.eval()


def load_tokenizer(source: Source):
    """The source's tokenizer; a folder without one is a ModelError."""
    from transformers import AutoTokenizer

    with reraise_as(ModelError, f"cannot load a tokenizer from {source.path} ({{reason}}); the folder needs "
                                "tokenizer.json/tokenizer_config.json as save_pretrained writes them"):
        return AutoTokenizer.from_pretrained(source.path)
