"""The local web service: an inference image running the entry script (LocalWebservice analogue).

The entry script's folder is ``$AML_APP_ROOT`` (/var/azureml-app), models are under ``$AZUREML_MODEL_DIR``.

``ml-env serve`` publishes the port from a **front** (``front.py``): a stdlib HTTP forwarder
copied (archive upload) into a container of the service's own image, on a network of the
service's own with its scoring container(s). ``serve --replace NAME`` starts a new scoring
container there, waits until it is ready (on a port the engine picks), writes the front's new
target and sends it SIGHUP, waits until the front says the old container has no request in
flight, and removes it: a client looping on the URL sees no failed request and the port never
changes. Why a front: two containers cannot publish one host port, SO_REUSEPORT does not reach
across network namespaces, and a shared namespace with two listeners drops the connections
queued on the one that closes. The front forwards per request (``Connection: close``
upstream), so a kept-alive client connection is never tied to a scoring container. Smoke tests
(``start(front=False)``) keep one container that publishes its port itself.

A fronted service's containers restart ``on-failure`` (``RESTART_RETRIES`` at most): a crashed
scoring container comes back on the same network and address while the front answers 502 within
``front.CONNECT_TIMEOUT_S``. A smoke test's container is never restarted: its crash is the finding.

The entry script's folder goes in as its snapshot (ignore files honoured; never ``.git``, where
a CI checkout keeps its token), through the Engine API before the container starts. On an
engine that is not a local socket (``tcp://``, ``ssh://``) the models are copied too, the port
is published on the engine host's interfaces (``--port 0``: the engine picks it) and the URL
is the engine's host (``Endpoint.address``) with that port; locally the models are mounted.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from dataclasses import replace as replace_dc
from pathlib import Path
from typing import Any

from ..engine.resources import Resources
from ..errors import ServiceFailed, UsageError
from ..safe.grammar import printable
from . import client
from .services import (
    BACKEND,
    CONTAINER_PORT,
    GENERATION,
    LABEL,
    NETWORK,
    OWNER,
    ROLE,
    ServiceInfo,
    _backends,
    _containers,
    _current_generation,
    _endpoint,
    _network,
    _remove_service,
    _serving,
    _url,
    claim,
    exit_reason,
    list_services,
    logs,
    owner,
    stop,
)

__all__ = ["ServeOptions", "Service", "ServiceInfo", "start", "replace", "current", "stop", "logs", "follow",
           "wait_ready", "remove", "ServiceFailed", "list_services"]  # fmt: skip

APP_ROOT = "/var/azureml-app"
MODEL_ROOT = "/var/azureml-models"
FRONT_DIR = "/ml-env-front"
DRAIN_TIMEOUT_S = 60.0  # how long requests in flight on a replaced container may take to finish
RESTART_RETRIES = 5  # how many times the engine restarts a fronted service's container that exits non-zero
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
    front_id: str | None = None  # the front that publishes the port (``ml-env serve``)
    backend_url: str | None = None  # the scoring container's own URL, behind a front
    entry: tuple[str, str] | None = None  # the entry script's name and its folder's snapshot hash, as copied in

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class _Plan:
    """What a scoring container of ``opts`` runs: its image, server and settings."""

    image: str
    server: str
    python: str
    name: str  # the environment's name: the service's by default
    envs: dict[str, str]
    volumes: list[tuple[str, str, str]]
    copies: list[Any]  # on a remote engine: what is copied in instead of mounted (snapshot.TarPart)
    remote: bool
    entry: tuple[str, str] | None = None  # (name, folder snapshot hash) of the entry copied in


def _plan(opts: ServeOptions, info: Callable[[str], None] | None) -> _Plan:
    from ..build import Reporter
    from ..build.resolve import resolve_environment
    from ..runs.snapshot import TarPart, folder_snapshot, snapshot

    entry = opts.entry
    if entry is not None and not entry.is_file():
        raise UsageError(f"entry script {entry} not found")
    for name, path in opts.models.items():
        if not path.is_dir():
            raise UsageError(f"model {name or ''} directory {path} not found".replace("  ", " "))
    if opts.read_timeout is not None and not 0 < opts.read_timeout <= 3600:
        raise UsageError("--read-timeout must be between 0 and 3600 seconds")
    # its snapshot on every engine, as a run's source: never .git, .ml-env, runs or what is ignored
    app = snapshot(entry.parent, warn=lambda m: info and info("warning: " + m)) if entry is not None else None
    if entry is not None and app is not None and not app.has(entry.name):
        raise UsageError(f"entry script {entry} is ignored by its folder's ignore file")

    class _Say(Reporter):
        def info(self, msg: str) -> None:
            if info:
                info(msg)

    def limits(server: str) -> None:  # asked of a loaded environment file before its build, and of the image
        if server == "azureml" and (opts.max_body or opts.read_timeout is not None):
            raise UsageError(
                "--max-body and --read-timeout set limits of ml-env's own scoring server; this image runs azmlinfsrv "
                '(inference.server = "azureml"), which does not read them'
            )

    resolved = resolve_environment(opts.environment, opts.build, reporter=_Say(stream_logs=False), need_inference=True,
                                   versions=opts.versions, before_build=lambda env: limits(env.inference_server))  # fmt: skip
    server = resolved.inference_server
    limits(server)
    packaged = (resolved.labels or {}).get("ml-env.package.entry")
    if entry is None and not packaged:
        raise UsageError(
            f"--entry is required: {opts.environment} is not a packaged image", hint="or `ml-env package` one"
        )
    if packaged and (entry is not None or opts.models):
        raise UsageError(f"{opts.environment} is a packaged image: it holds its entry script and model already")
    volumes: list[tuple[str, str, str]] = []
    envs: dict[str, str] = {}  # a packaged image has its own AZUREML_* settings
    copies: list[Any] = []
    remote = not _endpoint().local
    if entry is not None and app is not None:  # one unnamed model is AZUREML_MODEL_DIR itself; named ones under it
        models = {(f"{MODEL_ROOT}/{n}" if n else MODEL_ROOT): p for n, p in opts.models.items()}
        copies = [TarPart(APP_ROOT.strip("/"), app)]
        if remote:
            copies += [TarPart(dst.strip("/"), folder_snapshot(p)) for dst, p in models.items()]
        else:
            volumes = [(str(p.resolve()), dst, "ro") for dst, p in models.items()]
        envs = {"AML_APP_ROOT": APP_ROOT, "AZUREML_ENTRY_SCRIPT": entry.name, "AZUREML_MODEL_DIR": MODEL_ROOT}
    if opts.scoring_timeout_ms:
        envs["SCORING_TIMEOUT_MS"] = str(opts.scoring_timeout_ms)
    if opts.workers:
        envs["WORKER_COUNT"] = str(opts.workers)
    if opts.max_body:
        envs["ML_ENV_MAX_BODY_BYTES"] = str(opts.max_body)
    if opts.read_timeout is not None:
        envs["ML_ENV_HEADER_TIMEOUT_S"] = envs["ML_ENV_BODY_TIMEOUT_S"] = str(opts.read_timeout)
    return _Plan(resolved.pinned, server, resolved.python, resolved.name or "service", envs, volumes, copies, remote,
                 (entry.name, app.hash) if entry is not None and app is not None else None)  # fmt: skip


def _copy_in(box: Any, plan: _Plan) -> None:
    """A remote engine's container gets the entry script and the models through the Engine API."""
    if plan.copies:
        from ..runs.snapshot import tar_parts

        box.put_tar(tar_parts(plan.copies), "copying the entry script and models into the container")


