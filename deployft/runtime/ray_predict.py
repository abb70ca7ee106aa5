"""Batch inference on Ray Data: `deployft predict BUNDLE --input data.parquet --output out/ --ray`.

The input file becomes a Ray Data dataset of texts, read as `predict --input` reads it (`ray_source`: each text is
the string in the file, and a file the single-process path refuses is refused with its error); a pool of actors,
each holding one `Predictor`, maps over it in windows of rows that the predictor sorts by length into batches. Ray
keeps the input order (`preserve_order`), so the driver streams the predicted blocks in order into one file,
`predictions.jsonl` or `predictions.parquet`, with the same columns as the single-process `predict --input`
file. The file is written under a temporary name and renamed when complete (`deployft.staging.atomic_file`). Ray
is imported only inside the functions (here and in `ray_source`, which they import).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import DataError, DeployftError, StageError, UsageError, first_line, reraise_as, require
from ..staging import atomic_file
from ..tasks import get_task
from .openvino import import_plugin
from .outputs import check_output_file
from . import ray_client
from .sampling import GenerationOptions
from .session import PROVIDERS

if TYPE_CHECKING:
    from .predictor import Predictor

FORMATS = ("jsonl", "parquet")
INPUTS = (".parquet", ".jsonl", ".csv")
WINDOW_BATCHES = 8
"""Batches per Ray Data call: the rows of one call are sorted by length together, so padding stays small."""


@dataclass
class RayPredictConfig:
    """How to predict a file with a BUNDLE on Ray Data."""

    bundle: str | Path
    """BUNDLE folder written by `deployft export`."""
    input: str | Path
    """A .parquet, .jsonl or .csv file."""
    output: str | Path
    """Folder that receives `predictions.<output_format>`."""
    column: str | None = None
    """The text column (default: text, or prompt then text for generators)."""
    output_format: str = "jsonl"
    """`jsonl` or `parquet`."""
    batch_size: int = 32
    """Texts per ONNX Runtime call."""
    workers: int = 2
    """The most actors, each with its own Predictor (the pool starts with one and grows while rows wait)."""
    threads: int | None = None
    """Intra-op threads of each actor's session; also the CPUs each actor reserves (default 1)."""
    device: str = "cpu"
    """`cpu`, `cuda` or `auto`, on every worker."""
    provider: str = "default"
    """ONNX Runtime provider on every worker: `default` or `openvino` (the plugin must be installed there too)."""
    model_file: str | None = None
    """Another `.onnx` variant of the bundle."""
    public_key: str | Path | bytes | None = None
    """An Ed25519 public key, a PEM file (or its bytes): the bundle's manifest signature is checked on the driver
    before any worker starts, and again by every worker when it loads the bundle, with the key's bytes read on the
    driver (a worker on another node need not have the file)."""
    address: str | None = None
    """Ray cluster to join (`auto`, `ray://host:10001`); default: the one ray.init() finds, else a local instance."""
    options: GenerationOptions = field(default_factory=GenerationOptions)
    """Decoding settings for generators."""
    progress: bool = True
    """Ray Data's progress bars."""

    def __post_init__(self) -> None:
        self.bundle, self.input, self.output = Path(self.bundle), Path(self.input), Path(self.output)
        if self.output_format not in FORMATS:
            raise UsageError(f"output format must be one of {', '.join(FORMATS)}, got {self.output_format!r}; "
                             "pass --output-format jsonl")
        for name in ("batch_size", "workers") + (("threads",) if self.threads is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{name} must be an integer >= 1, got {value!r}; "
                                 f"pass --{name.replace('_', '-')} with a value above 0")
        if self.provider not in PROVIDERS:
            raise UsageError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}; "
                             "pass --provider default")
        if self.provider == "openvino":
            import_plugin()  # the driver says how to install a missing plugin before any worker starts
        if self.output.is_file():
            raise UsageError(f"--output {self.output} is a file; with --ray pass a folder to write "
                             f"predictions.{self.output_format} into")
        check_output_file(self.output_file, self.input, fix="folder")
        suffix = self.input.suffix.lower()
        if not self.input.is_file():
            raise DataError(f"input file {self.input} not found; pass an existing .parquet, .jsonl or .csv file")
        if suffix not in INPUTS:
            raise DataError(f"input file {self.input} has extension '{suffix}'; with --ray pass a .parquet, "
                            ".jsonl or .csv file to --input")
        client = ray_client.client_address(self.address)
        if suffix != ".parquet" and client:
            raise UsageError(ray_client.CLIENT_INPUT.format(self.input, client))

    @property
    def output_file(self) -> Path:
        """The one file the predictions go to."""
        return self.output / f"predictions.{self.output_format}"


