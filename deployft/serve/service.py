"""`Service`: one loaded bundle, its worker (continuous batch or classifier batcher), its metrics and limits.

Routes call it from the event loop; it checks input against the limits, queues work for the worker thread and
awaits the answer, so the loop stays free for `/health` and `/metrics` while the model runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from ..prompts import prompt_ids, prompt_limit
from ..runtime import GenerationOptions, Predictor
from ..runtime.inputs import stop_strings
from .config import ServeConfig
from .engine import GenerationEngine
from .tickets import Chunk, Ticket
from .queueing import QueueFull
from .http import ApiError
from .metrics import ServeMetrics
from .workers import ClassifierBatcher, Job

logger = logging.getLogger("deployft.serve")

RETRY_AFTER_S = "1"


class Service:
    """A BUNDLE behind a worker thread, with the limits of a ServeConfig."""

    def __init__(self, config: ServeConfig, predictor: Predictor | None = None):
        self.config = config
        # no spin-waiting: between batches the ONNX Runtime threads must leave the cores to the HTTP side
        self.predictor = predictor or Predictor.load(config.bundle, device=config.device, threads=config.threads,
                                                     model_file=config.model_file, public_key=config.public_key,
                                                     spinning=False, provider=config.provider)
        self.name = config.name
        """The model id clients send and get back (resolved once: `ServeConfig.name` resolves a path)."""
        self.metrics = ServeMetrics()
        self.generates = self.predictor.decoder is not None
        self.started = int(time.time())
        self.ready = False
        self.inflight = 0
        if self.generates:
            self.worker = GenerationEngine(self.predictor, config.max_batch_size, config.max_queue, self.metrics,
                                           prefix_cache_bytes=config.prefix_cache_mb * 2**20)
        else:
            self.worker = ClassifierBatcher(self.predictor, config.max_batch_size, config.max_wait_ms,
                                            config.max_queue, self.metrics, in_flight=lambda: self.inflight)
        self._running = False

    @property
    def task(self) -> str:
        return "generate" if self.generates else "classify"

    def start(self) -> None:
        """Start the worker thread and warm the model up through it; `ready` turns true when that is done."""
        if self._running:
            return
        self._running = True
        self.worker.start()
        if self.generates:
            options = GenerationOptions(max_new_tokens=2)
            self.worker.submit(Ticket(self.predictor.prompt_ids("hello"), options, self._warmed))
        else:
            self.worker.submit(Job(self.predictor.codec.encode(["hello"]), lambda *_: self._warmed()))

    def _warmed(self, chunk: Chunk | None = None) -> None:
        if chunk is None or chunk.finish_reason:
            self.ready = True
            logger.info("%s warmed up and ready", self.config.bundle)

    def close(self) -> None:
        if self._running:
            self.worker.stop()
            self._running = False

    # ---- checks -----------------------------------------------------------------------------------------

    @property
    def routes(self) -> str:
        """What a client of this server calls, for error messages."""
        model = "POST /v1/chat/completions or /v1/completions" if self.generates else "POST /predict or /v1/classify"
        return f"this server serves a {self.task} bundle: use {model}"

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.name!r} "
                                "(GET /v1/models)", param="model")

    def prompt_ids(self, prompt: str | list[dict], param: str) -> list[int]:
        """The prompt's ids as the Predictor formats it; a prompt over the model's limit is refused, not cut."""
        ids = prompt_ids(prompt, self.predictor.prompt_format, self.predictor.codec, None)
        limit = prompt_limit(self.predictor.max_length)
        if limit and len(ids) > limit:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model takes prompts of at most {limit} "
                                f"tokens (half of its max_length {self.predictor.max_length}); shorten the {param}",
                           param=param)
        return ids or self.predictor.prompt_ids(prompt)

    def options(self, body, default_tokens: int) -> GenerationOptions:
        tokens = body.requested_tokens(default_tokens)
        if tokens > self.config.max_tokens_limit:
            raise ApiError(400, f"max_tokens is {tokens}; this server allows at most {self.config.max_tokens_limit} "
                                "(--max-tokens-limit)", param="max_tokens")
        top_p = body.top_p if body.top_p < 1.0 else None
        return GenerationOptions(tokens, body.temperature, body.top_k, top_p, body.seed, tuple(stop_strings(body.stop)))

    def text_ids(self, texts: list[str], truncate: bool, param: str) -> list[list[int]]:
        """Token ids of texts to classify; a text over max_length is refused unless `truncate` is true."""
        if not texts:
            raise ApiError(400, f"{param} is empty; send a text or a non-empty list of texts", param=param)
        if len(texts) > self.config.max_texts:
            raise ApiError(400, f"{param} holds {len(texts)} texts; this server takes at most "
                                f"{self.config.max_texts} per request (--max-texts)", param=param)
        codec, limit = self.predictor.codec, self.predictor.max_length
        if truncate or not limit:
            return codec.encode(texts)
        ids = [codec.encode_one(text, True) for text in texts]
        over = [i for i, row in enumerate(ids) if len(row) > limit]
        if over:
            raise ApiError(400, f"text {over[0]} of {param} is {len(ids[over[0]])} tokens; this model takes at most "
                                f"{limit}; shorten it or send \"truncate\": true", param=param)
        return ids

    # ---- work -------------------------------------------------------------------------------------------

    def _submit(self, work) -> None:
        try:
            self.worker.submit(work)
        except QueueFull as exc:
            self.metrics.rejected.inc()
            raise ApiError(429, f"the server is busy: {exc}; retry later",
                           headers={"Retry-After": RETRY_AFTER_S}) from None

    async def classify(self, ids: list[list[int]]) -> list:
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(predictions, error):
            if future.done():  # timed out already
                return
            if error:
                future.set_exception(ApiError(503, error))
            else:
                future.set_result(predictions)

        self._submit(Job(ids, lambda p, e: loop.call_soon_threadsafe(settle, p, e)))
        try:
            return await asyncio.wait_for(future, self.config.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(504, f"the request took over {self.config.request_timeout_s} s "
                                "(--request-timeout)") from None

    async def generate(self, ids: list[int], options: GenerationOptions) -> AsyncIterator[Chunk]:
        """Queue a generation (429 when the queue is full) and return its chunks as they are decoded.

        Leaving the iteration early (a client gone) cancels the row: it leaves the batch at the next step.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        ticket = Ticket(ids, options, lambda chunk: loop.call_soon_threadsafe(queue.put_nowait, chunk))
        self._submit(ticket)
        return self._chunks(ticket, queue, time.perf_counter())

    async def _chunks(self, ticket: Ticket, queue: asyncio.Queue, started: float) -> AsyncIterator[Chunk]:
        deadline = asyncio.get_running_loop().time() + self.config.request_timeout_s
        first = True
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), deadline - asyncio.get_running_loop().time())
                except asyncio.TimeoutError:
                    raise ApiError(504, f"the request took over {self.config.request_timeout_s} s "
                                        "(--request-timeout)") from None
                if first:
                    self.metrics.first_token(started)
                    first = False
                if chunk.error:
                    raise ApiError(503 if chunk.finish_reason == "cancelled" else 500, chunk.error)
                yield chunk
                if chunk.finish_reason:
                    return
        finally:
            ticket.cancel()
