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
    # the fixture RUN holds out 33 eval rows: the smallest budget they decide is about 9 % (see test_export_slow)
    return {"classify": export(ExportConfig(run=real_classify_run, output=root / "clf", quantize="int8",
                                            max_accuracy_drop=20)),
            "generate": export(ExportConfig(run=real_generate_run, output=root / "gen", quantize="int8",
                                            validate_samples=6))}


def _chat(question: str) -> list[dict]:
    # SmolLM2's default system message alone nearly fills a max_length-64 RUN's 32-token prompt limit
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]


def test_real_generator_with_the_openai_client_and_joining_requests(real_bundles):
    """On the fused fp32 file: the blockwise-int8 file's MatMulNBits kernel computes a batch of rows slightly
    differently from one row, so a near-tie there may pick another greedy token than the request alone."""
    bundle = real_bundles["generate"]
    predictor = Predictor.load(bundle, threads=2, model_file="model_optimized.onnx")
    server = Server(bundle, "--max-batch-size", "8", "--model-file", "model_optimized.onnx")
    questions = ["What is the capital of France?", "Tell me a joke.", "Who are you?", "Do you like music?"]
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        def ask(i: int) -> str:
            reply = client.chat.completions.create(model="tiny", messages=_chat(questions[i]), max_tokens=12 + 6 * i,
                                                   temperature=0)
            return reply.choices[0].message.content

        with ThreadPoolExecutor(len(questions)) as pool:
            answers = list(pool.map(ask, range(len(questions))))
        expected = [predictor.generate(_chat(q), max_new_tokens=12 + 6 * i)
                    for i, q in enumerate(questions)]
        assert answers == expected and all(answers)
        stream = client.chat.completions.create(model="tiny", messages=_chat(questions[0]),
                                                max_tokens=12, temperature=0, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == expected[0]
        # the repeated question resumed from its first asking's cache (all but its last token) and still matched
        hits = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                if line.startswith("deployft_prefix_cache_hits_total ")]
        assert hits and float(hits[0].split()[1]) >= 1
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
        # the same two texts in one call, as the server runs them: dynamic int8 quantizes activations with one
        # scale per call, so a text's scores depend (slightly) on the texts it is batched with
        for ranked, row, expected in zip(tei, ours, predictor.predict(texts)):
            assert ranked[0]["label"] == row["label"] == expected.label
            assert row["scores"] == pytest.approx(expected.scores, abs=1e-5)
    finally:
        server.stop()
