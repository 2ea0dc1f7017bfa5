"""The scoring server that runs inside inference images: Azure ML's score.py contract.

This file is copied into the image as it is and imports only the standard library,
starlette and uvicorn (nothing from ml_env_tasks).

The entry script (``$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT``) defines ``init()``, which loads the
model from ``$AZUREML_MODEL_DIR``, and ``run(raw_data)``, which gets the request body as text
and returns something JSON-serialisable. Optionally it declares ``input_schema`` and
``output_schema`` (JSON Schema dicts) for ``/swagger.json``.

Routes: ``GET /`` liveness; ``GET /score`` readiness (200 once ``init()`` has finished);
``POST /score`` → ``run()``; ``OPTIONS /score``; ``GET /swagger.json`` (404 without a schema).
Errors are JSON ``{"message": ...}`` with 400, 415, 500. ``init()`` raising stops the server
with a non-zero exit and the traceback in the log.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import sys
import time
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

APP_ROOT = os.environ.get("AML_APP_ROOT", "/var/azureml-app")
ENTRY = os.environ.get("AZUREML_ENTRY_SCRIPT", "score.py")
TIMEOUT_S = int(os.environ.get("SCORING_TIMEOUT_MS", "3600000")) / 1000.0
PORT = int(os.environ.get("ML_ENV_SERVE_PORT", "5001"))
WORKERS = int(os.environ.get("WORKER_COUNT", "1"))
JSON_TYPES = ("application/json", "text/plain", "application/octet-stream", "")

log = logging.getLogger("ml-env-serve")


class State:
    module: Any = None
    ready = False


def load_entry() -> Any:
    path = Path(APP_ROOT) / ENTRY
    if not path.is_file():
        raise FileNotFoundError(
            f"entry script {path} not found (AML_APP_ROOT={APP_ROOT}, AZUREML_ENTRY_SCRIPT={ENTRY})"
        )
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location("score", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for fn in ("init", "run"):
        if not callable(getattr(module, fn, None)):
            raise AttributeError(f"entry script {path} defines no {fn}() function")
    return module


@asynccontextmanager
async def lifespan(app: Starlette):
    t0 = time.monotonic()
    try:
        State.module = load_entry()
        await run_in_threadpool(State.module.init)
    except BaseException:
        # the traceback goes to the container log; the process exits non-zero
        traceback.print_exc()
        print("ml-env-serve: init() failed; exiting", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(3)
    State.ready = True
    print(f"ml-env-serve: init() done in {time.monotonic() - t0:.2f}s; ready on :{PORT}", flush=True)
    yield


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


async def liveness(request: Request) -> Response:
    return PlainTextResponse("Healthy")


async def score(request: Request) -> Response:
    if request.method == "GET":
        return PlainTextResponse("Healthy") if State.ready else error(503, "init() has not finished")
    if request.method == "OPTIONS":
        return Response(status_code=200, headers={"Allow": "GET, POST, OPTIONS"})
    if not State.ready:
        return error(503, "init() has not finished")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in JSON_TYPES:
        return error(415, f"unsupported content type {ctype!r}; send application/json")
    body = await request.body()
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        return error(400, "the request body is not UTF-8 text")
    t0 = time.monotonic()
    try:
        result = await asyncio.wait_for(run_in_threadpool(State.module.run, raw), timeout=TIMEOUT_S)
    except TimeoutError:
        return error(500, f"scoring timed out after {int(TIMEOUT_S * 1000)} ms (SCORING_TIMEOUT_MS)")
    except Exception as e:
        traceback.print_exc()
        return error(500, f"run() raised {type(e).__name__}: {e}")
    ms = (time.monotonic() - t0) * 1000
    try:
        payload = json.dumps(result)
    except (TypeError, ValueError) as e:
        return error(500, f"run() returned something that is not JSON-serialisable: {e}")
    return Response(payload, media_type="application/json", headers={"x-ms-run-fn-exec-ms": f"{ms:.3f}"})


async def swagger(request: Request) -> Response:
    m = State.module
    in_s, out_s = getattr(m, "input_schema", None), getattr(m, "output_schema", None)
    if not (isinstance(in_s, dict) or isinstance(out_s, dict)):
        return error(404, "the entry script declares no input_schema or output_schema")
    doc = {
        "swagger": "2.0",
        "info": {"title": ENTRY, "version": "1.0"},
        "schemes": ["http"],
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {
            "/score": {
                "post": {
                    "operationId": "RunMLService",
                    "parameters": [{"name": "body", "in": "body", "required": True, "schema": in_s or {}}],
                    "responses": {
                        "200": {"description": "Success", "schema": out_s or {}},
                        "default": {"description": "Error"},
                    },
                }
            }
        },
    }
    return JSONResponse(doc)


app = Starlette(
    routes=[
        Route("/", liveness, methods=["GET"]),
        Route("/score", score, methods=["GET", "POST", "OPTIONS"]),
        Route("/swagger.json", swagger, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if WORKERS > 1:
        sys.path.insert(0, str(Path(__file__).parent))
        uvicorn.run(f"{Path(__file__).stem}:app", host="0.0.0.0", port=PORT, workers=WORKERS, log_level="warning")
    else:
        uvicorn.run(app, host="0.0.0.0", port=PORT, log_level="warning")


if __name__ == "__main__":
    main()
