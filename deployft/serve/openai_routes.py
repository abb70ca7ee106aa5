"""The OpenAI API for generator bundles: `/v1/chat/completions`, `/v1/completions` (streaming with SSE).

Existing OpenAI clients work unchanged: same request fields, same response and chunk shapes, `[DONE]` at the
end of a stream, `usage` token counts and `finish_reason` `stop` / `length`.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Depends, Request

from .http import ApiError, error_body
from .schemas import ChatRequest, CompletionRequest
from .service import Service

CHAT_DEFAULT_TOKENS = 256
"""max_tokens when a chat request leaves it out (OpenAI's is the context size; deployft caps it here), or
--max-tokens-limit when that is lower."""
COMPLETION_DEFAULT_TOKENS = 16
"""max_tokens when a completion request leaves it out (OpenAI's default), or --max-tokens-limit when lower."""


def openai_router(service: Service, auth) -> APIRouter:
    router = APIRouter(dependencies=[Depends(auth)], tags=["OpenAI"])

    @router.post("/v1/chat/completions")
    async def chat(body: ChatRequest, request: Request):
        """Complete a chat with the bundle's chat template (as `Predictor.generate` formats messages)."""
        service.check_model(body.model)
        ids = service.prompt_ids(body.chat(), "messages")
        options = service.options(body, CHAT_DEFAULT_TOKENS)
        return await _answer(service, request, body, ids, options, chat=True)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        """Complete a prompt in the bundle's prompt format (as `Predictor.generate` formats a string)."""
        service.check_model(body.model)
        ids = service.prompt_ids(body.text(), "prompt")
        options = service.options(body, COMPLETION_DEFAULT_TOKENS)
        return await _answer(service, request, body, ids, options, chat=False)

    return router


async def _answer(service: Service, request: Request, body, ids: list[int], options, chat: bool):
    from fastapi.responses import StreamingResponse

    chunks = await service.generate(ids, options, request, stream=body.stream)
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    head = {"id": ident, "created": int(time.time()), "model": service.name}
    if body.stream:
        # the first chunk is awaited before the headers go out, so a timeout or failure before any token
        # is still an HTTP status, not an error event in a 200 stream
        first = await chunks.__anext__()
        events = _stream(_prepend(first, chunks), head, chat, len(ids), body.include_usage)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    pieces, last = [], None
    async for chunk in chunks:
        pieces.append(chunk.text)
        last = chunk
    text = "".join(pieces)
    choice = {"index": 0, "finish_reason": last.finish_reason, "logprobs": None}
    choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
    return {**head, "object": "chat.completion" if chat else "text_completion", "choices": [choice],
            "usage": _usage(len(ids), last.completion_tokens)}


async def _stream(chunks, head: dict, chat: bool, prompt_tokens: int, include_usage: bool):
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list, **extra) -> str:
        return "data: " + json.dumps({**head, "object": kind, "choices": choices, **extra}) + "\n\n"

    def choice(text: str, finish: str | None, first: bool = False) -> dict:
        if not chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        delta = {"role": "assistant", "content": text} if first else ({"content": text} if text else {})
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}

    if chat:
        yield event([choice("", None, first=True)])
    try:
        async for chunk in chunks:
            if chunk.text:
                yield event([choice(chunk.text, None)])
            if chunk.finish_reason:
                yield event([choice("", chunk.finish_reason)])
                if include_usage:
                    yield event([], usage=_usage(prompt_tokens, chunk.completion_tokens))
    except ApiError as exc:  # the headers are sent: the error travels as the stream's last event
        yield "data: " + json.dumps(error_body(exc.status, exc.message)) + "\n\n"
        return
    yield "data: [DONE]\n\n"


async def _prepend(first, rest):
    yield first
    async for chunk in rest:
        yield chunk


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
