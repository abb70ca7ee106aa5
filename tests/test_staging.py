"""`deployft.staging`: temporary names, what a later run cleans up, and replacing a folder without a gap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from deployft import staging
from deployft.errors import OutputExistsError
from deployft.staging import atomic_file, atomic_folder, clean_leftovers, temporary_path


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def _leftover(output, role: str, pid: int, folder: bool = True, host: str = staging._HOST):
    path = output.parent / f".{output.name}.deployft-{role}-{host}-{pid}-{'0123abcd' if folder else '4567ef89'}"
    if folder:
        path.mkdir()
        (path / "half.bin").write_bytes(b"half")
    else:
        path.write_bytes(b"half")
    return path


def test_leftovers_of_a_finished_process_are_removed_and_others_kept(tmp_path):
    out = tmp_path / "bundle"
    dead, alive = _dead_pid(), os.getppid()
    removed = [_leftover(out, "staging", dead), _leftover(out, "staging", dead, folder=False)]
    kept = [_leftover(out, "staging", alive), _leftover(out, "staging", os.getpid()),
            _leftover(tmp_path / "other", "staging", dead),
            _leftover(out, "old", dead, host="abcdef" if staging._HOST != "abcdef" else "fedcba")]  # another machine
    (tmp_path / ".bundle.tmp-0123abcd").mkdir()  # not a name deployft writes: never touched
    assert sorted(clean_leftovers(out)) == sorted(removed)
    assert not any(p.exists() for p in removed) and all(p.exists() for p in kept)
    assert (tmp_path / ".bundle.tmp-0123abcd").exists()


def test_an_old_folder_comes_back_when_a_replace_was_cut_between_its_renames(tmp_path):
    out = tmp_path / "run"
    old = _leftover(out, "old", _dead_pid())
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_folder(out):  # back, so not replaced silently
        pass
    assert (out / "half.bin").read_bytes() == b"half" and not old.exists()
    again = _leftover(out, "old", _dead_pid())  # with the output in place, an old folder is only removed
    clean_leftovers(out)
    assert not again.exists() and out.exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_replacing_a_folder(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(staging, "_exchange", lambda first, second: False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with atomic_folder(out, overwrite=True) as folder:
        (folder / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2(RENAME_EXCHANGE) is Linux only")
def test_exchange_swaps_two_folders_in_one_step(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "one").write_text("1")
    (second / "two").write_text("2")
    assert staging._exchange(first, second)
    assert [p.name for p in first.iterdir()] == ["two"] and [p.name for p in second.iterdir()] == ["one"]


def test_atomic_folder_removes_a_killed_runs_staging_folder(tmp_path):
    out = tmp_path / "bundle"
    leftover = _leftover(out, "staging", _dead_pid())
    with atomic_folder(out) as folder:
        assert not leftover.exists()
        (folder / "x").write_text("1")
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_atomic_file_names_are_this_runs_own(tmp_path):
    out = tmp_path / "preds.jsonl"
    assert temporary_path(out) != temporary_path(out)
    with atomic_file(out) as first, atomic_file(out) as second:
        first.write_text("first\n")
        second.write_text("second\n")
        assert first != second and not out.exists()
    assert out.read_text() == "first\n"  # the last to finish wins, whole
    with pytest.raises(RuntimeError), atomic_file(out) as third:
        third.write_text("half")
        raise RuntimeError("crash")
    assert out.read_text() == "first\n" and [p.name for p in tmp_path.iterdir()] == ["preds.jsonl"]


def test_atomic_folder_appears_only_when_complete(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out) as staging:
        (staging / "x").write_text("1")
        assert not out.exists()
    assert (out / "x").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_folder_leaves_nothing_on_error(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_folder(out) as staging:
        (staging / "x").write_text("1")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_folder_refuses_non_empty_output_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(OutputExistsError, match="--overwrite"), atomic_folder(out):
        pass
    assert (out / "old").exists()
    with atomic_folder(out, overwrite=True) as staging:
        (staging / "new").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


def test_atomic_folder_failed_overwrite_keeps_the_old_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(out, overwrite=True):
        raise RuntimeError("crash")
    assert (out / "old").read_text() == "old"


def test_atomic_folder_accepts_an_existing_empty_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with atomic_folder(out) as staging:
        (staging / "x").write_text("1")
    assert (out / "x").exists()
