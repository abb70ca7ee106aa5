"""Tampering and corruption on a real bundle (`deployft export --sign-key` of a tiny chat RUN): every case is refused
with one exact `Error:` line naming the file and the fix, by `Predictor.load`, `deployft predict` and `deployft verify`,
never a traceback."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployft.cli import main
from deployft.errors import BundleError
from deployft.manifest import file_table, write_manifest
from deployft.runtime import Predictor

REEXPORT = "re-export the bundle with deployft export"


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    assert _run("keygen", "--private-key", root / "sign.pem", "--public-key", root / "sign.pub.pem").exit_code == 0
    assert _run("keygen", "--private-key", root / "other.pem", "--public-key", root / "other.pub.pem").exit_code == 0
    return root


@pytest.fixture(scope="module")
def signed_bundle(tiny_generate_run, keys, tmp_path_factory):
    output = tmp_path_factory.mktemp("integrity") / "bundle"
    # a bundle to tamper with, not a guard test: 8 rows of a tiny model decide no realistic budget
    result = _run("export", tiny_generate_run, "--output", output, "--quantize", "none", "--validate-samples", "8",
                  "--max-accuracy-drop", "1000", "--sign-key", keys / "sign.pem")
    assert result.exit_code == 0, result.output
    return output


@pytest.fixture
def bundle(signed_bundle, tmp_path):
    """A fresh copy of the signed bundle, in a folder with room for files "outside" it."""
    return Path(shutil.copytree(signed_bundle, tmp_path / "bundle"))


def _manifest(b: Path) -> dict:
    return json.loads((b / "deployft.json").read_text())


def _restamp(b: Path, **fields) -> None:
    """What a forger with deployft's own tools does: re-hash every file and re-stamp the manifest digest."""
    write_manifest(b, {**_manifest(b), "files": file_table(b), **fields})


def _fix(b: Path) -> str:
    return f"{REEXPORT} (deployft verify {b} checks every file)"


def _modified(b: Path, what: str, name: str) -> str:
    size, recorded = (b / name).stat().st_size, _manifest(b)["files"][name]["bytes"]
    detail = ("sha256 differs from deployft.json" if size == recorded
              else f"{size} bytes, deployft.json records {recorded}")
    return f"{what} {b / name} was modified after export ({detail}); {_fix(b)}"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, **fields) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}, indent=2))


def _model(b: Path) -> str:
    return _manifest(b)["model_file"]


def _to_external_weights(b: Path) -> str:
    """Store the model's weights in `<file>_data`, as export does past 1.8 GB, and record it as export does."""
    import onnx

    name = _model(b)
    model = onnx.load(str(b / name))
    onnx.save(model, str(b / name), save_as_external_data=True, all_tensors_to_one_file=True,
              location=f"{name}_data", size_threshold=0)
    variants = _manifest(b)["variants"]
    variants[name]["external_data"] = [f"{name}_data"]
    _restamp(b, variants=variants)
    return f"{name}_data"


def _model_edited(b, keys):
    _flip(b / _model(b))
    return _modified(b, "model file", _model(b)), None


def _model_truncated(b, keys):
    _truncate(b / _model(b))
    return _modified(b, "model file", _model(b)), None


def _model_deleted(b, keys):
    (b / _model(b)).unlink()
    return f"model file {b / _model(b)} is missing (deployft.json lists it); {_fix(b)}", None


def _model_swapped(b, keys):
    other = next(n for n in _manifest(b)["variants"] if n != _model(b))
    shutil.copyfile(b / other, b / _model(b))
    return _modified(b, "model file", _model(b)), None


def _tokenizer_edited(b, keys):
    path = b / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    first, second = sorted(vocab, key=vocab.get)[10:12]
    vocab[first], vocab[second] = vocab[second], vocab[first]
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return _modified(b, "file", "tokenizer.json"), None


def _tokenizer_truncated(b, keys):
    _truncate(b / "tokenizer.json")
    return _modified(b, "file", "tokenizer.json"), None


def _tokenizer_config_edited(b, keys):
    _edit_json(b / "tokenizer_config.json", eos_token="<pad>")
    return _modified(b, "file", "tokenizer_config.json"), None


def _config_edited(b, keys):
    _edit_json(b / "config.json", max_position_embeddings=4096)
    return _modified(b, "file", "config.json"), None


def _generation_config_edited(b, keys):
    _edit_json(b / "generation_config.json", eos_token_id=5)
    return _modified(b, "file", "generation_config.json"), None


def _generation_config_deleted(b, keys):
    (b / "generation_config.json").unlink()
    return f"file {b}/generation_config.json is missing (deployft.json lists it); {_fix(b)}", None


