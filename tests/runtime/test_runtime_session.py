"""Device selection: CPU, CUDA, auto, and the refusal of a CUDA request that silently fell back to CPU."""

from __future__ import annotations

import numpy as np
import pytest

from deployft.errors import DeviceError, UsageError
from deployft.runtime import Predictor, SessionOptions
from deployft.runtime import session as session_module

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


class _FakeSession:
    """Stands in for an InferenceSession that came up on the given providers."""

    def __init__(self, providers):
        self._providers = providers

    def get_providers(self):
        return self._providers


@pytest.fixture
def fake_ort(monkeypatch):
    """Pretend onnxruntime lists `available` providers and the session comes up on `actual`."""
    import onnxruntime

    def install(available, actual, fail=None):
        """Returns `(providers asked for, session)` of every session built, in order."""
        monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: available)
        built = []

        def build(ort, path, providers, threads):
            if fail and CUDA in providers:
                built.append((providers, None))
                raise RuntimeError(fail)
            built.append((providers, _FakeSession(actual if CUDA in providers else [CPU])))
            return built[-1][1]

        monkeypatch.setattr(session_module, "_build", build)
        return built

    return install


def test_cpu_is_the_default(tmp_path, fake_ort):
    fake_ort([CUDA, CPU], [CUDA, CPU])
    session, runtime = session_module.create_session(tmp_path / "m.onnx", SessionOptions())
    assert runtime.device == "cpu" and runtime.provider == "default" and session.get_providers() == [CPU]


def test_cuda_that_runs(tmp_path, fake_ort):
    fake_ort([CUDA, CPU], [CUDA, CPU])
    _, runtime = session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))
    assert runtime.device == "cuda"


def test_cuda_without_onnxruntime_gpu_names_the_package(tmp_path, fake_ort):
    fake_ort([CPU], [CPU])
    with pytest.raises(DeviceError, match="onnxruntime-gpu is not installed.*deployft\\[gpu\\]"):
        session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))


def test_cuda_silent_fallback_names_the_libraries(tmp_path, fake_ort):
    # onnxruntime-gpu present, but the CUDA provider could not load its libraries: ORT only logs and runs on CPU
    fake_ort([CUDA, CPU], [CPU])
    with pytest.raises(DeviceError, match="runs m.onnx on CPU.*CUDA 13 / cuDNN 9 libraries not found"):
        session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))


def test_cuda_start_failure(tmp_path, fake_ort):
    built = fake_ort([CUDA, CPU], [CUDA, CPU], fail="CUDA failure 100: no CUDA-capable device is detected")
    with pytest.raises(DeviceError, match="could not start CUDA: CUDA failure 100"):
        session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))
    assert [providers for providers, _ in built] == [[CUDA, CPU], [CPU]]  # the file itself loads on the CPU


