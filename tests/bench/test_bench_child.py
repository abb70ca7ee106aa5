"""Peer builds' child processes (deployft/bench/child.py): a failure is one line with the child's last words."""

from __future__ import annotations

import sys

import pytest

from deployft.bench.child import run_child
from deployft.errors import StageError


def test_a_failing_child_is_one_line_with_its_last_words_and_the_fix():
    script = "import sys; print('loading', file=sys.stderr); raise SystemExit('BPE pre-tokenizer was not recognized')"
    with pytest.raises(StageError) as raised:
        run_child([sys.executable, "-c", script], "the converter", fix="pass another RUN")
    assert str(raised.value) == ("the converter failed (exit 1): BPE pre-tokenizer was not recognized; "
                                 "pass another RUN")


def test_the_child_sees_the_extra_environment_and_a_slow_one_is_stopped(tmp_path):
    out = tmp_path / "seen"
    run_child([sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['DEPLOYFT_X'])"],
              "writing", {"DEPLOYFT_X": "42"})
    assert out.read_text() == "42"
    with pytest.raises(StageError, match=r"^sleeping did not finish within 0.5 s$"):
        run_child([sys.executable, "-c", "import time; time.sleep(30)"], "sleeping", timeout=0.5)
