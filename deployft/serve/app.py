"""`create_app`: the FastAPI app of one BUNDLE, embeddable in a larger ASGI app.

    GET  /health  alive            GET /ready    model loaded and warmed up (503 before, or if the warm-up failed)
    GET  /metrics Prometheus       GET /         the playground page       GET /docs  OpenAPI docs
    generators: POST /v1/chat/completions, /v1/completions, GET /v1/models (the OpenAI API)
    classifiers: POST /predict (text-embeddings-inference shape), /v1/classify, GET /v1/models
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from ..errors import require
from .config import ServeConfig


def create_app(bundle: str | Path | ServeConfig, predictor=None, start: bool = True, **settings):
    """Build the app of a BUNDLE.

    Args:
        bundle: the BUNDLE folder, or a complete ServeConfig.
        predictor: an already loaded `Predictor` of that bundle (default: loaded here).
        start: start the worker thread and its warm-up now (an app mounted inside another app does not get
            its own lifespan events); the app's lifespan stops it, or call `app.state.service.close()`.
        **settings: ServeConfig fields (max_batch_size, max_queue, api_key, ...).

    Raises:
        MissingDependencyError: fastapi is not installed (`pip install "deployft[serve]"`).
        BundleError, UsageError: the bundle or a setting cannot be used.
    """
    require("fastapi", "serve")
    from fastapi import Depends, FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from .classify_routes import classify_router
    from .guard import Guard
    from .http import install_error_handlers, key_dependency
    from .openai_routes import openai_router
    from .service import Service

    config = bundle if isinstance(bundle, ServeConfig) else ServeConfig(bundle=bundle, **settings)
    service = Service(config, predictor)

    @asynccontextmanager
    async def lifespan(app):
        service.start()
        yield
        service.close()

    app = FastAPI(title=f"deployft: {config.name}", version=_version(), lifespan=lifespan,
                  description=f"A {service.task} bundle served by deployft with ONNX Runtime.", **_telemetry(FastAPI))
    app.state.service = service
    install_error_handlers(app, service.routes)

    auth = key_dependency(config.api_key)
    app.include_router(openai_router(service, auth) if service.generates else classify_router(service, auth))

    @app.get("/v1/models", tags=["OpenAI"], dependencies=[Depends(auth)])
    async def models() -> dict:
        """The one model this server serves (OpenAI's model list)."""
        return {"object": "list", "data": [{"id": service.name, "object": "model", "created": service.started,
                                            "owned_by": "deployft", "task": service.task}]}

    @app.get("/health", tags=["Status"])
    async def health() -> dict:
        """The server is alive (answers even while the model is busy)."""
        return {"status": "ok"}

    @app.get("/ready", tags=["Status"])
    async def ready():
        """The model is loaded and its warm-up succeeded: 200, else 503 (with the `error` when the warm-up failed)."""
        body = {"ready": service.ready, "task": service.task, "model": service.name,
                "device": service.predictor.device, "provider": service.predictor.runtime.provider}
        if service.warmup_error:
            body["error"] = service.warmup_error
        return JSONResponse(body, status_code=200 if service.ready else 503)

    @app.get("/metrics", tags=["Status"], response_class=Response)
    async def metrics():
        """Prometheus metrics."""
        content, media_type = service.metrics.render()
        return Response(content, media_type=media_type)

    async def playground(request) -> HTMLResponse:
        # a plain Starlette route, handed the request: its root_path is the prefix the app is mounted at
        return HTMLResponse(_playground(service, request.scope.get("root_path", "")))

    app.add_route("/", playground, methods=["GET"], include_in_schema=False)

    app.add_middleware(Guard, max_body=config.max_body_bytes, metrics=service.metrics, state=service)
    if start:
        service.start()
    return app


def _playground(service, root: str) -> str:
    """The playground page; its requests go to the routes under `root` (the prefix the app is mounted at)."""
    import json

    page = resources.files("deployft.serve").joinpath("playground.html").read_text(encoding="utf-8")
    route = "/v1/chat/completions" if service.chats else "/v1/completions" if service.generates else "/v1/classify"
    settings = {"task": service.task, "chat": service.chats, "model": service.name, "labels": service.predictor.labels,
                "needsKey": service.config.api_key is not None, "route": root.rstrip("/") + route}
    return page.replace("/*SETTINGS*/{}", json.dumps(settings).replace("</", "<\\/"))


def _telemetry(fastapi_class) -> dict:
    """FastAPI's own OpenTelemetry instrumentation off (FastAPI >= 0.160 has it): /metrics already records every
    request, and the per-request check of the global providers is paid on the event loop even when none is set."""
    import inspect

    if "telemetry" not in inspect.signature(fastapi_class.__init__).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def _version() -> str:
    from .. import __version__

    return __version__
