"""The real default bundles behind a live server: the OpenAI client, continuous batching, the classifier routes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from deployft.runtime import Predictor
from live_server import Server

pytestmark = pytest.mark.slow

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def real_bundles(real_classify_run, real_generate_run, tmp_path_factory):
    from deployft.exporter import ExportConfig, export

    root = tmp_path_factory.mktemp("serve-real")
    return {"classify": export(ExportConfig(run=real_classify_run, output=root / "clf", quantize="int8")),
            "generate": export(ExportConfig(run=real_generate_run, output=root / "gen", quantize="int8",
                                            validate_samples=6))}


def test_real_generator_with_the_openai_client_and_joining_requests(real_bundles):
    bundle = real_bundles["generate"]
    predictor = Predictor.load(bundle, threads=2)
    server = Server(bundle, "--max-batch-size", "8")
    questions = ["What is the capital of France?", "Tell me a joke.", "Who are you?", "Do you like music?"]
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> str:
            messages = [{"role": "user", "content": questions[i]}]
            reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=12 + 6 * i,
                                                   temperature=0)
            return reply.choices[0].message.content

        with ThreadPoolExecutor(len(questions)) as pool:
            answers = list(pool.map(ask, range(len(questions))))
        expected = [predictor.generate([{"role": "user", "content": q}], max_new_tokens=12 + 6 * i)
                    for i, q in enumerate(questions)]
        assert answers == expected and all(answers)
        stream = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": questions[0]}],
                                                max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected[0]
    finally:
        server.stop()
    assert server.process.returncode == 0


def test_real_classifier_routes(real_bundles):
    bundle = real_bundles["classify"]
    predictor = Predictor.load(bundle, threads=2)
    server = Server(bundle)
    texts = ["a warm, funny and beautifully acted film", "dull, overlong and badly written"]
    try:
        tei = httpx.post(server.url + "/predict", json={"inputs": texts}, timeout=60).json()
        ours = httpx.post(server.url + "/v1/classify", json={"input": texts}, timeout=60).json()["data"]
        for text, ranked, row in zip(texts, tei, ours):
            expected = predictor.predict(text)
            assert ranked[0]["label"] == row["label"] == expected.label
            assert row["scores"] == pytest.approx(expected.scores, abs=1e-5)
    finally:
        server.stop()
