"""`deployft predict`: texts, prompts, files, JSON output, flags and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from conftest import sentiment_rows, write_rows
from deployft.cli import main
from deployft.runtime import Predictor


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help():
    result = _run("predict", "--help")
    assert result.exit_code == 0
    for flag in ("--input", "--output", "--json", "--device", "--threads", "--model-file", "--max-new-tokens",
                 "--temperature", "--top-k", "--top-p", "--seed", "--stop"):
        assert flag in result.output


def test_classify_texts_prints_label_and_score(runtime_bundle):
    bundle = runtime_bundle("bert")
    result = _run("predict", bundle, "the film was great", "the plot was dull")
    assert result.exit_code == 0, result.output
    expected = Predictor.load(bundle).predict(["the film was great", "the plot was dull"])
    lines = result.output.strip().splitlines()
    assert [line.split("\t")[:2] for line in lines] == [[p.label, f"{p.score:.4f}"] for p in expected]


def test_classify_json(runtime_bundle):
    result = _run("predict", runtime_bundle("bert"), "the film was great", "--json", "--threads", "1",
                  "--model-file", "model_int8.onnx")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert set(record) == {"text", "label", "score", "scores"} and record["text"] == "the film was great"


def test_generate_streams_the_completion(runtime_bundle):
    bundle = runtime_bundle("llama")
    result = _run("predict", bundle, "what do bees make", "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert result.output == Predictor.load(bundle).generate("what do bees make", max_new_tokens=8) + "\n"


def test_generate_json_with_sampling_flags(runtime_bundle):
    bundle = runtime_bundle("gpt2")
    args = ["--max-new-tokens", "8", "--temperature", "0.9", "--top-k", "20", "--top-p", "0.9", "--seed", "4"]
    result = _run("predict", bundle, "hi", "what color", "--json", *args)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.output.splitlines()]
    predictor = Predictor.load(bundle)
    expected = [predictor.generate(p, max_new_tokens=8, temperature=0.9, top_k=20, top_p=0.9, seed=4)
                for p in ("hi", "what color")]
    assert [r["completion"] for r in records] == expected


def test_stop_flag(runtime_bundle):
    bundle = runtime_bundle("gpt2")
    full = Predictor.load(bundle).generate("hi", max_new_tokens=12)
    result = _run("predict", bundle, "hi", "--max-new-tokens", "12", "--stop", full[4:6], "--json")
    assert json.loads(result.output)["completion"] == full[: full.index(full[4:6])]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_input_file_to_jsonl(runtime_bundle, tmp_path, suffix):
    bundle = runtime_bundle("bert")
    rows = sentiment_rows(70, seed=5)
    source = write_rows(tmp_path / f"in{suffix}", rows)
    output = tmp_path / "out" / "preds.jsonl"
    result = _run("predict", bundle, "--input", source, "--output", output, "--batch-size", "16", "--no-progress")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text().splitlines()]
    expected = Predictor.load(bundle).predict([r["text"] for r in rows])
    assert [r["id"] for r in records] == list(range(70))
    assert [(r["text"], r["label"]) for r in records] == [(row["text"], p.label) for row, p in zip(rows, expected)]
    assert not list(output.parent.glob(".*deployft-*"))


def test_input_file_for_a_generator(runtime_bundle, tmp_path):
    bundle = runtime_bundle("gpt2")
    source = write_rows(tmp_path / "qa.jsonl", [{"prompt": "what color"}, {"prompt": "what do bees make"},
                                                {"prompt": ""}])
    output = tmp_path / "gen.jsonl"
    result = _run("predict", bundle, "--input", source, "--output", output, "--max-new-tokens", "5",
                  "--batch-size", "2")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in output.read_text().splitlines()]
    predictor = Predictor.load(bundle)
    assert [r["completion"] for r in records] == [predictor.generate(r["prompt"], max_new_tokens=5) for r in records]


def test_file_reader_is_lazy(runtime_bundle, tmp_path):
    from deployft.runtime.files import read_texts

    path = tmp_path / "big.jsonl"
    path.write_text('{"text": "a"}\n' + "not json\n")
    texts = read_texts(path, None, "classify")
    assert next(texts) == "a"  # the first row is read without parsing the rest of the file
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        next(texts)


def _error(result, *fragments):
    assert result.exit_code == 1, result.output
    line = result.output.strip()
    assert line.startswith("Error: ") and "\n" not in line and "Traceback" not in line
    for fragment in fragments:
        assert fragment in line


def test_bad_input(runtime_bundle, tmp_path):
    clf, gen = runtime_bundle("bert"), runtime_bundle("gpt2")
    _error(_run("predict", tmp_path / "missing", "x"), "does not exist")
    _error(_run("predict", gen, "x", "--temperature", "0.5", "--top-p", "1.5"), "top_p", "--top-p")
    _error(_run("predict", gen, "x", "--temperature", "-1"), "temperature")
    _error(_run("predict", gen, "x", "--max-new-tokens", "0"), "max_new_tokens")
    _error(_run("predict", clf), "TEXT", "--input")
    _error(_run("predict", clf, "--input", tmp_path / "nope.csv", "--output", tmp_path / "o.jsonl"), "nope.csv")
    _error(_run("predict", clf, "--input", write_rows(tmp_path / "x.csv", [{"review": "a"}])), "--output")
    _error(_run("predict", clf, "--input", write_rows(tmp_path / "y.csv", [{"review": "a"}]),
                "--output", tmp_path / "o.jsonl"), "no column 'text'", "--column")
    _error(_run("predict", clf, "x", "--model-file", "other.onnx"), "other.onnx not found")
    assert not (tmp_path / "o.jsonl").exists()


def test_modified_bundle_and_newer_version(runtime_bundle, tmp_path):
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-1])
    _error(_run("predict", bundle, "x"), "model.onnx was modified")
    manifest = json.loads((bundle / "deployft.json").read_text())
    (bundle / "deployft.json").write_text(json.dumps({**manifest, "format_version": 99}))
    _error(_run("predict", bundle, "x"), "format version 99")


def test_cuda_without_gpu_is_a_one_line_error(runtime_bundle):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA: the fallback error cannot happen here")
    _error(_run("predict", runtime_bundle("bert"), "x", "--device", "cuda"), "onnxruntime-gpu")


def test_device_auto_says_which_device_runs(runtime_bundle):
    import onnxruntime

    result = _run("predict", runtime_bundle("bert"), "the film was great", "--device", "auto", "--json")
    assert result.exit_code == 0, result.output
    device = "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    assert f"device auto: running on {device}" in result.stderr
    assert json.loads(result.stdout)["text"] == "the film was great"


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the bundle is loaded: the error must come before any loading work."""

    def load(*args, **kwargs):
        raise AssertionError("the bundle was loaded before the flags were checked")

    monkeypatch.setattr(Predictor, "load", load)