def _template_edited(b, keys):
    path = b / "chat_template.jinja"
    path.write_text(path.read_text().replace("<|assistant|>", "<|system|>"))
    return _modified(b, "file", "chat_template.jinja"), None


def _template_added(b, keys):
    """A bundle exported without a chat_template.jinja, which then has one put beside it."""
    manifest = _manifest(b)
    files = {n: e for n, e in manifest["files"].items() if n != "chat_template.jinja"}
    write_manifest(b, {**manifest, "files": files})
    return (f"{b}/chat_template.jinja is not listed in deployft.json, yet the runtime would read it "
            f"(added after export?); remove it or {REEXPORT}"), None


def _manifest_edited(field):
    def tamper(b, keys):
        manifest = _manifest(b)
        value = {"max_length": 4096, "prompt_format": {"style": "plain", "separator": "\n"},
                 "generation": {**(manifest["generation"] or {}), "eos_token_id": [7]}}[field]
        (b / "deployft.json").write_text(json.dumps({**manifest, field: value}, indent=2))
        return (f"{b}/deployft.json was modified after export (manifest_sha256 does not match its content); "
                f"{REEXPORT}"), None

    return tamper


def _model_outside(absolute: bool):
    def tamper(b, keys):
        outside = b.parent / "outside.onnx"
        shutil.copyfile(b / _model(b), outside)
        name = str(outside) if absolute else "../outside.onnx"
        write_manifest(b, {**_manifest(b), "model_file": name, "files": {**file_table(b), name: file_table(b.parent)[
            "outside.onnx"]}})
        return (f"{b}/deployft.json names model file {name!r}, a path outside the bundle folder; a bundle only refers "
                f"to its own files: {REEXPORT}"), None

    return tamper


def _model_links_outside(b, keys):
    outside = b.parent / "elsewhere.onnx"
    shutil.move(b / _model(b), outside)
    os.symlink(outside, b / _model(b))
    return f"model file {b / _model(b)} links to {outside.resolve()}, outside the bundle folder; {REEXPORT}", None


def _external_weights_edited(b, keys):
    name = _to_external_weights(b)
    _flip(b / name)
    return _modified(b, "external weights file", name), None


def _external_weights_truncated(b, keys):
    name = _to_external_weights(b)
    _truncate(b / name)
    return _modified(b, "external weights file", name), None


def _external_weights_outside(b, keys):
    variants = _manifest(b)["variants"]
    variants[_model(b)]["external_data"] = ["../weights.bin"]
    _restamp(b, variants=variants)
    return (f"{b}/deployft.json names external weights file '../weights.bin', a path outside the bundle folder; "
            f"a bundle only refers to its own files: {REEXPORT}"), None


def _old_format(b, keys):
    manifest = {k: v for k, v in _manifest(b).items() if k != "manifest_sha256"}
    (b / "deployft.json").write_text(json.dumps({**manifest, "format_version": 1}, indent=2))
    return (f"{b}/deployft.json has format version 1, written before deployft checked bundle files, so it cannot be "
            f"verified and is not loaded; {REEXPORT}"), None


def _signature_mismatch(b: Path, key: Path) -> str:
    return (f"{b}/deployft.json.sig does not match deployft.json and the public key {key}: the manifest was changed "
            "after signing or signed with another key; do not use this bundle, re-export and sign it "
            "(deployft export --sign-key)")


def _forged_manifest(b, keys):
    """Labels, files and digest all rewritten consistently: only the signature tells."""
    _tokenizer_edited(b, keys)
    _restamp(b)
    return _signature_mismatch(b, keys / "sign.pub.pem"), keys / "sign.pub.pem"


def _garbage_signature(b, keys):
    (b / "deployft.json.sig").write_text("bm90IGEgc2lnbmF0dXJl\n")
    return _signature_mismatch(b, keys / "sign.pub.pem"), keys / "sign.pub.pem"


def _other_key(b, keys):
    return _signature_mismatch(b, keys / "other.pub.pem"), keys / "other.pub.pem"


def _signature_removed(b, keys):
    (b / "deployft.json.sig").unlink()
    return (f"{b} is not signed (no deployft.json.sig) but a public key was given; ask for a bundle exported with "
            "deployft export --sign-key, or drop --public-key"), keys / "sign.pub.pem"


