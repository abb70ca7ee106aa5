"""`predict_file`: two runs into one output, and an error mid-file, never leave a mixed or partial file."""

from __future__ import annotations

import json
import re
import threading

import pytest
from conftest import NeverCalledPredictor, sentiment_rows, write_rows

from deployft.runtime import Predictor
from deployft.runtime.files import predict_file


class _Paused:
    """A predictor that stops at its first batch until every run sharing `barrier` has reached its own."""

    def __init__(self, predictor: Predictor, barrier: threading.Barrier):
        self.task, self._predictor, self._barrier, self._waited = predictor.task, predictor, barrier, False

    def predict(self, texts, batch_size=32):
        if not self._waited:
            self._waited = True
            self._barrier.wait(timeout=60)
        return self._predictor.predict(texts, batch_size=batch_size)


def test_two_runs_into_one_output_do_not_collide(runtime_bundle, tmp_path):
    predictor = Predictor.load(runtime_bundle("bert"))
    inputs = [write_rows(tmp_path / f"in{i}.jsonl", sentiment_rows(n, seed=i)) for i, n in enumerate((30, 50))]
    output, barrier, errors, counts = tmp_path / "preds.jsonl", threading.Barrier(2), [], {}

    def run(i: int) -> None:
        try:
            counts[i] = predict_file(_Paused(predictor, barrier), inputs[i], output, batch_size=8, progress=False)
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == [] and counts == {0: 30, 1: 50}
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert len(records) in (30, 50) and [r["id"] for r in records] == list(range(len(records)))  # one run, whole
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_error_mid_file_keeps_the_previous_output(runtime_bundle, tmp_path):
    predictor = Predictor.load(runtime_bundle("bert"))
    output = tmp_path / "preds.jsonl"
    output.write_text("previous\n")
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in sentiment_rows(40)) + "not json\n")
    with pytest.raises(ValueError, match="line 41 is not valid JSON"):
        predict_file(predictor, source, output, batch_size=8, progress=False)
    assert output.read_text() == "previous\n" and [p.name for p in tmp_path.iterdir()] == ["in.jsonl", "preds.jsonl"]


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(tmp_path):
    from deployft.errors import UsageError

    source = tmp_path / "ok.csv"
    source.write_text("text\ngood\nbad\n")
    (tmp_path / "sub").mkdir()
    for output in (source, tmp_path / "sub" / ".." / "ok.csv"):
        with pytest.raises(UsageError, match=r"^--output .*ok.csv is the --input file .*pass another --output path$"):
            predict_file(NeverCalledPredictor(), source, output, progress=False)
    assert source.read_text() == "text\ngood\nbad\n" and _names(tmp_path) == ["ok.csv", "sub"]


def test_an_output_that_cannot_take_the_file_is_refused_before_any_work(tmp_path):
    from deployft.errors import UsageError

    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    (tmp_path / "folder").mkdir()
    with pytest.raises(UsageError, match=r"^--output .*folder is a folder; pass a file path"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "folder", progress=False)
    with pytest.raises(UsageError, match=r"^--output .*in.csv/sub/x.jsonl cannot be created: .*in.csv is a file"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "in.csv" / "sub" / "x.jsonl", progress=False)
    assert _names(tmp_path) == ["folder", "in.csv"] and _names(tmp_path / "folder") == []


def test_an_output_under_a_folder_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    import os

    from deployft.errors import UsageError

    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    locked = tmp_path / "locked"
    locked.mkdir()
    access = os.access  # the tests may run as root, whom a chmod does not stop: the folder is locked here instead
    monkeypatch.setattr(os, "access", lambda path, mode: os.fspath(path) != str(locked) and access(path, mode))
    output = locked / "sub" / "x.jsonl"
    with pytest.raises(UsageError, match=rf"^--output {re.escape(str(output))} cannot be created: "
                                         rf"{re.escape(str(locked))} is not writable; pass an --output path in a "
                                         "folder you can write to$"):
        predict_file(NeverCalledPredictor(), source, output, progress=False)
    assert _names(locked) == []


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_a_batch_size_below_one_is_refused(tmp_path, batch_size):
    from deployft.errors import UsageError

    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    with pytest.raises(UsageError, match="batch_size must be an integer >= 1.*--batch-size"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", batch_size=batch_size, progress=False)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("name, content, message", [
    ("empty.csv", "", "^data file {} is empty; pass a file with a header and at least one row to --input$"),
    ("header.csv", "text\n", "^{} has no rows; pass a file with at least one row to --input$"),
    ("blank.jsonl", "\n\n", "^{} has no rows; pass a file with at least one row to --input$"),
])
def test_a_file_without_rows_is_refused(tmp_path, name, content, message):
    from deployft.errors import DataError

    source = tmp_path / name
    source.write_text(content)
    with pytest.raises(DataError, match=message.format(re.escape(str(source)))):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)
    assert _names(tmp_path) == [name]