def test_an_output_that_is_the_input_is_refused_and_the_input_kept(runtime_bundle, tmp_path, monkeypatch,
                                                                   no_loading):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.csv").write_text("text\ngood\nbad\n")
    (tmp_path / "sub").mkdir()
    for output in ("ok.csv", tmp_path / "ok.csv", "sub/../ok.csv"):
        _error(_run("predict", runtime_bundle("bert"), "--input", "ok.csv", "--output", output),
               f"--output {output} is the --input file ok.csv", "pass another --output path")
    assert (tmp_path / "ok.csv").read_text() == "text\ngood\nbad\n"


def test_an_output_that_cannot_take_the_file_is_refused_before_loading(runtime_bundle, tmp_path, no_loading):
    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    (tmp_path / "outdir").mkdir()
    _error(_run("predict", runtime_bundle("bert"), "--input", source, "--output", tmp_path / "outdir"),
           f"--output {tmp_path / 'outdir'} is a folder; pass a file path")
    _error(_run("predict", runtime_bundle("bert"), "--input", source, "--output", source / "x.jsonl"),
           f"--output {source / 'x.jsonl'} cannot be created: {source} is a file, not a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "outdir"]


@pytest.mark.parametrize("size", ["0", "-1"])
def test_a_batch_size_below_one_is_refused_before_loading(runtime_bundle, tmp_path, no_loading, size):
    source = write_rows(tmp_path / "in.csv", sentiment_rows(4))
    _error(_run("predict", runtime_bundle("bert"), "--input", source, "--output", tmp_path / "o.jsonl",
                "--batch-size", size), f"batch_size must be an integer >= 1, got {size}; pass --batch-size")
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("content, message", [
    ("", "is empty; pass a file with a header and at least one row to --input"),
    ("text\n", "has no rows; pass a file with at least one row to --input")])
def test_an_input_without_rows_is_refused(runtime_bundle, tmp_path, content, message):
    (tmp_path / "in.csv").write_text(content)
    _error(_run("predict", runtime_bundle("bert"), "--input", tmp_path / "in.csv", "--output", tmp_path / "o.jsonl"),
           f"{tmp_path / 'in.csv'} {message}")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_non_utf8_input_names_the_file_and_line(runtime_bundle, tmp_path):
    (tmp_path / "in.csv").write_bytes("text\ngood\ncafé\n".encode("latin-1"))
    _error(_run("predict", runtime_bundle("bert"), "--input", tmp_path / "in.csv", "--output", tmp_path / "o.jsonl"),
           f"{tmp_path / 'in.csv'} line 3 is not UTF-8", "re-save the file as UTF-8")


@pytest.mark.parametrize("arch, args, message", [
    ("bert", ("x", "--output", "o.jsonl"), "--output: only used with --input FILE"),
    ("bert", ("x", "--column", "review", "--no-progress"), "--column, --progress/--no-progress: only used with"),
    ("bert", ("--input", "in.csv", "--output", "o.jsonl", "--json"), "--json prints the results of TEXT arguments"),
    ("bert", ("x", "--temperature", "0.7", "--stop", "."), "--temperature, --stop: generation settings, and the "
                                                            "bundle is a classify bundle"),
    ("bert", ("--input", "in.csv", "--output", "o.jsonl", "--seed", "1"), "--seed: generation settings"),
    ("bert", ("--input", "in.csv", "--output", "out", "--ray", "--max-new-tokens", "8"), "--max-new-tokens: gener"),
    ("gpt2", ("hi", "--batch-size", "8"), "--batch-size: TEXT prompts are completed one at a time"),
])
def test_flags_this_run_would_ignore_are_refused(runtime_bundle, tmp_path, monkeypatch, no_loading, arch, args,
                                                 message):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "in.csv", sentiment_rows(4))
    _error(_run("predict", runtime_bundle(arch), *args), message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]


