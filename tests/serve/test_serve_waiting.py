"""A request that times out or whose client leaves gives its queue place or batch slot back at once."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from asgi_call import AsgiCall, metric, until  # noqa: E402
from deployft.serve import create_app  # noqa: E402

LONG = {"prompt": "bees", "max_tokens": 90, "temperature": 0, "stop": ["\x00never"]}


@pytest.mark.parametrize("arch,path,body", [("bert", "/predict", {"inputs": "great"}),
                                            ("llama", "/v1/completions", LONG),
                                            ("llama", "/v1/completions", {**LONG, "stream": True})])
def test_a_client_leaving_while_queued_withdraws_its_request(runtime_bundle, arch, path, body):
    app = create_app(runtime_bundle(arch), start=False, request_timeout_s=3)  # no worker: the request stays queued
    service = app.state.service

    async def leave_while_queued():
        call = AsgiCall(path, body)
        task = call.start(app)
        await until(lambda: service.worker.pending)
        call.leave()
        await asyncio.wait_for(task, 2)  # not the 3 s timeout

    asyncio.run(leave_while_queued())
    assert len(service.worker.pending) == 0
    assert metric(service, "deployft_requests_total", route=path, status="499") == 1
    if arch == "llama":
        assert metric(service, "deployft_generations_total", reason="cancelled") == 1


def test_a_non_streamed_client_leaving_mid_generation_cancels_it(runtime_bundle):
    app = create_app(runtime_bundle("llama"), start=False, request_timeout_s=30)
    service = app.state.service
    engine = service.worker  # driven step by step here, in place of its thread

    async def leave_mid_way():
        call = AsgiCall("/v1/completions", LONG)
        task = call.start(app)
        await until(lambda: engine.pending)
        engine.run_once()
        engine.run_once()
        assert engine.active == 1 and not task.done()
        call.leave()
        await asyncio.wait_for(task, 5)  # answered without running the generation any further
        engine.run_once()
        assert engine.active == 0

    asyncio.run(leave_mid_way())
    assert metric(service, "deployft_generations_total", reason="cancelled") == 1
    assert metric(service, "deployft_generations_total", reason="length") == 0
    assert metric(service, "deployft_requests_total", route="/v1/completions", status="499") == 1


def test_an_abandoned_stream_is_counted_as_499(runtime_bundle):
    app = create_app(runtime_bundle("llama"), start=False, request_timeout_s=30)
    service = app.state.service
    engine = service.worker

    async def leave_after_some_text():
        call = AsgiCall("/v1/completions", {**LONG, "stream": True})
        task = call.start(app)
        await until(lambda: engine.pending)
        for _ in range(50):  # until the first text event is sent
            if any(m["type"] == "http.response.body" and m.get("body") for m in call.sent):
                break
            engine.run_once()
            await asyncio.sleep(0)
        call.leave()
        await asyncio.wait_for(task, 5)
        engine.run_once()

    asyncio.run(leave_after_some_text())
    assert metric(service, "deployft_requests_total", route="/v1/completions", status="499") == 1
    assert metric(service, "deployft_generations_total", reason="cancelled") == 1


@pytest.mark.parametrize("arch,route,body", [("bert", "/predict", {"inputs": "x"}),
                                             ("llama", "/v1/completions", {"prompt": "bees"})])
def test_a_timed_out_request_gives_its_queue_place_back(runtime_bundle, arch, route, body):
    app = create_app(runtime_bundle(arch), start=False, request_timeout_s=0.2, max_queue=1)
    client = TestClient(app)  # no lifespan: the worker never starts, as if it were busy with other work
    assert client.post(route, json=body).status_code == 504
    second = client.post(route, json=body)
    assert second.status_code == 504, second.json()  # admitted to the queue, not 429
    assert len(app.state.service.worker.pending) == 0
