"""`ExportConfig`: every option of `deployft export`; the CLI flags, a --config file and Python fill it alike."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..runtime.session import PROVIDERS
from ..signing import key_file
from ..staging import check_apart
from ..tasks import TASKS

logger = logging.getLogger(__name__)

__all__ = ["BLOCK_SIZES", "CALIBRATED_MODES", "CALIBRATION_SAMPLES", "DEVICES", "ExportConfig", "HEAD_BITS", "OPSETS",
           "PRESETS", "PROVIDERS", "QUANTIZE_MODES", "SELECT_RULES", "SELECT_SECONDS", "VARIANT_FILES"]

QUANTIZE_MODES = ("none", "int8", "int4", "int8-static", "fp16")
DEVICES = ("cpu", "cuda")
PRESETS = ("avx512_vnni", "avx2", "arm64")
"""ONNX Runtime's int8 presets (`deployft.exporter.quantize.cpu_preset` picks one from the CPU)."""
BLOCK_SIZES = (16, 32, 64, 128)
"""`--block-size` values: weights per scale of a generator's MatMulNBits (smaller: closer to fp32, larger file)."""
HEAD_BITS = (8, 4)
"""`--head-bits` values: the width of an int4 generator's LM head (8: more accurate; 4: fewer bytes read per token,
as onnxruntime-genai's int4 builds it)."""
VARIANT_FILES = {"int8": "model_quantized.onnx", "int4": "model_int4.onnx", "int8-static": "model_int8_static.onnx",
                 "fp16": "model_fp16.onnx"}
"""The file each --quantize mode writes beside model.onnx and model_optimized.onnx."""
SELECT_RULES = ("fastest", "smallest")
"""How a classifier's int8 file is chosen among the candidates within the accuracy budget (`select.py`)."""
CALIBRATION_SAMPLES = 100
"""Training rows that calibrate when --calibration-samples is not given."""
SELECT_SECONDS = 30.0
"""The time budget for timing a classifier's int8 candidates when --select-seconds is not given."""
CALIBRATED_MODES = ("int8", "int8-static")
"""The --quantize modes --per-channel, --quantize-preset and --calibration-samples set up (int8: a classifier's)."""
OPSETS = range(14, 24)
"""`--opset` values: 23 is the newest the pinned torch (2.13) exports (`torch.onnx._constants.ONNX_MAX_OPSET`; 24
is "Unsupported onnx_opset_version"), 14 the oldest that holds `aten::scaled_dot_product_attention`, which every
attention of transformers 4.57 exports to (bert, distilbert, roberta, gpt2, llama fail below it)."""


