"""Request bodies as clients really send them: OpenAI's nullable fields as null, and the messages of bodies refused."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("fastapi")

from conftest import ready_client  # noqa: E402

from deployft.runtime import Predictor  # noqa: E402

CHAT = [{"role": "user", "content": "what is the capital of france"}]
NULLABLE = ("temperature", "top_p", "n", "stream", "stream_options", "max_tokens", "stop", "seed", "user", "logprobs",
            "top_logprobs", "frequency_penalty", "presence_penalty", "logit_bias", "response_format", "tools",
            "functions", "best_of", "top_k")


@pytest.fixture(scope="module")
def gen(runtime_bundle):
    client = ready_client(runtime_bundle("llama"), model_name="tiny", max_tokens_limit=8)
    yield client
    client.__exit__(None, None, None)


def test_every_nullable_openai_field_sent_as_null_means_its_default(gen, runtime_bundle):
    nulls = dict.fromkeys(NULLABLE)
    chat = gen.post("/v1/chat/completions", json={"messages": CHAT, **nulls, "max_completion_tokens": None})
    assert chat.status_code == 200, chat.json()
    assert chat.json()["object"] == "chat.completion"  # stream null: not streamed
    completion = gen.post("/v1/completions", json={"prompt": "bees", **nulls, "echo": None, "suffix": None})
    assert completion.status_code == 200, completion.json()
    assert completion.json()["usage"]["completion_tokens"] <= 8  # max_tokens null: the default within the limit
    # temperature and top_p null are OpenAI's defaults (1, 1): the same sampled text as when sent as such
    sampled = {"prompt": "bees", "max_tokens": 6, "seed": 5}
    explicit = gen.post("/v1/completions", json={**sampled, "temperature": 1, "top_p": 1}).json()
    nulled = gen.post("/v1/completions", json={**sampled, "temperature": None, "top_p": None}).json()
    assert nulled["choices"][0]["text"] == explicit["choices"][0]["text"]
    assert explicit["choices"][0]["text"] == Predictor.load(runtime_bundle("llama")).generate(
        "bees", max_new_tokens=6, temperature=1.0, seed=5)


MESSAGES = [
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages.0.content", "messages.0.content: content part 0 is of type 'image_url': this server takes text only; "
                           'send the content as a string or as parts {"type": "text", "text": "..."}'),
    ({"messages": CHAT, "stop": [None]}, "stop.0", "stop.0: Input should be a valid string"),
    ({"messages": CHAT, "stop": 5}, "stop", "stop: Input should be a valid string"),
    ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages.0.content.0.text",
     "messages.0.content.0.text: Field required"),
    ({"messages": CHAT, "logprobs": True}, "logprobs",
     "logprobs: logprobs is not supported by this server; leave logprobs out"),
    ({"messages": CHAT, "stop": list("abcde")}, "stop", "stop: at most 4 stop strings are allowed"),
    ({"messages": CHAT, "best_of": 2}, "best_of",
     "best_of: best_of is not supported by this server (one completion per request); leave it out"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role",
     "messages.0.role: Input should be 'system', 'developer', 'user' or 'assistant'"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "messages.0.content: Field required"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0",
     "messages.0: a user message needs its content (only an assistant's may be null)"),
]


@pytest.mark.parametrize("body,param,message", MESSAGES)
def test_refusals_name_the_field_without_pydantics_union_branches_or_prefixes(gen, body, param, message):
    response = gen.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == message and response.json()["error"]["param"] == param


def test_a_body_that_is_not_a_json_object_says_what_to_send(gen):
    form = gen.post("/v1/chat/completions", content=b"messages=hi",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert form.status_code == 400
    assert form.json()["error"]["message"] == (
        "the request body must be a JSON object sent with the header Content-Type: application/json (this one came "
        "as application/x-www-form-urlencoded); with curl add -H 'Content-Type: application/json'")
    array = gen.post("/v1/chat/completions", content=b"[1, 2]", headers={"content-type": "application/json"})
    assert array.status_code == 400
    assert array.json()["error"]["message"] == "the request body must be a JSON object ({...}), not another JSON value"
    assert "not valid JSON" in gen.post("/v1/completions", content=b"{x",
                                        headers={"content-type": "application/json"}).json()["error"]["message"]


@pytest.fixture(scope="module")
def plain(runtime_bundle):
    bundle = runtime_bundle("gpt2")
    assert Predictor.load(bundle).chat_template is None  # a gpt2-style bundle: plain prompts only
    client = ready_client(bundle, model_name="plain")
    yield client
    client.__exit__(None, None, None)


def test_a_bundle_without_a_chat_template_points_chat_requests_to_completions(plain):
    response = plain.post("/v1/chat/completions", json={"messages": CHAT, "max_tokens": 4})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": "this bundle has no chat template; POST /v1/completions with a prompt",
        "type": "invalid_request_error", "param": "messages", "code": 400}
    assert plain.post("/v1/completions", json={"prompt": "bees", "max_tokens": 4}).status_code == 200
    elsewhere = plain.post("/predict", json={"inputs": "x"}).json()["error"]["message"]
    assert elsewhere.endswith("this server serves a generate bundle: use POST /v1/completions")


def _settings(page: str) -> dict:
    start = page.index("const SETTINGS = ") + len("const SETTINGS = ")
    return json.JSONDecoder().raw_decode(page[start:])[0]


def test_the_playground_completes_prompts_where_the_bundle_cannot_chat(plain, gen):
    settings = _settings(plain.get("/").text)
    assert (settings["route"], settings["chat"]) == ("/v1/completions", False)
    settings = _settings(gen.get("/").text)
    assert (settings["route"], settings["chat"]) == ("/v1/chat/completions", True)


def test_an_assistant_message_may_have_null_content_as_openai_allows():
    from deployft.serve.schemas import ChatRequest

    history = [*CHAT, {"role": "assistant", "content": None}, {"role": "user", "content": "and of spain"}]
    assert [m["content"] for m in ChatRequest.model_validate({"messages": history}).chat()] == [
        CHAT[0]["content"], "", "and of spain"]


def test_a_developer_message_reaches_the_template_as_a_system_one():
    from deployft.serve.schemas import ChatRequest

    body = {"messages": [{"role": "developer", "content": "be brief"}, *CHAT]}
    assert [m["role"] for m in ChatRequest.model_validate(body).chat()] == ["system", "user"]
