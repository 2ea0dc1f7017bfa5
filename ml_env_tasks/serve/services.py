"""Services on the engine once started: the labels that mark a service's containers and whose it
is, listing them (the caller's own, or everyone's), a fronted service's scoring containers by
generation, stopping one, its logs. ``local`` starts and replaces services; this finds them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from ..errors import ServiceFailed, UsageError
from ..safe.grammar import SERVICE_NAME, matches, printable

__all__ = ["ServiceInfo", "list_services", "stop", "logs", "owner", "claim", "exit_reason", "LABEL", "OWNER"]

CONTAINER_PORT = 5001
LABEL = "ml-env.serve"  # the container that publishes a service's port: its front, or the scoring container
ROLE = "ml-env.serve.role"  # "front"
BACKEND = "ml-env.serve.backend"  # a fronted service's scoring containers
GENERATION = "ml-env.serve.generation"  # which of them: 1, 2, ... one per --replace
NETWORK = "ml-env.serve.network"
OWNER = "ml-env.serve.owner"  # the uid that started it: `serve list` shows the caller's own


SAID = "ml-env-serve: "  # how the scoring server begins the one line that says why it stopped


def exit_reason(log: str) -> tuple[str, str | None]:
    """Why a scoring container stopped before it was ready, from its log: (``": <the server's
    own line>"`` or ``""``, the hint). The server says at which step (the entry script's import,
    or init()) and, when it knows, what to change; Azure's server says nothing of the kind."""
    said = [line.removeprefix(SAID) for line in log.splitlines() if line.startswith(SAID)]
    if not said:
        return "", "init() failed? its traceback is above"
    return f": {printable(said[-1], 600)}", ("its traceback is above" if "Traceback" in log else None)


def owner() -> str:
    return str(os.getuid())


@dataclass(frozen=True)
class ServiceInfo:
    """A running (or stopped) service found on the engine."""

    name: str
    state: str
    url: str | None
    image: str
    id: str
    owner: str = ""  # the uid that started it ("" for a service an older ml-env started)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _containers() -> Any:
    from .. import engine

    return engine.current().containers


def _endpoint() -> Any:
    from .. import engine

    return engine.current().endpoint


def claim(name: str) -> None:
    """``name`` is a service name no running service has (what is left of a stopped one goes)."""
    if not matches(SERVICE_NAME, name):
        raise UsageError(f"service name {printable(name, 60)!r} is not valid", hint="letters, digits, '_', '.', '-'")
    c = _containers()
    held, stale = c.list_by_label(f"{LABEL}={name}"), ("created", "exited", "dead", "removing", "gone")
    # the listing's state can lag a container that has just exited: a running one is asked again
    states = {i.id: i.state if i.state in stale else c.state(i.id).status for i in held}
    for gone in (i for i in held if states[i.id] in stale):  # never started, stopped or being removed: no service
        c.remove(gone.id)
    if live := [i for i in held if states[i.id] not in stale]:
        raise UsageError(
            f"a service named {name} is already running ({live[0].name}, {live[0].state})",
            hint=f"--replace {name} swaps it, ml-env serve stop {name}, or --name",
        )


def _url(port: int) -> str:
    return f"http://{_endpoint().address}:{port}"


def _network(name: str) -> str:
    return f"ml-env-serve-{name}"


def _current_generation(front_id: str) -> int | None:
    """The generation the front forwards to, from its last control line."""
    found = re.findall(
        r"^ml-env-front: (?:listening on :\d+, )?generation (\d+) -> ", _containers().logs_text(front_id), re.M
    )
    return int(found[-1]) if found else None


def _backends(name: str) -> dict[int, Any]:
    """A fronted service's scoring containers by generation."""
    out = {}
    for info in _containers().list_by_label(f"{BACKEND}={name}"):
        g = info.labels.get(GENERATION, "")
        if g.isascii() and g.isdigit() and len(g) < 10:
            out[int(g)] = info
    return out


def _serving(name: str, front_id: str) -> Any:
    """The scoring container a fronted service forwards to now (None: none)."""
    g = _current_generation(front_id)
    return _backends(name).get(g) if g is not None else None


def _remove_service(name: str) -> None:
    """Every container of a service (its front first, then its scoring containers) and its network."""
    c = _containers()
    for info in c.list_by_label(f"{LABEL}={name}") + c.list_by_label(f"{BACKEND}={name}"):
        c.remove(info.id)
    c.remove_network(_network(name))


def list_services(*, everyone: bool = False) -> list[ServiceInfo]:
    """The services on the engine: the caller's (the uid that started them), or ``everyone``'s."""
    out = []
    for info in _containers().list_by_label(LABEL if everyone else f"{OWNER}={owner()}"):
        if LABEL not in info.labels:
            continue
        name = info.labels.get(LABEL, "")
        ports = [p for p in info.ports if p.container_port == CONTAINER_PORT]
        url = _url(ports[0].host_port) if ports else None
        image, state = info.labels.get("ml-env.image", ""), info.state
        if info.labels.get(ROLE) == "front":  # the image and state of the container it forwards to
            now = _serving(name, info.id)
            image = now.labels.get("ml-env.image", "") if now else ""
            if state == "running":
                state = now.state if now else "no backend"
        out.append(ServiceInfo(name, state, url, image, info.id, info.labels.get(OWNER, "")))
    return out


def _find(name: str) -> str:
    found = _containers().list_by_label(f"{LABEL}={name}")
    if not found:
        raise UsageError(f"no service named {printable(name, 60)}", hint="ml-env serve list")
    return str(found[0].id)


def stop(name: str) -> None:
    _find(name)
    _remove_service(name)


def logs(name: str, tail: int | str = "all") -> str:
    """The scoring container's log (a fronted service's: the one it forwards to now)."""
    cid = _find(name)
    info = next(iter(_containers().list_by_label(f"{LABEL}={name}")))
    if info.labels.get(ROLE) == "front":
        now = _serving(name, cid)
        if now is None:
            raise ServiceFailed(f"{name} has no scoring container", hint=f"ml-env serve stop {name}")
        cid = now.id
    return str(_containers().logs_text(cid, tail=tail))