TAMPERING = {
    "model edited": _model_edited, "model truncated": _model_truncated, "model deleted": _model_deleted,
    "model swapped for another variant": _model_swapped, "tokenizer edited": _tokenizer_edited,
    "tokenizer truncated": _tokenizer_truncated, "tokenizer config edited": _tokenizer_config_edited,
    "config edited": _config_edited, "generation config edited": _generation_config_edited,
    "generation config deleted": _generation_config_deleted, "chat template edited": _template_edited,
    "chat template added": _template_added, "manifest max_length edited": _manifest_edited("max_length"),
    "manifest prompt format edited": _manifest_edited("prompt_format"),
    "manifest end id edited": _manifest_edited("generation"),
    "model path escapes with ..": _model_outside(absolute=False), "model path absolute": _model_outside(absolute=True),
    "model is a link out of the folder": _model_links_outside, "external weights edited": _external_weights_edited,
    "external weights truncated": _external_weights_truncated, "external weights outside": _external_weights_outside,
    "bundle from before file checks": _old_format, "forged manifest": _forged_manifest,
    "garbage signature": _garbage_signature, "signed by another key": _other_key,
    "signature removed": _signature_removed,
}


def _one_line_error(result, expected: str) -> None:
    assert "Traceback" not in result.output
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: {expected}\n"


def test_the_untouched_bundle_loads_verifies_and_is_signed(bundle, keys):
    assert (bundle / "deployft.json.sig").is_file() and (bundle / "chat_template.jinja").is_file()
    predictor = Predictor.load(bundle, public_key=keys / "sign.pub.pem")
    assert isinstance(predictor.generate("what do bees make", max_new_tokens=2), str)
    result = _run("verify", bundle, "--public-key", keys / "sign.pub.pem")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK: {bundle}: deployft.json and {len(_manifest(bundle)['files'])} file(s)")


@pytest.mark.parametrize("case", list(TAMPERING))
def test_tampering_is_refused_in_one_line(bundle, keys, case):
    expected, key = TAMPERING[case](bundle, keys)
    key_args = ("--public-key", key) if key else ()
    with pytest.raises(BundleError) as caught:
        Predictor.load(bundle, public_key=key)
    assert str(caught.value) == expected
    _one_line_error(_run("predict", bundle, "what do bees make", "--max-new-tokens", "2", *key_args), expected)
    _one_line_error(_run("verify", bundle, *key_args), expected)


def _corrupt_model(b):
    _truncate(b / _model(b))
    _restamp(b)
    return f"ONNX Runtime cannot load model file {_model(b)} in {b} (", f"); {REEXPORT}"


def _malformed_tokenizer(b):
    (b / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": [1, 2]}}')
    _restamp(b)
    return f"{b}/tokenizer.json cannot be read by the tokenizers library (", f"); {REEXPORT}"


def _broken_template(b):
    (b / "chat_template.jinja").write_text("{% for message in messages %}{{ message['content'] }")
    _restamp(b)
    return "the bundle's chat template does not compile (", ("); fix chat_template.jinja (or tokenizer_config.json's "
                                                            "chat_template) and re-export the bundle")


CORRUPTION = {"truncated model, re-hashed": _corrupt_model, "malformed tokenizer.json": _malformed_tokenizer,
              "template that does not compile": _broken_template}
"""Files that match their hashes (a broken export, or a forger's) yet cannot be used: refused by the runtime."""


@pytest.mark.parametrize("case", list(CORRUPTION))
def test_unreadable_files_are_one_line_errors_not_library_tracebacks(bundle, case):
    start, end = CORRUPTION[case](bundle)
    with pytest.raises(BundleError) as caught:
        Predictor.load(bundle)
    message = str(caught.value)
    assert message.startswith(start) and message.endswith(end) and "\n" not in message
    result = _run("predict", bundle, "what do bees make")
    _one_line_error(result, message)


def test_a_template_that_fails_to_render_is_one_line(bundle):
    (bundle / "chat_template.jinja").write_text("{{ messages[3]['content'] }}")
    _restamp(bundle)
    predictor = Predictor.load(bundle)
    expected = ("the bundle's chat template failed to render (list object has no element 3); fix "
                "chat_template.jinja (or tokenizer_config.json's chat_template) and re-export the bundle")
    with pytest.raises(BundleError) as caught:
        predictor.generate("what do bees make")
    assert str(caught.value) == expected
    _one_line_error(_run("predict", bundle, "what do bees make"), expected)


def test_hashing_reads_only_the_files_the_runtime_needs(bundle):
    """An untouched variant still loads when another one is damaged (loading hashes only what it reads)."""
    other = next(n for n in _manifest(bundle)["variants"] if n != _model(bundle))
    _flip(bundle / other)
    Predictor.load(bundle)
    _one_line_error(_run("verify", bundle), _modified(bundle, "model file", other))
