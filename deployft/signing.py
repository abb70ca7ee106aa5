"""Optional Ed25519 signatures of a BUNDLE's manifest, for supply chains.

    deployft keygen --private-key sign.pem --public-key sign.pub.pem
    deployft export RUN --output BUNDLE --sign-key sign.pem      BUNDLE/deployft.json.sig, written atomically
    deployft verify BUNDLE --public-key sign.pub.pem             or Predictor.load(BUNDLE, public_key=...)

A public key is a PEM file's path or the PEM bytes themselves (what a Ray driver hands its workers, which may not
have the driver's files).

The signature covers the exact bytes of `deployft.json`; the manifest holds the sha256 of every other file, so a
valid signature plus matching file hashes (`deployft.runtime.integrity`) vouch for the whole bundle. Keys are PEM
files (PKCS#8 private key, unencrypted; SubjectPublicKeyInfo public key). Needs `pip install "deployft[sign]"`
(the `cryptography` package), imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from .errors import BundleError, OutputExistsError, UsageError, reraise_as, require
from .manifest import MANIFEST_NAME, SIGNATURE_NAME

__all__ = ["generate_keys", "key_file", "load_private_key", "load_public_key", "public_key_pem", "sign_bundle",
           "verify_signature"]


def _serialization():
    require("cryptography", extra="sign")
    from cryptography.hazmat.primitives import serialization

    return serialization


def key_file(path: str | Path, flag: str) -> Path:
    """`path` as a Path, once it is known to be a file (checked before any work, as `ExportConfig` does).

    Raises:
        UsageError: no such file, naming `flag`.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path} not found; pass a PEM key file (create a pair with deployft keygen)")
    return path


def _pem(path: str | Path, flag: str) -> bytes:
    return key_file(path, flag).read_bytes()


def load_private_key(path: str | Path, flag: str = "--sign-key"):
    """The Ed25519 private key in the PEM file `path`.

    Raises:
        UsageError: the file is missing, not a PEM private key, encrypted, or not Ed25519.
    """
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    pem = _pem(path, flag)  # outside the try: its own UsageError is a ValueError, not to be wrapped again
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{flag} {path} is not an unencrypted PEM private key ({exc}); "
                         "create a key pair with deployft keygen") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{flag} {path} is not an Ed25519 key ({type(key).__name__}); "
                         "create a key pair with deployft keygen")
    return key


def public_key_pem(key: str | Path | bytes, flag: str = "--public-key") -> bytes:
    """The PEM bytes of `key`: a PEM file's path, or the bytes themselves.

    Raises:
        UsageError: the file is missing.
    """
    return key if isinstance(key, bytes) else _pem(key, flag)


def _named(key: str | Path | bytes, flag: str) -> str:
    """How an error names `key`: the flag and the file, or the PEM bytes given in its place."""
    return "the public key (PEM bytes)" if isinstance(key, bytes) else f"{flag} {key}"


def load_public_key(key: str | Path | bytes, flag: str = "--public-key"):
    """The Ed25519 public key in the PEM file `key`, or in the PEM bytes `key`.

    Raises:
        UsageError: the file is missing, not a PEM public key, or not Ed25519.
    """
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    pem = public_key_pem(key, flag)  # outside the try: its own UsageError is a ValueError, not to be wrapped again
    try:
        loaded = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise UsageError(f"{_named(key, flag)} is not a PEM public key ({exc}); pass the .pub.pem file written by "
                         "deployft keygen") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise UsageError(f"{_named(key, flag)} is not an Ed25519 key ({type(loaded).__name__}); pass the .pub.pem "
                         "file written by deployft keygen")
    return loaded


def generate_keys(private_path: str | Path, public_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as PEM files (the private one readable by its owner only).

    Raises:
        OutputExistsError: either file exists (a key is never overwritten).
        UsageError: a path that cannot be created, or one path for both keys (checked before anything is made).
    """
    serialization = _serialization()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path, public_path = Path(private_path), Path(public_path)
    _check_key_paths({"--private-key": private_path, "--public-key": public_path})
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    with reraise_as(UsageError, f"the key pair cannot be written ({{reason}}); pass --private-key and --public-key "
                                "paths in folders you can write to", catch=OSError):
        private_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.parent.mkdir(parents=True, exist_ok=True)
        private_path.touch(mode=0o600)
        private_path.write_bytes(private_pem)
        public_path.write_bytes(public_pem)
    return private_path, public_path


def _check_key_paths(paths: dict[str, Path]) -> None:
    """Refuse, before any folder is made, a key path that exists, that cannot be created (a file, or a folder this
    process cannot write, on its way), or both keys at one path."""
    from .staging import creation_blocker, same_file

    for flag, path in paths.items():
        if path.exists():
            raise OutputExistsError(f"{flag} {path} exists; a key is never overwritten: pass another {flag} or "
                                    "remove the file")
        blocker = creation_blocker(path)
        if blocker is not None:
            why = "is not writable" if blocker.is_dir() else "is a file"
            raise UsageError(f"{flag} {path} cannot be created: {blocker} {why}; pass a path in a folder you can "
                             "write to")
    private, public = paths.values()
    if same_file(private, public):
        raise UsageError(f"--private-key and --public-key are both {private}; pass two different paths")


def sign_bundle(folder: str | Path, private_key) -> Path:
    """Write `deployft.json.sig` (base64 of the Ed25519 signature of the manifest's bytes) into `folder`."""
    folder = Path(folder)
    signature = private_key.sign((folder / MANIFEST_NAME).read_bytes())
    path = folder / SIGNATURE_NAME
    path.write_text(base64.b64encode(signature).decode("ascii") + "\n", encoding="ascii")
    return path


def verify_signature(folder: str | Path, public_key: str | Path | bytes, manifest: bytes | None = None) -> None:
    """Check `deployft.json.sig` against the manifest's bytes and `public_key` (a PEM file's path or PEM bytes).

    `manifest`: the manifest's bytes as the caller read them (`deployft.manifest.manifest_bytes`), to parse the
    very bytes whose signature was checked; None reads `deployft.json`.

    Raises:
        UsageError: the key file is unusable.
        BundleError: the bundle is unsigned, or its signature does not match (edited manifest, other key).
    """
    key = load_public_key(public_key)
    from cryptography.exceptions import InvalidSignature

    folder = Path(folder)
    path = folder / SIGNATURE_NAME
    if not path.is_file():
        raise BundleError(f"{folder} is not signed (no {SIGNATURE_NAME}) but a public key was given; ask for a "
                          f"bundle exported with deployft export --sign-key, or drop --public-key")
    try:
        signature = base64.b64decode(path.read_bytes().strip(), validate=True)
        key.verify(signature, (folder / MANIFEST_NAME).read_bytes() if manifest is None else manifest)
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise BundleError(f"{path} does not match {MANIFEST_NAME} and {_named(public_key, 'the public key')}: the "
                          f"manifest was changed after signing or signed with another key; do not use this bundle, "
                          f"re-export and sign it (deployft export --sign-key)") from exc
