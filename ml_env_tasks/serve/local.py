"""The local web service: an inference image running the entry script (LocalWebservice analogue).

The entry script's directory is mounted read-only as ``$AML_APP_ROOT`` (/var/azureml-app),
model directories read-only under ``$AZUREML_MODEL_DIR``. The service listens on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ServiceFailed, UsageError
from ..grammar import MODEL_NAME, SERVICE_NAME, matches, printable
from ..resources import Resources
from . import client

__all__ = [
    "ServeOptions",
    "Service",
    "ServiceInfo",
    "start",
    "stop",
    "logs",
    "follow",
    "wait_ready",
    "remove",
    "ServiceFailed",
    "list_services",
    "parse_models",
]

APP_ROOT = "/var/azureml-app"
MODEL_ROOT = "/var/azureml-models"
CONTAINER_PORT = 5001
LABEL = "ml-env.serve"
# readiness, per scoring server: ml-env's answers GET /score once init() is done; azmlinfsrv's
# GET /score would call run(), and its GET / is answered only by a worker that has run init()
READY_PATHS = {"builtin": "/score", "azureml": "/"}


@dataclass(frozen=True)
class ServeOptions:
    environment: str  # an inference environment file, a curated or registered name, or an image reference
    entry: Path | None  # None: a packaged image (``ml-env package``) that holds its entry and model
    models: dict[str, Path]  # {"": path} for a single model mounted at AZUREML_MODEL_DIR itself
    port: int = CONTAINER_PORT  # 0: a free port
    name: str | None = None
    scoring_timeout_ms: int | None = None
    workers: int | None = None
    build: Any = None  # BuildOptions
    resources: Resources = field(default_factory=Resources)  # --cpus/--memory of the container
    max_body: int | None = None  # ML_ENV_MAX_BODY_BYTES for the server (default 16 MiB)
    read_timeout: float | None = None  # the server's deadline for a request's head and for its body
    versions: Path | None = None  # the versions file, for NAME:VERSION environments


@dataclass(frozen=True)
class Service:
    name: str
    container_id: str
    url: str
    image: str
    port: int
    server: str = "builtin"  # the image's scoring server (inference.server)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ServiceInfo:
    """A running (or stopped) service found on the engine."""

    name: str
    state: str
    url: str | None
    image: str
    id: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def parse_models(items: list[str]) -> dict[str, Path]:
    """``--model PATH`` (one model, at AZUREML_MODEL_DIR) or ``--model NAME=PATH`` (several)."""
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = "", item
        elif not matches(MODEL_NAME, name):
            raise UsageError(f"--model: {printable(name, 60)!r} is not a model name")
        if name in out:
            raise UsageError(f"--model {name or '(unnamed)'} given twice")
        out[name] = Path(path)
    if "" in out and len(out) > 1:
        raise UsageError("give either one unnamed --model PATH or several --model NAME=PATH")
    return out


def _containers() -> Any:
    from .. import engine

    return engine.current().containers


def start(opts: ServeOptions, *, info: Callable[[str], None] | None = None, unique: bool = False) -> Service:
    """Start the scoring container. ``unique``: without ``--name``, a name no other service has
    (a smoke test's container: two jobs on one runner may test one environment at once)."""
    from ..build import Reporter
    from ..resolve import resolve_environment

    entry = opts.entry
    if entry is not None and not entry.is_file():
        raise UsageError(f"entry script {entry} not found")
    for name, path in opts.models.items():
        if not path.is_dir():
            raise UsageError(f"model {name or ''} directory {path} not found".replace("  ", " "))

    class _Say(Reporter):
        def info(self, msg: str) -> None:
            if info:
                info(msg)

    resolved = resolve_environment(
        opts.environment, opts.build, reporter=_Say(stream_logs=False), need_inference=True, versions=opts.versions
    )
    image = resolved.pinned
    server = resolved.inference_server
    if server == "azureml" and (opts.max_body or opts.read_timeout is not None):
        raise UsageError(
            "--max-body and --read-timeout set limits of ml-env's own scoring server; this image runs azmlinfsrv "
            '(inference.server = "azureml"), which does not read them'
        )
    packaged = (resolved.labels or {}).get("ml-env.package.entry")
    if entry is None and not packaged:
        raise UsageError(
            f"--entry is required: {opts.environment} is not a packaged image", hint="or `ml-env package` one"
        )
    if packaged and (entry is not None or opts.models):
        raise UsageError(f"{opts.environment} is a packaged image: it holds its entry script and model already")
    name = opts.name or resolved.name or "service"
    if unique and not opts.name:
        name = f"{name}-smoke-{os.urandom(3).hex()}"
    if not matches(SERVICE_NAME, name):
        raise UsageError(f"service name {printable(name, 60)!r} is not valid", hint="letters, digits, '_', '.', '-'")
    c = _containers()
    if c.list_by_label(f"{LABEL}={name}"):
        raise UsageError(f"a service named {name} is already running", hint=f"ml-env serve stop {name}, or --name")
    if opts.port == 0:
        port = free_port()
    else:
        port = opts.port
        if _port_taken(port):
            raise UsageError(f"port {port} on 127.0.0.1 is taken", hint="--port 0 picks a free one")
    # one unnamed model is AZUREML_MODEL_DIR itself; named ones sit under it by name
    volumes: list[tuple[str, str, str]] = []
    envs: dict[str, str] = {}  # a packaged image has its own AZUREML_* settings
    if entry is not None:
        volumes = [(str(entry.parent.resolve()), APP_ROOT, "ro")]
        volumes += [(str(p.resolve()), f"{MODEL_ROOT}/{n}" if n else MODEL_ROOT, "ro") for n, p in opts.models.items()]
        envs = {"AML_APP_ROOT": APP_ROOT, "AZUREML_ENTRY_SCRIPT": entry.name, "AZUREML_MODEL_DIR": MODEL_ROOT}
    if opts.scoring_timeout_ms:
        envs["SCORING_TIMEOUT_MS"] = str(opts.scoring_timeout_ms)
    if opts.workers:
        envs["WORKER_COUNT"] = str(opts.workers)
    if opts.max_body:
        envs["ML_ENV_MAX_BODY_BYTES"] = str(opts.max_body)
    if opts.read_timeout is not None:
        if not 0 < opts.read_timeout <= 3600:
            raise UsageError("--read-timeout must be between 0 and 3600 seconds")
        envs["ML_ENV_HEADER_TIMEOUT_S"] = envs["ML_ENV_BODY_TIMEOUT_S"] = str(opts.read_timeout)
    box = c.create(
        image, [], name=f"ml-env-serve-{name}", envs=envs, volumes=volumes, labels={LABEL: name, "ml-env.image": image},
        workdir=APP_ROOT, user=None, resources=opts.resources, ports={CONTAINER_PORT: port},
    )  # fmt: skip
    try:
        box.start()
    except BaseException:
        box.remove()
        raise
    return Service(name, box.id, f"http://127.0.0.1:{port}", image, port, server)


def wait_ready(service: Service, timeout: float = 60.0) -> float:
    """Poll the server's readiness route (``READY_PATHS``) with backoff until 200; fail fast if
    the container exits. Returns seconds."""
    c = _containers()
    path = READY_PATHS.get(service.server, "/score")
    t0 = time.monotonic()
    delay = 0.01
    while True:
        state = c.state(service.container_id)
        if state.status not in ("running", "created"):
            raise ServiceFailed(
                f"the scoring container exited (code {state.exit_code}) before it was ready",
                details=c.logs_text(service.container_id, tail=60),
                hint="init() failed? its traceback is above",
            )
        try:
            if client.request("GET", service.url + path, timeout=2).status == 200:
                return time.monotonic() - t0
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - t0 > timeout:
            raise ServiceFailed(
                f"the scoring container was not ready after {timeout:.0f}s",
                details=c.logs_text(service.container_id, tail=60),
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def remove(service: Service) -> None:
    _containers().remove(service.container_id)


def follow(service: Service) -> Any:
    """The service's log lines as they come, until it stops."""
    return _containers().logs(service.container_id)


def list_services() -> list[ServiceInfo]:
    out = []
    for info in _containers().list_by_label(LABEL):
        ports = [p for p in info.ports if p.container_port == CONTAINER_PORT]
        url = f"http://127.0.0.1:{ports[0].host_port}" if ports else None
        out.append(
            ServiceInfo(info.labels.get(LABEL, ""), info.state, url, info.labels.get("ml-env.image", ""), info.id)
        )
    return out


def _find(name: str) -> str:
    found = _containers().list_by_label(f"{LABEL}={name}")
    if not found:
        raise UsageError(f"no service named {printable(name, 60)}", hint="ml-env serve list")
    return str(found[0].id)


def stop(name: str) -> None:
    _containers().remove(_find(name))


def logs(name: str, tail: int | str = "all") -> str:
    return str(_containers().logs_text(_find(name), tail=tail))
