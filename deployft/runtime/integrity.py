"""Bundle integrity: every file the runtime reads is checked against `deployft.json` before it is read.

    format    a BUNDLE written before format 2 carries no manifest digest: refused, never loaded unverified
    manifest  `manifest_sha256` must match the manifest's own body, so an edited label order, end id, max length
              or prompt format is refused (a forger can recompute it: only a signature proves who wrote it)
    names     every file name the manifest gives resolves inside the bundle folder (no absolute path, no `..`,
              no link out of the folder)
    files     the model file, its external weights, the tokenizer, the configs and the chat template are listed,
              present and of the recorded sha256 (streamed in 1 MiB chunks); a file the runtime would read but the
              manifest does not list (an added chat_template.jinja) is refused

`check_for_load` does what `Predictor.load` needs (the one model file it opens); `check_bundle` checks every
listed file, for `deployft verify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from ..errors import BundleError
from ..manifest import DIGEST_KEY, MANIFEST_NAME, SIGNATURE_NAME, manifest_digest, sha256_file

RUNTIME_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                 "chat_template.jinja")
"""Files beside the model that the runtime reads (tokenizer, special ids, positions, chat template)."""

REEXPORT = "re-export the bundle with deployft export"
FIRST_CHECKED_FORMAT = 2
"""The first manifest format with `manifest_sha256`: older bundles cannot be verified and are refused."""


@dataclass
class BundleCheck:
    """What `check_bundle` verified."""

    files: list[str] = field(default_factory=list)
    """Every file whose sha256 matched: the model files and their weights first, then the others."""
    bytes: int = 0
    """Their total size."""
    unlisted: list[str] = field(default_factory=list)
    """Files in the folder the manifest does not list and the runtime never reads (reported, not refused)."""


def _fix(folder: Path) -> str:
    return f"{REEXPORT} (deployft verify {folder} checks every file)"


def check_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, dict]:
    """Refuse a manifest from before file checks, or one whose digest does not match; return its file table."""
    version = manifest.get("format_version")
    if not isinstance(version, int) or version < FIRST_CHECKED_FORMAT or DIGEST_KEY not in manifest:
        raise BundleError(f"{folder}/{MANIFEST_NAME} has format version {version}, written before deployft checked "
                          f"bundle files, so it cannot be verified and is not loaded; {REEXPORT}")
    if manifest[DIGEST_KEY] != manifest_digest(manifest):
        raise BundleError(f"{folder}/{MANIFEST_NAME} was modified after export ({DIGEST_KEY} does not match its "
                          f"content); {REEXPORT}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise BundleError(f"{folder}/{MANIFEST_NAME} has no valid 'files' table of sha256 hashes; {REEXPORT}")
    return files


def inside(folder: Path, name: Any, what: str) -> Path:
    """`folder / name`, refused when the name or a link under it leads outside the folder."""
    if not isinstance(name, str) or not name or "\\" in name or ":" in name:
        raise BundleError(f"{folder}/{MANIFEST_NAME} names {what} {name!r}, which is not a file name inside the "
                          f"bundle; {REEXPORT}")
    posix = PurePosixPath(name)
    if posix.is_absolute() or PureWindowsPath(name).is_absolute() or ".." in posix.parts:
        raise BundleError(f"{folder}/{MANIFEST_NAME} names {what} {name!r}, a path outside the bundle folder; "
                          f"a bundle only refers to its own files: {REEXPORT}")
    path = folder / name
    if not path.resolve().is_relative_to(folder.resolve()):
        raise BundleError(f"{what} {path} links to {path.resolve()}, outside the bundle folder; {REEXPORT}")
    return path


def check_file(folder: Path, files: dict[str, dict], name: str, what: str = "file") -> Path:
    """Check one listed file: inside the folder, present, and of its recorded size and sha256."""
    path = inside(folder, name, what)
    entry = files.get(name)
    if entry is None:
        raise BundleError(f"{what} {path} is not listed in {MANIFEST_NAME}, so it cannot be verified; "
                          f"{_fix(folder)}")
    if not path.is_file():
        raise BundleError(f"{what} {path} is missing ({MANIFEST_NAME} lists it); {_fix(folder)}")
    size = path.stat().st_size
    if size != entry.get("bytes"):
        raise BundleError(f"{what} {path} was modified after export ({size} bytes, {MANIFEST_NAME} "
                          f"records {entry.get('bytes')}); {_fix(folder)}")
    if sha256_file(path) != entry.get("sha256"):
        raise BundleError(f"{what} {path} was modified after export (sha256 differs from "
                          f"{MANIFEST_NAME}); {_fix(folder)}")
    return path


def _check_runtime_files(folder: Path, files: dict[str, dict]) -> None:
    for name in RUNTIME_FILES:
        if name in files:
            check_file(folder, files, name)
        elif (folder / name).exists():
            raise BundleError(f"{folder / name} is not listed in {MANIFEST_NAME}, yet the runtime would read it "
                              f"(added after export?); remove it or {REEXPORT}")


def onnx_choice(files: dict[str, dict]) -> str:
    """The fix of a model file the bundle does not have: `pass one of the bundle's .onnx files (a, b)`."""
    return f"pass one of the bundle's .onnx files ({', '.join(sorted(f for f in files if f.endswith('.onnx')))})"


def check_model_file_name(folder: Path, files: dict[str, dict], name: str) -> None:
    """Refuse a model file the caller names (`model_file`, `--model-file`) that is a path rather than one of the
    bundle's files, such as `../other/model.onnx`: the caller's name, not the manifest, is what to fix."""
    if not isinstance(name, str) or PurePosixPath(name).name != name or "\\" in name or name in ("", ".", ".."):
        raise BundleError(f"model file {name!r} is not a file name inside {folder}; {onnx_choice(files)}")


def _model_names(folder: Path, manifest: dict[str, Any], files: dict[str, dict], name: str) -> list[str]:
    """The model file and its external-weight files, names checked; the model must be a listed .onnx file."""
    inside(folder, name, "model file")
    if name not in files:
        state = (f"{name} not found in {folder}" if not (folder / name).exists()
                 else f"{folder / name} is not listed in {MANIFEST_NAME}, so it cannot be verified")
        raise BundleError(f"model file {state}; {onnx_choice(files)}")
    variant = (manifest.get("variants") or {}).get(name) or {}
    external = variant.get("external_data") or []
    if not isinstance(external, list):
        raise BundleError(f"{folder}/{MANIFEST_NAME} gives {name} an external_data that is not a list; {REEXPORT}")
    return [name, *external]


def check_for_load(folder: Path, manifest: dict[str, Any], model_file: str) -> Path:
    """Verify what `Predictor.load` reads: the manifest, the runtime files, `model_file` and its external weights.

    Returns:
        The model file's path.

    Raises:
        BundleError: naming the file and the fix.
    """
    files = check_manifest(folder, manifest)
    model, *external = _model_names(folder, manifest, files, model_file)
    _check_runtime_files(folder, files)
    for name in external:
        check_file(folder, files, name, "external weights file")
    return check_file(folder, files, model, "model file")


def check_bundle(folder: Path, manifest: dict[str, Any]) -> BundleCheck:
    """Verify every file the manifest lists (for `deployft verify`); report unlisted files the runtime never reads.

    Raises:
        BundleError: the first mismatch, naming the file and the fix.
    """
    files = check_manifest(folder, manifest)
    report = BundleCheck()
    kinds: dict[str, str] = {}
    for name in [manifest.get("model_file") or "model.onnx", *(manifest.get("variants") or {})]:
        model, *external = _model_names(folder, manifest, files, name)
        kinds[model] = "model file"
        kinds.update({part: "external weights file" for part in external})
    _check_runtime_files(folder, files)
    for name in [*kinds, *(n for n in files if n not in kinds)]:
        report.bytes += check_file(folder, files, name, kinds.get(name, "file")).stat().st_size
        report.files.append(name)
    on_disk = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    report.unlisted = [n for n in on_disk if n not in files and n not in (MANIFEST_NAME, SIGNATURE_NAME)]
    return report


def signed_manifest(folder: Path, public_key: str | Path | bytes | None = None) -> dict[str, Any]:
    """A BUNDLE's manifest, its bytes read once: with `public_key` the signature is checked on those very bytes,
    then they are parsed, so a manifest swapped between two reads is never the one used.

    Raises:
        BundleError: no manifest, unreadable, newer format, or (with `public_key`) unsigned or not matching.
        UsageError: an unusable public key file.
    """
    from ..manifest import manifest_bytes, read_manifest

    raw = manifest_bytes(folder, "bundle")
    if public_key is not None:
        from ..signing import verify_signature

        verify_signature(folder, public_key, raw)
    return read_manifest(folder, "bundle", raw)


def verify_bundle(bundle: str | Path, public_key: str | Path | bytes | None = None) -> BundleCheck:
    """Check a BUNDLE folder without loading its model: signature (with `public_key`), manifest, every file.

    Raises:
        BundleError: the first mismatch, naming the file and the fix.
        UsageError: an unusable public key file.
    """
    folder = Path(bundle)
    return check_bundle(folder, signed_manifest(folder, public_key))
