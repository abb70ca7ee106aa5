"""ONNX Runtime's OpenVINO execution provider, loaded as a plugin into the stock onnxruntime.

The plugin package `onnxruntime-ep-openvino` ships the provider as a shared library that ONNX Runtime (1.23+)
loads with `register_execution_provider_library`; the provider then lists its devices in `get_ep_devices()` and a
session takes one with `SessionOptions.add_provider_for_devices`. Facts this module builds on:

- the plugin ignores the `precision`, `num_of_threads` and `cache_dir` provider options (its library says to set
  them through `load_config`): threads, inference precision and the model cache go there, under OpenVINO's own
  property names, explicitly, and are reported;
- it defaults to bf16 where the CPU has AMX; deployft asks for bf16 only where the CPU has bf16 instructions
  (AMX or AVX512-BF16) and f32 elsewhere, and says which it asked for;
- it offers devices for Intel hardware only (vendor id 0x8086): on an AMD CPU it lists none, which is an error here,
  never a silent CPU run;
- it does not speed up dynamic int8 (DynamicQuantizeLinear), so `pick_model_file` hands it the fused fp32 file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from ..errors import BundleError, DeviceError, MissingDependencyError, first_line

logger = logging.getLogger("deployft.runtime")

EP = "OpenVINOExecutionProvider"
INSTALL = 'pip install "deployft[openvino]"'
REGISTRATION = "deployft-openvino"
INTEL = 0x8086
RECORD_PLACEMENT = "session.record_ep_graph_assignment_info"
"""Session config key that makes ONNX Runtime record which provider runs each node."""
BF16_FLAGS = ("amx_bf16", "avx512_bf16")

_lock = threading.Lock()
_registered = False


def import_plugin():
    """Import the plugin package, or say how to install it."""
    try:
        import onnxruntime_ep_openvino
    except ImportError as exc:
        raise MissingDependencyError(
            f"provider openvino asked for but the OpenVINO execution provider plugin (onnxruntime-ep-openvino) "
            f"is not installed; install it with: {INSTALL}, or pass --provider default") from exc
    return onnxruntime_ep_openvino


def register(ort) -> None:
    """Load the plugin library into ONNX Runtime once per process."""
    global _registered
    plugin = import_plugin()
    with _lock:
        if _registered:
            return
        try:
            ort.register_execution_provider_library(REGISTRATION, plugin.get_library_path())
        except Exception as exc:  # ORT raises its own types; a second registration of the same name is harmless
            if "already registered" not in str(exc):
                raise DeviceError(f"provider openvino asked for but ONNX Runtime could not load the plugin: "
                                  f"{first_line(exc)}; reinstall it with: {INSTALL}") from exc
        _registered = True


def cpu_device(ort):
    """The plugin's OpenVINO CPU device, or a DeviceError that says why there is none."""
    ep_devices = list(ort.get_ep_devices())
    ours = [d for d in ep_devices if d.ep_name == EP and d.ep_metadata.get("ov_device", "CPU") == "CPU"]
    if ours:
        return ours[0]
    cpus = [d.device for d in ep_devices if str(d.device.type).endswith("CPU")]
    found = f"this CPU's vendor is {cpus[0].vendor} ({cpus[0].vendor_id:#06x})" if cpus else "no CPU was listed"
    raise DeviceError(f"provider openvino asked for but the OpenVINO plugin offers no CPU device on this machine: "
                      f"it serves Intel hardware only (vendor id {INTEL:#06x}) and {found}; pass --provider default")


def cpu_precision(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """`bf16` where the CPU has bf16 instructions (AMX or AVX512-BF16), else `f32`."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return "f32"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "bf16" if any(flag in flags for flag in BF16_FLAGS) else "f32"


def default_cache_dir() -> Path:
    """Where compiled OpenVINO models are kept: $XDG_CACHE_HOME/deployft/openvino or ~/.cache/deployft/openvino."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "deployft" / "openvino"


def provider_options(threads: int | None, precision: str, cache_dir: Path | None) -> dict[str, str]:
    """The plugin's options: threads, precision and the model cache, all through `load_config`."""
    config = {"INFERENCE_PRECISION_HINT": precision}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = str(threads)
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return {"load_config": json.dumps({"CPU": config})}


def add_to(ort, settings, threads: int | None, cache_dir: Path | None, extra: dict[str, str] | None = None) -> None:
    """Put the OpenVINO CPU device on `settings` (an `ort.SessionOptions`), asking for `cpu_precision()`, with the
    plugin's `extra` options (e.g. `reshape_input`)."""
    register(ort)
    device = cpu_device(ort)
    precision = cpu_precision()
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
    settings.add_session_config_entry(RECORD_PLACEMENT, "1")
    settings.add_provider_for_devices([device], {**provider_options(threads, precision, cache_dir), **(extra or {})})


def placement(session) -> dict[str, int]:
    """Nodes per execution provider, as ONNX Runtime recorded them when it built the session."""
    counts: dict[str, int] = {}
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] = counts.get(subgraph.ep_name, 0) + len(subgraph.get_nodes())
    return counts


def check_placement(session, model_name: str) -> dict[str, int]:
    """Refuse a session where OpenVINO runs no node; log the nodes left to other providers."""
    counts = placement(session)
    ours = counts.get(EP, 0)
    if EP not in session.get_providers() or ours == 0:
        raise DeviceError(f"provider openvino asked for but ONNX Runtime placed no node of {model_name} on it "
                          f"(nodes per provider: {counts or 'none recorded'}); pass --provider default")
    others = sum(counts.values()) - ours
    if others:
        logger.warning("OpenVINO runs %d nodes of %s; %d stay on %s", ours, model_name, others,
                       ", ".join(sorted(k for k in counts if k != EP)))
    return counts


def pick_model_file(manifest: dict, model_file: str | None) -> tuple[str | None, str | None]:
    """The file the OpenVINO provider should run and why, when it differs from the default choice.

    Returns `(model_file, reason)`: an explicit `model_file` is kept as given; a deployable file with dynamic int8
    (DynamicQuantizeLinear, which the provider does not accelerate) is swapped for the bundle's fused fp32 file.

    Raises:
        BundleError: the deployable file is dynamic int8 and the bundle has no fp32 file to run instead.
    """
    variants = manifest.get("variants") or {}
    deployable = manifest.get("model_file") or "model.onnx"
    if model_file is not None or not variants.get(deployable, {}).get("ops", {}).get("DynamicQuantizeLinear"):
        return model_file, None
    fp32 = [name for name, v in variants.items() if v.get("precision") == "fp32"]
    if not fp32:
        raise BundleError(f"the deployable file {deployable} is dynamic int8, which the OpenVINO provider does not "
                          f"accelerate, and the bundle keeps no fp32 file; pass --model-file {deployable} "
                          "to run it anyway")
    chosen = max(fp32, key=lambda name: bool(variants[name].get("optimized")))
    return chosen, (f"{deployable} is dynamic int8 (DynamicQuantizeLinear), which OpenVINO does not accelerate; "
                    f"running {chosen} instead (pass --model-file {deployable} to keep it)")
