"""CSV and TSV: a stray quote, an unquoted comma, a repeated column or another separator is an error naming the
line and the fix, never rows silently swallowed or shifted; long fields and prose spanning lines still read."""

from __future__ import annotations

import pytest

from deployft.data.examples import load_examples
from deployft.errors import DataError

ROWS = "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(6))


def _write(tmp_path, name, body):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8", newline="")
    return path


def _error(path) -> str:
    with pytest.raises(DataError) as info:
        load_examples("classify", path)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_an_unclosed_quote_names_its_line_instead_of_swallowing_the_rest(tmp_path):
    path = _write(tmp_path, "q.csv", "text,label\ngreat,pos\n\"Awful, just awful,neg\n" + ROWS)
    message = _error(path)
    assert "q.csv line 3: a quote opened in this record is never closed" in message
    assert 'double a quote inside a field ("")' in message


def test_a_quote_in_the_middle_of_a_field_names_its_line(tmp_path):
    message = _error(_write(tmp_path, "q.csv", "text,label\n" + ROWS + "\"Best\" movie ever,pos\n"))
    assert "q.csv line 14 is not valid CSV" in message and "remove the stray quote" in message


def test_a_quote_closed_by_chance_in_a_later_record_is_refused(tmp_path):
    body = "text,label\n" + ROWS + "\"Awful just awful,neg\nfine film,pos\nbad film,neg\nclosing\",pos\n" + ROWS
    message = _error(_write(tmp_path, "q.csv", body))
    assert "q.csv lines 14-17 are read as one record" in message and "'Awful just awful,neg'" in message


def test_prose_spanning_lines_in_a_quoted_field_still_reads(tmp_path):
    body = "text,label\n" + ROWS + "\"I loved it, really.\n\nThe cast, the music: all good.\",pos\n"
    examples = load_examples("classify", _write(tmp_path, "d.csv", body))
    texts = [row["text"] for row in examples.train + examples.eval]
    assert len(texts) == 13 and "I loved it, really.\n\nThe cast, the music: all good." in texts


def test_tsv_quotes_are_plain_characters(tmp_path):
    body = "text\tlabel\n\"Best\" movie ever\tpos\n\"Awful, just awful\tneg\n" + ROWS.replace(",", "\t")
    examples = load_examples("classify", _write(tmp_path, "q.tsv", body))
    texts = {row["text"] for row in examples.train + examples.eval}
    assert len(texts) == 14 and {'"Best" movie ever', '"Awful, just awful'} <= texts


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    message = _error(_write(tmp_path, "comma.csv", "text,label\n" + ROWS + "hello, world,pos\n"))
    assert "comma.csv line 14 has 3 fields but the header has 2 (text, label)" in message
    assert 'wrap a text that holds a comma in double quotes ("hello, world",pos)' in message
    tsv = _write(tmp_path, "tab.tsv", "text\tlabel\n" + ROWS.replace(",", "\t") + "hello\tworld\tpos\n")
    assert "tab.tsv line 14 has 3 fields" in _error(tsv) and "cannot hold a tab" in _error(tsv)


def test_a_header_that_repeats_a_column_is_refused(tmp_path):
    body = "text,label,text\n" + "".join(f"good {i},pos,IGNORED\nbad {i},neg,IGNORED\n" for i in range(6))
    assert "names column(s) 'text' more than once in its header" in _error(_write(tmp_path, "dup.csv", body))


def test_a_field_longer_than_the_csv_modules_default_limit_reads(tmp_path):
    long = "word " * 40_000  # 200,000 characters: over the csv module's 131,072
    examples = load_examples("classify", _write(tmp_path, "long.csv", "text,label\n" + ROWS + f"{long},pos\n"))
    assert max(len(row["text"]) for row in examples.train + examples.eval) == len(long)


@pytest.mark.parametrize("name, separator, fragment", [
    ("semi.csv", ";", "is separated by semicolons, not commas (header: text;label); save it comma-separated"),
    ("pipe.csv", "|", "is separated by pipes, not commas"),
    ("tabs.csv", "\t", "is separated by tabs, not commas (header: text\\tlabel); rename it to .tsv"),
    ("commas.tsv", ",", "is separated by commas, not tabs (header: text,label); rename it to .csv"),
])
def test_another_separator_is_named_with_the_fix(tmp_path, name, separator, fragment):
    body = ("text,label\n" + ROWS).replace(",", separator)
    assert fragment in _error(_write(tmp_path, name, body))
