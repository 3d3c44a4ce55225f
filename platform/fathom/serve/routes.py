"""The HTTP surface (FastAPI): OpenAI routes, health, readiness, metrics, and error mapping.

Routes:
- `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`: OpenAI's API.
- `POST /tokenize`, `POST /detokenize`: vLLM's (fathom.serve.tokenization); not metered.
- `GET /health`: liveness, 200 while the ingress runs (503 once draining on shutdown).
- `GET /health/ready`: readiness, 503 until a model replica has loaded its model, then 200
  with the model's id and max_model_len (Kubernetes readinessProbe, load balancers).
- `GET /metrics`: Prometheus text.
- `GET /v1/usage`: metered usage and cost (fathom.tenancy.gate.TenancyGate.usage); with
  `format=csv` or `format=jsonl`, one row per tenant, model and hour (fathom.tenancy.export).
Every error, including unknown routes and internal failures, is OpenAI's error JSON; no
stack trace reaches a client. With tenants on, every route but `/health` and `/health/ready`
needs a key (401 comes before 404); `/metrics` lists every tenant's usage, so it needs an admin
tenant's key or the operator's scrape key (`metrics_key_file`; fathom.tenancy.gate), else 403.
No answer shows the model's path (`root` is the served name).
"""

import logging
import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from fathom.api.openai_error import APIError
from fathom.serve.frontend import NOT_READY_RETRY_AFTER_S, Frontend
from fathom.serve.protocol import ModelCard, ModelList
from fathom.telemetry.http import TracingMiddleware, fastapi_kwargs
from fathom.tenancy.export import MEDIA_TYPES as USAGE_MEDIA_TYPES

logger = logging.getLogger("fathom.serve")


PUBLIC_PATHS = frozenset({"/health", "/health/ready"})


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers())


def build_api(frontend: Frontend) -> FastAPI:
    app = FastAPI(title="Fathom", docs_url=None, redoc_url=None, openapi_url=None, **fastapi_kwargs())
    app.state.frontend = frontend
    app.state.model_info = None
    created = int(time.time())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await frontend.openai("chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await frontend.openai("completion", request)

    @app.post("/tokenize")
    async def tokenize(request: Request) -> Response:
        return await frontend.tokenization("tokenize", request)

    @app.post("/detokenize")
    async def detokenize(request: Request) -> Response:
        return await frontend.tokenization("detokenize", request)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        tenant = frontend.tenancy.authenticate(request.headers.get("authorization"))
        info = app.state.model_info or {}
        card = ModelCard(id=frontend.model_name, created=created, root=frontend.model_name,
                         max_model_len=info.get("max_model_len"))
        cards = [card] if tenant.allows_model(frontend.model_name) else []
        return JSONResponse(ModelList(data=cards).model_dump())

    @app.get("/health")
    async def health() -> Response:
        if frontend.draining:
            return error_response(APIError(503, "shutting down", retry_after=NOT_READY_RETRY_AFTER_S))
        return JSONResponse({"status": "ok"})

    @app.get("/health/ready")
    async def ready() -> Response:
        if app.state.model_info is None and not frontend.draining:
            app.state.model_info = await frontend.backend.ready()
        if app.state.model_info is None or frontend.draining:
            msg = "shutting down" if frontend.draining else "model is loading"
            return error_response(APIError(503, msg, code="not_ready", retry_after=NOT_READY_RETRY_AFTER_S))
        return JSONResponse({"status": "ready", "model": frontend.model_name,
                             "max_model_len": app.state.model_info.get("max_model_len")})

    @app.get("/v1/usage")
    async def usage(request: Request) -> Response:
        tenant = frontend.tenancy.authenticate(request.headers.get("authorization"))
        fmt = request.query_params.get("format", "json")
        if fmt == "json":
            return JSONResponse(await frontend.tenancy.usage(tenant, request.query_params))
        if fmt not in USAGE_MEDIA_TYPES:
            raise APIError(400, f"format must be json, csv or jsonl, got {fmt!r}", param="format")
        body = await frontend.tenancy.usage_export(tenant, request.query_params, fmt)
        return Response(body, media_type=USAGE_MEDIA_TYPES[fmt])

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        frontend.tenancy.authorize_metrics(request.headers.get("authorization"))
        return Response(await frontend.metrics.render(), media_type=frontend.metrics.content_type)

    _add_error_handlers(app, frontend)
    app.add_middleware(TracingMiddleware)  # SERVER span enrichment, traceparent in responses
    return app


def _add_error_handlers(app: FastAPI, frontend: Frontend) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> Response:
        frontend.metrics.request_done(err.status, getattr(request.state, "tenant", "default"))
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if not frontend.tenancy.open and request.url.path not in PUBLIC_PATHS:
            try:  # an unauthenticated caller learns nothing, not even which routes exist
                frontend.tenancy.authenticate(request.headers.get("authorization"))
            except APIError as err:
                return error_response(err)
        msg = f"{request.method} {request.url.path[:200]}: {exc.detail}"
        return error_response(APIError(exc.status_code, msg, code=str(exc.status_code)))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(APIError(422, str(exc.errors()[0].get("msg", "invalid request"))))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s", request.url.path)
        frontend.metrics.request_done(500)
        return error_response(APIError(500, f"internal error ({type(exc).__name__})", code="internal_error"))