def _host_ip(plan: _Plan) -> str:
    return "0.0.0.0" if plan.remote else "127.0.0.1"


def start(
    opts: ServeOptions, *, info: Callable[[str], None] | None = None, unique: bool = False, front: bool = False
) -> Service:
    """Start the scoring container. ``unique``: without ``--name``, a name no other service has
    (a smoke test's container: two jobs on one runner may test one environment at once).
    ``front``: the port is published by a front (``front.py``) that forwards to the scoring
    container, so that ``replace`` can swap it (``ml-env serve``); else by the container itself."""
    c = _containers()
    # a taken port and a given name that is not free: said before the image is built, not after
    port, local = opts.port, _endpoint().local  # remote: the engine's host says whether it is free (0: it picks)
    if local and port and _port_taken(port):
        raise UsageError(f"port {port} on 127.0.0.1 is taken", hint="--port 0 picks a free one")
    if opts.name:
        claim(opts.name)
    plan = _plan(opts, info)
    name = opts.name or (f"{plan.name}-smoke-{os.urandom(3).hex()}" if unique else plan.name)
    if not opts.name:
        claim(name)
    if local and port == 0:
        port = free_port()
    if front:
        service = _start_fronted(plan, name, port, opts)
    else:
        box = c.create(
            plan.image, [], name=f"ml-env-serve-{name}", envs=plan.envs, volumes=plan.volumes,
            labels={LABEL: name, OWNER: owner(), "ml-env.image": plan.image}, workdir=APP_ROOT, user=None, resources=opts.resources,
            ports={CONTAINER_PORT: port}, host_ip=_host_ip(plan),
        )  # fmt: skip
        try:
            _copy_in(box, plan)
            box.start()
            if plan.remote:
                port = box.host_port(CONTAINER_PORT) or port
        except BaseException:
            box.remove()
            raise
        service = Service(name, box.id, _url(port), plan.image, port, plan.server, entry=plan.entry)
    if plan.remote and info:
        info(
            f"the service runs on {_endpoint().describe()}: reached at {service.url} (the engine host's published port)"
        )
    return service


