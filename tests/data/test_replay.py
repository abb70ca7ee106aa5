"""RUNs recorded before the distinct-row split (a data record without `split`) replay the very rows and labels they
trained on: the lenient CSV reader, labels spelled as read, the row split, an --eval-data that is --data."""

from __future__ import annotations

import csv
import random

from deployft.data.examples import load_run_examples
from deployft.data.readers import fingerprint
from deployft.manifest import write_manifest


def _old_run(tmp_path, data, eval_data=None, labels=("neg", "pos"), seed=42, eval_fraction=0.1):
    """A RUN whose data record is what deployft wrote before the distinct-row split (no `split` key)."""
    def describe(path):
        return {"path": str(path), "format": "csv", "sha256": fingerprint(path, "csv"), "rows": 0, "encoding": "utf-8"}

    record = {"train": describe(data), "eval": describe(eval_data) if eval_data else None,
              "eval_fraction": None if eval_data else eval_fraction, "seed": seed, "max_samples": None,
              "fingerprint": "0" * 64}
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "classify", "columns": {"text": "text", "label": "label"},
                         "data": record, "labels": list(labels)})
    return run


def _old_rows(path):
    """The rows as deployft read them before the distinct-row split: csv.DictReader, values as written."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{"text": row["text"], "label": row["label"]} for row in csv.DictReader(handle)]


def _old_split(rows, seed=42, eval_fraction=0.1):
    rows = list(rows)
    random.Random(seed).shuffle(rows)
    n_eval = max(1, round(len(rows) * eval_fraction))
    return rows[n_eval:], rows[:n_eval]


def test_labels_written_as_floats_replay_as_written(tmp_path):
    path = tmp_path / "lab.csv"  # pandas writes an int column holding a NaN as 0.0 / 1.0
    path.write_text("text,label\n" + "".join(f"text number {i},{i % 2}.0\n" for i in range(20)), encoding="utf-8")
    run = _old_run(tmp_path, path, labels=("0.0", "1.0"))
    train, evals = _old_split(_old_rows(path))
    assert load_run_examples(run, "train") == train and load_run_examples(run, "eval") == evals
    assert {row["label"] for row in evals} <= {"0.0", "1.0"}  # bench looks them up in the RUN's labels


def test_a_csv_the_old_reader_took_leniently_replays(tmp_path):
    lines = [f"review {i} was fine,{'pos' if i % 2 else 'neg'}" for i in range(30)]
    lines[5] += ",extra"  # refused by today's reader, read (the extra field dropped) by the old one
    lines[7] = 'a "quoted" word,pos'  # a quote in the middle of a field
    path = tmp_path / "old.csv"
    path.write_text("text,label\n" + "\n".join(lines) + "\n", encoding="utf-8")
    run = _old_run(tmp_path, path)
    train, evals = _old_split(_old_rows(path))
    assert load_run_examples(run, "train") == train and load_run_examples(run, "eval") == evals


def test_a_run_whose_eval_data_was_its_data_replays(tmp_path):
    path = tmp_path / "same.csv"
    path.write_text("text,label\n" + "".join(f"review {i},{'pos' if i % 2 else 'neg'}\n" for i in range(30)),
                    encoding="utf-8")
    run = _old_run(tmp_path, path, eval_data=path)
    rng, rows = random.Random(42), _old_rows(path)
    train, evals = list(rows), list(rows)
    rng.shuffle(train)
    rng.shuffle(evals)
    assert load_run_examples(run, "train") == train and load_run_examples(run, "eval") == evals
