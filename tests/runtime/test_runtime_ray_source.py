"""`deployft predict --ray` reads its input as `predict --input` does (`ray_source.py`): the exact strings of a
CSV, JSONL or Parquet file, the same refusals, and a read Ray can schedule on any cluster."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import sentiment_rows, write_rows
from deployft.cli import main
from deployft.runtime import Predictor
from deployft.runtime.files import predict_file
from ray_helpers import assert_same as _assert_same, jsonl_rows as _jsonl, parquet as _parquet, run as _run
from ray_helpers import local_ray  # noqa: F401 (a fixture)


TRICKY = ["007", "1.50", "1e3", "true", "NA", "null", "", " 42 ", "two\nlines", 'a "quoted" word']


@pytest.mark.slow
def test_ray_predicts_the_exact_texts_of_a_csv_jsonl_or_parquet_file_like_the_single_process_path(
        local_ray, runtime_bundle, tmp_path, caplog):
    bundle = runtime_bundle("bert")
    texts = TRICKY + [r["text"] for r in sentiment_rows(40)]
    rows = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    csv_file = write_rows(tmp_path / "in.csv", rows)
    with open(csv_file, "a", encoding="utf-8") as handle:
        handle.write("99,\n")  # a row whose text field is empty: "" on both paths (one without it is refused)
    nulls = rows + [{"id": "98", "text": None}]  # null: "" on both paths
    jsonl_file, parquet_file = write_rows(tmp_path / "in.jsonl", nulls), _parquet(tmp_path / "in.parquet", nulls)
    for data, local_input in ((csv_file, csv_file), (jsonl_file, jsonl_file), (parquet_file, jsonl_file)):
        out = tmp_path / f"out-{data.suffix[1:]}"
        result = _run("predict", bundle, "--input", data, "--output", out, "--ray", "--workers", "2",
                      "--batch-size", "4", "--no-progress")  # windows of 32 rows: several blocks to keep in order
        assert result.exit_code == 0, result.output
        assert f"{data} has a column 'id' of its own; the predictions' 'id' is each row's position" in caplog.text
        local = tmp_path / f"local-{data.suffix[1:]}.jsonl"
        predict_file(Predictor.load(bundle), local_input, local, batch_size=4, progress=False)
        ray_rows = _jsonl(out / "predictions.jsonl")
        assert [r["text"] for r in ray_rows] == texts + [""], data
        _assert_same(ray_rows, _jsonl(local))


def _refused(path, content: str | list[dict] | tuple[str, int]):
    """Write `path`: a .parquet from rows, or from `(type, n)` (a column 'text' of that type holding n nulls), else
    the text as given."""
    if isinstance(content, tuple):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": pa.array([None] * content[1], content[0])}), path)
        return path
    if isinstance(content, list):
        return _parquet(path, content)
    path.write_text(content, encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("name, content, message", [
    ("number.jsonl", '{"text": "fine"}\n\n{"text": 7}\n' + '{"text": "fine"}\n' * 40,
     "{path} line 3: column 'text' is a number, not a string; write the text as a JSON string"),
    ("numbers.jsonl", '{"text": 7}\n{"text": 8}\n',
     "{path} line 1: column 'text' is a number, not a string; write the text as a JSON string"),
    ("missing.jsonl", '{"text": "fine"}\n' * 40 + '{"review": "dull"}\n',
     "{path} line 41 has no column 'text' (columns: review); pass --column NAME"),
    ("unclosed.csv", "text\n" + "fine\n" * 38 + '"never closed\nmore\n',
     "data file {path} line 40: a quote opened in this record is never closed"),
    ("stray.csv", "text\nfine\n\"cut\" here\n", "data file {path} line 3 is not valid CSV"),
    ("short.csv", "id,text\n" + "1,fine\n" * 38 + "2\n",
     "{path} line 40 has 1 of the header's 2 fields, none for column 'text'; fill the line in (an empty text is an "
     "empty field), or quote a text that holds a comma or a line break"),
    ("number.parquet", [{"text": None}, {"text": None}, {"text": 7}],
     "{path} row 3: column 'text' is a number, not a string; write the column 'text' as strings"),
    ("chat.parquet", [{"text": [{"role": "user", "content": "hi"}]}],
     "{path} row 1: column 'text' is an array, not a string; write the column 'text' as strings"),
    ("empty.csv", "", "data file {path} is empty; pass a file with a header and at least one row to --input"),
    ("header.csv", "text\n", "{path} has no rows; pass a file with at least one row to --input"),
    ("nulls.parquet", ("int64", 3), "{path}: column 'text' is int64 holding only nulls, not strings; write the "
                                    "column 'text' as strings, or pass --column NAME of a text column"),
])
def test_ray_refuses_a_text_that_is_not_the_files_string_as_the_single_process_path_does(
        local_ray, runtime_bundle, tmp_path, name, content, message):
    from deployft.errors import DataError

    data = _refused(tmp_path / name, content)
    result = _run("predict", runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray",
                  "--workers", "1", "--batch-size", "4", "--no-progress")
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]  # among Ray's own log
    assert len(errors) == 1 and errors[0].startswith(f"Error: {message.format(path=data)}"), result.output
    if data.suffix != ".parquet":  # the single-process path reads the same file with the same words
        with pytest.raises(DataError) as refused:
            predict_file(Predictor.load(runtime_bundle("bert")), data, tmp_path / "local.jsonl", progress=False)
        assert errors[0] == f"Error: {refused.value}"
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


class _Data:
    """A fake `ray.data`: records how a file is read; its Parquet datasets have the file's schema."""

    def __init__(self):
        self.reads = []

    def read_datasource(self, source, **settings):
        self.reads.append((source, settings))
        return "dataset"

    def read_parquet(self, path):
        import pyarrow.parquet as pq

        self.reads.append((path, {}))
        return SimpleNamespace(schema=lambda: pq.read_schema(path), select_columns=lambda names: "dataset")


