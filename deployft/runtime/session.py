"""One ONNX Runtime session per bundle: providers, threads, and an honest answer about the device.

ONNX Runtime falls back to CPU when CUDA cannot start and only logs why, so after building the
session this module reads `session.get_providers()` back and refuses a CUDA request that did not
come true, naming the missing piece. The OpenVINO provider (`provider="openvino"`, `runtime/openvino.py`)
gets the same treatment: a session where it places no node is refused.

A session on the CPU (ONNX Runtime's own kernels or OpenVINO's) keeps each residual Add and LayerNormalization apart
(`CPU_DISABLED_OPTIMIZERS`): the CPU kernel of the SkipLayerNormalization that ONNX Runtime would fuse them into
is a scalar loop, measured 2.7x-4.8x slower than the pair (benchmarks/skip_layernorm.py); a CUDA session fuses them.

The provider is a field of its own, not a device value: the device says which hardware the numbers come from
(the bundle's validation is per device), the provider which engine runs the graph on it; OpenVINO runs on the CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DeviceError, MissingDependencyError, UsageError, first_line
from . import openvino
from .shapes import ShapeSessions, bucket_length, reshape_input

logger = logging.getLogger("deployft.runtime")

DEVICES = ("cpu", "cuda", "auto")
PROVIDERS = ("default", "openvino")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
"""ONNX Runtime's load-time graph transformers a session on the CPU (the default provider on the CPU alone, or
OpenVINO) runs without (see the module's docstring)."""


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
    provider: str = "default"
    """`default` (ONNX Runtime's own CPU or CUDA kernels) or `openvino` (the OpenVINO plugin, on the CPU)."""
    cache_dir: str | Path | None = None
    """openvino: where compiled models are cached (None: ~/.cache/deployft/openvino)."""
    cache: bool = True
    """openvino: use the compiled-model cache (a second load of the same file skips compilation)."""
    static_shapes: bool = False
    """openvino: compile the graph for fixed input shapes, one session per (batch, length) bucket, inputs padded
    to their bucket (`runtime/shapes.py`; for (batch, length) inputs only: classifiers)."""
    max_length: int | None = None
    """static_shapes: the longest input the model takes, so no bucket pads beyond it."""
    pad_id: int = 0
    """static_shapes: the token id padded positions of `input_ids` get (the tokenizer's pad id)."""

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise UsageError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}; pass --device cpu")
        if self.provider not in PROVIDERS:
            raise UsageError(f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}; "
                             "pass --provider default")
        if self.provider == "openvino" and self.device == "cuda":
            raise UsageError("--provider openvino runs on the CPU, not CUDA; pass --device cpu")
        if self.static_shapes and self.provider != "openvino":
            raise UsageError("static_shapes compiles the graph per input shape on OpenVINO; pass provider "
                             "openvino or leave static_shapes off")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise UsageError(f"threads must be a positive integer, got {self.threads!r}; pass --threads 1 or more")


@dataclass
class Runtime:
    """What really runs a session, read back from ONNX Runtime once it is built."""

    device: str
    """`cpu` or `cuda`."""
    provider: str = "default"
    """`default` or `openvino`."""
    threads: int | None = None
    """Intra-op threads asked for (openvino: also OpenVINO's INFERENCE_NUM_THREADS); None: the engine's default."""
    precision: str | None = None
    """openvino: the inference precision set through load_config (`f32` or `bf16`); None: the file's own types."""
    cache_dir: str | None = None
    """openvino: the compiled-model cache folder; None: no cache."""
    nodes: dict[str, int] = field(default_factory=dict)
    """openvino: nodes per execution provider, as ONNX Runtime recorded them."""
    static_shapes: bool = False
    """openvino: one session compiled per input-shape bucket (`runtime/shapes.py`) instead of dynamic shapes."""


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
    disabled = list(CPU_DISABLED_OPTIMIZERS) if providers == [CPU] else None
    return ort.InferenceSession(str(model_path), sess_options=settings, providers=providers,
                                disabled_optimizers=disabled)


def _openvino(ort, model_path: Path, options: SessionOptions) -> tuple[object, Runtime]:
    cache = Path(options.cache_dir or openvino.default_cache_dir()) if options.cache else None
    openvino.register(ort)
    openvino.cpu_device(ort)  # no device here is an error, never a reason to try dynamic shapes
    static = options.static_shapes
    if static:
        try:
            session = _shape_sessions(ort, model_path, options, cache)
        except _FixedShapeError as exc:  # OpenVINO runs only part of the graph: its inputs are not the model's
            logger.warning("provider openvino: %s cannot be compiled for fixed input shapes (%s); running it with "
                           "dynamic shapes", model_path.name, exc)
            static = False
    if not static:
        session = _openvino_session(ort, model_path, options, cache)
    nodes = openvino.check_placement(session, model_path.name)
    precision = openvino.cpu_precision()  # what add_to asks the plugin for
    logger.info("running %s on OpenVINO (CPU, %s, threads %s, cache %s, %s shapes)", model_path.name, precision,
                options.threads or "default", cache or "off", "static" if static else "dynamic")
    return session, Runtime("cpu", "openvino", options.threads, precision, str(cache) if cache else None, nodes,
                            static)


