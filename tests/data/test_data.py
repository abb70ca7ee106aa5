"""Data loading: every format, column mapping, cleaning, splitting, and each bad input as a one-line DataError."""

from __future__ import annotations

import json

import pytest
from conftest import qa_rows, sentiment_rows, write_rows

from deployft.data.examples import load_examples, load_run_examples
from deployft.errors import DataError, UsageError


def _formats(tmp_path, rows):
    import datasets

    paths = {fmt: write_rows(tmp_path / f"d.{fmt}", rows) for fmt in ("csv", "tsv", "jsonl")}
    paths["parquet"] = tmp_path / "d.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(paths["parquet"]))
    paths["datasets"] = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(paths["datasets"]))
    (tmp_path / "d.json").write_text(json.dumps(rows), encoding="utf-8")
    paths["json"] = tmp_path / "d.json"
    return paths


def test_every_format_gives_the_same_examples(tmp_path):
    rows = sentiment_rows(50)
    results = {fmt: load_examples("classify", path, seed=3) for fmt, path in _formats(tmp_path, rows).items()}
    first = results["csv"]
    assert len(first.train) == 45 and len(first.eval) == 5
    assert first.labels == ["negative", "positive"]
    for fmt, examples in results.items():
        assert examples.train == first.train and examples.eval == first.eval, fmt
        assert examples.record["train"]["format"] == ("jsonl" if fmt == "json" else fmt)


def test_split_is_reproducible_and_seed_dependent(classify_csv):
    a, b = load_examples("classify", classify_csv, seed=1), load_examples("classify", classify_csv, seed=1)
    c = load_examples("classify", classify_csv, seed=2)
    assert a.train == b.train and a.eval == b.eval
    assert a.eval != c.eval
    assert len(a.eval) == 24 and len(a.train) == 216


def test_max_samples_and_eval_data(tmp_path, classify_csv):
    small = load_examples("classify", classify_csv, max_samples=50, eval_fraction=0.2)
    assert (len(small.train), len(small.eval)) == (40, 10)
    evals = write_rows(tmp_path / "eval.csv", sentiment_rows(30, seed=9))
    both = load_examples("classify", classify_csv, evals, max_samples=20)
    assert (len(both.train), len(both.eval)) == (20, 20)
    assert both.record["eval"]["path"] == str(evals) and both.record["eval_fraction"] is None


def test_integer_labels_are_strings_in_numeric_order(tmp_path):
    rows = [{"text": f"review {i}", "stars": i % 11} for i in range(60)]
    examples = load_examples("classify", write_rows(tmp_path / "d.jsonl", rows), columns={"label": "stars"})
    assert examples.labels == [str(i) for i in range(11)]
    assert all(isinstance(r["label"], str) for r in examples.train)


def test_generate_columns(tmp_path, qa_jsonl):
    pairs = load_examples("generate", qa_jsonl)
    assert pairs.columns == {"prompt": "prompt", "response": "response"} and pairs.labels is None
    assert set(pairs.train[0]) == {"prompt", "response"}
    text = write_rows(tmp_path / "t.csv", [{"body": f"line {i}"} for i in range(20)])
    assert load_examples("generate", text, columns={"text": "body"}).columns == {"text": "body"}
    plain = write_rows(tmp_path / "p.csv", [{"text": f"line {i}"} for i in range(20)])
    assert load_examples("generate", plain).columns == {"text": "text"}
    renamed = write_rows(tmp_path / "r.csv", [{"q": p["prompt"], "a": p["response"]} for p in qa_rows(20)])
    got = load_examples("generate", renamed, columns={"prompt": "q", "response": "a"})
    assert got.columns == {"prompt": "q", "response": "a"} and "prompt" in got.train[0]


def test_empty_text_rows_are_dropped_with_a_count(tmp_path, caplog):
    rows = sentiment_rows(40) + [{"text": "", "label": "positive"}, {"text": "   ", "label": "negative"}]
    with caplog.at_level("WARNING"):
        examples = load_examples("classify", write_rows(tmp_path / "d.csv", rows))
    assert len(examples.train) + len(examples.eval) == 40
    assert "dropped 2 of 42 rows" in caplog.text


def test_missing_values_in_jsonl_are_dropped(tmp_path):
    rows = sentiment_rows(20) + [{"text": None, "label": "positive"}, {"label": "negative"}]
    examples = load_examples("classify", write_rows(tmp_path / "d.jsonl", rows))
    assert len(examples.train) + len(examples.eval) == 20


def test_non_utf8_needs_encoding(tmp_path):
    path = tmp_path / "latin.csv"
    body = "text,label\n" + "".join(f"caf\u00e9 cr\u00e8me {i},{'ab'[i % 2]}\n" for i in range(20))
    path.write_bytes(body.encode("latin-1"))
    with pytest.raises(DataError, match=r"latin.csv is not valid utf-8.*--encoding"):
        load_examples("classify", path)
    examples = load_examples("classify", path, encoding="latin-1")
    assert "caf\u00e9" in examples.train[0]["text"] and examples.record["train"]["encoding"] == "latin-1"