@dataclass
class ExportConfig:
    """How to turn a RUN (or a local model folder) into a BUNDLE."""

    run: str | Path
    """The RUN folder written by deployft finetune, or a local Hugging Face model folder (then pass task)."""
    output: str | Path
    """The BUNDLE folder to write."""
    task: str | None = None
    """classify or generate; needed only for a plain model folder (a RUN knows its task)."""
    quantize: str = "none"
    """none, int8 (CPU: dynamic for classify, blockwise MatMulNBits for generate), int8-static (calibrated on the
    RUN's training data, CPU; with provider openvino quantized by NNCF, OpenVINO's quantizer), int4 (generators,
    CPU: 4-bit MatMulNBits, LM head (`head_bits`) and embedding at 8 bits) or fp16 (CUDA)."""
    block_size: int | None = None
    """Weights per scale of a generator's blockwise int8 / int4 (16, 32, 64 or 128); None: 64 for int8, 32 for
    int4."""
    head_bits: int | None = None
    """The LM head's MatMulNBits width under --quantize int4: 8 or 4 (a smaller file, fewer bytes read per decode
    step; the accuracy guard judges it all the same); None: 8."""
    quantize_preset: str | None = None
    """avx512_vnni, avx2 or arm64; default: picked from this CPU's instruction set."""
    per_channel: bool = False
    """Quantize weights per output channel from the first attempt (otherwise it is the first remedy)."""
    select: str | None = None
    """Classifier int8: keep the `fastest` candidate within the accuracy budget, timed on this machine, or the
    `smallest` file; None: fastest."""
    select_seconds: float = SELECT_SECONDS
    """Classifier int8: the time budget for timing the candidates (warm-up not counted; at least 3 rounds)."""
    calibration_samples: int = CALIBRATION_SAMPLES
    """Training examples that calibrate int8-static activation ranges (and a classifier's static-qdq candidate and
    activation smoothing); another value is ignored, with a warning, where nothing is calibrated."""
    validate_samples: int | None = None
    """Most held-out eval rows every ONNX file is validated on against PyTorch; None: the task's default
    (`Task.validation_rows`: classify 2000, generate 200)."""
    max_accuracy_drop: float | None = None
    """Budget against PyTorch in the task's unit, judged on its one-sided 95 % upper bound (`guard.py`); None: the
    task's default (classify 3: at most 3 % of predictions may flip; generate 10: perplexity at most +10 %)."""
    min_agreement: float | None = None
    """Classifier int8: the top-1 agreement with PyTorch on the validation rows that export climbs the remedy ladder
    for, among files within the budget (0: the first rung's files within the budget); None: the task's default
    (classify 0.99). Never a reason to refuse: when no rung reaches it, the first rung within budget is kept."""
    device: str = "cpu"
    """Target device: cpu or cuda (fp16 needs cuda; int8 has no CUDA kernels)."""
    provider: str = "default"
    """ONNX Runtime provider every file is validated through: default or openvino (the OpenVINO plugin, CPU);
    recorded in each file's validation report."""
    opset: int | None = None
    """ONNX opset (`OPSETS`: 14 to 23); default: Optimum's choice for the architecture."""
    fuse_attention: bool = True
    """Generators on CPU: fuse the attention into GroupQueryAttention with its rotary embedding where the model type
    is supported (True), or keep the exported attention (False)."""
    overwrite: bool = False
    """Replace an existing output folder."""
    sign_key: str | Path | None = None
    """An Ed25519 private key (PEM, `deployft keygen`): sign the manifest into deployft.json.sig."""

    def __post_init__(self) -> None:
        self.run, self.output = Path(self.run), Path(self.output)
        if self.sign_key is not None:
            self.sign_key = key_file(self.sign_key, "--sign-key")
        # --overwrite replaces the whole --output: refuse one that is or holds an input (a BUNDLE inside the RUN
        # folder replaces nothing of it); the RUN's data files are checked once the RUN is read (`export`)
        check_apart(self.output, {"the RUN folder": self.run, "--sign-key": self.sign_key})
        _one_of("--quantize", self.quantize, QUANTIZE_MODES)
        _one_of("--device", self.device, DEVICES)
        _one_of("--provider", self.provider, PROVIDERS)
        if self.provider == "openvino" and self.device != "cpu":
            raise UsageError("--provider openvino runs on the CPU, not CUDA; pass --device cpu")
        if self.task is not None:
            _one_of("--task", self.task, tuple(TASKS))
        if self.quantize == "fp16" and self.device != "cuda":
            raise UsageError("--quantize fp16 is for CUDA only (ONNX Runtime's CPU kernels run fp16 slower than fp32); "
                             "pass --device cuda, or use --quantize int8 for CPU")
        if self.quantize == "int4" and self.device == "cuda":
            raise UsageError("--device cuda --quantize int4 is refused: deployft's int4 is built and validated for "
                             "CPU (int8 compute); use --quantize fp16 on CUDA or --device cpu")
        if self.quantize.startswith("int8") and self.device == "cuda":
            raise UsageError(f"--device cuda --quantize {self.quantize} is refused: ONNX Runtime has no CUDA kernels "
                             "for int8-quantized MatMuls; use --quantize fp16 on CUDA or --device cpu")
        for flag, value in (("--validate-samples", 1 if self.validate_samples is None else self.validate_samples),
                            ("--calibration-samples", self.calibration_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} must be a positive integer, got {value!r}")
        drop = self.max_accuracy_drop
        if drop is not None and (isinstance(drop, bool) or not isinstance(drop, (int, float)) or not math.isfinite(drop)
                                 or drop < 0):
            raise UsageError(f"--max-accuracy-drop must be a finite number >= 0 in the task's unit (classify: % of "
                             f"predictions that may flip, 0-100; generate: % perplexity increase), got {drop!r}")
        if self.min_agreement is not None:
            if isinstance(self.min_agreement, bool) or not isinstance(self.min_agreement, (int, float)) \
                    or not 0 <= self.min_agreement <= 1:
                raise UsageError(f"--min-agreement is a share of rows in [0, 1] (0.99: 99 % agree with PyTorch), "
                                 f"got {self.min_agreement!r}")
            if self.quantize != "int8":
                raise UsageError(f"--min-agreement steers a classifier's int8 remedies; it needs --quantize int8, got "
                                 f"--quantize {self.quantize}: drop --min-agreement or pass --quantize int8")
        if self.select is not None:
            _one_of("--select", self.select, SELECT_RULES)
            if self.quantize != "int8":
                raise UsageError(f"--select chooses among a classifier's int8 files; it needs --quantize int8, got "
                                 f"--quantize {self.quantize}: drop --select or pass --quantize int8")
        if isinstance(self.select_seconds, bool) or not isinstance(self.select_seconds, (int, float)) \
                or not 0 < self.select_seconds <= 3600:
            raise UsageError(f"--select-seconds must be a number of seconds in (0, 3600], got {self.select_seconds!r}")
        if self.block_size is not None:
            _one_of("--block-size", self.block_size, BLOCK_SIZES)
            if self.quantize not in ("int8", "int4"):
                raise UsageError(f"--block-size sets the blocks of a generator's --quantize int4 or int8, not of "
                                 f"--quantize {self.quantize}; drop --block-size (or, for a generator, pass "
                                 "--quantize int4)")
        if self.head_bits is not None:
            _one_of("--head-bits", self.head_bits, HEAD_BITS)
            if self.quantize != "int4":
                raise UsageError(f"--head-bits sets the LM head of a generator's --quantize int4, not of --quantize "
                                 f"{self.quantize}; drop --head-bits (or, for a generator, pass --quantize int4)")
        if self.quantize_preset is not None:
            _one_of("--quantize-preset", self.quantize_preset, PRESETS)
        self._check_calibrated_flags()
        if self.opset is not None and (type(self.opset) is not int or self.opset not in OPSETS):
            low, high = OPSETS[0], OPSETS[-1]
            raise UsageError(f"--opset is {self.opset!r}; expected {low} to {high} ({high}: the newest torch 2.13 "
                             f"exports; {low}: the oldest that holds the models' attention, "
                             "scaled_dot_product_attention): pass one of those or leave --opset out")

    def _check_calibrated_flags(self) -> None:
        """Warn about --per-channel, --quantize-preset, --calibration-samples and --select-seconds where the --quantize
        mode ignores them (a config file shared across modes sets them all); refuse what NNCF cannot take."""
        calibrated = "a classifier's --quantize int8 or --quantize int8-static"
        ignored = [("--calibration-samples", calibrated, self.calibration_samples != CALIBRATION_SAMPLES
                    and self.quantize not in CALIBRATED_MODES),
                   ("--select-seconds", "the timing of a classifier's --quantize int8 files",
                    self.select_seconds != SELECT_SECONDS and self.quantize != "int8")]
        if self.quantize in ("none", "fp16"):  # int4: a generator's blockwise files, checked by task (preflight.py)
            ignored += [("--per-channel", calibrated, self.per_channel),
                        ("--quantize-preset", calibrated, self.quantize_preset is not None)]
        for flag, sets_up, given in ignored:
            if given:
                logger.warning("%s is ignored: --quantize %s does not use it (it sets up %s)", flag, self.quantize,
                               sets_up)
        nncf = self.quantize == "int8-static" and self.provider == "openvino"
        if nncf and (self.quantize_preset or self.per_channel):
            raise UsageError("--quantize int8-static --provider openvino quantizes with NNCF's transformer preset, "
                             "which takes neither --quantize-preset nor --per-channel: drop them")


def _one_of(flag: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise UsageError(f"{flag} is {value!r}; expected one of {', '.join(map(str, allowed))}")