def test_a_model_no_provider_can_load_is_not_blamed_on_cuda(tmp_path, monkeypatch):
    """A CUDA session that fails because of the file fails on the CPU too: the file's own error goes up."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    built = []

    def build(ort, path, providers, options):
        built.append(providers)
        raise RuntimeError("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from m.onnx failed")

    monkeypatch.setattr(session_module, "_build", build)
    with pytest.raises(RuntimeError, match="INVALID_PROTOBUF") as raised:
        session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))
    assert not isinstance(raised.value, DeviceError) and built == [[CUDA, CPU], [CPU]]


def test_predictor_load_of_a_broken_model_on_cuda_is_a_bundle_error(runtime_bundle, tmp_path, monkeypatch):
    import shutil

    import onnxruntime

    from deployft.errors import BundleError
    from deployft.manifest import file_table, read_manifest, write_manifest

    bundle = shutil.copytree(runtime_bundle("bert"), tmp_path / "b")
    (bundle / "model.onnx").write_bytes(b"not an onnx file")
    write_manifest(bundle, {**read_manifest(bundle, "bundle"), "files": file_table(bundle)})
    real = onnxruntime.get_available_providers()
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, *real])  # a GPU build, as it says
    for device in ("cpu", "cuda"):
        with pytest.raises(BundleError, match="ONNX Runtime cannot load model file model.onnx"):
            Predictor.load(bundle, device=device)


@pytest.mark.parametrize("available, actual, fail, expected", [
    ([CUDA, CPU], [CUDA, CPU], None, "cuda"),
    ([CPU], [CPU], None, "cpu"),
    ([CUDA, CPU], [CPU], None, "cpu"),
    ([CUDA, CPU], [CUDA, CPU], "no device", "cpu"),
])
def test_auto_picks_what_really_runs_and_says_so(tmp_path, fake_ort, caplog, available, actual, fail, expected):
    built = fake_ort(available, actual, fail)
    with caplog.at_level("INFO", logger="deployft.runtime"):
        session, runtime = session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="auto"))
    assert runtime.device == expected
    # a CPU answer comes from a session built for the CPU alone (its graph settings), not a CUDA one that fell back
    assert built[-1] == ([CUDA, CPU] if expected == "cuda" else [CPU], session)
    assert ("on CUDA" if expected == "cuda" else "running on CPU") in caplog.text


def _residual_layer_norm(path):
    """A residual Add feeding a LayerNormalization, in the 3-D shapes ONNX Runtime fuses into SkipLayerNormalization."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims = ["batch", 8, 16]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("x", "skip")]
    weights = [numpy_helper.from_array(np.full(16, v, np.float32), n) for n, v in (("gamma", 1.5), ("beta", 0.5))]
    nodes = [helper.make_node("Add", ["x", "skip"], ["sum"]),
             helper.make_node("LayerNormalization", ["sum", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-5)]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
                              weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _optimized_ops(monkeypatch, tmp_path, make):
    """The op types of the graph ONNX Runtime really runs in the session `make()` builds, and the session."""
    import onnx
    import onnxruntime

    real, written = onnxruntime.InferenceSession, tmp_path / "optimized.onnx"

    def keep_optimized_graph(path, sess_options=None, **kwargs):
        sess_options.optimized_model_filepath = str(written)
        return real(path, sess_options=sess_options, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", keep_optimized_graph)
    session = make()
    return [n.op_type for n in onnx.load(str(written)).graph.node], session


def test_cpu_sessions_keep_residual_add_and_layer_norm_apart(tmp_path, monkeypatch):
    import onnxruntime

    model = _residual_layer_norm(tmp_path / "m.onnx")
    ops, (session, _) = _optimized_ops(monkeypatch, tmp_path, lambda: session_module.create_session(
        model, SessionOptions(threads=1)))
    assert ops == ["Add", "LayerNormalization"]
    x, skip = (np.random.default_rng(i).standard_normal((2, 8, 16)).astype(np.float32) for i in (0, 1))
    total = x + skip
    expected = (total - total.mean(-1, keepdims=True)) / np.sqrt(total.var(-1, keepdims=True) + 1e-5) * 1.5 + 0.5
    np.testing.assert_allclose(session.run(None, {"x": x, "skip": skip})[0], expected, atol=1e-5)
    # what the setting prevents: ONNX Runtime's own session fuses the pair
    default, _ = _optimized_ops(monkeypatch, tmp_path, lambda: onnxruntime.InferenceSession(
        str(model), sess_options=onnxruntime.SessionOptions(), providers=[CPU]))
    assert default == ["SkipLayerNormalization"]


def test_cuda_sessions_leave_onnx_runtime_its_fusions(tmp_path, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    seen = []

    def session(path, sess_options=None, providers=None, disabled_optimizers=None):
        seen.append((providers, disabled_optimizers))
        return _FakeSession(providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cuda"))
    session_module.create_session(tmp_path / "m.onnx", SessionOptions(device="cpu"))
    assert seen == [([CUDA, CPU], None), ([CPU], list(session_module.CPU_DISABLED_OPTIMIZERS))]


def test_predictor_load_refuses_fallback(runtime_bundle, fake_ort):
    fake_ort([CPU], [CPU])
    with pytest.raises(DeviceError, match="onnxruntime-gpu"):
        Predictor.load(runtime_bundle("bert"), device="cuda")


def test_auto_on_this_machine_reports_the_real_device(runtime_bundle):
    import onnxruntime

    predictor = Predictor.load(runtime_bundle("bert"), device="auto")
    expected = "cuda" if CUDA in onnxruntime.get_available_providers() else "cpu"
    assert predictor.device == expected
    assert (CUDA in predictor.providers) == (expected == "cuda")


@pytest.mark.parametrize("kwargs", [{"device": "gpu"}, {"threads": 0}, {"threads": 1.5}, {"threads": True},
                                    {"provider": "tensorrt"}, {"provider": "openvino", "device": "cuda"}])
def test_session_options_validate(kwargs):
    with pytest.raises(UsageError):
        SessionOptions(**kwargs)


def _cuda_or_skip():
    import onnxruntime

    if CUDA not in onnxruntime.get_available_providers():
        pytest.skip("CUDAExecutionProvider is not available (onnxruntime-gpu and a CUDA device are needed)")


@pytest.mark.gpu
def test_cuda_classification_matches_cpu(runtime_bundle):
    _cuda_or_skip()
    cpu, cuda = Predictor.load(runtime_bundle("bert")), Predictor.load(runtime_bundle("bert"), device="cuda")
    assert cuda.device == "cuda"
    texts = ["the film was great", "the plot was dull and the cast was clumsy"]
    for a, b in zip(cpu.predict(texts), cuda.predict(texts)):
        assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cuda_generation_keeps_cache_on_device_and_matches_cpu(runtime_bundle, arch):
    _cuda_or_skip()
    cpu, cuda = Predictor.load(runtime_bundle(arch)), Predictor.load(runtime_bundle(arch), device="cuda")
    prompts = ["what color is the sky", "what do bees make"]
    assert cuda.generate(prompts, max_new_tokens=12) == cpu.generate(prompts, max_new_tokens=12)
    ids, mask = cuda.codec.pad([cuda.prompt_ids(prompts[0])])
    logits, present = cuda.decoder.step(ids, mask, np.arange(ids.shape[1])[None], None)
    assert logits.shape[0] == 1
    assert all(value.device_name() == "cuda" for value in present)
    _, longer = cuda.decoder.step(logits.argmax(-1)[:, None], np.ones((1, ids.shape[1] + 1), np.int64),
                                  np.array([[ids.shape[1]]]), present)
    assert longer[0].shape()[2] == ids.shape[1] + 1 and longer[0].device_name() == "cuda"