@pytest.mark.parametrize("name, content, message", [
    ("missing.csv", None, r"missing.csv not found"),
    ("empty.csv", "", r"empty.csv is empty"),
    ("header.csv", "text,label\n", r"header.csv has no rows"),
    ("data.xlsx", "x", r"unsupported extension '.xlsx'"),
    ("bad.jsonl", '{"text": "a"\n', r"bad.jsonl line 1 is not valid JSON"),
    ("blank.csv", "text,label\n ,a\n,b\n", r"all 2 rows of .*blank.csv have an empty or missing"),
    ("one.csv", "text,label\na,x\nb,x\nc,x\n", r"label column 'label' of .*one.csv has one class \('x'\)"),
])
def test_bad_files_are_one_line_data_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_examples("classify", path)
    assert "\n" not in str(info.value)


def test_missing_column_lists_columns_and_flag(tmp_path):
    path = write_rows(tmp_path / "d.csv", [{"review": "good", "stars": 5}, {"review": "bad", "stars": 1}])
    with pytest.raises(DataError, match=r"column 'text' not found in .*d.csv \(columns: 'review', 'stars'\); "
                                        r"pass --text-column"):
        load_examples("classify", path)
    with pytest.raises(DataError, match=r"column 'label' not found.*pass --label-column"):
        load_examples("classify", path, columns={"text": "review"})


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match="not a saved `datasets` folder"):
        load_examples("classify", tmp_path)


def test_eval_labels_must_occur_in_training(tmp_path, classify_csv):
    evals = write_rows(tmp_path / "eval.csv", sentiment_rows(9, labels=("negative", "positive", "neutral")))
    with pytest.raises(DataError, match=r"label\(s\) neutral that never occur"):
        load_examples("classify", classify_csv, evals)


def test_too_few_rows_for_a_split(tmp_path):
    path = write_rows(tmp_path / "d.csv", [{"text": "good", "label": "a"}])
    with pytest.raises(DataError, match="too few to hold out an eval split"):
        load_examples("classify", path)


def _fake_run(tmp_path, examples, task="classify"):
    from deployft.manifest import write_manifest

    run = tmp_path / "run"
    run.mkdir()
    write_manifest(run, {"kind": "run", "task": task, "columns": examples.columns, "data": examples.record})
    return run


def test_load_run_examples_replays_the_split(tmp_path, classify_csv):
    examples = load_examples("classify", classify_csv, max_samples=100, seed=7)
    run = _fake_run(tmp_path, examples)
    assert load_run_examples(run, "train") == examples.train
    assert load_run_examples(run, "eval") == examples.eval
    assert load_run_examples(run, "eval", limit=3) == examples.eval[:3]
    with pytest.raises(UsageError, match="split must be"):
        load_run_examples(run, "test")


def test_load_run_examples_refuses_changed_or_missing_data(tmp_path, classify_csv):
    run = _fake_run(tmp_path, load_examples("classify", classify_csv))
    with open(classify_csv, "a", encoding="utf-8") as handle:
        handle.write("one more,positive\n")
    with pytest.raises(DataError, match=r"reviews.csv changed since RUN .* \(sha256 differs\)"):
        load_run_examples(run)
    classify_csv.unlink()
    with pytest.raises(DataError, match=r"reviews.csv used by RUN .* is gone"):
        load_run_examples(run)


def test_load_run_examples_for_generate_and_renamed_columns(tmp_path):
    rows = [{"q": p["prompt"], "a": p["response"]} for p in qa_rows(30)]
    examples = load_examples("generate", write_rows(tmp_path / "qa.tsv", rows),
                             columns={"prompt": "q", "response": "a"})
    run = _fake_run(tmp_path, examples, task="generate")
    assert load_run_examples(run, "train") == examples.train
    assert set(load_run_examples(run, "eval")[0]) == {"prompt", "response"}


def test_one_bad_byte_in_a_utf8_file_names_its_line_and_does_not_suggest_latin1(tmp_path):
    path = tmp_path / "mostly.csv"
    rows = "".join(f"caf\u00e9 cr\u00e8me {i},{'ab'[i % 2]}\n" for i in range(20)).encode("utf-8")
    path.write_bytes(b"text,label\n" + rows + b"bad \xff byte,a\n" + rows)
    with pytest.raises(DataError, match=r"mostly.csv is not valid utf-8 \(line 22, byte \d+: b'\\xff'\), though the "
                                        r"rest of the file is UTF-8; fix or delete that byte") as info:
        load_examples("classify", path)
    assert "--encoding latin-1" not in str(info.value) and "pass its encoding" not in str(info.value)


def test_utf16_is_named(tmp_path):
    path = tmp_path / "u16.csv"
    path.write_bytes(("text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20))).encode("utf-16"))
    with pytest.raises(DataError, match=r"it looks like UTF-16: pass --encoding utf-16"):
        load_examples("classify", path)
    assert len(load_examples("classify", path, encoding="utf-16").train) == 18
