"""Labels: one class per value whatever the format wrote (1, "1", 1.0, "1.0", "pos ", true, "true"), NaN and null
missing."""

from __future__ import annotations

import json

import pytest

from deployft.data.examples import load_examples, load_run_examples


@pytest.mark.parametrize("value, expected", [
    (1, "1"), ("1", "1"), (1.0, "1"), ("1.0", "1"), (" 2 ", "2"), ("2.50", "2.5"), (2.5, "2.5"), ("-3", "-3"),
    ("1e3", "1000"), ("007", "007"), ("pos ", "pos"), (" pos", "pos"), (float("nan"), None), (None, None),
    ("  ", None), (True, "true"), (False, "false"), ("True", "true"), (" FALSE ", "false"), ("Truth", "Truth"),
])
def test_normalize_label(value, expected):
    from deployft.data.labels import normalize_label

    assert normalize_label(value) == expected


def test_csv_one_and_one_point_zero_are_one_class(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{['1', '1.0', '2'][i % 3]}\n" for i in range(12)))
    assert load_examples("classify", path).labels == ["1", "2"]


def test_labels_with_surrounding_spaces_are_one_class(tmp_path):
    path = tmp_path / "sp.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{['pos', 'pos ', 'neg'][i % 3]}\n" for i in range(12)))
    examples = load_examples("classify", path)
    assert examples.labels == ["neg", "pos"] and {r["label"] for r in examples.train} == {"neg", "pos"}


def test_classes_differing_only_in_case_stay_apart_and_are_named(tmp_path, caplog):
    path = tmp_path / "case.csv"
    path.write_text("text,label\n" + "".join(f"t{i},{['Pos', 'pos', 'neg', 'neg'][i % 4]}\n" for i in range(16)))
    with caplog.at_level("WARNING"):
        examples = load_examples("classify", path)
    assert examples.labels == ["Pos", "neg", "pos"]  # as written: merging them is the user's call
    warning = next(r.getMessage() for r in caplog.records if "differ only in letter case" in r.getMessage())
    assert "'Pos' (" in warning and "'pos' (" in warning and "neg" not in warning and str(path) in warning
    caplog.clear()
    path.write_text("text,label\n" + "".join(f"t{i},{['pos', 'neg'][i % 2]}\n" for i in range(16)))
    with caplog.at_level("WARNING"):
        load_examples("classify", path)
    assert "letter case" not in caplog.text


def test_a_nan_label_is_missing_and_dropped_with_a_count(tmp_path, caplog):
    rows = [json.dumps({"text": f"t{i}", "label": ["pos", "neg"][i % 2]}) for i in range(10)]
    path = tmp_path / "nan.jsonl"
    path.write_text("\n".join(rows + ['{"text": "meh", "label": NaN}']) + "\n")
    with caplog.at_level("WARNING"):
        examples = load_examples("classify", path)
    assert examples.labels == ["neg", "pos"] and "dropped 1 of 11 rows" in caplog.text


def _bools(path, spelled, n=12):
    """A JSONL file whose labels alternate through `spelled` (JSON booleans and their text)."""
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": spelled[i % len(spelled)]}) + "\n" for i in range(n)))
    return path


def test_json_booleans_and_their_text_are_one_class(tmp_path):
    examples = load_examples("classify", _bools(tmp_path / "b.jsonl", [True, False, "true", "false"]))
    assert examples.labels == ["false", "true"]


def test_json_boolean_training_labels_match_a_csvs_true_and_false(tmp_path):
    evals = tmp_path / "eval.csv"
    evals.write_text("text,label\ne1,True\ne2,false\ne3,TRUE\n")  # pandas' to_csv writes True / False
    examples = load_examples("classify", _bools(tmp_path / "b.jsonl", [True, False]), evals)
    assert examples.labels == ["false", "true"] and {row["label"] for row in examples.eval} == {"false", "true"}


def test_a_run_of_an_earlier_split_replays_the_boolean_spellings_it_learned(tmp_path):
    """RUNs recorded before booleans were one class (split "distinct-rows") learned a JSON true as "True" and text
    as written, even two spellings of one boolean as two classes; they replay those classes."""
    from deployft.manifest import write_manifest

    path = _bools(tmp_path / "b.jsonl", [True, False, "true", "TRUE"], n=40)
    examples = load_examples("classify", path)
    assert examples.labels == ["false", "true"]
    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": "classify", "columns": examples.columns,
                         "data": dict(examples.record, split="distinct-rows"),
                         "labels": ["False", "TRUE", "True", "true"]})
    rows = load_run_examples(run, "train") + load_run_examples(run, "eval")
    assert {row["label"] for row in rows} == {"False", "TRUE", "True", "true"} and len(rows) == 40
