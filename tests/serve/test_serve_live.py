"""A live `deployft serve` in a subprocess on a free port: the official openai client, concurrency, SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from deployft.runtime import Predictor  # noqa: E402
from live_server import Server  # noqa: E402

CHAT = [{"role": "user", "content": "what is the capital of france"}]


@pytest.fixture(scope="module")
def generator(runtime_bundle):
    server = Server(runtime_bundle("llama"), "--max-batch-size", "8")
    yield server, Predictor.load(runtime_bundle("llama"))
    server.stop()


def test_the_openai_client_chats_completes_and_streams(generator):
    server, predictor = generator
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == ["tiny"]
    expected = predictor.generate(CHAT, max_new_tokens=16)
    chat = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0)
    assert chat.choices[0].message.content == expected
    generated = list(predictor.iter_token_ids(predictor.prompt_ids(CHAT), max_new_tokens=16))
    assert chat.usage.completion_tokens == len(generated)
    assert chat.choices[0].finish_reason == ("length" if len(generated) == 16 else "stop")
    stream = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=16, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected
    completion = client.completions.create(model="tiny", prompt="bees", max_tokens=8, temperature=0)
    assert completion.choices[0].text == predictor.generate("bees", max_new_tokens=8)
    pieces = client.completions.create(model="tiny", prompt="bees", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == completion.choices[0].text
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=0)


def test_the_openai_client_may_pass_none_for_the_arguments_openai_marks_nullable(generator):
    server, predictor = generator
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    nones = dict.fromkeys(("temperature", "top_p", "n", "stream", "stop", "seed", "user", "presence_penalty",
                           "frequency_penalty", "logprobs", "top_logprobs", "logit_bias", "response_format"))
    sent = []
    client._client.event_hooks["request"].append(lambda request: sent.append(json.loads(request.content)))
    chat = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4, **nones)
    assert sent[-1]["temperature"] is None and sent[-1]["stream"] is None  # the client sends them as null
    assert chat.object == "chat.completion" and chat.usage.completion_tokens >= 1
    seeded = {"model": "tiny", "prompt": "bees", "max_tokens": 6, "seed": 5}
    nulled = client.completions.create(**seeded, temperature=None, top_p=None, n=None, stream=None, stop=None)
    assert sent[-1]["top_p"] is None and sent[-1]["n"] is None
    assert nulled.choices[0].text == predictor.generate("bees", max_new_tokens=6, temperature=1.0, seed=5)


def test_concurrent_requests_join_the_running_batch_and_get_their_own_answers(generator):
    server, predictor = generator
    prompts = ["bees", "what is two plus two", "where do fish live", "what color is the sky", "cat"] * 2
    lengths = [30, 5, 20, 12, 40, 8, 25, 3, 15, 33]

    def ask(i: int) -> str:
        body = {"model": "tiny", "prompt": prompts[i], "max_tokens": lengths[i], "temperature": 0}
        return httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]

    with ThreadPoolExecutor(len(prompts)) as pool:
        answers = list(pool.map(ask, range(len(prompts))))
    assert answers == [predictor.generate(p, max_new_tokens=n) for p, n in zip(prompts, lengths)]
    metrics = httpx.get(server.url + "/metrics").text
    sizes = [line for line in metrics.splitlines() if line.startswith('deployft_batch_size_bucket{kind="generate",le="1.0"}')]
    total = [line for line in metrics.splitlines() if line.startswith('deployft_batch_size_count{kind="generate"}')]
    assert float(sizes[0].split()[-1]) < float(total[0].split()[-1])  # some steps ran more than one row


def _metric(text: str, name: str) -> float:
    """The sum of a Prometheus metric's samples over all label sets."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "))


def _arrived(metrics: str) -> float:
    """Generation requests the server has taken: queued, running, or already finished."""
    return sum(_metric(metrics, name) for name in ("deployft_queue_depth", "deployft_running_sequences",
                                                     "deployft_generations_total"))


def test_sigterm_finishes_in_flight_requests_then_exits_0(runtime_bundle):
    server = Server(runtime_bundle("llama"), "--max-batch-size", "1", "--grace", "60")
    body = {"model": "tiny", "prompt": "what is two plus two", "max_tokens": 100, "temperature": 0, "stream": True}
    expected = Predictor.load(runtime_bundle("llama")).generate(body["prompt"], max_new_tokens=100)

    def stream(_) -> str:
        with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as response:
            lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        return "".join(json.loads(line)["choices"][0]["text"] for line in lines[:-1])

    before = _arrived(httpx.get(server.url + "/metrics").text)  # 0: the warm-up is not counted
    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(stream, i) for i in range(12)]
        deadline = time.time() + 30
        while _arrived(httpx.get(server.url + "/metrics").text) < before + 12:  # every request reached the server
            assert time.time() < deadline
            time.sleep(0.005)
        server.process.send_signal(signal.SIGTERM)
        assert [f.result(timeout=90) for f in futures] == [expected] * 12
    assert server.process.wait(30) == 0
    with pytest.raises(httpx.ConnectError):
        httpx.get(server.url + "/health", timeout=2)
    assert "finishing" in server.process.stdout.read()


def test_concurrent_classifier_requests_are_batched(runtime_bundle):
    server = Server(runtime_bundle("bert"), "--max-wait-ms", "100")
    predictor = Predictor.load(runtime_bundle("bert"))
    texts = ["the film was great", "this movie was awful the plot", "dull", "every scene was superb"] * 4
    try:
        def ask(text: str) -> dict:
            return httpx.post(server.url + "/v1/classify", json={"input": text}, timeout=60).json()["data"][0]

        with ThreadPoolExecutor(len(texts)) as pool:
            answers = list(pool.map(ask, texts))
        for text, answer in zip(texts, answers):
            assert answer["scores"] == pytest.approx(predictor.predict(text).scores, abs=1e-6)
        metrics = httpx.get(server.url + "/metrics").text
        count = next(line for line in metrics.splitlines() if line.startswith('deployft_batch_size_count{kind="classify"}'))
        assert float(count.split()[-1]) < len(texts)  # fewer calls than requests (the warm-up is not counted)
    finally:
        server.stop()
    assert server.process.returncode == 0
