"""Peer engines as bench variants: what a user would run instead of deployft, built from the same RUN.

    openvino-fp32, openvino-int8       classifiers: optimum-intel's OpenVINO export of the RUN, and NNCF static
                                       int8 calibrated on the rows deployft's int8-static calibrates on
    ort-genai-int8, ort-genai-int4,    generators: onnxruntime-genai's model builder (run in a helper venv, see
    ort-genai-int4-b128                `genai_venv.py`), timed with onnxruntime-genai's runtime
    ort-genai-int8-b64                 the same int8 at blocks of 64, deployft's default (the builder's is 32)
    llama.cpp-q8_0, llama.cpp-q4_0     generators: llama.cpp's own GGUF converter and quantizer, run by
                                       llama-cpp-python where it is installed (see `llama_cpp.py`)

`openvino`, `ort-genai` and `llama.cpp` in `--variants` stand for all of their variants. Peers are built once,
before any timing, into a cache folder keyed by the RUN's weights and config (`--peer-cache`, else the bench's scratch
folder); a peer that cannot be installed, built or loaded stays in the report as failed, with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import MissingDependencyError, first_line
from ..manifest import sha256_file
from .child import run_child
from .machine import cpu_info

logger = logging.getLogger("deployft.bench")


@dataclass(frozen=True)
class Peer:
    """One peer variant: the engine, its group name in `--variants`, the task it serves and its precision."""

    engine: str
    group: str
    task: str
    precision: str
    options: tuple[tuple[str, Any], ...] = ()


PEERS: dict[str, Peer] = {
    "openvino-fp32": Peer("openvino", "openvino", "classify", "fp32"),
    "openvino-int8": Peer("openvino", "openvino", "classify", "int8"),
    "ort-genai-int8": Peer("ort-genai", "ort-genai", "generate", "int8", (("block_size", 32),)),
    "ort-genai-int8-b64": Peer("ort-genai", "ort-genai", "generate", "int8", (("block_size", 64),)),
    "ort-genai-int4": Peer("ort-genai", "ort-genai", "generate", "int4", (("block_size", 32),)),
    "ort-genai-int4-b128": Peer("ort-genai", "ort-genai", "generate", "int4", (("block_size", 128),)),
    "llama.cpp-q8_0": Peer("llama.cpp", "llama.cpp", "generate", "int8"),
    "llama.cpp-q4_0": Peer("llama.cpp", "llama.cpp", "generate", "int4"),
}
GROUPS = tuple(dict.fromkeys(p.group for p in PEERS.values()))
INSTALL = 'pip install "deployft[peers]"'


def is_peer(name: str) -> bool:
    return name in PEERS


def expand(names: tuple[str, ...], task: str) -> list[str]:
    """`--variants` with each group name replaced by its variants for `task` (other names kept, order kept)."""
    out: list[str] = []
    for name in names:
        members = [n for n, p in PEERS.items() if p.group == name and p.task == task] if name in GROUPS else [name]
        out += [m for m in members if m not in out]
    return out


def wrong_task(names: list[str], task: str) -> list[str]:
    """Peer names (or groups) that exist but serve the other task."""
    groups = {p.group for p in PEERS.values() if p.task == task}
    return [n for n in names if (n in PEERS and PEERS[n].task != task) or (n in GROUPS and n not in groups)]


def bf16_hint() -> bool:
    """Whether the CPU has bf16 matmul (AMX or AVX512-BF16), where OpenVINO's bf16 precision hint pays."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_info()["flags"]))


