"""kill -9 in the middle of `deployft export` and `deployft predict --output`: nothing that looks finished is left,
and the next run removes what the killed one left behind and succeeds. (finetune: tests/train/test_checkpoints.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner
from conftest import sentiment_rows, write_rows

from deployft.cli import main


def _kill_when(command: list[str], ready, timeout: float = 240) -> subprocess.Popen:
    """Start `python -m deployft COMMAND`, poll until `ready()` holds, then SIGKILL it."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "deployft", *command], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, f"exited before the kill: {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the kill point never came"
            time.sleep(0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    return process


def _leftovers(output: Path) -> list[Path]:
    return sorted(output.parent.glob(f".{output.name}.deployft-*"))


def test_kill_during_export_leaves_no_bundle_and_a_rerun_works(tiny_run, tmp_path):
    run, bundle = tiny_run("bert"), tmp_path / "bundle"

    def writing_onnx() -> bool:  # the staging folder holds the first .onnx file: mid-export
        return any((staging / "model.onnx").exists() for staging in _leftovers(bundle))

    # 24 rows decide a budget of 12 % or more (the guard is tested in tests/exporter/test_guard.py)
    flags = ["--quantize", "int8", "--validate-samples", "24", "--max-accuracy-drop", "20"]
    _kill_when(["export", str(run), "--output", str(bundle), *flags], writing_onnx)
    assert not bundle.exists() and len(_leftovers(bundle)) == 1
    result = CliRunner().invoke(main, ["export", str(run), "--output", str(bundle), *flags])
    assert result.exit_code == 0, result.output
    assert (bundle / "deployft.json").is_file() and _leftovers(bundle) == []


def test_kill_during_predict_output_leaves_no_partial_file(runtime_bundle, tmp_path):
    bundle, output = runtime_bundle("bert"), tmp_path / "preds.jsonl"
    source = write_rows(tmp_path / "in.jsonl", sentiment_rows(20000))

    def writing_rows() -> bool:  # the run's temporary file has rows in it
        return any(staging.stat().st_size > 0 for staging in _leftovers(output))

    _kill_when(["predict", str(bundle), "--input", str(source), "--output", str(output), "--batch-size", "1",
                "--no-progress"], writing_rows)
    assert not output.exists() and len(_leftovers(output)) == 1
    result = CliRunner().invoke(main, ["predict", str(bundle), "--input", str(source), "--output", str(output),
                                       "--batch-size", "256", "--no-progress"])
    assert result.exit_code == 0, result.output
    lines = output.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 20000 and json.loads(lines[-1])["id"] == 19999 and _leftovers(output) == []
