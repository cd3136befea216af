"""The gateway: the job API over HTTP (FastAPI on uvicorn). Stateless: every fact lives in Redis, so any number
of replicas serve the same jobs.

Routes (docs/jobs.md), one router per concern (jobs/routers/): POST /generate; GET/DELETE /jobs/{id},
GET /jobs/{id}/events (SSE), WS /ws/jobs/{id}, GET /jobs/{id}/image, GET /jobs; GET /queue, GET /healthz,
GET /metrics, GET / (the web page). The OpenAPI document (/openapi.json, /docs) shows the request schema
generated from the contract's field table. Every error is a typed ServingError, answered in one place here.

Run: ``uvicorn jobs.gateway:app`` with ``SDXL_JOBS_CONFIG=config/jobs.yaml``, or ``python -m jobs.gateway``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from handler.contract.errors import ServingError, error_document
from handler.contract.prompts import PromptTokenizers
from handler.contract.reference import json_schema
from handler.contract.settings import HandlerSettings
from handler.contract.steps import StepPlans

from .protocols import a1111, openai_images
from .routers import a1111 as a1111_routes
from .routers import jobs, openai, service, submit
from .services import Services
from .settings import JobSettings, load_api_keys
from .submission import MAX_METADATA_BYTES

log = logging.getLogger(__name__)


def create_app(settings: JobSettings | None = None) -> FastAPI:
    """The gateway for ``settings``: the served model's contract (its yaml's limits and defaults, its
    tokenizers), the API keys, the routers, and the one error mapping."""
    settings = settings or JobSettings.load()
    model = HandlerSettings.from_yaml(yaml.safe_load(Path(settings.model_yaml).read_text()))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.services = Services.connect(settings)
        yield
        await app.state.services.close()

    app = FastAPI(title="sdxl-torchserve jobs", version="1", redoc_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.handler_settings = model
    app.state.tokenizers = PromptTokenizers.load(settings.tokenizer_path) if settings.tokenizer_path else None
    app.state.step_plans = StepPlans.load(settings.step_table_path) if settings.step_table_path else None
    if model.refiner_path and app.state.step_plans is None:
        log.warning("the model has a refiner but step_table_path is unset: step splits are checked only by TorchServe")
    app.state.keys = load_api_keys(settings)

    @app.exception_handler(ServingError)
    async def serving_error(request: Request, exc: ServingError) -> JSONResponse:
        body = next((shape for prefix, shape in ERROR_SHAPES if request.url.path.startswith(prefix)), our_error)
        return JSONResponse(body(exc), status_code=exc.status, headers=getattr(exc, "headers", {}))

    for router in (submit.router, jobs.router, service.router, openai.router, a1111_routes.router):
        app.include_router(router)
    app.openapi = lambda: _openapi(app, model)
    return app


def our_error(exc: ServingError) -> dict[str, Any]:
    return {"error": error_document(exc)}


# Each protocol's routes answer errors in that protocol's shape (the same status and message).
ERROR_SHAPES = (("/v1/", openai_images.error_body), ("/sdapi/", a1111.error_body))


def _openapi(app: FastAPI, model: HandlerSettings) -> dict[str, Any]:
    """FastAPI's document, with POST /generate's body: the request schema (the job API's fields in, the
    transport fields it chooses out)."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schema = json_schema(model.limits, model.defaults, leave_out=(*submit.TRANSPORT_FIELDS, "preview_every"))
        schema["properties"]["webhook"] = {"type": "string", "description": "URL called when the job ends."}
        schema["properties"]["metadata"] = {
            "type": "object",
            "description": f"Kept with the job, at most {MAX_METADATA_BYTES} bytes of UTF-8 JSON.",
        }
        document["paths"]["/generate"]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": schema}},
        }
        app.openapi_schema = document
    return app.openapi_schema


def app_from_environment() -> FastAPI:
    """``uvicorn jobs.gateway:app``: settings from $SDXL_JOBS_CONFIG and SDXL_JOBS_* variables."""
    return create_app(JobSettings.load())


def __getattr__(name: str) -> Any:  # `app` is built on first use, so importing this module has no effect
    if name == "app":
        return app_from_environment()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Run the job API gateway.")
    parser.add_argument("--config", help="jobs yaml (default: $SDXL_JOBS_CONFIG, then built-in defaults)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    settings = JobSettings.load(args.config)
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level="warning",
        ws="websockets",
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
