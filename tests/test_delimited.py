"""CSV and TSV: a stray quote, an unquoted comma, a repeated column or another separator is an error naming the
line and the fix, never rows silently swallowed or shifted; long fields, prose spanning lines, quoted TSV and
trailing empty fields still read; a quoted field holding lines that look like records is read with a warning."""

from __future__ import annotations

import logging

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


def test_a_quote_closed_by_chance_in_a_later_record_is_read_with_a_warning_naming_the_lines(tmp_path, caplog):
    body = "text,label\n" + ROWS + "\"Awful just awful,neg\nfine film,pos\nbad film,neg\nclosing\",pos\n" + ROWS
    with caplog.at_level(logging.WARNING, logger="deployft.data"):
        examples = load_examples("classify", _write(tmp_path, "q.csv", body))
    assert len(examples.train) + len(examples.eval) == 25  # the quotes balance: the four lines are one text
    warning = caplog.text
    assert "q.csv: 1 quoted field(s) hold a line that looks like a record of its own: lines 14-17" in warning
    assert "'Awful just awful,neg'" in warning and "may be records swallowed by a misplaced quote" in warning


@pytest.mark.parametrize("body", [
    'id,text,label\n1,great,5\n2,bad,1\n3,ok,3\n4,meh,3\n5,fine,5\n6,"Count with me:\n1, 2, 3\nthen go",5\n',
    'text,label\nnice,pos\ngood,pos\nbad,neg\nawful,neg\n"Pros and cons:\nprice, pos\nscreen, neg",pos\n',
])
def test_a_quoted_text_holding_record_like_lines_is_read_as_written(tmp_path, caplog, body):
    from deployft.delimited import read_delimited

    with caplog.at_level(logging.WARNING, logger="deployft.data"):
        rows = read_delimited(tmp_path / "list.csv", body, "csv")
    texts = [row["text"] for row in rows]
    assert texts[-1] in ("Count with me:\n1, 2, 3\nthen go", "Pros and cons:\nprice, pos\nscreen, neg")
    assert "may be records swallowed by a misplaced quote" in caplog.text


def test_prose_spanning_lines_in_a_quoted_field_still_reads(tmp_path):
    body = "text,label\n" + ROWS + "\"I loved it, really.\n\nThe cast, the music: all good.\",pos\n"
    examples = load_examples("classify", _write(tmp_path, "d.csv", body))
    texts = [row["text"] for row in examples.train + examples.eval]
    assert len(texts) == 13 and "I loved it, really.\n\nThe cast, the music: all good." in texts


def test_tsv_is_read_with_the_quoting_pandas_writes(tmp_path):
    # pandas' df.to_csv(path, sep="\t") quotes a text holding a quote, a tab or a line break, and doubles its quotes
    body = ("text\tlabel\n\"He said \"\"wow\"\" loudly\"\tpos\n\"line one\nline two\"\tneg\n\"a\ttab\"\tpos\n"
            'a 5" screen\tneg\n' + ROWS.replace(",", "\t"))
    examples = load_examples("classify", _write(tmp_path, "q.tsv", body))
    texts = {row["text"] for row in examples.train + examples.eval}
    assert len(texts) == 16 and {'He said "wow" loudly', "line one\nline two", "a\ttab", 'a 5" screen'} <= texts


def test_a_stray_quote_in_a_tsv_names_its_line(tmp_path):
    message = _error(_write(tmp_path, "q.tsv", "text\tlabel\n" + ROWS.replace(",", "\t") + '"Best" movie\tpos\n'))
    assert "q.tsv line 14 is not valid TSV" in message and "remove the stray quote" in message
    assert "('\\t' expected after '\"')" in message and "\t" not in message  # the tab shown as \t, not a tab


def test_a_row_with_more_fields_than_the_header_is_refused(tmp_path):
    message = _error(_write(tmp_path, "comma.csv", "text,label\n" + ROWS + "hello, world,pos\n"))
    assert "comma.csv line 14 has 3 fields but the header has 2 (text, label)" in message
    assert 'wrap a text that holds a comma in double quotes ("hello, world",pos)' in message
    tsv = _write(tmp_path, "tab.tsv", "text\tlabel\n" + ROWS.replace(",", "\t") + "hello\tworld\tpos\n")
    assert "tab.tsv line 14 has 3 fields" in _error(tsv) and "a text that holds a tab in double quotes" in _error(tsv)
    tail = _write(tmp_path, "tail.csv", "text,label\n" + ROWS + "hello world,pos,,oops\n")
    assert "tail.csv line 14 has 4 fields" in _error(tail)  # an extra field with content, after an empty one


def test_trailing_empty_fields_are_dropped_with_one_warning(tmp_path, caplog):
    body = "text,label\n" + ROWS.replace("pos\n", "pos,\n") + "review 5 was fine,pos, ,\n"
    with caplog.at_level(logging.WARNING, logger="deployft.data"):
        examples = load_examples("classify", _write(tmp_path, "tail.csv", body))
    rows = examples.train + examples.eval
    assert len(rows) == 13 and {row["label"] for row in rows} == {"pos", "neg"}
    assert {"text": "review 5 was fine", "label": "pos"} in rows
    assert caplog.text.count("row(s) end in empty fields") == 1 and "7 row(s)" in caplog.text


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


@pytest.mark.parametrize("header, row", [
    ("text;label", "good, really;pos"),  # a comma in a field: not "line 2 has 2 fields ... quote it"
    ("text;label", '"good; really";pos'),  # a quoted field: not "',' expected after '\"'"
    ('"text";"label"', '"good";"pos"'),  # every field quoted, the header too
])
def test_a_semicolon_file_is_named_so_whatever_its_rows_hold(tmp_path, header, row):
    body = f"{header}\n{row}\n" + ROWS.replace(",", ";")
    message = _error(_write(tmp_path, "semi.csv", body))
    assert f"semi.csv is separated by semicolons, not commas (header: {header}); save it comma-separated" in message


def test_text_lines_split_as_a_file_opened_with_newline_empty_does():
    """The csv module's input without io.StringIO's copy (four bytes a character): every line ending kept, only
    \\n, \\r\\n and a lone \\r end a line (not \\x0c, \\x1c or U+2028, which splitlines would cut at)."""
    import io
    import random

    from deployft.delimited import text_lines

    rng = random.Random(0)
    cases = ["", "a", "a\n", "a\r\nb\rc\nd", "\r\r\n\n", "x\x0cy\u2028z\n\x1c\r", "q\r", "é,\"two\nlines\"\r\nnext"]
    cases += ["".join(rng.choice("ab\r\n\x0c\u2028,\"") for _ in range(rng.randint(0, 30))) for _ in range(500)]
    for text in cases:
        assert list(text_lines(text)) == list(io.StringIO(text, newline="")), repr(text)