def test_utf8_with_a_byte_order_mark_is_read_and_other_encodings_name_the_line(runtime_bundle, tmp_path):
    from deployft.errors import DataError

    predictor = Predictor.load(runtime_bundle("bert"))
    for name, data in (("bom.csv", "\ufefftext\ngood\n".encode("utf-8")),
                       ("bom.jsonl", '\ufeff{"text": "good"}\n'.encode("utf-8"))):
        (tmp_path / name).write_bytes(data)
        assert predict_file(predictor, tmp_path / name, tmp_path / "out.jsonl", progress=False) == 1
        assert json.loads((tmp_path / "out.jsonl").read_text())["text"] == "good"
    for name, data in (("latin1.csv", "text\ngood\ncafé\n".encode("latin-1")),
                       ("bad.jsonl", b'{"text": "a"}\n{"text": "b"}\n{"text": "\xff"}\n')):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"^{tmp_path / name} line 3 is not UTF-8 .*re-save the file as UTF-8"):
            predict_file(predictor, tmp_path / name, tmp_path / "bad-out.jsonl", progress=False)
    assert not (tmp_path / "bad-out.jsonl").exists()


@pytest.mark.parametrize("value, found", [(["a", "b"], "an array"), ({"k": 1}, "an object"), (5, "a number"),
                                          (True, "a boolean")])
def test_a_jsonl_value_that_is_not_a_string_is_refused(tmp_path, value, found):
    from deployft.errors import DataError
    from deployft.runtime.files import read_texts

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps({"text": None}) + "\n"
                      + json.dumps({"text": value}) + "\n")
    texts = read_texts(source, None, "classify")
    assert [next(texts), next(texts)] == ["fine", ""]
    with pytest.raises(DataError, match=f"^{source} line 3: column 'text' is {found}, not a string; write the text"):
        next(texts)


def test_a_chat_in_a_generator_file_says_where_chats_go(tmp_path):
    from deployft.errors import DataError
    from deployft.runtime.files import read_texts

    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="line 1: column 'prompt' is an array, not a string; a chat is not read from "
                                       "a file: pass its messages to Predictor.generate"):
        next(read_texts(source, None, "generate"))


def test_sampled_completions_do_not_depend_on_the_batch_size(runtime_bundle, tmp_path):
    from deployft.runtime import GenerationOptions

    predictor = Predictor.load(runtime_bundle("llama"))
    source = write_rows(tmp_path / "qa.jsonl", [{"prompt": p} for p in ("what color", "bees", "what do fish eat")])
    options = GenerationOptions(max_new_tokens=10, temperature=1.0, seed=3)
    outputs = []
    for batch_size in (1, 3):
        outputs.append(tmp_path / f"out{batch_size}.jsonl")
        predict_file(predictor, source, outputs[-1], batch_size=batch_size, options=options, progress=False)
    assert outputs[0].read_text() == outputs[1].read_text()


@pytest.mark.parametrize("name", ["preds.csv", "preds.JSON", "preds.parquet"])
def test_an_output_named_as_another_format_is_refused(tmp_path, name):
    from deployft.errors import UsageError

    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    with pytest.raises(UsageError, match=rf"^--output .*{name} names a \.\w+ file, but predict writes JSON Lines .*; "
                                         r"pass an --output ending in \.jsonl, such as .*preds\.jsonl$"):
        predict_file(NeverCalledPredictor(), source, tmp_path / name, progress=False)
    assert _names(tmp_path) == ["in.csv"]