def _front_tar(generation: int, host: str, *, script: bool) -> Iterator[bytes]:
    """The front's files as a tar for the archive upload: its target, and its program."""
    import io
    import tarfile

    files = {"target.json": json.dumps({"generation": generation, "host": host, "port": CONTAINER_PORT}).encode()}
    if script:
        files.update({f: (Path(__file__).parent / f).read_bytes() for f in ("front.py", "front_wire.py")})
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        d = tarfile.TarInfo(FRONT_DIR.lstrip("/"))
        d.type, d.mode, d.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
        tar.addfile(d)
        for fname, data in files.items():
            t = tarfile.TarInfo(f"{FRONT_DIR.lstrip('/')}/{fname}")
            t.size, t.mode, t.mtime = len(data), 0o644, int(time.time())
            tar.addfile(t, io.BytesIO(data))
    yield buf.getvalue()


def _restart_on_failure(box: Any) -> None:
    """The engine restarts the container when it exits non-zero, RESTART_RETRIES times at most
    (set on the created container, before it starts: the Engine API's update)."""
    from ..engine.api import EngineAPIError
    from ..errors import EngineError

    api = _containers().api
    policy = {"RestartPolicy": {"Name": "on-failure", "MaximumRetryCount": RESTART_RETRIES}}
    try:
        api.call("POST", api.path("/containers/{}/update", box.id), json_body=policy)
    except EngineAPIError as e:
        raise EngineError(f"setting the restart policy of {box.name} failed: {e.message}") from None


def _start_backend(plan: _Plan, name: str, generation: int, opts: ServeOptions) -> tuple[str, int]:
    """A scoring container of a fronted service, on its network; its port is published on a port
    the engine picks (on the engine's host), for the readiness check. Returns its id and that port."""
    c = _containers()
    box = c.create(
        plan.image, [], name=f"ml-env-backend-{name}-{generation}", envs=plan.envs, volumes=plan.volumes,
        labels={BACKEND: name, OWNER: owner(), GENERATION: str(generation), "ml-env.image": plan.image}, workdir=APP_ROOT, user=None,
        resources=opts.resources, ports={CONTAINER_PORT: 0}, network=_network(name), host_ip=_host_ip(plan),
    )  # fmt: skip
    try:
        _copy_in(box, plan)
        _restart_on_failure(box)
        box.start()
        return box.id, c.host_port(box.id, CONTAINER_PORT)
    except BaseException:
        box.remove()
        raise


def _start_fronted(plan: _Plan, name: str, port: int, opts: ServeOptions) -> Service:
    c = _containers()
    c.create_network(_network(name), {NETWORK: name})
    try:
        backend, backend_port = _start_backend(plan, name, 1, opts)
        envs = {"PYTHONDONTWRITEBYTECODE": "1"}
        if opts.read_timeout is not None:  # the front keeps the client-side limits of the first container
            envs["ML_ENV_HEADER_TIMEOUT_S"] = envs["ML_ENV_BODY_TIMEOUT_S"] = str(opts.read_timeout)
        if opts.scoring_timeout_ms:
            envs["SCORING_TIMEOUT_MS"] = str(opts.scoring_timeout_ms)
        box = c.create(
            plan.image, [plan.python, f"{FRONT_DIR}/front.py"], name=f"ml-env-serve-{name}", envs=envs, volumes=[],
            labels={LABEL: name, OWNER: owner(), ROLE: "front", "ml-env.image": plan.image}, workdir="/", user=None,
            ports={CONTAINER_PORT: port}, network=_network(name), host_ip=_host_ip(plan),
        )  # fmt: skip
        box.put_tar(_front_tar(1, c.address(backend, _network(name)), script=True))
        _restart_on_failure(box)
        box.start()
        if plan.remote:
            port = box.host_port(CONTAINER_PORT) or port
    except BaseException:
        _remove_service(name)
        raise
    return Service(name, backend, _url(port), plan.image, port, plan.server, front_id=box.id,
                   backend_url=_url(backend_port))  # fmt: skip


def wait_ready(service: Service, timeout: float = 60.0) -> float:
    """Poll the server's readiness route (``READY_PATHS``) with backoff until 200; fail fast if
    the container exits. A fronted service: the scoring container, then the route through its
    front. Returns seconds."""
    t0 = time.monotonic()
    path = READY_PATHS.get(service.server, "/score")
    _poll(service.container_id, (service.backend_url or service.url) + path, t0, timeout)
    if service.front_id:
        _poll(service.front_id, service.url + path, t0, timeout, what="the service's front")
    return time.monotonic() - t0


