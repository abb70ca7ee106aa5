"""`predict_file` reads a CSV strictly, as training data is read (`deployft.delimited.strict_rows`): quotes, extra
fields, repeated columns, long fields and the field limit."""

from __future__ import annotations

import re

import pytest
from conftest import NeverCalledPredictor

from deployft.runtime.files import predict_file


def test_a_csv_row_with_more_fields_than_its_header_is_refused(tmp_path):
    from deployft.errors import DataError

    for header in ("text", "review"):  # the column found, or not (the missing-column message used to crash)
        source = tmp_path / f"{header}.csv"
        source.write_text(f"{header}\na,b,c\n")
        with pytest.raises(DataError, match=f"^data file {source} line 2 has 3 fields but the header has 1 "
                                            f"\\({header}\\); wrap a text that holds a comma in double quotes"):
            predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)


def test_a_csv_is_read_for_predict_as_it_is_read_for_training(tmp_path):
    """One reader (`deployft.delimited.strict_rows`): a repeated column is refused, a trailing separator is not."""
    from deployft.delimited import read_delimited
    from deployft.errors import DataError
    from deployft.runtime.files import read_texts

    repeated = tmp_path / "repeated.csv"
    repeated.write_text("text,text\na,b\n")
    with pytest.raises(DataError, match="names column\\(s\\) 'text' more than once in its header"):
        predict_file(NeverCalledPredictor(), repeated, tmp_path / "out.jsonl", progress=False)
    trailing = tmp_path / "trailing.csv"
    trailing.write_text("text,label\ngood film,1,\nbad film,0\n")
    assert list(read_texts(trailing, None, "classify")) == ["good film", "bad film"]
    assert [row["text"] for row in read_delimited(trailing, trailing.read_text(), "csv")] == ["good film", "bad film"]


