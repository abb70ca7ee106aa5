"""JSON Lines and .json: line separators inside strings, rows that lack a column, nested values, pandas' shapes."""

from __future__ import annotations

import json

import pytest

from deployft.data.examples import load_examples
from deployft.errors import DataError

ROWS = [{"text": f"good {i}", "label": "pos"} for i in range(5)] + [{"text": f"bad {i}", "label": "neg"}
                                                                    for i in range(5)]


def _jsonl(tmp_path, rows, name="d.jsonl", ensure_ascii=True):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\x85"])
def test_unicode_line_separators_inside_strings_read(tmp_path, separator):
    text = f"line one{separator}line two"
    path = _jsonl(tmp_path, ROWS + [{"text": text, "label": "pos"}], ensure_ascii=False)
    examples = load_examples("classify", path)
    assert text in [row["text"] for row in examples.train + examples.eval]


def test_crlf_line_ends_read(tmp_path):
    path = tmp_path / "crlf.jsonl"
    path.write_bytes(b"".join(json.dumps(r).encode() + b"\r\n" for r in ROWS))
    assert len(load_examples("classify", path).train) == 9


def test_a_first_row_without_the_label_column_drops_that_row(tmp_path, caplog):
    path = _jsonl(tmp_path, [{"text": "no label here"}] + ROWS)
    with caplog.at_level("WARNING"):
        examples = load_examples("classify", path)
    assert len(examples.train) + len(examples.eval) == 10 and examples.labels == ["neg", "pos"]
    assert "dropped 1 of 11 rows" in caplog.text


def test_a_nested_value_names_its_column_and_row(tmp_path):
    path = _jsonl(tmp_path, ROWS[:3] + [{"text": {"title": "x", "body": "y"}, "label": "pos"}] + ROWS[3:])
    with pytest.raises(DataError, match=r"column 'text' of .*d.jsonl row 4 holds a dict, not text"):
        load_examples("classify", path)


def test_pandas_column_oriented_json_says_how_to_write_records(tmp_path):
    columns = {"text": {str(i): r["text"] for i, r in enumerate(ROWS)},
               "label": {str(i): r["label"] for i, r in enumerate(ROWS)}}
    path = tmp_path / "pandas.json"
    path.write_text(json.dumps(columns), encoding="utf-8")
    with pytest.raises(DataError, match=r"one JSON object of columns \(text, label\).*"
                                        r'df.to_json\(path, orient="records", lines=True\)'):
        load_examples("classify", path)


def test_rows_wrapped_in_an_object_name_the_key(tmp_path):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": ROWS}, indent=2), encoding="utf-8")
    with pytest.raises(DataError, match=r"holds its rows inside the key 'data' of one JSON object"):
        load_examples("classify", path)