def run_fingerprint(run: Path) -> str:
    """sha256 over the RUN's config.json and its weight files (`exporter.source.weight_files`: single, sharded with
    their index, or PyTorch pickles), each by name and content: the key of a peer built from it."""
    from ..exporter.source import weight_files

    files = sorted({*weight_files(run), Path(run) / "config.json"})
    digest = hashlib.sha256()
    for path in files:
        if path.is_file():
            digest.update(f"{path.name}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def build_peers(names: list[str], run: Path, cache: Path, threads: int) -> dict[str, dict[str, Any]]:
    """Build every peer in `names` from the RUN into `cache` (reused when already built).

    Returns:
        Per peer: `{"path", "build_s", "cached"}` when built, `{"error"}` when it could not be; never raises
        for a peer's own failure, so the report can say why.
    """
    key = run_fingerprint(run)[:12]
    built: dict[str, dict[str, Any]] = {}
    for name in names:
        target = Path(cache) / f"{name}-{key}"
        if (target / "deployft-peer.json").is_file():
            built[name] = {"path": str(target), "build_s": None, "cached": True}
            continue
        builder = _BUILDERS[PEERS[name].engine]
        started = time.perf_counter()
        logger.info("%s: building from %s into %s", name, run, target)
        try:
            builder(name, run, target, threads)
        except Exception as exc:  # noqa: BLE001 - a peer that fails to build is reported, the others go on
            built[name] = {"error": f"build failed: {type(exc).__name__}: {first_line(exc)}"}
            logger.info("%s: %s", name, built[name]["error"])
            continue
        (target / "deployft-peer.json").write_text('{"variant": "%s"}\n' % name, encoding="utf-8")
        built[name] = {"path": str(target), "build_s": time.perf_counter() - started, "cached": False}
    return built


def _openvino(name: str, run: Path, target: Path, threads: int) -> None:
    """optimum-intel in a child process: importing it re-registers optimum's exporters and breaks a later
    `deployft export` (optimum's ONNX task table) in the same process."""
    if importlib.util.find_spec("optimum.intel") is None:
        raise MissingDependencyError(f"optimum-intel is not installed; {INSTALL}")
    entry = "import sys; from deployft.bench.peers import openvino_build; openvino_build(*sys.argv[1:])"
    run_child([sys.executable, "-c", entry, name, str(run), str(target)], f"optimum-intel's export of {name}",
              {"OMP_NUM_THREADS": str(threads)})


def openvino_build(name: str, run: str, target: str) -> None:
    """The child's side of `_openvino`: optimum-intel's fp32 export, or NNCF static int8 of it."""
    from ..telemetry import decline_openvino_telemetry

    decline_openvino_telemetry()  # NNCF and OpenVINO's converter report usage unless the user's consent file says so
    from optimum.intel import OVConfig, OVModelForSequenceClassification, OVQuantizationConfig, OVQuantizer

    model = OVModelForSequenceClassification.from_pretrained(run, export=True, compile=False)
    if PEERS[name].precision == "fp32":
        model.save_pretrained(target)
        return
    dataset = _calibration_dataset(Path(run), [i.get_any_name() for i in model.model.inputs])
    config = OVConfig(quantization_config=OVQuantizationConfig(num_samples=len(dataset)))
    OVQuantizer.from_pretrained(model).quantize(calibration_dataset=dataset, save_directory=target, ov_config=config)


def _calibration_dataset(run: Path, inputs: list[str]):
    """The rows `deployft export --quantize int8-static` calibrates on (`calibration_samples`), one per item."""
    from datasets import Dataset

    from ..exporter.config import ExportConfig
    from ..exporter.samples import calibration_samples
    from ..exporter.source import load_tokenizer, read_source

    source = read_source(run)
    limit = ExportConfig.__dataclass_fields__["calibration_samples"].default
    samples = calibration_samples(source, load_tokenizer(source), limit)
    feeds = {"input_ids": lambda ids: ids, "attention_mask": lambda ids: [1] * len(ids),
             "token_type_ids": lambda ids: [0] * len(ids)}
    return Dataset.from_list([{k: feeds[k](ids) for k in inputs} for ids in samples.sequences])


def _genai(name: str, run: Path, target: Path, threads: int) -> None:
    from .genai_venv import build_genai_model

    options = dict(PEERS[name].options)
    build_genai_model(run, target, PEERS[name].precision, options["block_size"])


def _llama_cpp(name: str, run: Path, target: Path, threads: int) -> None:
    from .llama_cpp import build

    build(name, PEERS[name].precision, run, target, threads)


_BUILDERS: dict[str, Callable[[str, Path, Path, int], None]] = {
    "openvino": _openvino, "ort-genai": _genai, "llama.cpp": _llama_cpp}
