"""The eval split: copies of a row never on both sides, every class kept in training, the same for a seed, and
replayed from a RUN; --eval-data that is --data refused, copies across two files counted."""

from __future__ import annotations

import random
from collections import Counter

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
    assert (first.train, first.eval) == (again.train, again.eval) and first.record["split"] == "every-class"
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


def _rows(counts: dict[str, int]) -> list[dict]:
    return [{"text": f"{label} example {i}", "label": label} for label, n in counts.items() for i in range(n)]


def test_a_rare_class_is_scored_in_eval_and_trained(tmp_path):
    path = write_rows(tmp_path / "rare.csv", _rows({"pos": 95, "neg": 5}))
    for seed in range(30):  # the first-rows split left 'neg' out of eval for about two seeds in three
        examples = load_examples("classify", path, seed=seed)
        held = Counter(row["label"] for row in examples.eval)
        assert held == {"pos": 9, "neg": 1}, seed
        assert Counter(row["label"] for row in examples.train) == {"pos": 86, "neg": 4}, seed


def test_each_class_gets_its_share_of_eval(tmp_path):
    path = write_rows(tmp_path / "three.csv", _rows({"a": 120, "b": 60, "c": 20}))
    examples = load_examples("classify", path, seed=0, eval_fraction=0.2)
    assert Counter(row["label"] for row in examples.eval) == {"a": 24, "b": 12, "c": 4}
    path = write_rows(tmp_path / "many.csv", _rows({"big": 994, "r1": 2, "r2": 2, "r3": 2}))
    held = Counter(row["label"] for row in load_examples("classify", path, seed=0).eval)
    assert held == {"big": 97, "r1": 1, "r2": 1, "r3": 1}  # every rare class scored, the split still 100 rows


def test_a_class_eval_cannot_hold_is_named(tmp_path, caplog):
    path = tmp_path / "rare.csv"
    path.write_text("text,label\n" + "".join(f"common {i},a\n" for i in range(9)) + "rare one,b\n")
    with caplog.at_level("WARNING", logger="deployft.data.split"):
        load_examples("classify", path, seed=0)
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the eval split holds no row of class(es) b (1 row), so eval accuracy does not score them; add "
        "rows of them, raise --eval-fraction or pass --eval-data"]


def test_a_generator_holds_out_its_first_rows(tmp_path):
    rows = [{"prompt": f"question {i}", "response": f"answer {i}"} for i in range(50)]
    path = write_rows(tmp_path / "qa.jsonl", rows)
    examples = load_examples("generate", path, seed=4)
    shuffled = list(rows)
    random.Random(4).shuffle(shuffled)
    assert examples.eval == shuffled[:5] and examples.train == shuffled[5:]


def test_a_run_split_by_distinct_rows_replays_that_split(tmp_path):
    """A RUN recorded with the "distinct-rows" split held out its first rows in shuffled order, classes aside."""
    from deployft.manifest import write_manifest

    rows = _rows({"pos": 95, "neg": 5})
    path = write_rows(tmp_path / "rare.csv", rows)
    record = dict(load_examples("classify", path, seed=42).record, split="distinct-rows")
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "classify", "columns": {"text": "text", "label": "label"},
                         "data": record})
    shuffled = list(rows)
    random.Random(42).shuffle(shuffled)
    assert load_run_examples(run, "eval") == shuffled[:10] and load_run_examples(run, "train") == shuffled[10:]
    write_manifest(run, {"kind": "run", "task": "classify", "columns": {"text": "text", "label": "label"},
                         "data": dict(record, split="by-moon-phase")})
    with pytest.raises(DataError, match="was split by 'by-moon-phase', which this deployft does not know"):
        load_run_examples(run, "eval")
