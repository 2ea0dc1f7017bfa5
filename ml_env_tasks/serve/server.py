"""The scoring server that runs inside inference images: Azure ML's score.py contract.

This file is copied into the image as it is and imports only the standard library,
starlette and uvicorn (nothing from ml_env_tasks).

The entry script (``$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT``) defines ``init()``, which loads the
model from ``$AZUREML_MODEL_DIR``, and ``run(raw_data)``, which gets the request body as text
and returns something JSON-serialisable. Optionally it declares ``input_schema`` and
``output_schema`` (JSON Schema dicts) for ``/swagger.json``.

Scripts written for Azure's own server work where that needs nothing of Flask: a ``run``
decorated with Microsoft's inference-schema (``@input_schema("data", NumpyParameterType(...))``,
when the image has ``inference-schema``) gets the JSON body's keys as its named parameters, as
azmlinfsrv does, and its schemas make ``/swagger.json``; a ``run(..., request_headers)`` gets the
headers. A ``@rawhttp`` script (AMLRequest/AMLResponse are Flask objects) or one importing
``azureml_inference_server_http`` cannot run here: the server says so in one line of the log
(set ``inference.server = "azureml"``) and exits non-zero, before it is ready.

Routes: ``GET /`` liveness; ``GET /score`` readiness (200 once ``init()`` has finished);
``POST /score`` → ``run()``; ``OPTIONS /score``; ``GET /swagger.json`` (404 without a schema).
Errors are JSON ``{"message": ...}`` with 400, 408, 413, 415, 500. ``init()`` raising stops the
server with a non-zero exit and the traceback in the log.

Clients are untrusted: a request body over ``ML_ENV_MAX_BODY_BYTES`` (default 16 MiB) gets 413
before it is read whole; a body not received within ``ML_ENV_BODY_TIMEOUT_S`` (30 s) gets 408;
a client that goes away mid-body leaves nothing in the log;
a connection that has not sent a complete request head within ``ML_ENV_HEADER_TIMEOUT_S``
(10 s) is closed; at most ``ML_ENV_MAX_CONNECTIONS`` (64) connections are served at once
(503 beyond, uvicorn's own limit).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import inspect
import json
import logging
import os
import re
import sys
import time
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

APP_ROOT = os.environ.get("AML_APP_ROOT", "/var/azureml-app")
ENTRY = os.environ.get("AZUREML_ENTRY_SCRIPT", "score.py")
TIMEOUT_S = int(os.environ.get("SCORING_TIMEOUT_MS", "3600000")) / 1000.0
PORT = int(os.environ.get("ML_ENV_SERVE_PORT", "5001"))
WORKERS = int(os.environ.get("WORKER_COUNT", "1"))
MAX_BODY = int(os.environ.get("ML_ENV_MAX_BODY_BYTES", str(16 * 2**20)))
BODY_TIMEOUT_S = float(os.environ.get("ML_ENV_BODY_TIMEOUT_S", "30"))
HEADER_TIMEOUT_S = float(os.environ.get("ML_ENV_HEADER_TIMEOUT_S", "10"))
MAX_CONNECTIONS = int(os.environ.get("ML_ENV_MAX_CONNECTIONS", "64"))
JSON_TYPES = ("application/json", "text/plain", "application/octet-stream", "")

log = logging.getLogger("ml-env-serve")


class State:
    module: Any = None
    ready = False
    schema_params: list[inspect.Parameter] | None = None  # an inference-schema decorated run(): what it takes
    headers = False  # run() takes request_headers (Azure's contract)


class NeedsAzureml(Exception):
    """The entry script is written for azmlinfsrv in a way this server cannot serve, or needs a
    part of Azure's SDK the image lacks: one line says what to change."""


AZUREML_HINT = 'set inference.server = "azureml" in the environment file'


