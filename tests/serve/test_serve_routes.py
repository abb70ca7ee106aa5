"""Every route of the app, in process (FastAPI's TestClient), on the tiny test bundles."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from asgi_call import metric  # noqa: E402
from conftest import ready_client  # noqa: E402
from deployft.runtime import Predictor  # noqa: E402
from deployft.serve import create_app  # noqa: E402

CHAT = [{"role": "user", "content": "what is the capital of france"}]


@pytest.fixture(scope="module")
def gen(runtime_bundle):
    client = ready_client(runtime_bundle("llama"), model_name="tiny")
    yield client, Predictor.load(runtime_bundle("llama"))
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def clf(runtime_bundle):
    client = ready_client(runtime_bundle("bert"), model_name="tiny-clf", max_texts=4)
    yield client, Predictor.load(runtime_bundle("bert"))
    client.__exit__(None, None, None)


def _sse(response) -> list:
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_status_routes_and_playground(gen):
    client, _ = gen
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    assert client.get("/v1/models").json()["data"][0]["id"] == "tiny"
    page = client.get("/")
    assert page.status_code == 200 and '"task": "generate"' in page.text and "/*SETTINGS*/" not in page.text
    assert client.get("/docs").status_code == 200
    assert "/v1/chat/completions" in client.get("/openapi.json").json()["paths"]


def test_fastapis_own_telemetry_is_off_where_it_has_one(gen):
    import inspect

    from fastapi import FastAPI

    client, _ = gen
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        pytest.skip("this FastAPI has no native telemetry")
    settings = client.app._telemetry
    assert (settings["tracing"], settings["metrics"], settings["logs"]) == (False, False, False)


def test_chat_completion_is_the_predictors_greedy_answer(gen):
    client, predictor = gen
    body = client.post("/v1/chat/completions", json={"model": "tiny", "messages": CHAT, "max_tokens": 20,
                                                     "temperature": 0}).json()
    assert body["object"] == "chat.completion"
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": predictor.generate(CHAT, max_new_tokens=20)}
    assert choice["finish_reason"] in ("stop", "length")
    usage = body["usage"]
    assert usage["prompt_tokens"] == len(predictor.prompt_ids(CHAT)) and 1 <= usage["completion_tokens"] <= 20
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completion_and_length_finish(gen):
    client, predictor = gen
    body = client.post("/v1/completions", json={"prompt": "bees", "max_tokens": 3, "temperature": 0,
                                                "stop": ["\x00never"]}).json()
    assert body["object"] == "text_completion"
    assert body["choices"][0]["text"] == predictor.generate("bees", max_new_tokens=3)
    if body["usage"]["completion_tokens"] == 3:
        assert body["choices"][0]["finish_reason"] == "length"


def test_streamed_chat_concatenates_to_the_answer(gen):
    client, predictor = gen
    response = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 20, "temperature": 0,
                                                         "stream": True, "stream_options": {"include_usage": True}})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _sse(response)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == predictor.generate(CHAT, max_new_tokens=20)
    finished = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    generated = list(predictor.iter_token_ids(predictor.prompt_ids(CHAT), max_new_tokens=20))
    assert finished == (["length"] if len(generated) == 20 else ["stop"])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == len(generated)


def test_streamed_completion(gen):
    client, predictor = gen
    events = _sse(client.post("/v1/completions", json={"prompt": "bees", "max_tokens": 8, "temperature": 0,
                                                       "stream": True}))
    assert all(e["object"] == "text_completion" for e in events)
    assert "".join(e["choices"][0]["text"] for e in events) == predictor.generate("bees", max_new_tokens=8)


def test_seeded_sampling_is_reproducible(gen):
    client, predictor = gen
    request = {"prompt": "bees", "max_tokens": 10, "temperature": 0.8, "top_p": 0.9, "seed": 3}
    first = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    assert first == predictor.generate("bees", max_new_tokens=10, temperature=0.8, top_p=0.9, seed=3)


def test_metrics_count_requests_tokens_and_batches(gen):
    client, _ = gen
    service = client.app.state.service
    samples = (("deployft_generated_tokens_total", {}), ("deployft_time_to_first_token_seconds_count", {}),
               ("deployft_batch_size_count", {"kind": "generate"}),
               ("deployft_request_seconds_count", {"route": "/v1/completions"}),
               ("deployft_requests_total", {"route": "/v1/completions", "status": "200"}))
    before = [metric(service, name, **labels) for name, labels in samples]
    body = client.post("/v1/completions", json={"prompt": "bees", "max_tokens": 2, "temperature": 0}).json()
    tokens, first, batches, timed, answered = (metric(service, name, **labels) - b
                                               for (name, labels), b in zip(samples, before))
    assert tokens == body["usage"]["completion_tokens"] >= 1
    assert (first, timed, answered) == (1, 1, 1) and batches >= 1
    assert "deployft_queue_depth" in client.get("/metrics").text


def test_classifier_routes_match_the_predictor(clf):
    client, predictor = clf
    texts = ["the film was great", "this movie was awful the plot"]
    expected = predictor.predict(texts)
    single = client.post("/predict", json={"inputs": texts[0]}).json()
    assert single[0]["label"] == expected[0].label and single[0]["score"] == pytest.approx(expected[0].score)
    assert single[0]["score"] >= single[1]["score"] and {s["label"] for s in single} == set(predictor.labels)
    many = client.post("/predict", json={"inputs": texts}).json()
    assert [m[0]["label"] for m in many] == [e.label for e in expected]
    body = client.post("/v1/classify", json={"input": texts, "model": "tiny-clf"}).json()
    assert body["labels"] == predictor.labels
    for row, e in zip(body["data"], expected):
        assert row["label"] == e.label and row["scores"] == pytest.approx(e.scores)
    assert client.get("/v1/models").json()["data"][0]["task"] == "classify"
    assert '"task": "classify"' in client.get("/").text


BAD_GENERATE = [
    ("/v1/chat/completions", b"{not json", 400, "not valid JSON"),
    ("/v1/chat/completions", {"max_tokens": 3}, 400, "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, "role"),
    ("/v1/chat/completions", {"messages": CHAT, "n": 2}, 400, "n"),
    ("/v1/chat/completions", {"messages": CHAT, "temperature": -1}, 400, "temperature"),
    ("/v1/chat/completions", {"messages": CHAT, "top_p": 0}, 400, "top_p"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/chat/completions", {"messages": CHAT, "max_tokens": 100000}, 400, "--max-tokens-limit"),
    ("/v1/chat/completions", {"messages": CHAT, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("/v1/chat/completions", {"messages": CHAT, "logprobs": True}, 400, "logprobs"),
    ("/v1/chat/completions", {"messages": CHAT, "model": "gpt-4"}, 404, "'tiny'"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "bees " * 400}]}, 400, "at most 32 tokens"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "one prompt"),
    ("/v1/completions", {"prompt": 5}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/completions", [1, 2], 400, ""),
    ("/v1/completions", {"prompt": "bees", "seed": -1}, 400, "seed"),
    ("/v1/chat/completions", {"messages": CHAT, "frequency_penalty": 2}, 400, "frequency_penalty"),
    ("/v1/chat/completions", {"messages": CHAT, "presence_penalty": -1}, 400, "presence_penalty"),
    ("/v1/chat/completions", {"messages": CHAT, "logit_bias": {"5": -100}}, 400, "logit_bias"),
    ("/v1/chat/completions", {"messages": CHAT, "response_format": {"type": "json_object"}}, 400, "response_format"),
    ("/v1/chat/completions", {"messages": CHAT, "tools": [{"type": "function"}]}, 400, "tools"),
    ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": 5}, 400, "top_logprobs"),
    ("/v1/completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("/v1/completions", b'{"prompt": "bees \\ud800"}', 400, "prompt: a lone UTF-16 surrogate (U+D800)"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}', 400, "messages.0.content:"),
    ("/predict", {"inputs": "x"}, 404, "generate bundle: use POST /v1/chat/completions"),
    ("/nowhere", {}, 404, "no route POST /nowhere"),
]


def _post(client, route, body):
    if isinstance(body, bytes):
        return client.post(route, content=body, headers={"content-type": "application/json"})
    return client.post(route, json=body)


@pytest.mark.parametrize("route,body,status,words", BAD_GENERATE)
def test_bad_generation_requests_are_4xx_in_the_openai_error_shape(gen, route, body, status, words):
    client, _ = gen
    response = _post(client, route, body)
    assert response.status_code == status
    error = response.json()["error"]
    assert words in error["message"] and error["type"] and error["code"] == status


def test_unsupported_fields_at_their_neutral_value_are_accepted(gen):
    neutral = {"frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {}, "tools": [], "top_logprobs": 0,
               "response_format": {"type": "text"}, "best_of": 1, "logprobs": False, "metadata": {"any": "thing"}}
    response = gen[0].post("/v1/completions", json={"prompt": "bees", "max_tokens": 2, **neutral})
    assert response.status_code == 200, response.json()


def test_without_max_tokens_a_low_limit_caps_the_default(runtime_bundle):
    client = ready_client(runtime_bundle("llama"), max_tokens_limit=3)
    try:
        for route, body in (("/v1/chat/completions", {"messages": CHAT}), ("/v1/completions", {"prompt": "bees"})):
            response = client.post(route, json={**body, "stop": ["\x00never"]})
            assert response.status_code == 200, response.json()
            assert response.json()["usage"]["completion_tokens"] <= 3
        refused = client.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4})
        assert refused.status_code == 400 and "--max-tokens-limit" in refused.json()["error"]["message"]
    finally:
        client.__exit__(None, None, None)


BAD_CLASSIFY = [
    ({"inputs": []}, 400, "empty"),
    ({"inputs": ["a"] * 5}, 400, "--max-texts"),
    ({"inputs": [1]}, 400, "inputs"),
    ({"inputs": "great " * 100}, 400, "truncate"),
    ({"inputs": "x", "raw_scores": True}, 400, "raw_scores"),
]


@pytest.mark.parametrize("body,status,words", BAD_CLASSIFY)
def test_bad_classification_requests(clf, body, status, words):
    response = clf[0].post("/predict", json=body)
    assert response.status_code == status and words in response.json()["error"]["message"]


@pytest.mark.parametrize("route,body,field", [("/predict", b'{"inputs": "great \\ud800"}', "inputs"),
                                              ("/v1/classify", b'{"input": ["ok", "\\udfff"]}', "input.1"),
                                              ("/v1/classify", b'{"input": "x", "model": "\\ud800"}', "model")])
def test_a_lone_surrogate_is_refused_naming_its_field(clf, route, body, field):
    response = _post(clf[0], route, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and error["message"].startswith(f"{field}: a lone UTF-16 surrogate")


def test_over_long_text_is_classified_when_truncate_is_asked(clf):
    response = clf[0].post("/predict", json={"inputs": "great " * 100, "truncate": True})
    assert response.status_code == 200 and len(response.json()) == 2


def test_body_over_the_limit_is_413(runtime_bundle):
    client = ready_client(runtime_bundle("bert"), max_body_bytes=100)

    def chunked(text: str):  # no content-length: the limit is met while the body is read
        body = json.dumps({"inputs": text}).encode()
        yield from (body[i:i + 30] for i in range(0, len(body), 30))

    try:
        response = client.post("/predict", json={"inputs": "great " * 50})
        assert response.status_code == 413 and "--max-body-bytes" in response.json()["error"]["message"]
        assert client.post("/predict", json={"inputs": "great"}).status_code == 200
        response = client.post("/predict", content=chunked("great " * 50), headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["code"] == 413
        assert "--max-body-bytes" in response.json()["error"]["message"]
        fits = client.post("/predict", content=chunked("the film was great"),
                           headers={"content-type": "application/json"})
        assert fits.status_code == 200 and len(fits.json()) == 2
    finally:
        client.__exit__(None, None, None)


def test_an_unexpected_exception_is_a_json_500_and_counted(runtime_bundle, monkeypatch):
    app = create_app(runtime_bundle("bert"), start=False)
    service = app.state.service

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "classify", broken)
    response = TestClient(app, raise_server_exceptions=False).post("/predict", json={"inputs": "x"})
    assert response.status_code == 500 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "server_error" and "RuntimeError" in response.json()["error"]["message"]
    assert metric(service, "deployft_requests_total", route="/predict", status="500") == 1


def test_a_failed_warm_up_keeps_ready_503_and_says_why(runtime_bundle):
    predictor = Predictor.load(runtime_bundle("bert"))

    def broken(*args, **kwargs):
        raise RuntimeError("simulated ONNX Runtime failure")

    predictor.predict_ids = broken
    with TestClient(create_app(runtime_bundle("bert"), predictor=predictor)) as client:
        deadline = time.time() + 30
        while not ((body := client.get("/ready").json()).get("error") or body["ready"]):
            assert time.time() < deadline, "the warm-up never answered"
            time.sleep(0.02)
        response = client.get("/ready")
    assert response.status_code == 503 and response.json()["ready"] is False
    assert "simulated ONNX Runtime failure" in response.json()["error"]


def test_api_key(runtime_bundle):
    client = ready_client(runtime_bundle("bert"), api_key="s3cret-key")
    try:
        assert client.post("/predict", json={"inputs": "x"}).status_code == 401
        wrong = client.post("/predict", json={"inputs": "x"}, headers={"Authorization": "Bearer nope-nope"})
        assert wrong.status_code == 401 and "wrong API key" in wrong.json()["error"]["message"]
        assert client.get("/v1/models").status_code == 401
        ok = client.post("/predict", json={"inputs": "x"}, headers={"Authorization": "Bearer s3cret-key"})
        assert ok.status_code == 200
        assert client.post("/predict", json={"inputs": "x"}, headers={"x-api-key": "s3cret-key"}).status_code == 200
        assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200
    finally:
        client.__exit__(None, None, None)


def test_a_full_queue_is_429_with_retry_after(runtime_bundle):
    from deployft.serve.workers import Job

    app = create_app(runtime_bundle("bert"), start=False, max_queue=2)
    service = app.state.service
    for _ in range(2):
        service.worker.submit(Job([[1, 2]], lambda *_: None))
    client = TestClient(app)  # no lifespan: the worker never starts, so the queue stays full
    response = client.post("/predict", json={"inputs": "x"})
    assert response.status_code == 429 and response.headers["Retry-After"] == "1"
    assert "--max-queue 2" in response.json()["error"]["message"]
    assert client.get("/health").status_code == 200
    assert 'status="429"' in client.get("/metrics").text


@pytest.mark.parametrize("arch,route,body", [("bert", "/predict", {"inputs": "x"}),
                                             ("llama", "/v1/completions", {"prompt": "bees"}),
                                             ("llama", "/v1/completions", {"prompt": "bees", "stream": True})])
def test_a_request_past_its_timeout_is_504(runtime_bundle, arch, route, body):
    app = create_app(runtime_bundle(arch), start=False, request_timeout_s=0.2)
    client = TestClient(app)  # no lifespan: the worker never starts, so the request waits until its timeout
    response = client.post(route, json=body)
    assert response.status_code == 504 and "--request-timeout" in response.json()["error"]["message"]


def test_create_app_mounts_inside_a_larger_app(runtime_bundle):
    from fastapi import FastAPI

    parent = FastAPI()
    parent.mount("/clf", create_app(runtime_bundle("bert")))  # a mounted app gets no lifespan: it starts itself
    client = TestClient(parent)
    deadline = time.time() + 60
    while client.get("/clf/ready").status_code != 200:
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.post("/clf/predict", json={"inputs": "great"}).status_code == 200
    assert 'route="/predict",status="200"' in client.get("/clf/metrics").text
    page = client.get("/clf/").text  # the playground calls the mounted routes
    assert '"route": "/clf/v1/classify"' in page and 'fetch("/v1' not in page


def test_a_lone_classification_request_does_not_wait_for_the_batch_window(runtime_bundle):
    # a 120 s window with a 30 s request timeout: waiting for it would be a 504
    client = ready_client(runtime_bundle("bert"), max_wait_ms=120_000.0, request_timeout_s=30.0)
    try:
        assert client.post("/v1/classify", json={"input": "great"}).status_code == 200
    finally:
        client.__exit__(None, None, None)
