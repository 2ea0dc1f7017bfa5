"""The local web service: an inference image running the entry script (LocalWebservice analogue).

The entry script's directory is mounted read-only as ``$AML_APP_ROOT`` (/var/azureml-app),
model directories read-only under ``$AZUREML_MODEL_DIR``. The service listens on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ..errors import MlEnvError, ServiceFailed, SpecError, UsageError
from ..grammar import MODEL_NAME, SERVICE_NAME, matches, printable
from ..resources import Resources

__all__ = ["ServeOptions", "Service", "start", "stop", "logs", "wait_ready", "ServiceFailed", "list_services"]

APP_ROOT = "/var/azureml-app"
MODEL_ROOT = "/var/azureml-models"
CONTAINER_PORT = 5001
LABEL = "ml-env.serve"


@dataclass(frozen=True)
class ServeOptions:
    env: str  # an inference environment file, or an image reference
    entry: Path
    models: dict[str, Path]  # {"": path} for a single model mounted at AZUREML_MODEL_DIR itself
    port: int = CONTAINER_PORT  # 0: a free port
    name: str | None = None
    scoring_timeout_ms: int | None = None
    workers: int | None = None
    build: Any = None  # BuildOptions
    resources: Resources = field(default_factory=Resources)  # --cpus/--memory of the container
    max_body: int | None = None  # ML_ENV_MAX_BODY_BYTES for the server (default 16 MiB)
    read_timeout: float | None = None  # the server's deadline for a request's head and for its body


@dataclass(frozen=True)
class Service:
    name: str
    container_id: str
    url: str
    image: str
    port: int


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
            raise MlEnvError(f"--model {name or '(unnamed)'} given twice")
        out[name] = Path(path)
    if "" in out and len(out) > 1:
        raise MlEnvError("give either one unnamed --model PATH or several --model NAME=PATH")
    return out


def resolve_image(env: str, build_opts: Any, info: Any = None) -> tuple[str, str | None]:
    """(image reference, environment name) for an inference environment file or an image ref."""
    p = Path(env)
    if p.suffix == ".toml" or p.exists():
        from .. import spec
        from ..build import BuildOptions, Reporter, build

        loaded = spec.load(p)
        if not loaded.inference:
            raise SpecError(
                "this environment has no scoring server", file=str(p), key="inference", hint="set inference = true"
            )
        opts = build_opts or BuildOptions()
        result = build(p, opts, Reporter(stream_logs=False))
        if info:
            info(f"environment {result.name}: {'built' if result.built else 'reused'} {result.image}")
        image = f"{result.image}@{result.digest}" if opts.registry and result.digest else result.image
        return image, result.name
    from ..spec import check_image_ref

    check_image_ref(env, None, "--env")
    return env, None


def start(opts: ServeOptions, *, info: Any = None) -> Service:
    from ..engine import Containers

    entry = opts.entry
    if not entry.is_file():
        raise MlEnvError(f"entry script {entry} not found")
    for name, path in opts.models.items():
        if not path.is_dir():
            raise MlEnvError(f"model {name or ''} directory {path} not found".replace("  ", " "))
    image, env_name = resolve_image(opts.env, opts.build, info)
    name = opts.name or env_name or "service"
    if not matches(SERVICE_NAME, name):
        raise UsageError(f"service name {printable(name, 60)!r} is not valid", hint="letters, digits, '_', '.', '-'")
    c = Containers()
    if c.list_by_label(f"{LABEL}={name}"):
        raise MlEnvError(f"a service named {name} is already running", hint=f"ml-env serve stop {name}, or --name")
    if opts.port == 0:
        port = free_port()
    else:
        port = opts.port
        if _port_taken(port):
            raise MlEnvError(f"port {port} on 127.0.0.1 is taken", hint="--port 0 picks a free one")
    # one unnamed model is AZUREML_MODEL_DIR itself; named ones sit under it by name
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
    cid = c.create(
        image,
        [],
        name=f"ml-env-serve-{name}",
        envs=envs,
        volumes=volumes,
        labels={LABEL: name, "ml-env.image": image},
        workdir=APP_ROOT,
        user=None,
        resources=opts.resources,
        ports={CONTAINER_PORT: port},
    )
    try:
        c.start(cid)
    except BaseException:
        c.remove(cid)
        raise
    return Service(name, cid, f"http://127.0.0.1:{port}", image, port)


def wait_ready(service: Service, timeout: float = 60.0) -> float:
    """Poll ``GET /score`` with backoff until 200; fail fast if the container exits. Returns seconds."""
    from ..engine import Containers

    c = Containers()
    t0 = time.monotonic()
    delay = 0.02
    while True:
        state, code = c.status(service.container_id)
        if state not in ("running", "created"):
            raise ServiceFailed(
                f"the scoring container exited (code {code}) before it was ready",
                details=c.logs_text(service.container_id, tail=60),
                hint="init() failed? its traceback is above",
            )
        try:
            r = requests.get(service.url + "/score", timeout=2)
            if r.status_code == 200:
                return time.monotonic() - t0
        except requests.RequestException:
            pass
        if time.monotonic() - t0 > timeout:
            raise ServiceFailed(
                f"the scoring container was not ready after {timeout:.0f}s",
                details=c.logs_text(service.container_id, tail=60),
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def remove(service: Service) -> None:
    from ..engine import Containers

    Containers().remove(service.container_id)


def list_services() -> list[dict[str, Any]]:
    from ..engine import Containers

    out = []
    for info in Containers().list_by_label(LABEL):
        ports = [p for p in info["ports"] if p.get("PrivatePort") == CONTAINER_PORT and p.get("PublicPort")]
        url = f"http://127.0.0.1:{ports[0]['PublicPort']}" if ports else None
        out.append(
            {
                "name": info["labels"].get(LABEL),
                "state": info["state"],
                "url": url,
                "image": info["labels"].get("ml-env.image"),
                "id": info["id"],
            }
        )
    return out


def _find(name: str) -> str:
    from ..engine import Containers

    found = Containers().list_by_label(f"{LABEL}={name}")
    if not found:
        raise MlEnvError(f"no service named {name}", hint="ml-env serve list")
    return str(found[0]["id"])


def stop(name: str) -> None:
    from ..engine import Containers

    Containers().remove(_find(name))


def logs(name: str, tail: int | str = "all") -> str:
    from ..engine import Containers

    return Containers().logs_text(_find(name), tail=tail)
