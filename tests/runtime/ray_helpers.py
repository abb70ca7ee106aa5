"""What the `predict --ray` tests share: the CLI runner, one local Ray per module, Parquet and JSONL files, and the
comparison of Ray's rows with the single-process path's."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from deployft.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module: 2 CPUs, no dashboard."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def parquet(path, rows: list[dict]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=64)  # several blocks for Ray to reorder
    return path


def jsonl_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def assert_same(ray_rows: list[dict], local_rows: list[dict]) -> None:
    assert [r["id"] for r in ray_rows] == list(range(len(local_rows)))
    for got, expected in zip(ray_rows, local_rows):
        scores = expected.pop("scores", None)
        assert {k: v for k, v in got.items() if k != "scores"} == pytest.approx(expected, abs=1e-5)
        if scores is not None:
            assert got["scores"] == pytest.approx(scores, abs=1e-5)
