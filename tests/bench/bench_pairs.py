"""RUN + BUNDLE pairs for the bench tests, made without training: a tiny random model, a RUN manifest whose
data block comes from deployft.data.examples (so `load_run_examples` re-reads it), then the product's own export.

Built once per session and shared: tests must not change them (the bench only reads them).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import build_tiny_model, qa_rows, sentiment_rows, write_rows

_CACHE: dict[str, tuple[Path, Path]] = {}


def make_run(arch: str, task: str, folder: Path, data: Path) -> Path:
    """A RUN folder per docs/folders.md around a randomly initialised tiny model."""
    from deployft.data.examples import load_examples
    from deployft.manifest import library_versions, write_manifest

    build_tiny_model(arch, folder)
    examples = load_examples(task, data, eval_fraction=0.25, seed=0)
    config = json.loads((folder / "config.json").read_text())
    write_manifest(folder, {
        "kind": "run", "task": task, "base_model": f"tiny-{arch}", "model_type": config["model_type"],
        "labels": examples.labels, "max_length": 32,
        "prompt_format": None if task == "classify" else {"style": "chat", "separator": "\n"},
        "columns": examples.columns, "data": examples.record, "training": None, "metrics": {},
        "versions": library_versions(), "created": "2026-01-01T00:00:00+00:00",
    })
    return folder


def build_pair(task: str, root: Path) -> tuple[Path, Path]:
    from deployft.exporter import ExportConfig, export

    if task == "classify":
        run = make_run("bert", task, root / "run", write_rows(root / "data" / "reviews.csv", sentiment_rows(120)))
    else:
        run = make_run("llama", task, root / "run", write_rows(root / "data" / "qa.jsonl", qa_rows(60)))
    # no budget: a classifier's is a share of predictions (at most 100 %), a generator's a perplexity ratio
    bundle = export(ExportConfig(run=run, output=root / "bundle", quantize="int8", validate_samples=8,
                                 max_accuracy_drop=100.0 if task == "classify" else 1e9))
    return run, bundle


@pytest.fixture
def bench_pair(tmp_path_factory):
    """`bench_pair("classify" | "generate")` -> (RUN, BUNDLE), shared by the session; read only."""

    def get(task: str) -> tuple[Path, Path]:
        if task not in _CACHE:
            _CACHE[task] = build_pair(task, tmp_path_factory.mktemp(f"bench-{task}"))
        return _CACHE[task]

    return get
