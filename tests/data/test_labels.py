"""Labels: one class per value whatever the format wrote (1, "1", 1.0, "1.0", "pos "), NaN and null missing."""

from __future__ import annotations

import json

import pytest

from deployft.data.examples import load_examples


@pytest.mark.parametrize("value, expected", [
    (1, "1"), ("1", "1"), (1.0, "1"), ("1.0", "1"), (" 2 ", "2"), ("2.50", "2.5"), (2.5, "2.5"), ("-3", "-3"),
    ("1e3", "1000"), ("007", "007"), ("pos ", "pos"), (" pos", "pos"), (float("nan"), None), (None, None),
    ("  ", None), (True, "True"),
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


def test_a_nan_label_is_missing_and_dropped_with_a_count(tmp_path, caplog):
    rows = [json.dumps({"text": f"t{i}", "label": ["pos", "neg"][i % 2]}) for i in range(10)]
    path = tmp_path / "nan.jsonl"
    path.write_text("\n".join(rows + ['{"text": "meh", "label": NaN}']) + "\n")
    with caplog.at_level("WARNING"):
        examples = load_examples("classify", path)
    assert examples.labels == ["neg", "pos"] and "dropped 1 of 11 rows" in caplog.text
