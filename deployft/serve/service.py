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
from .config import ServeConfig
from .engine import GenerationEngine
from .tickets import Chunk, Ticket
from .queueing import QueueFull
from .http import ApiError
from .metrics import ServeMetrics
from .waiting import Waiting
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
        """True once the warm-up succeeded (False again from SIGTERM on, while the server drains)."""
        self.warmup_error: str | None = None
        """Why the warm-up failed (the server then never turns ready)."""
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

    @property
    def chats(self) -> bool:
        """A generator with a chat template: it answers /v1/chat/completions (else only /v1/completions)."""
        return self.generates and self.predictor.chat_template is not None

    def start(self) -> None:
        """Start the worker thread and warm the model up through it; `ready` turns true when that succeeded."""
        if self._running:
            return
        self.worker.start()
        self._running, self.warmup_error = True, None
        if self.generates:
            options = GenerationOptions(max_new_tokens=2)
            self.worker.submit(Ticket(self.predictor.prompt_ids("hello"), options, self._warm_chunk, counted=False))
        else:
            self.worker.submit(Job(self.predictor.codec.encode(["hello"]), lambda _, error: self._warmed(error),
                                   counted=False))

    def _warm_chunk(self, chunk: Chunk) -> None:
        if chunk.finish_reason:
            self._warmed(chunk.error)

    def _warmed(self, error: str | None) -> None:
        if error:
            self.warmup_error = f"the warm-up request failed: {error}"
            logger.error("%s: %s; /ready stays 503", self.config.bundle, self.warmup_error)
        else:
            self.ready = True
            logger.info("%s warmed up and ready", self.config.bundle)

    def close(self) -> None:
        """Stop the worker (`start` may start it again: the app's lifespan can be entered anew)."""
        self.ready = False
        if self._running:
            self.worker.stop()
            self._running = False

    # ---- checks -----------------------------------------------------------------------------------------

    @property
    def routes(self) -> str:
        """What a client of this server calls, for error messages."""
        model = "POST /v1/chat/completions or /v1/completions" if self.chats else "POST /v1/completions" \
            if self.generates else "POST /predict or /v1/classify"
        return f"this server serves a {self.task} bundle: use {model}"

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"model {model!r} is not served here; this server serves {self.name!r} "
                                "(GET /v1/models)", param="model")

    def prompt_ids(self, prompt: str | list[dict], param: str) -> list[int]:
        """The prompt's ids as the Predictor formats it; a prompt over the model's limit is refused, not cut."""
        if isinstance(prompt, list) and not self.chats:
            raise ApiError(400, "this bundle has no chat template; POST /v1/completions with a prompt",
                           param="messages")
        ids = prompt_ids(prompt, self.predictor.prompt_format, self.predictor.codec, None)
        limit = prompt_limit(self.predictor.max_length)
        if limit and len(ids) > limit:
            raise ApiError(400, f"the prompt is {len(ids)} tokens; this model takes prompts of at most {limit} "
                                f"tokens (half of its max_length {self.predictor.max_length}); shorten the {param}",
                           param=param)
        return ids or self.predictor.prompt_ids(prompt)

    def options(self, body, default_tokens: int) -> GenerationOptions:
        """The request's generation options; left out, max_tokens is `default_tokens` within --max-tokens-limit."""
        tokens, limit = body.requested_tokens(), self.config.max_tokens_limit
        if tokens is None:
            tokens = min(default_tokens, limit)
        elif tokens > limit:
            raise ApiError(400, f"max_tokens is {tokens}; this server allows at most {limit} (--max-tokens-limit)",
                           param="max_tokens")
        top_p = body.top_p if body.top_p < 1.0 else None
        return GenerationOptions(tokens, body.temperature, body.top_k, top_p, body.seed, body.stop)

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

    async def classify(self, ids: list[list[int]], request=None) -> list:
        """Queue texts' ids (429 when the queue is full) and await their predictions; a request that times out
        (504) or whose client leaves (`request`'s channel) is withdrawn from the queue."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def settle(predictions, error):
            if future.done():  # timed out or abandoned already
                return
            if error:
                future.set_exception(ApiError(503, error))
            else:
                future.set_result(predictions)

        job = Job(ids, lambda p, e: loop.call_soon_threadsafe(settle, p, e))
        self._submit(job)
        waiting = Waiting(request, self.config.request_timeout_s)
        try:
            return await waiting.wait(future)
        except BaseException:
            job.cancelled = True
            self.worker.withdraw(job)
            raise
        finally:
            waiting.stop_watching()

    async def generate(self, ids: list[int], options: GenerationOptions, request=None,
                       stream: bool = False) -> AsyncIterator[Chunk]:
        """Queue a generation (429 when the queue is full) and return its chunks as they are decoded.

        A timeout (504) or the client leaving (`request`'s channel; for a `stream`, until its first chunk, after
        which the streamed response watches), or leaving the iteration early, cancels the generation: it leaves
        the queue at once, or the batch at the next step.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Chunk] = asyncio.Queue()
        ticket = Ticket(ids, options, lambda chunk: loop.call_soon_threadsafe(queue.put_nowait, chunk))
        self._submit(ticket)
        waiting = Waiting(request, self.config.request_timeout_s)
        return self._chunks(ticket, queue, waiting, stream, time.perf_counter())

    async def _chunks(self, ticket: Ticket, queue: asyncio.Queue, waiting: Waiting, stream: bool,
                      started: float) -> AsyncIterator[Chunk]:
        first, done = True, False
        try:
            while not done:
                chunk = queue.get_nowait() if not queue.empty() else await waiting.wait(queue.get())
                if first:
                    self.metrics.first_token(started)
                    first = False
                    if stream:
                        waiting.stop_watching()
                done = chunk.finish_reason is not None
                if chunk.error:
                    raise ApiError(503 if chunk.finish_reason == "cancelled" else 500, chunk.error)
                yield chunk
        finally:
            waiting.stop_watching()
            if not done:
                ticket.cancel()
                self.worker.withdraw(ticket)
