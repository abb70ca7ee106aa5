"""What `export` reads: a RUN folder (task from its manifest) or a local Hugging Face model folder (task from
`--task`), the PyTorch original in fp32 and its tokenizer.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, UsageError, reraise_as
from ..manifest import DIGEST_KEY, MANIFEST_NAME, manifest_digest, read_json, read_manifest, sha256_file
from ..tasks import TASKS, Task, get_task

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
"""A save_pretrained folder's weights in one file, safetensors first."""
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
"""The index of a sharded save_pretrained folder: which shard holds each tensor (`weight_map`)."""
_SHARD = re.compile(r"^(?:model|pytorch_model)-\d+-of-\d+\.(?:safetensors|bin)$")


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
        ModelError: not a folder, no config.json, no weights, a damaged RUN manifest, or a task that disagrees with
            the RUN.
    """
    path = Path(path).resolve()
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder; pass a RUN folder written by deployft finetune or a local model "
                         "folder")
    config = _read_config(path)
    weights = model_weight_files(path)
    if (path / MANIFEST_NAME).is_file():
        return _run_source(path, config, weights, task)
    if task is None:
        raise UsageError(f"{path} is a model folder without a deployft.json, so its task is unknown; "
                         "pass --task classify or --task generate")
    labels = None if get_task(task).generates else _labels_from_config(path)
    max_length = int(config.get("max_position_embeddings") or 512)
    return Source(path, task, config.get("model_type", "?"), labels=labels, max_length=min(max_length, 512),
                  extra={"base_model": str(path), "weights_sha256": weights_sha256(weights)})


def _run_source(path: Path, config: dict, weights: list[Path], task: str | None) -> Source:
    manifest = read_manifest(path, "run")
    check_run_manifest(path, manifest)
    if task is not None and task != manifest["task"]:
        raise UsageError(f"--task {task} disagrees with RUN {path}, whose task is {manifest['task']}; "
                         "leave --task out for a RUN folder")
    return Source(path, manifest["task"], manifest.get("model_type") or config.get("model_type", "?"),
                  manifest=manifest, labels=manifest.get("labels"), max_length=manifest.get("max_length") or 128,
                  prompt_format=manifest.get("prompt_format"),
                  extra={"base_model": manifest.get("base_model"), "weights_sha256": weights_sha256(weights)})


def check_run_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Refuse a RUN manifest edited after training (its `manifest_sha256` does not match) or missing what export
    reads (task, labels, max length, prompt format, data records), in one ModelError naming the file.

    A manifest from before the digest (format 1) is read unchecked, as `read_manifest` reads it.
    """
    where = path / MANIFEST_NAME
    fix = "the RUN is damaged: re-run deployft finetune to write it again"
    if DIGEST_KEY in manifest and manifest[DIGEST_KEY] != manifest_digest(manifest):
        raise ModelError(f"{where} was modified after training ({DIGEST_KEY} does not match its content); {fix}")
    for name, wrong in _run_field_problems(manifest):
        found = repr(manifest[name]) if name in manifest else "(missing)"
        raise ModelError(f"{where} has {name} {found}, {wrong}; {fix}")


def _run_field_problems(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """`(field, what was expected)` for every field of a RUN manifest export cannot use."""
    task, labels, length = manifest.get("task"), manifest.get("labels"), manifest.get("max_length")
    data = manifest.get("data")
    checks = [
        ("task", task in TASKS, f"expected one of {', '.join(TASKS)}"),
        ("labels", labels is None or (isinstance(labels, list) and all(isinstance(x, str) for x in labels)),
         "expected a list of label names"),
        ("labels", task != "classify" or (isinstance(labels, list) and len(labels) >= 2),
         "expected the classifier's label names (at least 2)"),
        ("max_length", length is None or (type(length) is int and length >= 1), "expected a positive whole number"),
        ("prompt_format", manifest.get("prompt_format") is None or isinstance(manifest["prompt_format"], dict),
         "expected an object (or null)"),
        ("data", data is None or (isinstance(data, dict) and all(_data_record(data.get(split))
                                                                  for split in ("train", "eval"))),
         "expected train and eval records with a path"),
    ]
    return [(name, wrong) for name, ok, wrong in checks if not ok]


def _data_record(record: Any) -> bool:
    return record is None or (isinstance(record, dict) and isinstance(record.get("path"), str))


def data_paths(source: Source) -> dict[str, str]:
    """The RUN's training and eval data files, as `check_apart` names them (`default:` sources are no files)."""
    data = (source.manifest or {}).get("data") or {}
    paths = {f"the RUN's {word} data": (data.get(split) or {}).get("path")
             for split, word in (("train", "training"), ("eval", "eval"))}
    return {name: p for name, p in paths.items() if p and not p.startswith("default:")}


def _read_config(path: Path) -> dict:
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json, so it is not a RUN or Hugging Face model folder; "
                         "pass the folder written by deployft finetune (or save_pretrained)")
    return read_json(path / "config.json", ModelError)


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a save_pretrained folder: `model.safetensors` or `pytorch_model.bin`; else the index of a
    sharded folder and every shard it lists; else shards known by their names alone (the index gone); [] for none.

    What export hashes into the bundle's `weights_sha256` and bench keys its peers by (`bench.peers.run_fingerprint`).

    Raises:
        ModelError: an index without a `weight_map`, naming a file outside the folder or a shard that is missing.
    """
    folder = Path(folder)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    index = next((folder / name for name in WEIGHT_INDEXES if (folder / name).is_file()), None)
    if index is None:
        return sorted(p for p in folder.glob("*") if _SHARD.match(p.name) and p.is_file())
    weight_map = read_json(index, ModelError).get("weight_map")
    shards = sorted({str(v) for v in weight_map.values()}) if isinstance(weight_map, dict) else []
    if not shards or any(Path(s).name != s for s in shards):
        raise ModelError(f"{index} has no weight_map of tensor names to shard files in {folder}; "
                         "re-save the model with save_pretrained")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise ModelError(f"{folder} lacks {', '.join(missing)}, listed in {index.name}: the folder is incomplete; "
                         "copy it again or re-save the model with save_pretrained")
    return [index, *(folder / s for s in shards)]


def weights_sha256(files: list[Path]) -> str:
    """The bundle's `weights_sha256`: the sha256 of a single weights file; of sharded weights, the sha256 of every
    file's name and sha256 (index included), one line each."""
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{p.name}\0{sha256_file(p)}\n" for p in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def model_weight_files(path: str | Path) -> list[Path]:
    """`weight_files` of a model folder that must have weights: a ModelError for none, or shards without their
    index (what export refuses and bench refuses as not the RUN a bundle came from)."""
    path = Path(path)
    files = weight_files(path)
    if not files or _SHARD.match(files[0].name):
        found = f" (shards {files[0].name}, ... but no {' or '.join(WEIGHT_INDEXES)})" if files else ""
        raise ModelError(f"{path} has no model weights{found}; expected {' or '.join(WEIGHT_FILES)}, or sharded "
                         f"weights with their index; pass a folder written by deployft finetune or save_pretrained")
    return files


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
