"""What `export` checks once it knows the source's task, before it loads a model or writes a file: the flags that
fit only one task, the signing key, and the device and provider the files will be validated on.

`ExportConfig.__post_init__` has already refused what needs no source (a bad value, a flag the --quantize mode does
not use, an --output that holds the RUN).
"""

from __future__ import annotations

import importlib.util

from ..errors import DeviceError, MissingDependencyError, UsageError
from ..tasks import Task
from .config import CALIBRATION_SAMPLES, SELECT_SECONDS, ExportConfig


def check_task_flags(config: ExportConfig, task: Task) -> None:
    """Refuse flags that do not fit the source's task."""
    blockwise = task.int8_method == "blockwise"
    if config.quantize == "int4" and not task.int4_remedies:
        raise UsageError(f"--quantize int4 is for generators (4-bit MatMulNBits); a {task.name} model is quantized "
                         "with --quantize int8")
    classifier_int8 = (config.per_channel or config.quantize_preset or config.select or config.min_agreement is not None
                       or config.calibration_samples != CALIBRATION_SAMPLES or config.select_seconds != SELECT_SECONDS)
    if config.quantize in ("int8", "int4") and blockwise and classifier_int8:
        raise UsageError(f"--per-channel, --quantize-preset, --calibration-samples, --select, --select-seconds and "
                         f"--min-agreement set up a classifier's int8; a {task.name} model's {config.quantize} is "
                         "blockwise (MatMulNBits, one scale per block of weights) and takes none of them: drop the "
                         "flag")
    if config.block_size is not None and not blockwise:
        raise UsageError(f"--block-size sets the MatMulNBits blocks of a generator; a {task.name} model's int8 is "
                         f"{task.int8_method} and has no blocks: drop --block-size")
    if config.fuse_attention is not None and not task.generates:
        flag = "--fuse-attention" if config.fuse_attention else "--no-fuse-attention"
        raise UsageError(f"{flag} sets a generator's attention fusion; a {task.name} model's attention is fused by "
                         f"ORTOptimizer whatever it says: drop {flag}")
    drop = config.max_accuracy_drop
    if drop is not None and not task.generates and drop > 100:
        raise UsageError(f"--max-accuracy-drop {drop:g} is more than every prediction: a {task.name} budget is the "
                         "% of predictions that may flip, from 0 to 100; pass --max-accuracy-drop 100 or less")


def signer(config: ExportConfig):
    """The --sign-key private key, loaded before any work so a bad key fails in a second, not after the export."""
    if config.sign_key is None:
        return None
    from ..signing import load_private_key

    return load_private_key(config.sign_key)


def check_device(config: ExportConfig) -> None:
    """Refuse a --device cuda or --provider openvino that this machine cannot run, before the export starts.

    Raises:
        DeviceError: no CUDAExecutionProvider; the OpenVINO plugin offers no device here.
        MissingDependencyError: the OpenVINO plugin, or NNCF for --quantize int8-static, is not installed.
    """
    from ..runtime.session import import_ort

    ort = import_ort()
    if config.device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise DeviceError("--device cuda, but this ONNX Runtime has no CUDAExecutionProvider; "
                          "pip install \"deployft[gpu]\" (onnxruntime-gpu, CUDA 13 / cuDNN 9) or pass --device cpu")
    if config.provider != "openvino":
        return
    from ..runtime import openvino

    openvino.register(ort)
    openvino.cpu_device(ort)
    if config.quantize == "int8-static" and importlib.util.find_spec("nncf") is None:
        from .quantize import NNCF_INSTALL

        raise MissingDependencyError(f"--quantize int8-static --provider openvino quantizes with NNCF, which is not "
                                     f"installed; install it with: {NNCF_INSTALL}, or pass --provider default")