def _import_entry(spec: Any, module: Any, path: Path) -> None:
    try:
        spec.loader.exec_module(module)
    except ModuleNotFoundError as e:
        root = (e.name or "").split(".")[0]
        if root == "azureml_inference_server_http":
            raise NeedsAzureml(
                f"the entry script {path} imports {e.name} (Azure's scoring server): {AZUREML_HINT}"
            ) from None
        if root == "azureml":  # only the top name is missing: the script says which module it wanted
            named = re.findall(r"\bazureml(?:\.\w+)+", path.read_text(errors="replace")[: 2**20]) or ["azureml"]
            rawhttp = [n for n in named if n.startswith("azureml.contrib.services")]
            if rawhttp:
                raise NeedsAzureml(
                    f"the entry script {path} imports {rawhttp[0]} (@rawhttp, AMLRequest/AMLResponse of Azure's "
                    f"SDK v1): {AZUREML_HINT}, and import them from azureml_inference_server_http.api.aml_request "
                    "and .aml_response"
                ) from None
            raise NeedsAzureml(
                f"the entry script {path} imports {named[0]} (Azure ML's SDK v1), which this image lacks: add the "
                "package that has it to python.packages, or drop the import"
            ) from None
        if root == "inference_schema":
            raise NeedsAzureml(
                f"the entry script {path} imports inference_schema, which this image lacks: add inference-schema "
                f"to python.packages, or {AZUREML_HINT}"
            ) from None
        raise


def analyse_run(module: Any) -> None:
    """How run() is called: the body as text (plain), or the body's keys as named parameters
    (inference-schema decorated, as azmlinfsrv calls it); ``@rawhttp`` is refused."""
    aml = sys.modules.get("azureml_inference_server_http.api.aml_request")
    if aml is not None and getattr(aml, "_rawHttpRequested", False):
        raise NeedsAzureml(f"run() is decorated with @rawhttp (it takes a Flask AMLRequest): {AZUREML_HINT}")
    params = list(inspect.signature(module.run).parameters.values())
    State.headers = any(p.name == "request_headers" for p in params)
    schema = sys.modules.get("inference_schema.schema_util")
    if schema is not None and schema.is_schema_decorated(module.run):
        State.schema_params = [p for p in params if p.name != "request_headers"]


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
    _import_entry(spec, module, path)
    for fn in ("init", "run"):
        if not callable(getattr(module, fn, None)):
            raise AttributeError(f"entry script {path} defines no {fn}() function")
    analyse_run(module)
    return module


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    t0 = time.monotonic()
    step = "importing the entry script failed (before init())"
    try:
        State.module = load_entry()
        step = "init() failed"
        await run_in_threadpool(State.module.init)
    except NeedsAzureml as e:
        print(f"ml-env-serve: {e}", file=sys.stderr, flush=True)  # one line, no traceback: nothing to debug
        os._exit(3)
    except BaseException:
        # the traceback goes to the container log; the process exits non-zero
        traceback.print_exc()
        print(f"ml-env-serve: {step}; exiting", file=sys.stderr, flush=True)
        sys.stderr.flush()
        os._exit(3)
    State.ready = True
    print(f"ml-env-serve: init() done in {time.monotonic() - t0:.2f}s; ready on :{PORT}", flush=True)
    yield


def error(status: int, message: str, *, close: bool = False) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers={"Connection": "close"} if close else None)


class _TooLarge(Exception):
    pass


