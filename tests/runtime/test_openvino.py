"""`provider="openvino"`: the plugin's registration, its options, the file it runs, and the refusals.

Two layers of tests. `fake_plugin` replaces only the plugin's side (registration, its device list, the provider it
adds to a session and where ONNX Runtime says it placed the nodes) and runs the real model on ONNX Runtime's CPU
kernels underneath, so what deployft does around the provider is tested on every machine. The `real` tests run the
installed plugin and skip, with the reason, where it offers no device (it serves Intel hardware only).
"""

from __future__ import annotations

import json
import shutil
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

from deployft.cli import main
from deployft.errors import BundleError, DeviceError, MissingDependencyError, UsageError
from deployft.manifest import read_manifest, write_manifest
from deployft.runtime import Predictor, SessionOptions
from deployft.runtime import openvino
from deployft.runtime import session as session_module
from deployft.runtime.session import create_session
from openvino_fakes import CPU, EP, EpDevice, Subgraph, cache_home, fake_plugin, real_openvino_or_skip  # noqa: F401 (fixtures)

TEXTS = ["the film was great", "the plot was dull and the cast was clumsy", "fine"]


def test_missing_plugin_names_the_extra(monkeypatch, runtime_bundle):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "deployft\[openvino\]"'):
        Predictor.load(runtime_bundle("bert"), provider="openvino")


