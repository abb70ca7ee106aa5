"""`deployft.signing`: Ed25519 key pairs, detached manifest signatures, and the errors around keys."""

from __future__ import annotations

import stat
import sys

import pytest

from deployft.errors import BundleError, MissingDependencyError, OutputExistsError, UsageError
from deployft.manifest import MANIFEST_NAME, SIGNATURE_NAME, write_manifest
from deployft.signing import generate_keys, load_private_key, load_public_key, sign_bundle, verify_signature


@pytest.fixture
def pair(tmp_path):
    return generate_keys(tmp_path / "keys" / "sign.pem", tmp_path / "keys" / "sign.pub.pem")


@pytest.fixture
def folder(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_manifest(bundle, {"kind": "bundle", "task": "classify", "labels": ["negative", "positive"], "files": {}})
    return bundle


def test_keygen_writes_pem_files_and_keeps_the_private_one_private(pair):
    private, public = pair
    assert private.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    with pytest.raises(OutputExistsError, match=r"^--private-key .*sign\.pem exists; a key is never overwritten: "
                                                r"pass another --private-key or remove the file$"):
        generate_keys(private, public.with_name("new.pub.pem"))


def test_sign_then_verify_and_any_change_to_the_manifest_is_refused(pair, folder):
    private, public = pair
    sign_bundle(folder, load_private_key(private))
    verify_signature(folder, public)
    manifest = folder / MANIFEST_NAME
    manifest.write_text(manifest.read_text().replace('"negative", "positive"', '"positive", "negative"').replace(
        '"negative",\n    "positive"', '"positive",\n    "negative"'))
    with pytest.raises(BundleError, match=f"{SIGNATURE_NAME} does not match deployft.json and the public key"):
        verify_signature(folder, public)


def test_another_key_and_an_unsigned_bundle_are_refused(pair, folder, tmp_path):
    private, _ = pair
    _, other = generate_keys(tmp_path / "o.pem", tmp_path / "o.pub.pem")
    with pytest.raises(BundleError, match="is not signed .* drop --public-key"):
        verify_signature(folder, other)
    sign_bundle(folder, load_private_key(private))
    with pytest.raises(BundleError, match="signed with another key"):
        verify_signature(folder, other)


def test_unusable_key_files_are_usage_errors(pair, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private, public = pair
    with pytest.raises(UsageError, match="--sign-key .*nope.pem not found; .*deployft keygen"):
        load_private_key(tmp_path / "nope.pem")
    with pytest.raises(UsageError, match="is not an unencrypted PEM private key"):
        load_private_key(public)
    with pytest.raises(UsageError, match="--public-key .* is not a PEM public key"):
        load_public_key(private)
    other = tmp_path / "ec.pem"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UsageError, match=r"ec.pem is not an Ed25519 key \("):
        load_private_key(other)


def test_missing_cryptography_names_the_extra(monkeypatch, pair):
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "deployft\[sign\]"'):
        load_private_key(pair[0])


def test_export_refuses_a_missing_or_bad_key_before_any_work(tiny_model, tmp_path):
    from click.testing import CliRunner

    from deployft.cli import main
    from deployft.exporter import ExportConfig

    with pytest.raises(UsageError, match="--sign-key .*missing.pem not found"):
        ExportConfig(run=tmp_path, output=tmp_path / "out", sign_key=tmp_path / "missing.pem")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    output = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", str(tiny_model("bert")), "--task", "classify", "--output",
                                       str(output), "--sign-key", str(bad)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith(f"Error: --sign-key {bad} is not an unencrypted PEM private key (")
    assert len(result.output.strip().splitlines()) == 1 and not output.exists()


@pytest.mark.parametrize("load, flag", [(load_private_key, "--sign-key"), (load_public_key, "--public-key")])
def test_a_missing_key_file_is_said_once(tmp_path, load, flag):
    with pytest.raises(UsageError) as raised:
        load(tmp_path / "nope.pem")
    assert str(raised.value) == (f"{flag} {tmp_path / 'nope.pem'} not found; pass a PEM key file (create a pair "
                                 "with deployft keygen)")


def test_verify_signature_checks_the_bytes_it_is_given(pair, folder):
    """The caller parses the bytes it read once; the signature is checked on those, not on a second read."""
    private, public = pair
    sign_bundle(folder, load_private_key(private))
    signed = (folder / MANIFEST_NAME).read_bytes()
    verify_signature(folder, public, signed)
    with pytest.raises(BundleError, match="does not match"):
        verify_signature(folder, public, signed.replace(b'"negative"', b'"positive"', 1))



def test_a_public_key_may_be_given_as_its_pem_bytes(pair, folder, runtime_bundle, tmp_path):
    """What a Ray driver hands its workers: the key itself, not a path only the driver's machine has."""
    import shutil

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from deployft.runtime import Predictor

    private, public = pair
    sign_bundle(folder, load_private_key(private))
    verify_signature(folder, public.read_bytes())
    with pytest.raises(UsageError, match=r"^the public key \(PEM bytes\) is not a PEM public key \("):
        load_public_key(b"not a key")
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(UsageError, match=r"^the public key \(PEM bytes\) is not an Ed25519 key \("):
        load_public_key(ec_public)
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "signed")
    sign_bundle(bundle, load_private_key(private))
    assert Predictor.load(bundle, public_key=public.read_bytes()).predict(["fine"])


@pytest.mark.parametrize("bad", ["private", "public"])
def test_keygen_under_a_file_is_one_usage_error_and_creates_nothing(tmp_path, bad):
    from click.testing import CliRunner

    from deployft.cli import main

    (tmp_path / "afile").write_text("x")
    paths = {"private": tmp_path / "new" / "sign.pem", "public": tmp_path / "new" / "sign.pub.pem"}
    paths[bad] = tmp_path / "afile" / "keys" / f"{bad}.pem"
    flag = f"--{bad}-key"
    with pytest.raises(UsageError, match=rf"^{flag} {paths[bad]} cannot be created: {tmp_path / 'afile'} is a file; "
                                         "pass a path in a folder you can write to$"):
        generate_keys(paths["private"], paths["public"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]  # the good path's folder is not made either
    result = CliRunner().invoke(main, ["keygen", "--private-key", str(paths["private"]), "--public-key",
                                       str(paths["public"])])
    assert result.exit_code == 1 and "Traceback" not in result.output and result.output.count("\n") == 1
    assert result.output.startswith(f"Error: {flag} {paths[bad]} cannot be created")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_keygen_refuses_one_path_for_both_keys(tmp_path):
    with pytest.raises(UsageError, match="--private-key and --public-key are both .*k.pem; pass two different paths"):
        generate_keys(tmp_path / "k.pem", tmp_path / "k.pem")
    assert list(tmp_path.iterdir()) == []