async def read_body(request: Request) -> bytes | Response:
    """The request body, or the error response: 413 over MAX_BODY (before it is all read), 408
    when it does not arrive within BODY_TIMEOUT_S. A client that goes away before its body is
    complete gets a 400 nobody reads and leaves nothing in the log (a client cannot fill it)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > MAX_BODY:
        return error(413, f"the request body is over {MAX_BODY} bytes (ML_ENV_MAX_BODY_BYTES)", close=True)
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY:
                raise _TooLarge
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=BODY_TIMEOUT_S)
    except _TooLarge:
        return error(413, f"the request body is over {MAX_BODY} bytes (ML_ENV_MAX_BODY_BYTES)", close=True)
    except TimeoutError:
        return error(408, f"the request body did not arrive within {BODY_TIMEOUT_S:g} s", close=True)
    except ClientDisconnect:
        return error(400, "the client went away before its request body was complete", close=True)
    return b"".join(chunks)


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
    body = await read_body(request)
    if isinstance(body, Response):
        return body
    try:
        raw = body.decode("utf-8")
    except UnicodeDecodeError:
        return error(400, "the request body is not UTF-8 text")
    call = run_call(raw, request)
    if isinstance(call, Response):
        return call
    t0 = time.monotonic()
    try:
        result = await asyncio.wait_for(run_in_threadpool(call), timeout=TIMEOUT_S)
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


def run_call(raw: str, request: Request) -> Any:
    """run() bound to this request's input, or the 400 for a body a decorated run() cannot take
    (the same checks and messages as azmlinfsrv's)."""
    run = State.module.run
    if State.schema_params is None:
        call = functools.partial(run, raw)
    else:
        try:
            doc = json.loads(raw)
        except ValueError as e:
            return error(400, f"POST body could not be decoded as JSON: {e}")
        if not isinstance(doc, dict):
            return error(400, "POST body should be a JSON dictionary.")
        kwargs = {}
        for p in State.schema_params:
            value = doc.get(p.name, p.default)
            if value is inspect.Parameter.empty:
                return error(400, f"A value is not provided for the {p.name!r} parameter.")
            kwargs[p.name] = value
        call = functools.partial(run, **kwargs)
    if State.headers:
        call = functools.partial(call, request_headers=dict(request.headers))
    return call


def schemas() -> tuple[Any, Any]:
    """The entry script's input and output schemas: inference-schema's from a decorated run(),
    or the module's ``input_schema``/``output_schema`` dicts."""
    m = State.module
    if State.schema_params is not None:
        util = sys.modules["inference_schema.schema_util"]
        return util.get_input_schema(m.run), util.get_output_schema(m.run)
    in_s, out_s = getattr(m, "input_schema", None), getattr(m, "output_schema", None)
    return (in_s if isinstance(in_s, dict) else None), (out_s if isinstance(out_s, dict) else None)


async def swagger(request: Request) -> Response:
    in_s, out_s = schemas()
    if in_s is None and out_s is None:
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
                    "parameters": [
                        {
                            "name": "body",
                            "in": "body",
                            "required": True,
                            "schema": {"$ref": "#/definitions/ServiceInput"},
                        }
                    ],
                    "responses": {
                        "200": {"description": "Success", "schema": {"$ref": "#/definitions/ServiceOutput"}},
                        "default": {"description": "Error"},
                    },
                }
            }
        },
        # the names azmlinfsrv's swagger uses, so a client reads either server's the same way
        "definitions": {"ServiceInput": in_s or {}, "ServiceOutput": out_s or {}},
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


from uvicorn.protocols.http.h11_impl import H11Protocol  # noqa: E402


class TimedH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for the request head: a client that opens a
    connection (or keeps one alive) and trickles its headers is cut off after HEADER_TIMEOUT_S."""

    _head_deadline: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        self._disarm()
        self._head_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timeout(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:  # a complete request head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def main() -> None:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    limits = {"limit_concurrency": MAX_CONNECTIONS, "timeout_keep_alive": 5, "log_level": "warning"}
    if WORKERS > 1:
        sys.path.insert(0, str(Path(__file__).parent))
        stem = Path(__file__).stem
        uvicorn.run(f"{stem}:app", host="0.0.0.0", port=PORT, workers=WORKERS, http=f"{stem}:TimedH11", **limits)
    else:
        uvicorn.run(app, host="0.0.0.0", port=PORT, http=TimedH11, **limits)


if __name__ == "__main__":
    main()
