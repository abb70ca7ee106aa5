"""The input file of `predict --ray` as a Ray Data dataset of texts, read as `predict --input` reads it.

A JSONL or CSV file is read by `files.read_texts`, the single-process reader, in one Ray read task on the
driver's node (where `--input` was checked, found by its absolute path) that streams blocks of texts; the task
reserves no CPU, so a cluster whose head node has none (`ray start --head --num-cpus=0`) still runs it. Ray's
own CSV and JSON readers infer a type per column, so a CSV text "007" would reach the model as 7, and they read
what the strict reader refuses (a quote never closed becomes one text holding the rest of the file); with one
reader both paths predict the same texts and refuse the same files with the same one-line errors. A Parquet
file is read by Ray Data: its text column must hold strings (a null is read as "", as in JSONL), else the first
other value is refused, as `files.text_value` refuses it in a JSONL file, and a column of another type holding
only nulls is refused too (Ray Data would hand the workers NaN, not "").

Importing this module imports Ray: `ray_predict` imports it inside its functions only.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow as pa
from ray.data import Datasource, ReadTask
from ray.data.block import BlockMetadata

from ..errors import DataError, reraise_as
from ..tasks import get_task
from .files import read_texts, text_value, warn_own_id

TEXT = "text"
"""The column of the texts read from a JSONL or CSV file."""


def read_input(data, path: Path, column: str | None, task: str, rows_per_block: int):
    """`(dataset, column)`: the texts of `path` (a .parquet, .jsonl or .csv file) and the column that holds them.

    Raises:
        DataError: the file lacks the column, or holds a text that is not a string; a JSONL or CSV file is
            checked here up to its first row, and the rest of it as it is read (the error reaches the driver
            from the read task).
    """
    if path.suffix.lower() == ".parquet":
        return _parquet_texts(data, path, column, task)
    next(read_texts(path, column, task), None)  # a missing column or a bad first row fails before any worker starts
    source = FileTexts(path, column, task, rows_per_block)
    # the task is pinned to the driver's node, which is the head node when deployft runs there: reserving a CPU
    # would make Ray refuse a head started with --num-cpus=0 (as clusters often are)
    return data.read_datasource(source, num_cpus=0), TEXT


class FileTexts(Datasource):
    """The texts of a JSONL or CSV file, read by `files.read_texts` in one task on the driver's node."""

    def __init__(self, path: Path, column: str | None, task: str, rows_per_block: int):
        super().__init__()
        self.path = Path(path).resolve()  # a Ray worker does not run in the driver's working folder
        self.shown = str(path)  # the path as given: errors name it so, as the single-process path's do
        self.column, self.task, self.rows_per_block = column, task, rows_per_block

    def estimate_inmemory_data_size(self) -> int:
        return self.path.stat().st_size

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context=None) -> list[ReadTask]:
        # one task: a CSV record may span lines, so the file cannot be cut into parts read apart
        metadata = BlockMetadata(num_rows=None, size_bytes=self.estimate_inmemory_data_size(),
                                 input_files=[str(self.path)], exec_stats=None)
        return [ReadTask(self._blocks, metadata, schema=pa.schema([(TEXT, pa.string())]),
                         per_task_row_limit=per_task_row_limit)]

    @property
    def supports_distributed_reads(self) -> bool:
        return False  # the file is on the driver's machine: another node of the cluster may not have it

    def _blocks(self):
        texts = read_texts(self.path, self.column, self.task, shown=self.shown)
        while chunk := list(itertools.islice(texts, self.rows_per_block)):
            yield pa.table({TEXT: pa.array(chunk, pa.string())})


def _parquet_texts(data, path: Path, column: str | None, task: str):
    with reraise_as(DataError, f"cannot read {path} ({{reason}}); pass a valid .parquet, .jsonl or .csv file "
                               "to --input"):
        dataset = data.read_parquet(str(path.resolve()))  # a worker's working folder is not the driver's
        schema = dataset.schema()
    names = list(schema.names)
    name = _text_column(names, column, task, path)
    warn_own_id(path, names)
    kind = schema.types[names.index(name)]
    if not _holds_strings(kind):
        _refuse_first_value(path, name, kind, get_task(task).generates)
    return dataset.select_columns([name]), name


def _text_column(columns: list[str], column: str | None, task: str, path: Path) -> str:
    """The text column among `columns`: `column`, else the task's first input column found."""
    names = (column,) if column else get_task(task).input_columns
    for name in names:
        if name in columns:
            return name
    raise DataError(f"{path} has no column {' or '.join(repr(n) for n in names)} "
                    f"(columns: {', '.join(columns)}); pass --column NAME")


def _holds_strings(kind: pa.DataType) -> bool:
    """Whether an Arrow column of this type holds only strings and nulls."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return str(kind) in ("string", "large_string", "string_view", "null")


def _refuse_first_value(path: Path, name: str, kind: pa.DataType, generates: bool) -> None:
    """Raise the error of the first value that is not null in a column of type `kind` (not strings)."""
    import pyarrow.parquet as pq

    fix = f"write the column {name!r} as strings, or pass --column NAME of a text column"
    row = 0
    for batch in pq.ParquetFile(path).iter_batches(columns=[name]):
        values = batch.column(0)
        if values.null_count < len(values):
            index = next(i for i, valid in enumerate(values.is_valid().to_pylist()) if valid)
            text_value(values[index].as_py(), name, generates, f"{path} row {row + index + 1}", fix=fix)
            return  # a type whose values read as strings (an extension type): the workers get them as they are
        row += len(values)
    # only nulls: Ray Data hands a worker a null of a number column as NaN, not None, so it cannot be read as ""
    raise DataError(f"{path}: column {name!r} is {kind} holding only nulls, not strings; {fix}")
