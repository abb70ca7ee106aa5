"""`deployft.json`, the manifest every RUN and BUNDLE folder carries.

A folder is the contract between stages: a stage reads the previous folder and its manifest, never
the previous stage's Python objects. This module must stay importable without torch (the runtime uses it).
The folders themselves are written with `deployft.staging.atomic_folder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import BundleError, DeployftError, ModelError

MANIFEST_NAME = "deployft.json"
SIGNATURE_NAME = "deployft.json.sig"
"""The detached Ed25519 signature of the manifest's bytes (`deployft.signing`), when the bundle is signed."""
FORMAT_VERSION = 2
"""Bumped when a manifest field changes meaning; a reader refuses a newer version than it knows.
2: `manifest_sha256` stamped in every manifest; a BUNDLE's file hashes are checked on load."""
DIGEST_KEY = "manifest_sha256"
"""The manifest field holding the sha256 of the rest of the manifest (`manifest_digest`)."""

_VERSIONED_PACKAGES = (
    "deployft", "torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime",
    "onnxruntime-gpu", "tokenizers", "datasets", "accelerate", "peft", "numpy",
)


def library_versions() -> dict[str, str]:
    """Versions of the installed packages that shape a model's numbers (absent ones are left out)."""
    versions = {}
    for name in _VERSIONED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large models do not sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(folder: str | Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"sha256", "bytes"}}` for every file under `folder` except the manifest and its signature."""
    folder = Path(folder)
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in (MANIFEST_NAME, SIGNATURE_NAME):
            table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def read_json(path: str | Path, error: type[DeployftError] | None = None, missing_ok: bool = True) -> dict[str, Any]:
    """A JSON object from `path`; `{}` when the file is absent and `missing_ok`.

    Raises:
        `error` (default BundleError): the file is missing (without `missing_ok`), not JSON, or not an object.
    """
    error = error or BundleError
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return {}
        raise error(f"{path} not found; re-create the folder with the deployft stage that writes it")
    return _json_object(path, path.read_bytes(), error)


def _json_object(path: Path, raw: bytes, error: type[DeployftError]) -> dict[str, Any]:
    """The JSON object in `raw`, the bytes read from `path` (named in the errors)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path} is not valid JSON ({exc}); re-create the folder") from exc
    if not isinstance(data, dict):
        raise error(f"{path} holds a JSON {type(data).__name__}, not an object; re-create the folder")
    return data


def manifest_digest(manifest: dict[str, Any]) -> str:
    """Hex sha256 of the manifest without its digest field, as canonical JSON (sorted keys, no spaces).

    It detects a manifest edited by hand or by a tool that does not restamp it; it proves nothing about who
    wrote the manifest (anyone can recompute it): that is what a signature (`deployft.signing`) is for.
    """
    body = {k: v for k, v in manifest.items() if k != DIGEST_KEY}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    # surrogatepass: a lone surrogate (valid in JSON, "\udc80") gets a digest instead of a crash; any other text
    # encodes exactly as in plain UTF-8, so every existing digest stays the same
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    """Write `deployft.json` into `folder`, stamping the current format version and the manifest digest."""
    path = Path(folder) / MANIFEST_NAME
    fields = {k: v for k, v in manifest.items() if k not in ("format_version", DIGEST_KEY)}
    body = json.loads(json.dumps({"format_version": FORMAT_VERSION, **fields}, default=str))
    body[DIGEST_KEY] = manifest_digest(body)
    path.write_text(json.dumps(body, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def manifest_bytes(folder: str | Path, kind: str) -> bytes:
    """The exact bytes of the manifest of a RUN (`kind="run"`) or BUNDLE (`kind="bundle"`) folder.

    Raises:
        ModelError / BundleError: the folder or its manifest is missing.
    """
    error = BundleError if kind == "bundle" else ModelError
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        state = "is a file, not a folder" if folder.exists() else "does not exist"
        raise error(f"{kind.upper()} folder {folder} {state}; pass the folder written by deployft "
                    f"{'export' if kind == 'bundle' else 'finetune'}")
    if not path.is_file():
        raise error(f"{folder} has no {MANIFEST_NAME}, so it is not a deployft {kind.upper()} folder; "
                    f"create one with deployft {'export' if kind == 'bundle' else 'finetune'}")
    return path.read_bytes()


def read_manifest(folder: str | Path, kind: str, raw: bytes | None = None) -> dict[str, Any]:
    """Read and check the manifest of a RUN (`kind="run"`) or BUNDLE (`kind="bundle"`) folder.

    `raw`: the manifest's bytes as `manifest_bytes` read them, parsed instead of reading the file again (so a
    signature checked on those bytes vouches for exactly what is parsed).

    Raises:
        ModelError / BundleError: the folder or its manifest is missing, unreadable, of the other
            kind, or written by a newer deployft.
    """
    error = BundleError if kind == "bundle" else ModelError
    folder = Path(folder)
    path = folder / MANIFEST_NAME
    manifest = _json_object(path, manifest_bytes(folder, kind) if raw is None else raw, error)
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise error(f"{path} has format version {version}, newer than this deployft reads ({FORMAT_VERSION}); "
                    "upgrade deployft: pip install -U deployft")
    if manifest.get("kind") != kind:
        fix = {("run", "bundle"): f"; export it first: deployft export {folder} --output BUNDLE, and pass BUNDLE",
               ("bundle", "run"): "; pass the RUN folder deployft finetune wrote (a BUNDLE's source_run names "
                                  "the folder it was exported from)"}
        raise error(f"{folder} is a {str(manifest.get('kind')).upper()} folder, not a {kind.upper()} folder"
                    + fix.get((manifest.get("kind"), kind), ""))
    return manifest