def test_flags_at_their_defaults_given_explicitly_are_still_refused_on_a_classifier(runtime_bundle, no_loading):
    _error(_run("predict", runtime_bundle("bert"), "x", "--temperature", "0"), "--temperature: generation settings")


@pytest.mark.parametrize("args, named", [
    (("--top-k", "5"), "--top-k"), (("--top-p", "0.9", "--seed", "1"), "--top-p, --seed"),
    (("--temperature", "0", "--seed", "3"), "--seed"),
    (("--input", "in.csv", "--output", "o.jsonl", "--top-k", "0"), "--top-k"),
])
def test_sampling_flags_under_greedy_decoding_are_refused(runtime_bundle, tmp_path, monkeypatch, no_loading, args,
                                                          named):
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "in.csv", [{"text": "hi"}])
    prompt = () if "--input" in args else ("hi",)
    _error(_run("predict", runtime_bundle("gpt2"), *prompt, *args),
           f"Error: {named}: sampling settings, and --temperature 0 decodes greedily; pass --temperature > 0 to sample")


def test_the_python_api_stays_permissive_about_sampling_settings_when_greedy(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("gpt2"))
    assert predictor.generate("hi", max_new_tokens=4, top_p=0.9, seed=1) == predictor.generate("hi", max_new_tokens=4)


def test_label_lines_escape_tabs_newlines_and_backslashes_in_the_text(runtime_bundle):
    texts = ["a\tb\nc\\d\re", "plain"]
    result = _run("predict", runtime_bundle("bert"), *texts)
    assert result.exit_code == 0, result.output
    lines = result.output.split("\n")
    assert len(lines) == 3 and lines[-1] == ""  # one line per text
    assert [line.split("\t")[2] for line in lines[:2]] == ["a\\tb\\nc\\\\d\\re", "plain"]
