"""`read_source`: a damaged RUN manifest is one ModelError naming the file and the fix; sharded weights are read and
hashed shard by shard."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from deployft.cli import main
from deployft.errors import ModelError
from deployft.exporter.source import load_torch_model, read_source, weight_files, weights_sha256
from deployft.manifest import MANIFEST_NAME, sha256_file, write_manifest

FIX = "re-run deployft finetune"


def _restamped(run, **changes):
    """Rewrite the RUN's manifest with `changes` (None: the field removed), its digest restamped."""
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        if value is None:
            manifest.pop(key)
        else:
            manifest[key] = value
    write_manifest(run, manifest)


@pytest.mark.parametrize(("changes", "shown"), [
    ({"task": None}, "task (missing), expected one of classify, generate"),
    ({"task": "regress"}, "task 'regress', expected one of classify, generate"),
    ({"max_length": "abc"}, "max_length 'abc', expected a positive whole number"),
    ({"labels": None}, "labels (missing), expected the classifier's label names"),
    ({"data": {"train": {"format": "csv"}}}, "data {'train': {'format': 'csv'}}, expected train and eval records"),
])
def test_a_damaged_run_manifest_is_one_model_error_naming_it(tiny_run, changes, shown):
    run = tiny_run("bert")
    _restamped(run, **changes)
    expected = f"{run / MANIFEST_NAME} has {shown}"
    for task in (None, "classify"):  # --task never turns it into a loop of "pass --task" / "leave --task out"
        with pytest.raises(ModelError) as raised:
            read_source(run, task)
        assert str(raised.value).startswith(expected) and str(raised.value).endswith(FIX + " to write it again")


def test_a_run_manifest_edited_without_its_digest_is_refused(tiny_run):
    run = tiny_run("bert")
    manifest = json.loads((run / MANIFEST_NAME).read_text())
    manifest["labels"] = manifest["labels"][::-1]
    (run / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match=r"deployft.json was modified after training \(manifest_sha256 does not "
                                         rf"match its content\); the RUN is damaged: {FIX}"):
        read_source(run)


def test_the_cli_says_it_in_one_line(tiny_run, tmp_path):
    run = tiny_run("bert")
    _restamped(run, max_length="abc")
    result = CliRunner().invoke(main, ["export", str(run), "-o", str(tmp_path / "b")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: {run / MANIFEST_NAME} has max_length 'abc'") and FIX in result.output


@pytest.fixture
def sharded(tiny_model, tmp_path):
    """`sharded(safetensors)` -> the tiny bert re-saved in shards of 100 kB, with its index."""
    def save(safe: bool):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        source = tiny_model("bert")
        folder = tmp_path / ("sharded-safetensors" if safe else "sharded-bin")
        AutoModelForSequenceClassification.from_pretrained(source).save_pretrained(
            folder, max_shard_size="100KB", safe_serialization=safe)
        AutoTokenizer.from_pretrained(source).save_pretrained(folder)
        return folder

    return save


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_weights_are_read_and_every_shard_hashed(sharded, safe):
    folder = sharded(safe)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    files = weight_files(folder)
    assert files[0].name == index and len(files) > 2 and all(p.is_file() for p in files)
    source = read_source(folder, "classify")
    lines = "".join(f"{p.name}\0{sha256_file(p)}\n" for p in files)
    assert source.extra["weights_sha256"] == weights_sha256(files) != sha256_file(files[1])
    assert source.extra["weights_sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert load_torch_model(source).config.model_type == "bert"
    data = files[-1].read_bytes()
    files[-1].write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one byte of one shard changed: another hash
    assert read_source(folder, "classify").extra["weights_sha256"] != source.extra["weights_sha256"]


def test_a_missing_shard_or_index_is_one_model_error(sharded):
    folder = sharded(True)
    last = weight_files(folder)[-1]
    last.unlink()
    with pytest.raises(ModelError, match=rf"lacks {last.name}, listed in model.safetensors.index.json: the folder is "
                                         "incomplete"):
        read_source(folder, "classify")
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(ModelError, match=r"has no model weights \(shards model-00001-of-.* but no "
                                         r"model.safetensors.index.json or pytorch_model.bin.index.json\)"):
        read_source(folder, "classify")


def test_a_single_weights_file_keeps_its_own_sha256(tiny_model):
    folder = tiny_model("bert")
    assert read_source(folder, "classify").extra["weights_sha256"] == sha256_file(folder / "model.safetensors")