def test_a_jsonl_or_csv_file_is_read_by_its_absolute_path_in_a_task_that_reserves_no_cpu(tmp_path, monkeypatch):
    """The task is pinned to the driver's node: on a cluster whose head has no CPU (`--num-cpus=0`), a task that
    reserves one is refused by Ray (`test_ray_reads_a_jsonl_file_on_a_cluster_whose_head_node_has_no_cpu`)."""
    from deployft.errors import DataError
    from deployft.runtime.ray_source import read_input

    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "in.jsonl", sentiment_rows(4))
    _parquet(tmp_path / "in.parquet", sentiment_rows(4))
    data = _Data()
    assert read_input(data, Path("in.jsonl"), None, "classify", rows_per_block=8) == ("dataset", "text")
    assert read_input(data, Path("in.parquet"), None, "classify", rows_per_block=8) == ("dataset", "text")
    [(source, settings), (parquet, _)] = data.reads
    assert settings == {"num_cpus": 0}
    # a Ray worker does not run in the driver's working folder
    assert (source.path, parquet) == (tmp_path / "in.jsonl", str(tmp_path / "in.parquet"))
    # errors name the file as the user wrote it, as the single-process path does
    (tmp_path / "in.jsonl").write_text('{"text": "fine"}\n{"review": "no text"}\n')
    with pytest.raises(DataError) as refused:
        list(source._blocks())  # what the read task runs
    assert str(refused.value).startswith("in.jsonl line 2 has no column 'text'")