def test_missing_plugin_is_one_error_line_in_the_cli(monkeypatch, runtime_bundle):
    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    result = CliRunner().invoke(main, ["predict", str(runtime_bundle("bert")), "fine", "--provider", "openvino"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and 'pip install "deployft[openvino]"' in errors[0]
    assert "Traceback" not in result.output


def test_no_intel_device_is_refused_with_the_vendor(fake_plugin, runtime_bundle, cache_home):
    fake_plugin["devices"] = [EpDevice(CPU, "AMD", 0x1022)]
    with pytest.raises(DeviceError, match=r"Intel hardware only.*AMD \(0x1022\).*--provider default"):
        Predictor.load(runtime_bundle("bert"), provider="openvino")


def test_a_session_where_openvino_runs_nothing_is_refused(fake_plugin, runtime_bundle, cache_home):
    fake_plugin["places_nodes"] = False
    with pytest.raises(DeviceError, match="placed no node of model.onnx"):
        Predictor.load(runtime_bundle("bert"), provider="openvino")


def test_a_file_openvino_cannot_compile_is_a_provider_error(fake_plugin, tmp_path, cache_home):
    broken = tmp_path / "model.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(DeviceError, match="provider openvino could not compile model.onnx.*--provider default"):
        create_session(broken, SessionOptions(provider="openvino"))


def test_threads_precision_and_cache_go_through_load_config(fake_plugin, runtime_bundle, cache_home):
    predictor = Predictor.load(runtime_bundle("bert"), provider="openvino", threads=2)
    assert fake_plugin["registered"] == [(openvino.REGISTRATION, "/fake/libonnxruntime_providers_openvino_plugin.so")]
    (devices, options), = fake_plugin["added"]
    assert [d.ep_name for d in devices] == [EP]
    assert list(options) == ["load_config"]  # the plugin ignores num_of_threads, precision and cache_dir options
    config = json.loads(options["load_config"])["CPU"]
    assert config == {"INFERENCE_NUM_THREADS": "2", "INFERENCE_PRECISION_HINT": openvino.cpu_precision(),
                      "CACHE_DIR": str(cache_home)}
    assert cache_home.is_dir()
    run = predictor.runtime
    assert (run.provider, run.device, run.threads, run.precision) == ("openvino", "cpu", 2, openvino.cpu_precision())
    assert run.nodes[EP] > 0 and "provider='openvino'" in repr(predictor)
    # nodes OpenVINO declines run on ONNX Runtime's CPU kernels, so the CPU's graph settings hold here too
    assert fake_plugin["disabled_optimizers"] == list(session_module.CPU_DISABLED_OPTIMIZERS)


def test_cache_can_be_turned_off(fake_plugin, runtime_bundle, cache_home):
    _, runtime = create_session(runtime_bundle("bert") / "model.onnx",
                                SessionOptions(provider="openvino", cache=False))
    (_, options), = fake_plugin["added"]
    assert "CACHE_DIR" not in options["load_config"] and runtime.cache_dir is None and not cache_home.exists()


def test_registers_the_plugin_once(fake_plugin, runtime_bundle, cache_home):
    for _ in range(2):
        Predictor.load(runtime_bundle("bert"), provider="openvino")
    assert len(fake_plugin["registered"]) == 1


def test_nodes_left_to_other_providers_are_logged(caplog):
    class Session:
        def get_providers(self):
            return [EP, CPU]

        def get_provider_graph_assignment_info(self):
            return [Subgraph(EP, ["a", "b", "c"]), Subgraph(CPU, ["d"])]

    with caplog.at_level("WARNING", logger="deployft.runtime"):
        assert openvino.check_placement(Session(), "m.onnx") == {EP: 3, CPU: 1}
    assert "OpenVINO runs 3 nodes of m.onnx; 1 stay on CPUExecutionProvider" in caplog.text


@pytest.mark.parametrize("flags, expected", [("fpu avx2 fma", "f32"), ("avx512f avx512_bf16", "bf16"),
                                             ("amx_tile amx_bf16 amx_int8", "bf16")])
def test_precision_follows_the_cpu(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    assert openvino.cpu_precision(cpuinfo) == expected


def _dynamic_int8_bundle(runtime_bundle, tmp_path, keep_fp32: bool = True):
    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "bundle")
    manifest = read_manifest(bundle, "bundle")
    manifest["model_file"] = "model_int8.onnx"
    manifest["variants"]["model_int8.onnx"]["ops"] = {"DynamicQuantizeLinear": 4, "MatMulInteger": 8}
    if not keep_fp32:
        del manifest["variants"]["model.onnx"]
    write_manifest(bundle, {k: v for k, v in manifest.items() if k != "manifest_sha256"})
    return bundle


def test_dynamic_int8_deployable_is_swapped_for_fp32_and_said(fake_plugin, runtime_bundle, tmp_path, cache_home,
                                                              caplog):
    bundle = _dynamic_int8_bundle(runtime_bundle, tmp_path)
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        predictor = Predictor.load(bundle, provider="openvino")
    assert predictor.model_file == "model.onnx"
    assert "model_int8.onnx is dynamic int8" in predictor.file_choice and predictor.file_choice in caplog.text
    kept = Predictor.load(bundle, provider="openvino", model_file="model_int8.onnx")
    assert kept.model_file == "model_int8.onnx" and kept.file_choice is None
    assert Predictor.load(bundle).model_file == "model_int8.onnx"


def test_dynamic_int8_without_fp32_names_model_file(runtime_bundle, tmp_path):
    bundle = _dynamic_int8_bundle(runtime_bundle, tmp_path, keep_fp32=False)
    with pytest.raises(BundleError, match="--model-file model_int8.onnx"):
        Predictor.load(bundle, provider="openvino")


def test_pick_prefers_the_fused_fp32_file():
    manifest = {"model_file": "q.onnx", "variants": {
        "model.onnx": {"precision": "fp32", "optimized": False},
        "model_optimized.onnx": {"precision": "fp32", "optimized": True},
        "q.onnx": {"precision": "int8", "ops": {"DynamicQuantizeLinear": 1}}}}
    assert openvino.pick_model_file(manifest, None)[0] == "model_optimized.onnx"
    static = {"model_file": "s.onnx", "variants": {"s.onnx": {"precision": "int8", "ops": {"QuantizeLinear": 3}}}}
    assert openvino.pick_model_file(static, None) == (None, None)


def test_cli_predict_through_openvino(fake_plugin, runtime_bundle, cache_home):
    bundle = runtime_bundle("bert")
    result = CliRunner().invoke(main, ["predict", str(bundle), *TEXTS, "--provider", "openvino", "--threads", "2",
                                       "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    expected = Predictor.load(bundle).predict(TEXTS)
    assert [r["label"] for r in rows] == [p.label for p in expected]
    assert "provider openvino: model.onnx, precision" in result.output


def test_export_validates_every_file_through_openvino_and_records_it(fake_plugin, tiny_run, tmp_path, cache_home):
    from deployft.exporter import ExportConfig, export

    bundle = export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "bundle", validate_samples=16,
                                 max_accuracy_drop=100.0, provider="openvino"))
    validation = read_manifest(bundle, "bundle")["validation"]
    assert set(validation) == {"model.onnx", "model_optimized.onnx"}
    for report in validation.values():
        assert (report["provider"], report["precision"]) == ("openvino", openvino.cpu_precision())
    assert len(fake_plugin["added"]) == len(validation)
    assert f"Validated through ONNX Runtime's openvino provider ({openvino.cpu_precision()})." in \
        (bundle / "README.md").read_text()


def test_export_records_the_default_provider(tiny_run, tmp_path):
    from deployft.exporter import ExportConfig, export

    bundle = export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "bundle", validate_samples=16,
                                 max_accuracy_drop=100.0))
    assert {r["provider"] for r in read_manifest(bundle, "bundle")["validation"].values()} == {"default"}


def test_bench_backend_loads_the_named_file_through_openvino(fake_plugin, runtime_bundle, cache_home):
    from deployft.bench.backends import make_backend

    bundle = runtime_bundle("bert")
    manifests = {"bundle": read_manifest(bundle, "bundle")}
    backend = make_backend("model_int8.onnx", bundle, bundle, manifests, "cpu", 2, "openvino")
    backend.load()
    assert backend.predictor.runtime.provider == "openvino" and backend.predictor.model_file == "model_int8.onnx"


