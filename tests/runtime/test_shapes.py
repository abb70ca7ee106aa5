"""Static shapes on the OpenVINO provider: the buckets calls are padded to, the padding itself, the cap on compiled
shapes, and how the Predictor and the bench use them (through the stand-in plugin of `openvino_fakes.py` on every
machine, and through the installed plugin where it offers a device)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from deployft.errors import DeviceError, UsageError
from deployft.manifest import read_manifest
from deployft.runtime import Predictor, SessionOptions
from deployft.runtime.shapes import ShapeSessions, bucket_length, reshape_input
from openvino_fakes import EpDevice, cache_home, fake_plugin, real_openvino_or_skip  # noqa: F401 (fixtures)

TEXTS = ["the film was great", "the plot was dull and the cast was clumsy", "fine"]


@pytest.mark.parametrize("length, max_length, expected", [
    (1, None, 32), (32, None, 32), (33, None, 64), (100, None, 128), (129, None, 192), (200, None, 256),
    (257, None, 384), (33, 48, 48), (50, 48, 50), (128, 128, 128)])
def test_lengths_pad_to_their_bucket_never_past_max_length(length, max_length, expected):
    assert bucket_length(length, max_length) == expected


def test_reshape_input_fixes_every_input():
    assert reshape_input(["input_ids", "attention_mask"], (4, 64)) == "input_ids[4,64],attention_mask[4,64]"


class _Fixed:
    """A session compiled for one shape: refuses any other; returns each row's sums of ids and mask."""

    def __init__(self, shape):
        self.shape, self.seen = shape, []

    def run(self, names, feeds):
        assert all(v.shape == self.shape for v in feeds.values()), (feeds, self.shape)
        self.seen.append(feeds)
        return [np.stack([feeds["input_ids"].sum(1), feeds["attention_mask"].sum(1)], 1), np.zeros(5)]


def _sessions(max_sessions=3):
    built = []

    def build(shape):
        built.append(_Fixed(shape))
        return built[-1]

    return ShapeSessions(build, (1, 32), pad_id=0, max_length=128, max_sessions=max_sessions), built


def test_a_call_is_padded_to_its_length_bucket_with_the_pad_id_and_mask_zero():
    sessions, built = _sessions()
    sessions.pad_id = 7
    ids, mask = np.ones((3, 20), dtype=np.int64), np.ones((3, 20), dtype=np.int64)
    out, other = sessions.run(["logits", "other"], {"input_ids": ids, "attention_mask": mask})
    fed = built[-1].seen[-1]
    assert built[-1].shape == (3, 32) and fed["input_ids"].shape == (3, 32)  # the batch as it came
    assert (fed["input_ids"][:, :20] == 1).all() and (fed["input_ids"][:, 20:] == 7).all()
    assert (fed["attention_mask"][:, :20] == 1).all() and (fed["attention_mask"][:, 20:] == 0).all()
    assert out.shape == (3, 2) and (out[:, 1] == 20).all() and (out[:, 0] == 20 + 12 * 7).all()
    assert other.shape == (5,)


def test_a_call_already_at_its_bucket_is_not_copied():
    sessions, built = _sessions()
    ids = np.arange(64, dtype=np.int64).reshape(2, 32)
    sessions.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert built[-1].shape == (2, 32) and built[-1].seen[-1]["input_ids"] is ids


def _call(sessions, batch: int) -> None:
    ids = np.ones((batch, 10), dtype=np.int64)
    sessions.run(["logits"], {"input_ids": ids, "attention_mask": ids})


def test_the_least_recently_used_shape_is_dropped_past_the_cap_and_the_first_kept():
    sessions, built = _sessions(max_sessions=2)
    for batch in (2, 3, 2, 1, 5):  # (2, 32) used again after (3, 32); (1, 32), compiled at load, is never dropped
        _call(sessions, batch)
    assert sessions.shapes == [(1, 32), (2, 32), (5, 32)]  # (3, 32) was the least recently used
    assert [s.shape for s in built] == [(1, 32), (2, 32), (3, 32), (5, 32)]
    _call(sessions, 3)
    assert len(built) == 5 and sessions.shapes == [(1, 32), (5, 32), (3, 32)]  # dropped, so compiled again
    with pytest.raises(UsageError, match="max_sessions must be at least 1"):
        ShapeSessions(lambda shape: None, (1, 32), pad_id=0, max_sessions=0)


