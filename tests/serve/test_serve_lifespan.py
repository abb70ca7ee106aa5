"""The app's lifespan: entered again on the same app it serves again; its warm-up is not a client's request."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from asgi_call import metric  # noqa: E402
from deployft.serve import create_app  # noqa: E402
from deployft.serve.queueing import QueueWorker, WorkerBusy  # noqa: E402

REQUESTS = {"bert": ("/predict", {"inputs": "great film"}),
            "llama": ("/v1/completions", {"prompt": "bees", "max_tokens": 2, "temperature": 0})}


def _until_ready(client: TestClient) -> None:
    deadline = time.time() + 60
    while client.get("/ready").status_code != 200:
        assert time.time() < deadline, "the app never became ready"
        time.sleep(0.02)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_same_app_serves_again_when_its_lifespan_is_entered_again(runtime_bundle, arch):
    route, body = REQUESTS[arch]
    app = create_app(runtime_bundle(arch), start=False, request_timeout_s=10)
    service = app.state.service
    answers = []
    for _ in range(2):
        with TestClient(app) as client:
            _until_ready(client)
            response = client.post(route, json=body)
            assert response.status_code == 200, response.json()
            answers.append(response.json())
        assert service.ready is False  # not ready between two lifespans
        assert client.get("/ready").status_code == 503
    if arch == "bert":
        assert answers[0] == answers[1]
    else:
        assert answers[0]["choices"][0]["text"] == answers[1]["choices"][0]["text"]


def test_a_worker_is_not_started_twice_while_its_thread_still_runs():
    release = threading.Event()

    class Stuck(QueueWorker):
        def _loop(self) -> None:
            release.wait(10)  # a long ONNX Runtime call that outlives `stop`'s timeout
            with self._wake:
                while not self._stopping:
                    self._wake.wait()

    worker = Stuck(max_queue=1)
    worker.start()
    worker.stop(timeout=0.01)
    with pytest.raises(WorkerBusy, match="still running"):
        worker.start()
    release.set()
    worker._thread.join(10)
    worker.start()  # the old thread has ended: a new one starts, not stopping
    assert worker._thread.is_alive() and worker._stopping is False
    worker.stop()


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_the_warm_up_is_not_counted_in_the_metrics(runtime_bundle, arch):
    with TestClient(create_app(runtime_bundle(arch))) as client:
        _until_ready(client)
        service = client.app.state.service
        kind = "classify" if arch == "bert" else "generate"
        assert metric(service, "deployft_batch_size_count", kind=kind) == 0
        assert metric(service, "deployft_generated_tokens_total") == 0
        assert metric(service, "deployft_generations_total", reason="length") == 0
        assert metric(service, "deployft_generations_total", reason="stop") == 0
        route, body = REQUESTS[arch]
        assert client.post(route, json=body).status_code == 200
        assert metric(service, "deployft_batch_size_count", kind=kind) >= 1
        if arch == "llama":
            assert metric(service, "deployft_generated_tokens_total") == 2
            assert metric(service, "deployft_generations_total", reason="length") == 1