@pytest.mark.parametrize("name", ["preds.ndjson", "preds", "preds.out"])
def test_an_output_named_as_json_lines_or_without_a_format_is_taken(runtime_bundle, tmp_path, name):
    source = write_rows(tmp_path / "in.csv", sentiment_rows(3))
    assert predict_file(Predictor.load(runtime_bundle("bert")), source, tmp_path / name, progress=False) == 3


def test_a_csv_line_without_the_text_field_is_refused_and_an_empty_field_is_an_empty_text(runtime_bundle, tmp_path):
    from deployft.errors import DataError

    source = tmp_path / "short.csv"
    source.write_text("id,text\n1,hello\n2\n3,bye\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(source))} line 3 has 1 of the header's 2 fields, none for "
                                        r"column 'text'; fill the line in"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)
    assert not (tmp_path / "out.jsonl").exists()
    source.write_text("id,text\n1,hello\n2,\n3,bye\n")  # an empty field: a text that is empty, as written
    predict_file(Predictor.load(runtime_bundle("bert")), source, tmp_path / "out.jsonl", progress=False)
    texts = [json.loads(line)["text"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert texts == ["hello", "", "bye"]


@pytest.mark.parametrize("name, content", [
    ("multi.csv", 'text\na\n"multi\nline"\n"x\r\ny"\n\nb\n'),
    ("blank.csv", 'id,text\n1,a\n,\n3,\n"",\n'),  # fields that are all empty are rows; a blank line is not
    ("bom.csv", '\ufeff"text"\n"a, b"\nc\n'),
    ("rows.jsonl", '{"text": "a"}\n\n{"text": "b"}\n'),
])
def test_the_progress_bar_counts_the_rows_the_reader_reads(tmp_path, name, content):
    from deployft.runtime.files import count_rows, read_texts

    source = tmp_path / name
    with open(source, "w", encoding="utf-8", newline="") as handle:
        handle.write(content)
    assert count_rows(source) == len(list(read_texts(source, None, "classify"))) > 1


def test_a_quote_never_closed_stops_the_count_in_bounded_memory(tmp_path):
    from deployft.runtime.files import MAX_RECORD, count_rows

    source = tmp_path / "unclosed.csv"
    source.write_text("text\nfine\n\"never closed\n" + "more text\n" * (MAX_RECORD // 10 + 10))
    assert count_rows(source) == 0  # the reader refuses the line; the bar goes without a total


@pytest.mark.parametrize("name, content", [
    ("own.csv", "id,text\n7,good\n8,bad\n"),
    ("own.jsonl", '{"id": "a7", "text": "good"}\n{"id": "a8", "text": "bad"}\n'),
])
def test_an_id_column_of_the_input_is_named_in_a_warning_and_the_output_id_is_the_position(runtime_bundle, tmp_path,
                                                                                             caplog, name, content):
    import logging

    source = tmp_path / name
    source.write_text(content)
    with caplog.at_level(logging.WARNING, logger="deployft.runtime.files"):
        predict_file(Predictor.load(runtime_bundle("bert")), source, tmp_path / "out.jsonl", progress=False)
    assert f"{source} has a column 'id' of its own; the predictions' 'id' is each row's position" in caplog.text
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in records] == [(0, "good"), (1, "bad")]
    caplog.clear()
    plain = tmp_path / "plain.csv"
    plain.write_text("text\ngood\n")
    predict_file(Predictor.load(runtime_bundle("bert")), plain, tmp_path / "out.jsonl", progress=False)
    assert "of its own" not in caplog.text


def test_a_lone_surrogate_in_a_jsonl_text_is_refused_with_its_line(tmp_path):
    from deployft.errors import DataError

    source = tmp_path / "broken.jsonl"
    source.write_text('{"text": "fine"}\n{"text": "ok \\udcff there"}\n')
    with pytest.raises(DataError, match=rf"^{re.escape(str(source))} line 2: column 'text' holds a lone UTF-16 "
                                        r"surrogate \(U\+DCFF\) at character 3, which is not valid text"):
        predict_file(NeverCalledPredictor(), source, tmp_path / "out.jsonl", progress=False)