def test_serve_runs_openvino_and_says_so(fake_plugin, runtime_bundle, cache_home):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deployft.serve import create_app

    with TestClient(create_app(runtime_bundle("bert"), provider="openvino", threads=2)) as client:
        deadline = time.time() + 60
        while client.get("/ready").status_code != 200:
            assert time.time() < deadline, "the app never became ready"
            time.sleep(0.05)
        assert client.get("/ready").json()["provider"] == "openvino"
        assert client.post("/predict", json={"inputs": TEXTS[0]}).status_code == 200


def test_ray_predict_names_the_missing_plugin_before_any_worker(monkeypatch, runtime_bundle, tmp_path):
    from deployft.runtime.ray_predict import RayPredictConfig

    monkeypatch.setitem(sys.modules, "onnxruntime_ep_openvino", None)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "fine"}\n')
    with pytest.raises(MissingDependencyError, match=r'deployft\[openvino\]'):
        RayPredictConfig(bundle=runtime_bundle("bert"), input=rows, output=tmp_path / "out", provider="openvino")
    with pytest.raises(UsageError, match="provider must be one of"):
        RayPredictConfig(bundle=runtime_bundle("bert"), input=rows, output=tmp_path / "out", provider="tensorrt")


@pytest.mark.parametrize("command", ["predict", "bench", "serve", "export"])
def test_every_command_offers_the_provider(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0 and "--provider" in result.output


def test_configs_refuse_openvino_on_cuda(tmp_path):
    from deployft.bench.config import BenchConfig
    from deployft.exporter import ExportConfig

    with pytest.raises(UsageError, match="--provider openvino runs on the CPU"):
        ExportConfig(run=tmp_path, output=tmp_path / "b", device="cuda", quantize="fp16", provider="openvino")
    with pytest.raises(UsageError, match="--provider openvino runs on the CPU"):
        BenchConfig(run=tmp_path, bundle=tmp_path, report=tmp_path / "r", device="cuda", provider="openvino")
    with pytest.raises(UsageError, match="--provider"):
        ExportConfig(run=tmp_path, output=tmp_path / "b", provider="tensorrt")


# ---- the installed plugin ---------------------------------------------------------------------------------------

def test_real_plugin_refuses_or_runs_honestly(runtime_bundle, cache_home):
    """Where the plugin has no device (an AMD CPU) the load is refused; elsewhere OpenVINO really places the nodes."""
    import onnxruntime

    pytest.importorskip("onnxruntime_ep_openvino", reason='the openvino extra is not installed')
    openvino.register(onnxruntime)
    try:
        openvino.cpu_device(onnxruntime)
    except DeviceError:
        with pytest.raises(DeviceError, match="Intel hardware only"):
            Predictor.load(runtime_bundle("bert"), provider="openvino")
        return
    predictor = Predictor.load(runtime_bundle("bert"), provider="openvino")
    assert EP in predictor.providers and predictor.runtime.nodes[EP] > 0


def test_real_plugin_matches_the_cpu_provider(runtime_bundle, cache_home):
    """OpenVINO's kernels sum in another order than ONNX Runtime's: in f32 the probabilities of the tiny classifier
    agree to 1e-4; with bf16 (8 mantissa bits, on CPUs with AMX or AVX512-BF16) to 3e-2, and the labels agree."""
    real_openvino_or_skip()
    bundle = runtime_bundle("bert")
    cpu = Predictor.load(bundle, threads=2)
    ov = Predictor.load(bundle, provider="openvino", threads=2)
    tolerance = 1e-4 if ov.runtime.precision == "f32" else 3e-2
    ids, mask = cpu.codec.pad(cpu.codec.encode(TEXTS), side="right")
    assert np.allclose(cpu.forward(ids, mask), ov.forward(ids, mask), atol=tolerance)
    for a, b in zip(cpu.predict(TEXTS), ov.predict(TEXTS)):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=tolerance)


def test_export_int8_static_for_openvino_quantizes_with_nncf_and_runs_that_file(fake_plugin, tiny_run, tmp_path,
                                                                               cache_home, caplog):
    pytest.importorskip("nncf", reason='NNCF is not installed (pip install "deployft[openvino-export]")')
    from deployft.exporter import ExportConfig, export

    bundle = export(ExportConfig(run=tiny_run("bert"), output=tmp_path / "bundle", quantize="int8-static",
                                 provider="openvino", validate_samples=16, calibration_samples=8,
                                 max_accuracy_drop=100.0))
    manifest = read_manifest(bundle, "bundle")
    assert manifest["model_file"] == "model_int8_static.onnx" and manifest["quantization"]["quantizer"] == "nncf"
    assert manifest["variants"]["model_int8_static.onnx"]["validation"]["provider"] == "openvino"
    assert "by NNCF (OpenVINO's quantizer" in (bundle / "README.md").read_text()
    predictor = Predictor.load(bundle, provider="openvino")
    assert predictor.model_file == "model_int8_static.onnx" and predictor.file_choice is None
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        Predictor.load(bundle)  # the default provider runs it too, and says it was made for OpenVINO
    assert "quantized by NNCF for the OpenVINO provider" in caplog.text and "--provider openvino" in caplog.text
