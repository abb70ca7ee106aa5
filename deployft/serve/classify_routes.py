"""Classifier routes: `/predict` in the shape of text-embeddings-inference, and `/v1/classify`.

    POST /predict      {"inputs": "text"}         -> [{"label", "score"}, ...] every label, best first
                       {"inputs": ["a", "b"]}     -> [[...], [...]]
    POST /v1/classify  {"input": "text" | [...]}  -> {"data": [{"index", "label", "score", "scores"}], "usage"}
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .schemas import ClassifyRequest, PredictRequest
from .service import Service


def classify_router(service: Service, auth) -> APIRouter:
    # The answers are built from plain str / float / list / dict values, so they go out as JSONResponse directly:
    # FastAPI's jsonable_encoder walk of the same value would give the same bytes at a cost paid on every request.
    router = APIRouter(dependencies=[Depends(auth)], tags=["Classification"])

    @router.post("/predict")
    async def predict(body: PredictRequest, request: Request):
        """Label scores of a text (a list of them) or of each text of a list (a list of lists)."""
        single = isinstance(body.inputs, str)
        texts = [body.inputs] if single else body.inputs
        predictions = await service.classify(service.text_ids(texts, body.truncate, "inputs"), request)
        ranked = [sorted(({"label": k, "score": v} for k, v in p.scores.items()), key=lambda s: -s["score"])
                  for p in predictions]
        return JSONResponse(ranked[0] if single else ranked)

    @router.post("/v1/classify")
    async def classify(body: ClassifyRequest, request: Request):
        """The best label, its score and the score of every label (in the bundle's label order), per text."""
        service.check_model(body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        ids = service.text_ids(texts, body.truncate, "input")
        predictions = await service.classify(ids, request)
        data = [{"index": i, "label": p.label, "score": p.score, "scores": p.scores}
                for i, p in enumerate(predictions)]
        return JSONResponse({"object": "list", "model": service.name, "labels": service.predictor.labels,
                             "data": data, "usage": {"prompt_tokens": sum(len(row) for row in ids)}})

    return router
