"""Which Docker engine: one endpoint per command, and both clients pointed at it.

Precedence, as the docker CLI has it: ``--context NAME`` (the CLI's global option), then
``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), then ``DOCKER_CONTEXT``, then
the docker config's ``currentContext``, then the local socket. python-on-whales (the docker CLI)
is given the same context; the Engine API client (``engine.api``) talks to a ``unix://`` host
directly and to any other through the CLI's ``system dial-stdio`` with the same context, so TLS
and ssh are the CLI's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, UsageError
from ..safe.fsutil import read_bounded
from ..safe.grammar import printable
from ..safe.untrusted import json_loads

if TYPE_CHECKING:
    from .api import EngineAPI

__all__ = ["Endpoint", "current_endpoint", "endpoint_address", "select_context", "selected_context"]

DEFAULT_HOST = "unix:///var/run/docker.sock"
MAX_DOCKER_JSON = 1 * 2**20  # the docker CLI's config.json and a context's meta.json
_selected: list[str | None] = [None]


def select_context(name: str | None) -> None:
    """The context every engine of this process uses (the CLI's ``--context``)."""
    if name is not None and (not name or not all(c.isalnum() or c in "._-" for c in name)):
        raise UsageError(f"--context {printable(name, 60)!r} is not a docker context name")
    _selected[0] = name


def selected_context() -> str | None:
    return _selected[0]


@dataclass(frozen=True)
class Endpoint:
    context: str | None  # a named docker context; None for DOCKER_HOST or the local default
    host: str  # unix:///..., tcp://host:2376, ssh://user@host
    source: str  # what chose it: --context, DOCKER_HOST, DOCKER_CONTEXT, docker config, default

    @property
    def local(self) -> bool:
        return self.host.startswith("unix://") or self.host.startswith("npipe://")

    @property
    def address(self) -> str:
        """Where services this engine publishes are reached from here: the engine's own host
        for ``tcp://HOST:PORT`` and ``ssh://USER@HOST:PORT``, 127.0.0.1 for a local socket."""
        return endpoint_address(self.host)

    def describe(self) -> str:
        name = f"context {self.context}" if self.context else "engine"
        return f"{name} at {self.host} (from {self.source})"

    def api(self, *, timeout: float = 300) -> EngineAPI:
        """The Engine API on this endpoint (see ``engine.api``)."""
        from .api import EngineAPI

        return EngineAPI(self, timeout=timeout)

    def cli_args(self) -> list[str]:
        """docker CLI arguments that reach this endpoint (DOCKER_HOST, DOCKER_CONTEXT and the
        config's current context reach the CLI through its environment, as they reach us)."""
        return ["--context", self.context] if self.context is not None and self.source == "--context" else []

    def cli_options(self) -> dict[str, Any]:
        """Options for python-on-whales' DockerClient (the docker CLI) on this endpoint."""
        if self.context is not None and self.source != "DOCKER_CONTEXT":
            return {"context": self.context}
        return {}  # DOCKER_HOST / DOCKER_CONTEXT / the config: the docker CLI reads them itself


def endpoint_address(host: str) -> str:
    """The host part of an engine URL (an IPv6 literal keeps its brackets, for a URL)."""
    from urllib.parse import urlsplit

    if host.startswith(("unix://", "npipe://")):
        return "127.0.0.1"
    try:
        name = urlsplit(host).hostname
    except ValueError:
        name = None
    if not name:
        raise EngineError(f"the engine host {printable(host, 80)!r} names no host")
    return f"[{name}]" if ":" in name else name


def _config_context() -> str | None:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        name = json_loads(read_bounded(path, MAX_DOCKER_JSON, error=EngineError), error=EngineError, file=str(path))
        name = name.get("currentContext")
    except (OSError, ValueError, AttributeError, EngineError):
        return None
    return name if isinstance(name, str) and name and name != "default" else None


def _context_host(name: str) -> str:
    """The engine host a docker context names, from the CLI's context store
    (``contexts/meta/<sha256 of the name>/meta.json``)."""
    import hashlib

    base = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "contexts" / "meta"
    meta = base / hashlib.sha256(name.encode()).hexdigest() / "meta.json"
    try:
        doc = json_loads(read_bounded(meta, MAX_DOCKER_JSON, error=EngineError), error=EngineError, file=str(meta))
    except FileNotFoundError:
        raise EngineError(f"docker context {printable(name, 60)} does not exist", hint="docker context ls") from None
    except (OSError, ValueError):
        raise EngineError(f"docker context {printable(name, 60)} cannot be read ({meta})") from None
    host = ((doc.get("Endpoints") or {}).get("docker") or {}).get("Host") if isinstance(doc, dict) else None
    return str(host) if isinstance(host, str) and host else DEFAULT_HOST


def current_endpoint(context: str | None = None) -> Endpoint:
    name = context if context is not None else _selected[0]
    if name is not None:
        return Endpoint(name, _context_host(name) if name != "default" else DEFAULT_HOST, "--context")
    if os.environ.get("DOCKER_HOST"):
        return Endpoint(None, os.environ["DOCKER_HOST"], "DOCKER_HOST")
    env_ctx = os.environ.get("DOCKER_CONTEXT")
    if env_ctx and env_ctx != "default":
        return Endpoint(env_ctx, _context_host(env_ctx), "DOCKER_CONTEXT")
    cfg = _config_context()
    if cfg:
        return Endpoint(cfg, _context_host(cfg), "docker config")
    return Endpoint(None, DEFAULT_HOST, "default")
