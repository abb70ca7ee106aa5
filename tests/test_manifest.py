import json

import pytest

from deployft.errors import BundleError, ModelError
from deployft.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    file_table,
    library_versions,
    manifest_digest,
    read_manifest,
    sha256_file,
    write_manifest,
)


def test_write_then_read_roundtrip(tmp_path):
    write_manifest(tmp_path, {"kind": "bundle", "task": "classify"})
    manifest = read_manifest(tmp_path, "bundle")
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["task"] == "classify"


def test_read_refuses_newer_format(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION + 1, "kind": "bundle"}))
    with pytest.raises(BundleError, match="newer than this deployft"):
        read_manifest(tmp_path, "bundle")


def test_read_refuses_other_kind_and_missing(tmp_path):
    write_manifest(tmp_path, {"kind": "run"})
    with pytest.raises(BundleError) as caught:
        read_manifest(tmp_path, "bundle")
    assert str(caught.value) == (f"{tmp_path} is a RUN folder, not a BUNDLE folder; export it first: deployft export "
                                 f"{tmp_path} --output BUNDLE, and pass BUNDLE")
    with pytest.raises(ModelError, match="does not exist"):
        read_manifest(tmp_path / "nope", "run")
    (tmp_path / "data.csv").write_text("text\n")
    with pytest.raises(BundleError, match=r"^BUNDLE folder .*data.csv is a file, not a folder; pass the folder"):
        read_manifest(tmp_path / "data.csv", "bundle")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match="has no deployft.json"):
        read_manifest(empty, "run")


def test_read_refuses_broken_json(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(tmp_path, "bundle")


def test_file_table_hashes_every_file_but_the_manifest(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.bin").write_bytes(b"\x00\x01")
    write_manifest(tmp_path, {"kind": "bundle"})
    table = file_table(tmp_path)
    assert set(table) == {"a.txt", "sub/b.bin"}
    assert table["a.txt"] == {"sha256": sha256_file(tmp_path / "a.txt"), "bytes": 5}
    assert table["a.txt"]["sha256"] == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"


def test_library_versions_names_installed_packages():
    versions = library_versions()
    assert "numpy" in versions and "deployft" in versions


def test_a_lone_surrogate_gets_a_digest_and_a_manifest(tmp_path):
    """JSON may hold a lone surrogate ("\\udc80"); digesting or writing such a manifest must not crash."""
    write_manifest(tmp_path, {"kind": "bundle", "note": "bad byte \udc80 in a file name"})
    manifest = read_manifest(tmp_path, "bundle")
    assert manifest["note"] == "bad byte \udc80 in a file name"
    assert manifest["manifest_sha256"] == manifest_digest(manifest)


def test_digests_of_ordinary_manifests_are_unchanged():
    """Pinned before the surrogate fix: any other text digests exactly as plain UTF-8 did."""
    manifest = {"kind": "bundle", "labels": ["négatif", "東京", "🚀"], "n": 1.5, "x": None}
    assert manifest_digest(manifest) == "8751c2055f41c2d91d68a62ae70738f657e9946f199ba25df93e48a1a708b2de"

