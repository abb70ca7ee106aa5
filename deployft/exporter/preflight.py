"""What `export` checks once it knows the source's task, before it loads a model or writes a file: the flags that
fit only one task, the signing key, and the device and provider the files will be validated on.

`ExportConfig.__post_init__` has already refused what needs no source (a bad value, an --output that holds the RUN)
and warned about settings the --quantize mode ignores. A setting the task ignores is warned about here, never refused:
one config file may serve several modes and tasks.
"""

from __future__ import annotations

import importlib.util
import logging

from ..errors import DeviceError, MissingDependencyError, UsageError
from ..tasks import Task
from .config import CALIBRATION_SAMPLES, SELECT_SECONDS, ExportConfig

logger = logging.getLogger(__name__)


def check_task_flags(config: ExportConfig, task: Task) -> None:
    """Refuse flags that do not fit the source's task; warn about settings the task ignores."""
    blockwise = task.int8_method == "blockwise"
    if config.quantize == "int4" and not task.int4_remedies:
        raise UsageError(f"--quantize int4 is for generators (4-bit MatMulNBits); a {task.name} model is quantized "
                         "with --quantize int8")
    if config.quantize in ("int8", "int4") and blockwise and (config.per_channel or config.quantize_preset
                                                               or config.select or config.min_agreement is not None):
        raise UsageError(f"--per-channel, --quantize-preset, --select and --min-agreement set up a classifier's "
                         f"int8; a {task.name} model's {config.quantize} is blockwise (MatMulNBits, one scale per "
                         "block of weights) and takes none of them: drop the flag")
    if config.block_size is not None and not blockwise:
        raise UsageError(f"--block-size sets the MatMulNBits blocks of a generator; a {task.name} model's int8 is "
                         f"{task.int8_method} and has no blocks: drop --block-size")
    _warn_ignored_by_task(config, task)
    drop = config.max_accuracy_drop
    if drop is not None and not task.generates and drop > 100:
        raise UsageError(f"--max-accuracy-drop {drop:g} is more than every prediction: a {task.name} budget is the "
                         "% of predictions that may flip, from 0 to 100; pass --max-accuracy-drop 100 or less")


def _warn_ignored_by_task(config: ExportConfig, task: Task) -> None:
    """Warn about settings the task ignores (the --quantize mode's own were warned about by `ExportConfig`)."""
    if config.quantize == "int8" and task.int8_method == "blockwise":
        for flag, given in (("--calibration-samples", config.calibration_samples != CALIBRATION_SAMPLES),
                            ("--select-seconds", config.select_seconds != SELECT_SECONDS)):
            if given:
                logger.warning("%s is ignored: a %s model's int8 is blockwise (MatMulNBits, nothing calibrated or "
                               "timed) and does not use it", flag, task.name)
    if config.fuse_attention is False and not task.generates:
        logger.warning("--no-fuse-attention is ignored: it sets a generator's attention fusion, and a %s model's "
                       "attention is fused by ORTOptimizer whatever it says", task.name)


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