class _FixedShapeError(DeviceError):
    """OpenVINO could not compile the graph with its inputs fixed to one shape."""


def _shape_sessions(ort, model_path: Path, options: SessionOptions, cache: Path | None) -> ShapeSessions:
    names = _input_names(ort, model_path)
    first = (1, bucket_length(1, options.max_length))
    return ShapeSessions(lambda shape: _openvino_session(ort, model_path, options, cache, names, shape),
                         first, options.pad_id, options.max_length)


def _openvino_session(ort, model_path: Path, options: SessionOptions, cache: Path | None,
                      names: list[str] | None = None, shape: tuple[int, int] | None = None):
    """One session on the OpenVINO provider: dynamic shapes, or every input in `names` fixed to `shape`."""
    settings = _session_options(ort, options.threads, options.spinning)
    fixed = {"reshape_input": reshape_input(names, shape)} if shape else {}
    openvino.add_to(ort, settings, options.threads, cache, fixed)
    try:  # nodes OpenVINO declines run on ONNX Runtime's CPU kernels
        return ort.InferenceSession(str(model_path), sess_options=settings,
                                    disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
    except Exception as exc:  # ORT's own types; a file ONNX Runtime reads but OpenVINO cannot compile lands here
        if shape:
            raise _FixedShapeError(f"provider openvino could not compile {model_path.name} for input shape {shape}: "
                                   f"{_ort_reason(exc)}; load it with static_shapes=False or pass --provider "
                                   "default") from exc
        raise DeviceError(f"provider openvino could not compile {model_path.name}: {first_line(exc)}; "
                          "pass --provider default or another --model-file") from exc


def _input_names(ort, model_path: Path) -> list[str]:
    """The graph's input names, read by a one-thread CPU session that loads the file without optimizing it."""
    settings = ort.SessionOptions()
    settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    settings.intra_op_num_threads = 1
    settings.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), settings, providers=[CPU])
    except Exception as exc:  # ORT's own types
        raise DeviceError(f"provider openvino could not read {model_path.name}: {first_line(exc)}; "
                          "pass --provider default or another --model-file") from exc
    return [i.name for i in session.get_inputs()]


def _ort_reason(exc: BaseException) -> str:
    """ONNX Runtime's message on one line (OpenVINO puts the reason on the lines after the first)."""
    return " ".join(str(exc).split())[:300]


def create_session(model_path: str | Path, options: SessionOptions) -> tuple[object, Runtime]:
    """Build the session and return `(session, runtime)`: what really runs it (`Runtime.device`, provider, ...).

    Raises:
        DeviceError: CUDA was asked for and the session came up without the CUDA provider; OpenVINO was asked
            for and its plugin offers no device here, or runs no node of the model.
        MissingDependencyError: OpenVINO asked for and its plugin is not installed.
    """
    ort = import_ort()
    model_path = Path(model_path)
    if options.provider == "openvino":
        return _openvino(ort, model_path, options)
    session, device = _create(ort, model_path, options)
    return session, Runtime(device, "default", options.threads)


def _create(ort, model_path: Path, options: SessionOptions):
    if options.device == "cpu":
        return _build(ort, model_path, [CPU], options), "cpu"
    if CUDA not in ort.get_available_providers():
        if options.device == "cuda":
            raise DeviceError(f"device cuda asked for but {cuda_missing_reason(ort)}; or pass --device cpu")
        logger.info("device auto: %s; running on CPU", cuda_missing_reason(ort))
        return _build(ort, model_path, [CPU], options), "cpu"
    try:
        session = _build(ort, model_path, [CUDA, CPU], options)
    except Exception as exc:  # ORT raises its own Fail/RuntimeException types, for CUDA and for the model alike
        # a file the CPU cannot load either is the model's fault, not CUDA's: its own error goes up (a BundleError
        # from Predictor.load); only a file that loads on the CPU makes this a CUDA failure
        cpu = _build(ort, model_path, [CPU], options)
        if options.device == "cuda":
            del cpu
            raise DeviceError(f"device cuda asked for but ONNX Runtime could not start CUDA: "
                              f"{first_line(exc)}; pass --device cpu") from exc
        logger.info("device auto: CUDA failed to start (%s); running on CPU", first_line(exc))
        return cpu, "cpu"
    if CUDA in session.get_providers():
        logger.info("running %s on CUDA", model_path.name)
        return session, "cuda"
    if options.device == "cuda":
        raise DeviceError(f"device cuda asked for but ONNX Runtime runs {model_path.name} on CPU: "
                          f"{cuda_missing_reason(ort)}; or pass --device cpu")
    logger.info("device auto: %s; running on CPU", cuda_missing_reason(ort))
    del session  # loaded a second time as a CPU session proper, with the CPU's graph settings
    return _build(ort, model_path, [CPU], options), "cpu"
