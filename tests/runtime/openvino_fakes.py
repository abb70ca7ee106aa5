"""A stand-in for ONNX Runtime's OpenVINO plugin, shared by the OpenVINO tests.

`fake_plugin` replaces only the plugin's side (registration, its device list, the provider it adds to a session
and where ONNX Runtime says it placed the nodes) and runs the real model on ONNX Runtime's CPU kernels underneath;
a session given `reshape_input` takes only inputs of that shape, as OpenVINO's compiled for it does.
"""

from __future__ import annotations

import types

import pytest

from deployft.runtime import openvino

EP, CPU = "OpenVINOExecutionProvider", "CPUExecutionProvider"


def real_openvino_or_skip() -> None:
    """Skip, with the reason, unless the installed plugin offers a device here (it serves Intel hardware only)."""
    import onnxruntime

    from deployft.errors import DeviceError

    pytest.importorskip("onnxruntime_ep_openvino", reason="the openvino extra is not installed")
    openvino.register(onnxruntime)
    try:
        openvino.cpu_device(onnxruntime)
    except DeviceError as exc:
        pytest.skip(f"the installed plugin offers no device here: {exc}")


class Device:
    def __init__(self, vendor: str, vendor_id: int):
        self.type, self.vendor, self.vendor_id = "OrtHardwareDeviceType.CPU", vendor, vendor_id


class EpDevice:
    def __init__(self, ep_name: str, vendor: str = "Intel", vendor_id: int = 0x8086):
        self.ep_name, self.device = ep_name, Device(vendor, vendor_id)
        self.ep_metadata = {"ov_device": "CPU"} if ep_name == EP else {}


class Subgraph:
    def __init__(self, ep_name: str, nodes: list):
        self.ep_name, self._nodes = ep_name, nodes

    def get_nodes(self):
        return self._nodes


def fixed_shapes(option: str | None) -> dict[str, list[int]] | None:
    """`"a[1,32],b[1,32]"` -> `{"a": [1, 32], "b": [1, 32]}` (the plugin's reshape_input option)."""
    if not option:
        return None
    return {part.split("[")[0]: [int(v) for v in part.split("[")[1].rstrip("]").split(",")]
            for part in option.replace("],", "]|").split("|")}


@pytest.fixture
def fake_plugin(monkeypatch):
    """Install a stand-in plugin; returns the record of what deployft handed it (`added`: devices and options)."""
    import onnxruntime

    record = {"registered": [], "added": [], "runs": [], "places_nodes": True,
              "devices": [EpDevice(EP), EpDevice(CPU)]}
    real_options, real_session = onnxruntime.SessionOptions, onnxruntime.InferenceSession

    class Options(real_options):
        openvino = False
        fixed = None

        def add_provider_for_devices(self, devices, options):
            record["added"].append((devices, options))
            self.openvino = True
            self.fixed = fixed_shapes(options.get("reshape_input"))

    class Session:
        def __init__(self, real, fixed):
            self._real, self._fixed = real, fixed

        def __getattr__(self, name):
            return getattr(self._real, name)

        def run(self, names, feeds):  # a session compiled for fixed shapes takes nothing else, as OpenVINO's
            for name, value in feeds.items():
                if self._fixed and list(value.shape) != self._fixed[name]:
                    raise RuntimeError(f"{name} has shape {list(value.shape)}, compiled for {self._fixed[name]}")
            record["runs"].append({name: value.copy() for name, value in feeds.items()})
            return self._real.run(names, feeds)

        def get_providers(self):
            return [EP, CPU] if record["places_nodes"] else [CPU]

        def get_provider_graph_assignment_info(self):
            nodes = [n for sub in self._real.get_provider_graph_assignment_info() for n in sub.get_nodes()]
            return [Subgraph(EP if record["places_nodes"] else CPU, nodes)]

    def session(path, sess_options=None, providers=None, **kwargs):
        if not getattr(sess_options, "openvino", False):  # a session of another stage (the optimizer): untouched
            return real_session(path, sess_options=sess_options, providers=providers, **kwargs)
        record["disabled_optimizers"] = kwargs.get("disabled_optimizers")
        if sess_options.fixed and record.get("refuse_fixed"):  # as OpenVINO does when it runs part of the graph
            raise RuntimeError("[ONNXRuntimeError] : 11 : EP_FAIL : Exception from src/core/src/model.cpp:758:\n"
                               "Input for tensor name 'input_ids_quantized' is not found.")
        return Session(real_session(path, sess_options=sess_options, providers=[CPU]), sess_options.fixed)

    plugin = types.SimpleNamespace(get_library_path=lambda: "/fake/libonnxruntime_providers_openvino_plugin.so")
    monkeypatch.setattr(openvino, "import_plugin", lambda: plugin)
    monkeypatch.setattr(openvino, "_registered", False)
    monkeypatch.setattr(onnxruntime, "register_execution_provider_library",
                        lambda name, path: record["registered"].append((name, path)))
    monkeypatch.setattr(onnxruntime, "get_ep_devices", lambda: record["devices"])
    monkeypatch.setattr(onnxruntime, "SessionOptions", Options)
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    return record


@pytest.fixture
def cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "deployft" / "openvino"
