"""The serve app on Ray Serve: the openai client against replicas, a classifier, `deployft serve --ray`, bad input."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from deployft.cli import main
from deployft.serve.config import ServeConfig
from deployft.serve.ray_app import RayScale, build_app

CHAT = [{"role": "user", "content": "what is the capital of france"}]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ray_serve():
    """One local Ray instance for the module (2 CPUs, no dashboard) with Serve's proxy on a free port."""
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    pytest.importorskip("openai")
    from live_server import free_port

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield serve, port
    serve.shutdown()
    ray.shutdown()


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.time() < deadline, "the Ray Serve app never became ready"
        time.sleep(0.2)


def _replicas(serve) -> int:
    deployment = serve.status().applications["deployft"].deployments["deployft"]
    return deployment.replica_states.get("RUNNING", 0)


@pytest.mark.slow
def test_the_openai_client_against_two_replicas_of_a_generator(ray_serve, runtime_bundle):
    import openai

    from deployft.runtime import Predictor

    serve, port = ray_serve
    bundle = runtime_bundle("llama")
    app = build_app({"bundle": str(bundle), "model_name": "tiny", "threads": "1", "replicas": "2"})
    serve.run(app, name="deployft", route_prefix="/")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        assert _replicas(serve) == 2
        predictor = Predictor.load(bundle)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == ["tiny"]
        chat = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0)
        assert chat.choices[0].message.content == predictor.generate(CHAT, max_new_tokens=16)
        stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0,
                                                stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) \
            == chat.choices[0].message.content
        for prompt in ("bees", "where do fish live", "cat"):  # requests spread over both replicas
            completion = client.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
            assert completion.choices[0].text == predictor.generate(prompt, max_new_tokens=8)
    finally:
        serve.delete("deployft")


@pytest.mark.slow
def test_a_classifier_request_on_an_autoscaled_deployment(ray_serve, runtime_bundle):
    import httpx

    from deployft.runtime import Predictor
    from deployft.serve.ray_app import application

    serve, port = ray_serve
    bundle = runtime_bundle("bert")
    app = application(ServeConfig(bundle=bundle, threads=1), RayScale(min_replicas=1, max_replicas=2))
    serve.run(app, name="deployft", route_prefix="/")
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        assert _replicas(serve) == 1
        texts = ["the film was great", "the plot was dull"]
        answer = httpx.post(url + "/predict", json={"inputs": texts}, timeout=30)
        assert answer.status_code == 200, answer.text
        expected = Predictor.load(bundle).predict(texts)
        assert [ranked[0]["label"] for ranked in answer.json()] == [p.label for p in expected]
        assert [ranked[0]["score"] for ranked in answer.json()] == pytest.approx([p.score for p in expected],
                                                                                abs=1e-5)
    finally:
        serve.delete("deployft")


@pytest.mark.slow
def test_deployft_serve_ray_joins_a_cluster_and_leaves_on_sigterm(ray_serve, runtime_bundle):
    import httpx
    import ray

    serve, port = ray_serve
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DEPLOYFT_API_KEY", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "deployft", "serve", str(runtime_bundle("bert")), "--ray", "--replicas", "1",
         "--threads", "1", "--port", str(port), "--ray-address", ray.get_runtime_context().gcs_address],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", timeout=90)
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", json={"inputs": "a warm film"}, timeout=30)
        assert answer.status_code == 200 and len(answer.json()) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, process.stdout.read()
        assert "deployft" not in serve.status().applications
    finally:
        if process.poll() is None:
            process.kill()


@pytest.mark.parametrize("scale, message", [
    ({"replicas": 0}, "replicas must be an integer >= 1"),
    ({"replicas": 2, "max_replicas": 4}, "pass one or the other"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas (3) is above max_replicas (2)"),
])
def test_bad_replica_settings(scale, message):
    from deployft.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(message)):
        RayScale(**scale)


def test_replica_options_for_ray_serve(tmp_path):
    config = ServeConfig(bundle=tmp_path, threads=2, max_batch_size=8, max_queue=100, grace_s=5)
    assert RayScale(replicas=3).deployment_options(config) == {
        "num_replicas": 3, "ray_actor_options": {"num_cpus": 2}, "max_ongoing_requests": 108,
        "graceful_shutdown_timeout_s": 5}
    options = RayScale(max_replicas=4).deployment_options(ServeConfig(bundle=tmp_path))
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1}
    assert options["ray_actor_options"] == {"num_cpus": 1}


def test_build_app_arguments_are_checked(tmp_path):
    from deployft.errors import UsageError

    with pytest.raises(UsageError, match="build_app needs bundle=PATH"):
        build_app({})
    with pytest.raises(UsageError, match="unknown argument.* colour"):
        build_app({"bundle": str(tmp_path), "colour": "red"})
    with pytest.raises(UsageError, match="option max_batch_size must be a whole number, got 'many'"):
        build_app({"bundle": str(tmp_path), "max_batch_size": "many"})
    with pytest.raises(UsageError, match=r"^build_app arguments: option prefix_cache_mb must be a whole number, got "
                                         r"'1.5' \(str\); e.g. prefix_cache_mb=128$"):
        build_app({"bundle": str(tmp_path), "prefix_cache_mb": "1.5"})
    with pytest.raises(UsageError, match="option replicas must be a whole number or null, got 'two'"):
        build_app({"bundle": str(tmp_path), "replicas": "two"})


def test_ray_flags_without_ray_and_ray_without_ray_installed(tmp_path, monkeypatch):
    result = CliRunner().invoke(main, ["serve", str(tmp_path), "--replicas", "2"])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: --replicas: only used with --ray; add --ray or leave them out"
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = CliRunner().invoke(main, ["serve", str(tmp_path / "any"), "--ray"])
    assert result.exit_code == 1
    assert result.output.strip() == 'Error: ray is not installed; install it with: pip install "deployft[ray]"'


def test_the_app_for_serve_run_comes_from_the_environment(runtime_bundle, tmp_path, monkeypatch):
    serve = pytest.importorskip("ray.serve")
    from deployft.errors import BundleError, UsageError
    from deployft.serve import ray_app

    monkeypatch.delenv("DEPLOYFT_BUNDLE", raising=False)
    with pytest.raises(UsageError, match="DEPLOYFT_BUNDLE is not set"):
        ray_app.app
    monkeypatch.setenv("DEPLOYFT_BUNDLE", str(runtime_bundle("bert")))
    assert isinstance(ray_app.app, serve.Application)
    monkeypatch.setenv("DEPLOYFT_BUNDLE", str(tmp_path))  # checked before any replica tries to load it
    with pytest.raises(BundleError, match="deployft.json"):
        ray_app.app


@pytest.mark.parametrize("host,key,warned", [("0.0.0.0", None, True), ("0.0.0.0", "k" * 8, False),
                                             ("127.0.0.1", None, False)])
def test_a_server_open_to_the_network_without_a_key_is_warned_about(tmp_path, caplog, monkeypatch, host, key,
                                                                    warned):
    # one warning for `deployft serve` and `deployft serve --ray` alike
    monkeypatch.delenv("DEPLOYFT_API_KEY", raising=False)
    with caplog.at_level("WARNING", logger="deployft.serve"):
        ServeConfig(bundle=tmp_path, host=host, api_key=key).warn_if_open()
    expected = [f"listening on {host} without an API key: anyone who reaches this address can use the model; "
                "pass --api-key or set DEPLOYFT_API_KEY"] if warned else []
    assert [r.getMessage() for r in caplog.records] == expected