def test_a_shape_being_compiled_holds_up_only_its_own_callers():
    import threading

    release, started = threading.Event(), threading.Event()

    def build(shape):
        if shape == (4, 32):
            started.set()
            assert release.wait(10)
        return _Fixed(shape)

    sessions = ShapeSessions(build, (1, 32), pad_id=0, max_length=128)
    slow = threading.Thread(target=_call, args=(sessions, 4))
    slow.start()
    assert started.wait(10)
    _call(sessions, 1)  # the compiled shape answers while (4, 32) compiles
    _call(sessions, 2)  # and another shape compiles beside it
    assert (4, 32) not in sessions.shapes and (2, 32) in sessions.shapes
    release.set()
    slow.join(10)
    assert (4, 32) in sessions.shapes


def test_a_failed_compile_can_be_tried_again():
    calls = []

    def build(shape):
        calls.append(shape)
        if shape == (2, 32) and len(calls) == 2:
            raise RuntimeError("compile failed")
        return _Fixed(shape)

    sessions = ShapeSessions(build, (1, 32), pad_id=0)
    with pytest.raises(RuntimeError, match="compile failed"):
        _call(sessions, 2)
    _call(sessions, 2)
    assert calls == [(1, 32), (2, 32), (2, 32)] and sessions.shapes == [(1, 32), (2, 32)]


# ---- through the provider (the stand-in plugin) ------------------------------------------------------------------

def test_a_classifier_runs_each_call_on_the_session_compiled_for_its_bucket(fake_plugin, runtime_bundle,
                                                                             cache_home):
    bundle = runtime_bundle("bert")
    predictor = Predictor.load(bundle, provider="openvino", threads=2, static_shapes=True)
    reference = Predictor.load(bundle, threads=2)
    assert predictor.runtime.static_shapes
    ids, mask = reference.codec.pad(reference.codec.encode(TEXTS), side="right")  # batch 3, under 32 tokens
    assert ids.shape[1] < 32
    assert np.allclose(predictor.forward(ids, mask), reference.forward(ids, mask), atol=1e-5)
    assert fake_plugin["runs"][-1]["input_ids"].shape == (3, 32)  # its length padded up to the bucket
    five = np.tile(ids, (2, 1))[:5]
    assert np.allclose(predictor.forward(five, np.ones_like(five)), reference.forward(five, np.ones_like(five)),
                       atol=1e-5)
    assert predictor.session.shapes == [(1, 32), (3, 32), (5, 32)]
    configs = [json.loads(options["load_config"]) for _, options in fake_plugin["added"]]
    assert len(configs) == 3 and all(c == configs[0] for c in configs)  # every shape with the same threads etc.


def test_padded_positions_get_the_tokenizers_pad_id(fake_plugin, runtime_bundle, cache_home, monkeypatch):
    from deployft.runtime.text import TextCodec

    monkeypatch.setattr(TextCodec, "_pad_id", lambda self: 3)
    predictor = Predictor.load(runtime_bundle("bert"), provider="openvino", static_shapes=True)
    assert predictor.session.pad_id == 3
    predictor.forward(np.full((1, 5), 9), np.ones((1, 5)))
    fed = fake_plugin["runs"][-1]
    assert (fed["input_ids"][0, 5:] == 3).all() and (fed["attention_mask"][0, 5:] == 0).all()


def test_static_shapes_are_off_unless_asked_for(fake_plugin, runtime_bundle, cache_home):
    predictor = Predictor.load(runtime_bundle("bert"), provider="openvino")
    (_, options), = fake_plugin["added"]
    assert "reshape_input" not in options and not predictor.runtime.static_shapes
    predictor.predict(TEXTS)
    assert len(fake_plugin["added"]) == 1


def test_a_file_that_cannot_take_fixed_shapes_runs_dynamic_and_says_why(fake_plugin, runtime_bundle, cache_home,
                                                                        caplog):
    fake_plugin["refuse_fixed"] = True
    with caplog.at_level("WARNING", logger="deployft.runtime"):
        predictor = Predictor.load(runtime_bundle("bert"), provider="openvino", static_shapes=True)
    assert not predictor.runtime.static_shapes and predictor.predict(TEXTS)
    assert "cannot be compiled for fixed input shapes" in caplog.text
    assert "Input for tensor name 'input_ids_quantized' is not found" in caplog.text