class BundleWorker:
    """One Ray Data actor: loads the bundle once, predicts each window of rows it is given."""

    def __init__(self, bundle: str, column: str, batch_size: int, options: dict, device: str = "cpu",
                 threads: int | None = None, model_file: str | None = None, provider: str = "default",
                 public_key: bytes | None = None):
        from .predictor import Predictor

        # the worker checks the signature of what it reads itself: the bundle may change after the driver's check
        self.predictor = Predictor.load(bundle, device=device, threads=threads, model_file=model_file,
                                        provider=provider, public_key=public_key)
        self.column, self.batch_size = column, batch_size
        self.options = GenerationOptions(**options)

    def __call__(self, batch: dict) -> dict:
        # the texts were read as `predict --input` reads them (`ray_source`): strings, and null as ""
        texts = ["" if value is None else value for value in batch[self.column]]
        records = predict_records(self.predictor, texts, self.batch_size, self.options)
        # one JSON string per row: `scores` is a mapping whose keys are the labels, and a string column
        # has the same Arrow type in every block whatever the task
        return {"record": [json.dumps(r, ensure_ascii=False) for r in records]}


def predict_records(predictor: Predictor, texts: list[str], batch_size: int,
                    options: GenerationOptions) -> list[dict]:
    """The rows of `texts` as the single-process path writes them (without `id`), in the same order.

    Classifier texts are sorted by length inside `Predictor.predict`; prompts are sorted here by token count
    and generated in batches of `batch_size`, so rows of similar length share a padded batch.
    """
    if not get_task(predictor.task).generates:
        predictions = predictor.predict(texts, batch_size=batch_size)
        return [{"text": t, **asdict(p)} for t, p in zip(texts, predictions)]
    order = sorted(range(len(texts)), key=lambda i: len(predictor.prompt_ids(texts[i])))
    completions: list[str] = [""] * len(texts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        for i, text in zip(chunk, predictor.generate([texts[i] for i in chunk], **asdict(options))):
            completions[i] = text
    return [{"prompt": t, "completion": c} for t, c in zip(texts, completions)]


def check_bundle(bundle: Path, model_file: str | None, public_key: str | Path | bytes | None = None,
                 provider: str = "default") -> dict:
    """The manifest of `bundle`, checked as `Predictor.load` checks it, without loading the model.

    Ray workers load the bundle; checking it first on the driver turns a bad bundle into one line rather than
    a traceback from every worker.
    """
    from .predictor import checked_bundle

    return checked_bundle(Path(bundle), model_file, public_key, provider)[0]


def predict_on_ray(config: RayPredictConfig) -> int:
    """Predict every row of `config.input` into `config.output_file`; returns the number of rows written.

    Raises:
        MissingDependencyError: Ray is not installed (`pip install "deployft[ray]"`).
        BundleError, DataError, UsageError: the bundle, the file or a setting cannot be used.
    """
    ray = require("ray", "ray")
    require("ray.data", "ray")
    task = check_bundle(config.bundle, config.model_file, config.public_key, config.provider)["task"]
    started = not ray.is_initialized()
    if started:
        with reraise_as(UsageError, f"cannot start or join Ray at {config.address or 'a local instance'} "
                                    "({reason}); pass --ray-address of a running cluster or leave it out"):
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
    # Ray Data prints the driver-side stack of a failed actor; the error is reported below as one line, and
    # the worker's own traceback stays in Ray's worker logs
    quiet = logging.getLogger("ray.data.exceptions")
    level, _ = quiet.level, quiet.setLevel(logging.CRITICAL)
    try:
        if config.input.suffix.lower() != ".parquet" and ray_client.client_connected():  # the caller's own init
            raise UsageError(ray_client.CLIENT_INPUT.format(config.input,
                                                            "ray.init was given a ray:// address before this call"))
        dataset = _dataset(ray.data, config, task)
        return _write(dataset, config)
    except ray.exceptions.RayError as exc:
        raise worker_error(exc, f"predicting {config.input}") from exc
    finally:
        quiet.setLevel(level)
        if started:
            ray.shutdown()


def worker_error(exc: BaseException, doing: str) -> DeployftError:
    """The deployft error a Ray worker raised, as one line: Ray hands the driver a wrapper whose message holds
    the worker's traceback, ending in `deployft.errors.<Class>: <message>`."""
    from .. import errors

    found = re.findall(r"deployft\.errors\.(\w+): (.+)", str(exc))
    cls = getattr(errors, found[-1][0], None) if found else None
    if isinstance(cls, type) and issubclass(cls, DeployftError):
        return cls(found[-1][1].strip())
    return StageError(f"a Ray worker failed while {doing} ({first_line(exc)}); see the worker logs in "
                      "/tmp/ray/session_latest/logs")


def _dataset(data, config: RayPredictConfig, task: str | None):
    from .ray_source import read_input

    context = data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = config.progress
    window = config.batch_size * WINDOW_BATCHES
    dataset, column = read_input(data, config.input, config.column, task, rows_per_block=window)
    worker = {"bundle": str(config.bundle.resolve()), "column": column, "batch_size": config.batch_size,
              "options": asdict(config.options), "device": config.device, "threads": config.threads,
              "model_file": config.model_file, "provider": config.provider, "public_key": _key_pem(config.public_key)}
    return dataset.map_batches(
        BundleWorker, fn_constructor_kwargs=worker, batch_size=window,
        # a pool that starts at one actor leaves CPUs to the read tasks; a full pool from the start can take
        # every CPU of a small cluster and wait forever for rows that no read task can produce
        batch_format="numpy", compute=data.ActorPoolStrategy(min_size=1, max_size=config.workers),
        num_cpus=config.threads or 1)


def _key_pem(public_key: str | Path | bytes | None) -> bytes | None:
    """The public key's PEM bytes, read on the driver: a worker on another node may not have the driver's file."""
    from ..signing import public_key_pem

    return None if public_key is None else public_key_pem(public_key)


def _write(dataset, config: RayPredictConfig) -> int:
    from .files import OUTPUT_ID

    written = 0
    with atomic_file(config.output_file) as staging:
        writer = _JsonlWriter(staging) if config.output_format == "jsonl" else _ParquetWriter(staging)
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                records = [{OUTPUT_ID: written + n, **json.loads(r)} for n, r in enumerate(batch["record"])]
                writer.write(records)
                written += len(records)
        finally:
            writer.close()
        if written == 0:
            raise DataError(f"{config.input} has no rows; pass a file with at least one row to --input")
    return written


class _JsonlWriter:
    def __init__(self, path: Path):
        self.handle = open(path, "w", encoding="utf-8")

    def write(self, records: list[dict]) -> None:
        self.handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)

    def close(self) -> None:
        self.handle.close()


class _ParquetWriter:
    """Appends row groups to one Parquet file; `scores` becomes a struct with one field per label."""

    def __init__(self, path: Path):
        self.path, self.writer = path, None

    def write(self, records: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.writer is None:
            table = pa.Table.from_pylist(records)
            self.writer = pq.ParquetWriter(self.path, table.schema)
        else:
            table = pa.Table.from_pylist(records, schema=self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