def _poll(cid: str, url: str, t0: float, timeout: float, what: str = "the scoring container") -> None:
    c = _containers()
    delay = 0.01
    while True:
        state = c.state(cid)
        if state.status not in ("running", "created"):
            why, hint = exit_reason(log := c.logs_text(cid, tail=60))
            raise ServiceFailed(
                f"{what} exited (code {state.exit_code}) before it was ready{why}", details=log, hint=hint
            )
        try:
            if client.request("GET", url, timeout=2).status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        if time.monotonic() - t0 > timeout:
            raise ServiceFailed(f"{what} was not ready after {timeout:.0f}s", details=c.logs_text(cid, tail=60))
        time.sleep(delay)
        delay = min(delay * 1.5, 0.1)


def replace(
    opts: ServeOptions, name: str, *, info: Callable[[str], None] | None = None, ready_timeout: float = 60.0
) -> tuple[Service, float, float]:
    """Swap the scoring container of the running service ``name`` for one of ``opts``, with no
    failed request: start it, wait until it is ready, switch the front to it, wait until the old
    one has no request in flight (``DRAIN_TIMEOUT_S`` at most), remove the old one. A new
    container that is never ready is removed and the old one keeps serving. Returns the service,
    the new container's readiness seconds, and the switch's (from switching to the old one gone)."""
    c = _containers()
    found = c.list_by_label(f"{LABEL}={name}")
    if not found:
        raise UsageError(f"no service named {printable(name, 60)} is running", hint="serve it without --replace first")
    front = found[0]
    if front.labels.get(ROLE) != "front":
        raise UsageError(
            f"{name} was started without a front (an older ml-env): it cannot be replaced in place",
            hint=f"ml-env serve stop {name}, then serve it again",
        )
    if front.state != "running":
        raise ServiceFailed(f"the front of {name} is {front.state}", hint=f"ml-env serve stop {name}")
    ports = [p.host_port for p in front.ports if p.container_port == CONTAINER_PORT]
    if not ports:
        raise ServiceFailed(f"the front of {name} publishes no port", hint=f"ml-env serve stop {name}")
    plan = _plan(opts, info)
    old = _backends(name)
    current = _current_generation(front.id)
    generation = max(old, default=0) + 1
    backend, backend_port = _start_backend(plan, name, generation, opts)
    service = Service(name, backend, _url(ports[0]), plan.image, ports[0], plan.server,
                      front_id=front.id, backend_url=_url(backend_port))  # fmt: skip
    try:
        t0 = time.monotonic()
        _poll(backend, service.backend_url + READY_PATHS.get(plan.server, "/score"), t0, ready_timeout)  # type: ignore[operator]
        ready = time.monotonic() - t0
        t1 = time.monotonic()
        c.put_tar(front.id, _front_tar(generation, c.address(backend, _network(name)), script=False))
        c.kill(front.id, "SIGHUP")
        _await_front(front.id, f"ml-env-front: generation {generation} -> ", 10.0)
    except BaseException:
        c.remove(backend)
        raise
    drain = max(DRAIN_TIMEOUT_S, (opts.scoring_timeout_ms or 0) / 1000 + 5)
    if current is not None and current in old:
        try:
            _await_front(front.id, f"ml-env-front: drained generation {current}", drain)
        except ServiceFailed:
            if info:
                info(f"the old scoring container still had requests after {drain:.0f}s: stopping it")
    for box in old.values():
        c.remove(box.id)
    return service, ready, time.monotonic() - t1


def _await_front(front_id: str, line: str, timeout: float) -> None:
    """Wait until the front's log has ``line`` (it logs its control events only)."""
    c = _containers()
    t0 = time.monotonic()
    while line not in c.logs_text(front_id):
        if time.monotonic() - t0 > timeout:
            raise ServiceFailed(
                f"the service's front did not answer ({line.removeprefix('ml-env-front: ')!r}) within {timeout:.0f}s",
                details=c.logs_text(front_id, tail=20),
            )
        time.sleep(0.01)


def current(service: Service) -> Service | None:
    """The service as it is now when its scoring container was replaced by a running one; else None."""
    if not service.front_id:
        return None
    now = _serving(service.name, service.front_id)
    if now is None or now.id == service.container_id or now.state != "running":
        return None
    return replace_dc(service, container_id=now.id, image=now.labels.get("ml-env.image", ""))


def remove(service: Service) -> None:
    if service.front_id:
        _remove_service(service.name)
    else:
        _containers().remove(service.container_id)


def follow(service: Service) -> Any:
    """The service's log lines as they come, until it stops."""
    return _containers().logs(service.container_id)