def test_no_device_is_an_error_never_a_reason_to_try_dynamic_shapes(fake_plugin, runtime_bundle, cache_home,
                                                                     caplog):
    fake_plugin["devices"] = [EpDevice("CPUExecutionProvider", "AMD", 0x1022)]
    with caplog.at_level("WARNING", logger="deployft.runtime"), pytest.raises(DeviceError, match="Intel hardware"):
        Predictor.load(runtime_bundle("bert"), provider="openvino", static_shapes=True)
    assert "fixed input shapes" not in caplog.text and not fake_plugin["added"]


def test_a_generator_cannot_fix_its_shapes(fake_plugin, runtime_bundle, cache_home):
    with pytest.raises(UsageError, match="KV cache grows every step"):
        Predictor.load(runtime_bundle("gpt2"), provider="openvino", static_shapes=True)


def test_static_shapes_need_openvino():
    with pytest.raises(UsageError, match="static_shapes compiles the graph per input shape on OpenVINO"):
        SessionOptions(static_shapes=True)


def test_bench_runs_the_files_with_static_shapes_when_asked(fake_plugin, runtime_bundle, cache_home):
    from deployft.bench.backends import make_backend
    from deployft.bench.config import BenchConfig

    bundle = runtime_bundle("bert")
    manifests = {"run": {"task": "classify"}, "bundle": read_manifest(bundle, "bundle")}
    backend = make_backend("model.onnx", bundle, bundle, manifests, "cpu", 2, "openvino", static_shapes=True)
    backend.load()
    assert backend.details()["static_shapes"] is True
    with pytest.raises(UsageError, match="--static-shapes compiles the graph per input shape on OpenVINO"):
        BenchConfig(run=bundle, bundle=bundle, report=bundle / "r", static_shapes=True)


def test_bench_refuses_static_shapes_for_a_generator(tmp_path, monkeypatch):
    from deployft.bench import BenchConfig, benchmark, runner

    monkeypatch.setattr(runner, "read_pair", lambda config: {"run": {"task": "generate"}, "bundle": {}})
    with pytest.raises(UsageError, match="a generator's KV cache grows every step: drop --static-shapes"):
        benchmark(BenchConfig(run=tmp_path, bundle=tmp_path, report=tmp_path / "r", provider="openvino",
                              static_shapes=True))


def test_bench_flag_and_config_file_both_set_static_shapes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    import deployft.bench as bench_package
    from deployft.cli import main

    seen = []
    monkeypatch.setattr(bench_package, "benchmark", lambda config: seen.append(config.static_shapes) or 1 / 0)
    args = ["bench", "--run", str(tmp_path), "--bundle", str(tmp_path), "--report", str(tmp_path / "r"),
            "--provider", "openvino"]
    config = tmp_path / "bench.json"
    config.write_text(json.dumps({"static_shapes": True}))
    for extra in (["--static-shapes"], ["--config", str(config)], []):
        CliRunner().invoke(main, [*args, *extra])
    assert seen == [True, True, False]


# ---- the installed plugin ----------------------------------------------------------------------------------------

def test_real_plugin_static_shapes_match_dynamic(runtime_bundle, cache_home):
    """The classifier's buckets (padding plus one compiled session per shape) give what the dynamic session gives."""
    real_openvino_or_skip()
    bundle = runtime_bundle("bert")
    static = Predictor.load(bundle, provider="openvino", threads=2, static_shapes=True)
    dynamic = Predictor.load(bundle, provider="openvino", threads=2)
    assert static.runtime.static_shapes and not dynamic.runtime.static_shapes
    tolerance = 1e-4 if static.runtime.precision == "f32" else 3e-2
    ids, mask = static.codec.pad(static.codec.encode(TEXTS), side="right")
    assert np.allclose(static.forward(ids, mask), dynamic.forward(ids, mask), atol=tolerance)
    assert static.session.shapes == [(1, 32), (3, 32)]
