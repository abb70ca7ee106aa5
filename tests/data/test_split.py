"""The eval split: copies of a row never on both sides, every class kept in training, the same for a seed, and
replayed from a RUN; --eval-data that is --data refused, copies across two files counted."""

from __future__ import annotations

import pytest
from conftest import sentiment_rows, write_rows

from deployft.data.examples import load_examples, load_run_examples
from deployft.errors import DataError


def _inputs(rows):
    return {row["text"] for row in rows}


def test_copies_of_a_row_stay_on_one_side(tmp_path):
    rows = sentiment_rows(60) * 3 + sentiment_rows(40, seed=1)  # each of the first 60 three times
    path = write_rows(tmp_path / "dup.csv", rows)
    for seed in range(5):
        examples = load_examples("classify", path, seed=seed)
        assert not _inputs(examples.train) & _inputs(examples.eval), seed
        assert len(examples.train) + len(examples.eval) == 220 and 18 <= len(examples.eval) <= 22


def test_the_split_is_the_same_for_a_seed_and_replays_from_a_run(tmp_path):
    from deployft.manifest import write_manifest

    path = write_rows(tmp_path / "dup.csv", sentiment_rows(50) * 2)
    first, again = load_examples("classify", path, seed=3), load_examples("classify", path, seed=3)
    assert (first.train, first.eval) == (again.train, again.eval) and first.record["split"] == "distinct-rows"
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "classify", "columns": first.columns, "data": first.record})
    assert load_run_examples(run, "train") == first.train and load_run_examples(run, "eval") == first.eval


def test_rows_without_copies_split_as_before(classify_csv):
    examples = load_examples("classify", classify_csv, seed=1)
    assert (len(examples.train), len(examples.eval)) == (216, 24)


def test_every_class_keeps_a_training_row(tmp_path):
    path = tmp_path / "rare.csv"
    path.write_text("text,label\n" + "".join(f"common {i},a\n" for i in range(9)) + "rare one,b\n")
    for seed in range(40):  # seed 9 used to hold out the only 'b' row and train on 'a' alone
        examples = load_examples("classify", path, seed=seed)
        assert {row["label"] for row in examples.train} == {"a", "b"} and len(examples.eval) == 1, seed


def test_all_rows_copies_of_one_are_too_few(tmp_path):
    path = write_rows(tmp_path / "same.csv", [{"text": "same", "label": "a"}, {"text": "x", "label": "b"}] * 5)
    with pytest.raises(DataError, match=r"10 usable example\(s\) \(2 distinct\), too few to hold out an eval split"):
        load_examples("classify", path)


def test_eval_data_that_is_the_training_file_is_refused(tmp_path, classify_csv, monkeypatch):
    with pytest.raises(DataError, match=r"--eval-data .*reviews.csv is the same file as --data"):
        load_examples("classify", classify_csv, classify_csv)
    monkeypatch.chdir(classify_csv.parent)
    with pytest.raises(DataError, match="is the same file as --data"):
        load_examples("classify", classify_csv, "./reviews.csv")


def test_eval_rows_that_occur_in_training_are_counted(tmp_path, classify_csv, caplog):
    evals = write_rows(tmp_path / "eval.csv", sentiment_rows(240)[:10] + sentiment_rows(20, seed=9))
    with caplog.at_level("WARNING"):
        load_examples("classify", classify_csv, evals)
    assert "of 30 eval rows of" in caplog.text and "also occur in the training data" in caplog.text
