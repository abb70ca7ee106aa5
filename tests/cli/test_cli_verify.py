"""`deployft verify` and `deployft keygen`: checks without loading, signatures, notes and one-line errors."""

from __future__ import annotations

import shutil

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
    _error(_run("keygen", "--private-key", private, "--public-key", tmp_path / "x.pem"), f"{private} exists")
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    _error(_run("verify", bundle, "--public-key", public), f"{bundle} is not signed")
    sign_bundle(bundle, load_private_key(private))
    result = _run("verify", bundle, "--public-key", public)
    assert result.exit_code == 0 and result.output.rstrip().endswith(f"match, signature matches {public}")
    _error(_run("verify", bundle, "--public-key", private), f"--public-key {private} is not a PEM public key")
    _error(_run("predict", bundle, "x", "--public-key", tmp_path / "none.pem"), "--public-key")