@pytest.mark.parametrize("content, line", [
    ('text\n"Best film, ever\nsecond review\nthird review\n', 2),  # 3 rows would be read as 1, the ids shifted
    ('id,text\n1,"a ""quoted"" word"\n2,a 6" board\n3,"two\nlines"\n4,"open ""q\nmore\n', 6),
    ("text\nfirst\n\"opened here\n" + "".join(f"review {n}\n" for n in range(4, 11)), 3),  # line 3 of 10
    ('text\nfirst\n\n\n"opened after blank lines\nmore\n', 5),
])
def test_a_csv_quote_that_is_never_closed_names_its_line(tmp_path, content, line):
    from deployft.errors import DataError

    source = tmp_path / "in.csv"
    source.write_text(content)
    with pytest.raises(DataError, match=rf"^data file {re.escape(str(source))} line {line}: a quote opened in this "
                                        r"record is never closed, so the rest of the file would be read as one field; "
                                        r"double a quote inside a field \(\"\"\) and wrap that field in quotes"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_stray_csv_quote_names_its_line_and_literal_quotes_are_read(tmp_path):
    from deployft.errors import DataError
    from deployft.runtime.files import read_texts

    source = tmp_path / "in.csv"
    source.write_text('id,text\n1,"a ""quoted"" word"\n2,a 6" board\n3,"two\nlines"\n4,"cut" here\n')
    texts = read_texts(source, None, "classify")
    assert [next(texts), next(texts), next(texts)] == ['a "quoted" word', 'a 6" board', "two\nlines"]
    with pytest.raises(DataError, match=rf"^data file {re.escape(str(source))} line 6 is not valid CSV "
                                        r"\(',' expected after '\"'\); double a quote inside a field"):
        next(texts)


def test_a_csv_text_longer_than_the_csv_modules_default_limit_is_read_whole(tmp_path):
    from deployft.runtime.files import read_texts

    long = "word " * 40_000  # 200,000 characters: the csv module's default limit is 131,072
    source = tmp_path / "in.csv"
    source.write_text(f'text\n"{long}"\nshort\n')
    assert list(read_texts(source, None, "classify")) == [long, "short"]


def test_a_csv_quote_never_closed_is_refused_at_the_record_bound_without_reading_the_rest(tmp_path, monkeypatch):
    """Predict reads at most `MAX_RECORD` characters into one record: a quote never closed in a huge file is
    refused there, not after the whole rest of the file was held in memory."""
    from deployft.errors import DataError
    from deployft.runtime import files

    monkeypatch.setattr(files, "MAX_RECORD", 1000)
    lines = iter(['text\n', 'fine\n', '"opened here\n'] + ["more text\n"] * 100_000)
    monkeypatch.setattr(files, "_lines", lambda path, shown: lines)
    source = tmp_path / "in.csv"
    source.write_text("text\n")
    texts = files.read_texts(source, None, "classify")
    assert next(texts) == "fine"
    with pytest.raises(DataError, match=rf"^data file {re.escape(str(source))} line 3: the record that starts on "
                                        r"this line runs past 1,000 characters, the most read, most likely because "
                                        r"a quote opened there is never closed .*; double a quote inside a field .*, "
                                        r"or shorten the record's fields$"):
        next(texts)
    assert len(list(lines)) > 99_000  # refused right after the bound, the rest never read


def test_a_csv_record_up_to_the_bound_is_read_and_training_reads_without_one(tmp_path, monkeypatch):
    """The bound is the reader's own (the csv module's limit is one for the process): a predict reader and a
    training reader taking turns each read with theirs."""
    from deployft.delimited import read_delimited
    from deployft.errors import DataError
    from deployft.runtime import files

    monkeypatch.setattr(files, "MAX_RECORD", 1000)
    legal, long = "a" * 997, "b" * 5000  # a record of 1,000 characters: the quotes and the line end count
    source = tmp_path / "in.csv"
    source.write_text(f'text\n"{legal}"\n"{long}"\n')
    texts = files.read_texts(source, None, "classify")
    assert next(texts) == legal
    training = tmp_path / "train.csv"
    training.write_text(f'text,label\n"{long}",1\n')
    assert read_delimited(training, training.read_text(), "csv") == [{"text": long, "label": "1"}]
    with pytest.raises(DataError, match="line 3 is longer than 1,000 characters, the most read for one record"):
        next(texts)  # the bound is this reader's own: the training read in between (5,000 characters) took none


def test_a_csv_line_longer_than_the_bound_is_named_as_a_long_line(tmp_path, monkeypatch):
    """No quote to blame: one line past the bound is named as a long line."""
    from deployft.errors import DataError
    from deployft.runtime import files

    monkeypatch.setattr(files, "MAX_RECORD", 1000)
    source = tmp_path / "in.csv"
    source.write_text("text\nfine\n" + "x" * 2000 + "\n")
    with pytest.raises(DataError, match=rf"^data file {re.escape(str(source))} line 3 is longer than 1,000 "
                                        r"characters, the most read for one record; shorten its fields$"):
        list(files.read_texts(source, None, "classify"))


def test_the_csv_reader_shared_with_training_data_keeps_predict_light():
    """`predict --input` reads CSV with `deployft.delimited`: importing it loads no torch, transformers or
    pandas."""
    import subprocess
    import sys

    code = ("import sys, deployft.delimited, deployft.runtime.files; "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("sep, name", [(";", "semicolons"), ("\t", "tabs"), ("|", "pipes")])
def test_a_csv_separated_by_another_character_is_named_so_before_its_rows(tmp_path, sep, name):
    """As training refuses it; a row holding a comma or a quote would otherwise be blamed. predict reads no .tsv,
    so a tab-separated .csv is told to be saved comma-separated, not renamed."""
    from deployft.errors import DataError

    source = tmp_path / "in.csv"
    source.write_text(f"\ntext{sep}label\n\"good, really\"{sep}pos\n")
    shown = f"text{sep}label".replace("\t", "\\t")
    with pytest.raises(DataError, match=f"^data file {re.escape(str(source))} is separated by {name}, not commas "
                                        f"\\(header: {re.escape(shown)}\\); save it comma-separated \\(.csv\\)$"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)


def test_a_comma_header_with_other_characters_in_its_rows_is_read(tmp_path):
    from deployft.runtime.files import read_texts

    source = tmp_path / "in.csv"
    source.write_text("text,label\na;b|c\td,1\n")
    assert list(read_texts(source, None, "classify")) == ["a;b|c\td"]
