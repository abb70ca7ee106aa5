"""Outputs written under a temporary name and moved into place whole: folders (RUN, BUNDLE, REPORT) and files.

Temporary names are `.<name>.deployft-staging-<host>-<pid>-<hex>` (being written) and `.<name>.deployft-old-...`
(a replaced folder on its way out). The random part keeps two runs into one output apart; host (a short hash of
the host name) and pid say whose a name is. A kill -9 runs no cleanup, so the next run of the stage removes the
names of this host whose process is gone (`clean_leftovers`); those of a running process, or of another machine
sharing the filesystem, are left alone.

Replacing a folder swaps the two in one step where the system can (Linux `renameat2(RENAME_EXCHANGE)`), so the
output path never stops naming a complete folder; elsewhere the old folder is renamed aside and the new one in,
and a kill between the two renames is repaired by the next run, which puts the old folder back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import os
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputExistsError, UsageError, reraise_as

__all__ = ["atomic_file", "atomic_folder", "check_apart", "check_output_free", "clean_leftovers", "creation_blocker",
           "same_file", "temporary_path"]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]
_NAME = re.compile(r"^\.(?P<name>.+)\.deployft-(?P<role>staging|old)-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[0-9a-f]{8}$")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def temporary_path(output: Path, role: str = "staging") -> Path:
    """A fresh sibling name for `output`, owned by this process (`role`: `staging` or `old`)."""
    return output.parent / f".{output.name}.deployft-{role}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def clean_leftovers(output: str | Path) -> list[Path]:
    """Remove the temporary siblings of `output` whose process is gone; returns what was removed or restored.

    An `old` folder found while `output` is missing is the last complete output (a kill came between the two
    renames of a replace): it is renamed back instead of removed.
    """
    output = Path(output)
    handled = []
    for path in sorted(output.parent.glob(f".{glob.escape(output.name)}.deployft-*")):
        match = _NAME.match(path.name)
        if match is None or match["name"] != output.name or match["host"] != _HOST or _running(int(match["pid"])):
            continue
        try:
            if match["role"] == "old" and not output.exists():
                os.replace(path, output)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except FileNotFoundError:  # another process (a DDP rank) cleaning up at the same time got there first
            continue
        handled.append(path)
    return handled


def _running(pid: int) -> bool:
    """Whether process `pid` exists; True where that cannot be told, so nothing of a live run is removed."""
    if pid == os.getpid() or os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def check_output_free(output: str | Path, overwrite: bool, flag: str = "--output") -> None:
    """Refuse an output path that is a file, a non-empty folder without `overwrite`, or one that cannot be created
    (its nearest existing ancestor is a file, or a folder this process cannot write).

    Every stage calls it first, so it also removes what killed runs left beside `output` (`clean_leftovers`):
    a folder put back by that is refused like any other existing output. The messages name `flag`, the option
    that chose `output`.
    """
    output = Path(output)
    _check_creatable(output, flag)
    if output.parent.is_dir():
        clean_leftovers(output)
    if output.is_file():
        raise OutputExistsError(f"output {output} is a file; pass a folder path with {flag}")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise OutputExistsError(f"output folder {output} exists and is not empty; "
                                f"pass --overwrite to replace it or choose another {flag}")


def same_file(first: Path, second: Path) -> bool:
    """True when both paths name one file: the same file on disk where both exist, else the same resolved path."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet)
        return first.resolve() == second.resolve()


def check_apart(output: str | Path, inputs: dict[str, str | Path | None], flag: str = "--output") -> None:
    """Refuse an `output` that is, or holds, one of `inputs` (by the flag that named each; None: not given).

    Writing an output replaces the whole folder (with --overwrite), so an input inside it would be deleted. Paths
    are compared resolved: relative spellings, `~` and symlinks name the file or folder they lead to.

    Raises:
        UsageError: `output` is an input, or a folder that holds one.
    """
    target = Path(output).expanduser().resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        source = Path(path).expanduser().resolve()
        if source == target or target in source.parents:
            relation = "is" if source == target else "holds"
            raise UsageError(f"{flag} {output} {relation} {name} {path}: writing there would delete it; pass another "
                             f"{flag} outside it")


def creation_blocker(output: str | Path) -> Path | None:
    """The nearest existing ancestor of `output` when `output` cannot be created under it (the ancestor is a file,
    or a folder this process cannot write in), else None: found before any work.

    Each output check words its own message from it, naming its flag and what to pass instead.
    """
    ancestor = next((p for p in Path(output).absolute().parents if p.exists()), None)
    if ancestor is None or (ancestor.is_dir() and os.access(ancestor, os.W_OK | os.X_OK)):
        return None
    return ancestor


def _check_creatable(output: Path, flag: str) -> None:
    blocker = creation_blocker(output)
    if blocker is None:
        return
    if not blocker.is_dir():
        raise UsageError(f"output {output} cannot be created: {blocker} is a file; pass a folder path with {flag}")
    raise UsageError(f"output {output} cannot be created: {blocker} is not writable; pass a folder you can "
                     f"write to with {flag}")


@contextlib.contextmanager
def atomic_folder(output: str | Path, overwrite: bool = False, flag: str = "--output") -> Iterator[Path]:
    """Yield a temporary sibling folder; move it to `output` only when the block finishes.

    An error inside the block removes the temporary folder, and a kill leaves it under a temporary name that
    the next run removes, so no half-written folder ever sits under the final name. An existing non-empty
    `output` is refused unless `overwrite`, and is replaced only once the new folder is complete. Errors about
    `output` name `flag`, the option that chose it.
    """
    output = Path(output).resolve()
    check_output_free(output, overwrite, flag)
    staging = temporary_path(output)
    with reraise_as(UsageError, f"output {output} cannot be created ({{reason}}); pass a folder you can write to "
                                f"with {flag}", catch=OSError):
        output.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _move_into_place(staging, output)


def _move_into_place(staging: Path, output: Path) -> None:
    if not output.exists():
        os.replace(staging, output)
    elif _exchange(staging, output):
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old folder now
    else:
        old = temporary_path(output, "old")
        os.replace(output, old)
        os.replace(staging, output)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux `renameat2(RENAME_EXCHANGE)`); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a libc older than glibc 2.28, or musl without it
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):  # a filesystem or kernel without the flag
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


@contextlib.contextmanager
def atomic_file(output: str | Path, flag: str = "--output") -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it to `output` (replacing any file) when the block ends.

    The name is this run's own, so two runs into one output never write the same file; the last to finish wins
    and `output` always holds one complete file. An error removes the temporary file; a kill leaves it for the
    next run to remove.
    """
    output = Path(output)
    with reraise_as(UsageError, f"output {output} cannot be created ({{reason}}); pass a file path in a folder you "
                                f"can write to with {flag}", catch=OSError):
        output.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(output)
    staging = temporary_path(output)
    try:
        yield staging
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