def test_a_parquet_text_column_of_numbers_holding_only_nulls_is_refused(tmp_path):
    """Ray Data would hand the workers NaN, not None, for such a null: the column is refused before any worker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from deployft.errors import DataError
    from deployft.runtime.ray_source import read_input

    for kind in ("int64", "double"):
        path = tmp_path / f"{kind}.parquet"
        pq.write_table(pa.table({"id": ["a", "b"], "text": pa.array([None, None], kind)}), path)
        with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: column 'text' is {kind} holding only nulls, "
                                            "not strings; write the column 'text' as strings, or pass --column NAME "
                                            "of a text column$"):
            read_input(_Data(), path, None, "classify", rows_per_block=8)
    nulls = tmp_path / "null.parquet"
    pq.write_table(pa.table({"text": pa.array([None, None], pa.null())}), nulls)  # nulls of no type: read as ""
    assert read_input(_Data(), nulls, None, "classify", rows_per_block=8) == ("dataset", "text")


@pytest.mark.slow
def test_ray_reads_a_jsonl_file_on_a_cluster_whose_head_node_has_no_cpu(runtime_bundle, tmp_path):
    """`ray start --head --num-cpus=0` and a worker node with CPUs, in a process of its own (one Ray per process):
    the read task runs on the head, where deployft runs, and the actors on the worker node."""
    import subprocess

    code = ("import sys\n"
            "from click.testing import CliRunner\n"
            "from ray.cluster_utils import Cluster\n"
            "from deployft.cli import main\n"
            "cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 0, 'include_dashboard': False})\n"
            "cluster.add_node(num_cpus=2)\n"
            "try:\n"
            "    result = CliRunner().invoke(main, ['predict', *sys.argv[1:], '--ray-address', cluster.address])\n"
            "finally:\n"
            "    cluster.shutdown()\n"
            "print(result.output[-3000:], repr(result.exception))\n"
            "sys.exit(result.exit_code)\n")
    data = write_rows(tmp_path / "in.jsonl", sentiment_rows(6))
    args = [runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray", "--workers", "1",
            "--no-progress"]
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "wrote 6 prediction(s)" in done.stdout
    assert [r["text"] for r in _jsonl(tmp_path / "out" / "predictions.jsonl")] == [r["text"] for r in
                                                                                   sentiment_rows(6)]


@pytest.mark.parametrize("address, environment", [("ray://head:10001", None), (None, "ray://head:10001"),
                                                  ("auto", "ray://head:10001")])
def test_a_jsonl_or_csv_file_under_a_ray_client_address_is_refused_before_any_work(
        runtime_bundle, tmp_path, monkeypatch, address, environment):
    """Through Ray Client the read task runs on the cluster, which usually lacks a file of the driver's machine."""
    from deployft.runtime.ray_predict import RayPredictConfig

    if environment:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in ("in.jsonl", "in.csv"):
        data = write_rows(tmp_path / name, sentiment_rows(4))
        flags = ("--ray-address", address) if address else ()
        result = _run("predict", runtime_bundle("bert"), "--input", data, "--output", tmp_path / "out", "--ray",
                      *flags)
        assert result.exit_code == 1
        named = f"--ray-address {address}" if address and address != "auto" else f"RAY_ADDRESS={environment}"
        assert result.output.strip() == (
            f"Error: --input {data} is a file on this machine, but through Ray Client ({named}) a node of the "
            "cluster reads it, where it usually is not; run deployft on a node of the cluster (--ray-address auto "
            "or HOST:6379), or pass a .parquet file at a path every node mounts where this machine does")
    assert not (tmp_path / "out").exists()
    parquet = _parquet(tmp_path / "in.parquet", sentiment_rows(4))  # a path the cluster may share (NFS): accepted
    RayPredictConfig(bundle=runtime_bundle("bert"), input=parquet, output=tmp_path / "out", address=address)


def test_a_jsonl_file_is_refused_when_ray_is_already_joined_through_ray_client(runtime_bundle, tmp_path,
                                                                                monkeypatch):
    """A caller's own `ray.init("ray://...")`: the connection is checked before the file is read."""
    ray = pytest.importorskip("ray")
    from deployft.errors import UsageError
    from deployft.runtime import ray_predict

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    config = ray_predict.RayPredictConfig(bundle=runtime_bundle("bert"), output=tmp_path / "out",
                                          input=write_rows(tmp_path / "in.jsonl", sentiment_rows(4)))
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray_predict.ray_client, "client_connected", lambda: True)
    monkeypatch.setattr(ray_predict, "_dataset", lambda *args: pytest.fail("the file was read"))
    with pytest.raises(UsageError, match=r"^--input .*in.jsonl is a file on this machine, but through Ray Client"):
        ray_predict.predict_on_ray(config)
