"""One ONNX Runtime session per bundle: providers, threads, and an honest answer about the device.

ONNX Runtime falls back to CPU when CUDA cannot start and only logs why, so after building the
session this module reads `session.get_providers()` back and refuses a CUDA request that did not
come true, naming the missing piece.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import DeviceError, MissingDependencyError, UsageError, first_line

logger = logging.getLogger("deployft.runtime")

DEVICES = ("cpu", "cuda", "auto")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


@dataclass
class SessionOptions:
    """How to run a bundle's model: which device and how many CPU threads."""

    device: str = "cpu"
    """`cpu`, `cuda`, or `auto` (CUDA when ONNX Runtime really runs on it, else CPU)."""
    threads: int | None = None
    """Intra-op CPU threads; None lets ONNX Runtime use one per physical core."""
    spinning: bool = True
    """Let idle intra-op threads spin-wait for the next call (ONNX Runtime's default: lowest latency between
    back-to-back calls); a server turns it off so idle threads leave the cores to its HTTP side."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}; pass --device cpu")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise UsageError(f"threads must be a positive integer, got {self.threads!r}; pass --threads 1 or more")


def import_ort():
    """Import onnxruntime, or say how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(
            'onnxruntime is not installed; install it with: pip install "deployft[runtime]" '
            '(or "deployft[gpu]" for CUDA)') from exc
    return onnxruntime


def _session_options(ort, threads: int | None, spinning: bool = True):
    options = ort.SessionOptions()
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def cuda_missing_reason(ort) -> str:
    """A one-line reason why CUDA is not running, for the error message."""
    if CUDA not in ort.get_available_providers():
        return ("this onnxruntime build has no CUDAExecutionProvider (onnxruntime-gpu is not installed); "
                'install it with: pip uninstall onnxruntime && pip install "deployft[gpu]"')
    return ("onnxruntime-gpu is installed but the CUDA provider could not start (CUDA 13 / cuDNN 9 libraries "
            "not found or no GPU visible); check nvidia-smi and LD_LIBRARY_PATH")


def _build(ort, model_path: Path, providers: list[str], options: SessionOptions):
    settings = _session_options(ort, options.threads, options.spinning)
    return ort.InferenceSession(str(model_path), sess_options=settings, providers=providers)


def create_session(model_path: str | Path, options: SessionOptions):
    """Build the session and return `(session, device)` where device is what really runs.

    Raises:
        DeviceError: CUDA was asked for and the session came up without the CUDA provider.
    """
    ort = import_ort()
    model_path = Path(model_path)
    if options.device == "cpu":
        return _build(ort, model_path, [CPU], options), "cpu"
    if CUDA not in ort.get_available_providers():
        if options.device == "cuda":
            raise DeviceError(f"device cuda asked for but {cuda_missing_reason(ort)}; or pass --device cpu")
        logger.info("device auto: %s; running on CPU", cuda_missing_reason(ort))
        return _build(ort, model_path, [CPU], options), "cpu"
    try:
        session = _build(ort, model_path, [CUDA, CPU], options)
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types when a provider cannot start
        if options.device == "cuda":
            raise DeviceError(f"device cuda asked for but ONNX Runtime could not start CUDA: "
                              f"{first_line(exc)}; pass --device cpu") from exc
        logger.info("device auto: CUDA failed to start (%s); running on CPU", first_line(exc))
        return _build(ort, model_path, [CPU], options), "cpu"
    if CUDA in session.get_providers():
        logger.info("running %s on CUDA", model_path.name)
        return session, "cuda"
    if options.device == "cuda":
        raise DeviceError(f"device cuda asked for but ONNX Runtime runs {model_path.name} on CPU: "
                          f"{cuda_missing_reason(ort)}; or pass --device cpu")
    logger.info("device auto: %s; running on CPU", cuda_missing_reason(ort))
    return session, "cpu"
