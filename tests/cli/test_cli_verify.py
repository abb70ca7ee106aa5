"""`deployft verify` and `deployft keygen`: checks without loading, signatures, notes and one-line errors."""

from __future__ import annotations

import shutil

import pytest

from click.testing import CliRunner

from deployft.cli import main
from deployft.manifest import read_manifest
from deployft.signing import load_private_key, sign_bundle


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _error(result, expected_start):
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = result.output.strip()
    assert "\n" not in line and line.startswith(f"Error: {expected_start}"), line


def test_help():
    assert "--public-key" in _run("verify", "--help").output
    keygen = _run("keygen", "--help").output
    assert "--private-key" in keygen and "--public-key" in keygen
    assert "verify" in _run("--help").output and "--sign-key" in _run("export", "--help").output
    assert "--public-key" in _run("predict", "--help").output


def test_verify_checks_every_listed_file(runtime_bundle, tmp_path):
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    files = read_manifest(bundle, "bundle")["files"]
    result = _run("verify", bundle)
    assert result.exit_code == 0, result.output
    megabytes = sum(e["bytes"] for e in files.values()) / 1e6
    assert result.output == f"OK: {bundle}: deployft.json and {len(files)} file(s) ({megabytes:.1f} MB) match\n"


def test_a_damaged_variant_the_predictor_never_loads_still_fails_verify(runtime_bundle, tmp_path):
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    with open(bundle / "model_int8.onnx", "ab") as handle:
        handle.write(b"\0")
    _error(_run("verify", bundle), f"model file {bundle}/model_int8.onnx was modified after export (")


def test_unlisted_files_the_runtime_never_reads_are_noted_not_refused(runtime_bundle, tmp_path):
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    (bundle / "NOTES.txt").write_text("deployed 2026-12-01")
    result = _run("verify", bundle)
    assert result.exit_code == 0
    assert "note: NOTES.txt is not listed in deployft.json; the runtime never reads it" in result.output


def test_not_a_bundle(tmp_path):
    _error(_run("verify", tmp_path), f"{tmp_path} has no deployft.json, so it is not a deployft BUNDLE folder")
    _error(_run("verify", tmp_path / "nope"), "BUNDLE folder")


def test_keygen_sign_and_verify_with_the_public_key(runtime_bundle, tmp_path):
    private, public = tmp_path / "k.pem", tmp_path / "k.pub.pem"
    result = _run("keygen", "--private-key", private, "--public-key", public)
    assert result.exit_code == 0 and private.is_file() and public.is_file()
    _error(_run("keygen", "--private-key", private, "--public-key", tmp_path / "x.pem"), f"--private-key {private} exists; a key is never overwritten: pass another --private-key")
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    _error(_run("verify", bundle, "--public-key", public), f"{bundle} is not signed")
    sign_bundle(bundle, load_private_key(private))
    result = _run("verify", bundle, "--public-key", public)
    assert result.exit_code == 0 and result.output.rstrip().endswith(f"match, signature matches {public}")
    _error(_run("verify", bundle, "--public-key", private), f"--public-key {private} is not a PEM public key")
    _error(_run("predict", bundle, "x", "--public-key", tmp_path / "none.pem"), "--public-key")


def _swap_manifest_on_first_read(monkeypatch, bundle, tampered: bytes) -> list[str]:
    """The first read of `bundle`'s deployft.json, by any method, returns `tampered`; later reads the file on disk
    (a manifest swapped between two reads). Returns the reads made."""
    from pathlib import Path

    manifest, reads = (bundle / "deployft.json").resolve(), []
    read_bytes, read_text = Path.read_bytes, Path.read_text

    def first_read(path, how: str):
        if path.resolve() != manifest:
            return None
        reads.append(how)
        return tampered if len(reads) == 1 else None

    def fake_bytes(path):
        swapped = first_read(path, "bytes")
        return read_bytes(path) if swapped is None else swapped

    def fake_text(path, *args, **kwargs):
        swapped = first_read(path, "text")
        return read_text(path, *args, **kwargs) if swapped is None else swapped.decode("utf-8")

    monkeypatch.setattr(Path, "read_bytes", fake_bytes)
    monkeypatch.setattr(Path, "read_text", fake_text)
    return reads


def test_the_signature_is_checked_on_the_manifest_bytes_that_are_used(runtime_bundle, tmp_path, monkeypatch):
    from deployft.errors import BundleError
    from deployft.manifest import write_manifest
    from deployft.runtime import Predictor, verify_bundle
    from deployft.signing import generate_keys

    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    private, public = generate_keys(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    sign_bundle(bundle, load_private_key(private))
    forged = tmp_path / "forged"
    forged.mkdir()
    manifest = read_manifest(bundle, "bundle")
    write_manifest(forged, {**manifest, "labels": manifest["labels"][::-1]})  # restamped: only the signature tells
    tampered = (forged / "deployft.json").read_bytes()
    for load in (lambda: Predictor.load(bundle, public_key=public), lambda: verify_bundle(bundle, public)):
        reads = _swap_manifest_on_first_read(monkeypatch, bundle, tampered)
        with pytest.raises(BundleError, match="does not match deployft.json and the public key"):
            load()
        assert len(reads) == 1  # read once: the bytes whose signature is checked are the bytes parsed
        monkeypatch.undo()
    assert Predictor.load(bundle, public_key=public).labels == manifest["labels"]
