"""Peer builds run in child processes (a helper venv, optimum-intel, llama.cpp's converter and quantizer); a child
that fails becomes one `StageError` line: what failed, its exit code, its last words, and the fix where one is
known."""

from __future__ import annotations

import os
import subprocess

from ..errors import StageError

TIMEOUT_S = 3600


def run_child(command: list[str], what: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT_S,
              fix: str = "") -> None:
    """Run `command` with `env` on top of this process's environment; raise when it fails or outlasts `timeout`."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        raise StageError(f"{what} did not finish within {timeout:g} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in (done.stderr or done.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]  # pip's notes on an unused index
        raise StageError(f"{what} failed (exit {done.returncode}): {lines[-1] if lines else 'no output'}"
                         + (f"; {fix}" if fix else ""))
