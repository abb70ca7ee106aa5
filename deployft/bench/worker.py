"""Each variant runs in its own process, so its peak memory and cold start are its own.

The parent starts one worker per variant and drives them all in lockstep over pipes (one JSON line
per command and per reply): it can interleave variants round by round while only one of them computes
at a time. Each worker times its own calls, so the pipe's latency never enters a measurement.

    python -c "...serve('SPEC.json')"      (SPEC: variant, run, bundle, device, threads, inputs)
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StageError
from ..manifest import read_json
from ..tasks import get_task


class WorkerFailed(StageError):
    """A variant's worker reported an error or died; the message is the error's first line."""


class Worker:
    """The child side: one loaded variant answering commands."""

    def __init__(self, spec: dict[str, Any]):
        self.spec = spec
        self.inputs = dict(np.load(spec["inputs"]))
        self.backend = None
        self.warm: set[str] = set()

    def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        return getattr(self, "op_" + command["op"])(**command.get("args", {}))

    def op_load(self) -> dict[str, Any]:
        from .backends import make_backend

        start = time.perf_counter()
        spec = self.spec
        self.backend = make_backend(spec["variant"], Path(spec["run"]), Path(spec["bundle"]), spec["manifests"],
                                    spec["device"], spec["threads"], spec.get("provider", "default"), spec.get("peer"),
                                    spec.get("static_shapes", False))
        self.backend.load()
        loaded = time.perf_counter()
        self._first_result()
        done = time.perf_counter()
        reply = {"load_s": loaded - start, "first_result_s": done - loaded, "cold_start_s": done - start,
                 "size_bytes": self.backend.size_bytes(), "details": self.backend.details()}
        if get_task(spec["task"]).generates:
            reply["weight_bytes_per_token"] = self.backend.weight_bytes_per_token()
        return reply

    def _first_result(self) -> None:
        if not get_task(self.spec["task"]).generates:
            key = min((k for k in self.inputs if k.startswith("cell_")), key=lambda k: self.inputs[k].size)
            ids = self.inputs[key]
            self.backend.forward(ids, np.ones_like(ids))
        else:
            key = min((k for k in self.inputs if k.startswith("prompt_")), key=lambda k: self.inputs[k].size)
            self.backend.generate(self.inputs[key].tolist(), 1)

    def op_classify(self, cell: str, warmup: int, hot_calls: int = 0) -> dict[str, Any]:
        """One settled call (the parent paused before it), then `hot_calls` back-to-back calls, each timed."""
        ids = self.inputs[cell]
        mask = np.ones_like(ids)
        if cell not in self.warm:
            for _ in range(warmup):
                self.backend.forward(ids, mask)
            self.warm.add(cell)
        settled, *hot = (self._timed_forward(ids, mask) for _ in range(1 + hot_calls))
        return {"seconds": settled, "hot": hot}

    def _timed_forward(self, ids: np.ndarray, mask: np.ndarray) -> float:
        self.backend.sync()
        start = time.perf_counter()
        self.backend.forward(ids, mask)
        self.backend.sync()
        return time.perf_counter() - start

    def op_generate(self, cell: str, new_tokens: int, warmup: int) -> dict[str, Any]:
        prompt = self.inputs[cell].tolist()
        key = f"{cell}:{new_tokens}"
        if key not in self.warm:
            for _ in range(warmup):
                self.backend.generate(prompt, new_tokens)
            self.warm.add(key)
        tokens, times = self.backend.generate(prompt, new_tokens)
        if len(tokens) != new_tokens:  # a shorter run would make its tokens/s incomparable with the others'
            raise RuntimeError(f"generated {len(tokens)} of {new_tokens} tokens for a {len(prompt)}-token prompt")
        return {"tokens": len(tokens), "times": times}

    def op_accuracy(self) -> dict[str, Any]:
        from .accuracy import classify_metrics, generate_metrics

        if not get_task(self.spec["task"]).generates:
            return classify_metrics(self.backend, self.inputs)
        return generate_metrics(self.backend, self.inputs)

    def op_stats(self) -> dict[str, Any]:
        return {"peak_rss_bytes": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux's VmHWM belongs to the process image, so it starts afresh at exec; `ru_maxrss` would carry over
    the parent's peak from before the fork (the whole benchmark's, torch included).
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def serve(spec_path: str) -> None:
    """Answer commands from stdin on the original stdout; everything libraries print goes to stderr."""
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    worker = Worker(read_json(Path(spec_path), StageError, missing_ok=False))
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            break
        try:
            reply = {"ok": True, **worker.handle(command)}
        except Exception as exc:  # noqa: BLE001 - the parent records the error and carries on
            reply = {"ok": False, "error": (f"{type(exc).__name__}: {exc}".splitlines() or ["error"])[0]}
        protocol.write(json.dumps(reply) + "\n")


_ENTRY = "import sys; from deployft.bench.worker import serve; serve(sys.argv[1])"
"""The child's entry point (`-c` rather than `-m`, which would import this module twice)."""


class WorkerHandle:
    """The parent side: starts a worker process and sends it commands."""

    def __init__(self, spec: dict[str, Any], spec_path: Path, log_path: Path, timeout: float = 1800.0):
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        self.log_path, self.timeout = log_path, timeout
        env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"]),
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        env.setdefault("HF_HUB_OFFLINE", "1")
        self._log = open(log_path, "w", encoding="utf-8")
        self.process = subprocess.Popen([sys.executable, "-c", _ENTRY, str(spec_path)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
                                        text=True, env=env)

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; raise WorkerFailed on an error reply, a crash or a timeout."""
        try:
            self.process.stdin.write(json.dumps({"op": op, "args": args}) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerFailed(self._died()) from None
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout)
        if not ready:
            self.close()
            raise WorkerFailed(f"worker did not answer '{op}' within {self.timeout:.0f} s")
        line = self.process.stdout.readline()
        if not line:
            raise WorkerFailed(self._died())
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerFailed(reply["error"])
        return reply

    def _died(self) -> str:
        code = self.process.wait(timeout=30)
        self._log.flush()
        tail = [ln for ln in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        return f"worker exited with code {code}" + (f": {tail[-1].strip()}" if tail else "")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        self._log.close()
