"""Which Docker engine: one endpoint per command, and both clients pointed at it.

Precedence, as the docker CLI has it: ``--context NAME`` (the CLI's global option), then
``DOCKER_HOST`` (with ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH``), then ``DOCKER_CONTEXT``, then
the docker config's ``currentContext``, then the local socket. python-on-whales is given the
same context (or host); docker-py is built from docker-py's own reading of that context
(``docker.context.ContextAPI``), because ``docker.from_env()`` ignores contexts (docker-py#3146).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError, UsageError
from ..grammar import printable

__all__ = ["Endpoint", "current_endpoint", "select_context", "selected_context"]

DEFAULT_HOST = "unix:///var/run/docker.sock"
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

    def describe(self) -> str:
        name = f"context {self.context}" if self.context else "engine"
        return f"{name} at {self.host} (from {self.source})"

    def docker_py(self, *, timeout: int = 300) -> Any:
        """A docker-py APIClient for this endpoint."""
        import docker
        import docker.errors

        try:
            if self.context is not None:
                from docker.context import ContextAPI

                ctx = ContextAPI.get_context(self.context)
                if ctx is None:
                    raise EngineError(f"docker context {self.context} does not exist", hint="docker context ls")
                return docker.APIClient(
                    base_url=ctx.Host, tls=ctx.TLSConfig, version="auto", timeout=timeout,
                    use_ssh_client=str(ctx.Host).startswith("ssh://"),
                )  # fmt: skip
            if self.source == "DOCKER_HOST":
                from docker.utils import kwargs_from_env

                kw = kwargs_from_env()
                return docker.APIClient(
                    version="auto", timeout=timeout, use_ssh_client=self.host.startswith("ssh://"), **kw
                )
            return docker.APIClient(base_url=self.host, version="auto", timeout=timeout)
        except docker.errors.DockerException as e:
            raise EngineError(f"the Docker engine ({self.describe()}) is not reachable", details=str(e)[:500]) from None

    def cli_options(self) -> dict[str, Any]:
        """Options for python-on-whales' DockerClient (the docker CLI) on this endpoint."""
        if self.context is not None and self.source != "DOCKER_CONTEXT":
            return {"context": self.context}
        return {}  # DOCKER_HOST / DOCKER_CONTEXT / the config: the docker CLI reads them itself


def _config_context() -> str | None:
    path = Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"
    try:
        name = json.loads(path.read_text()).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name and name != "default" else None


def _context_host(name: str) -> str:
    from docker.context import ContextAPI

    try:
        ctx = ContextAPI.get_context(name)
    except Exception as e:  # docker-py raises its own errors for a broken context store
        raise EngineError(f"docker context {name} cannot be read: {type(e).__name__}") from None
    if ctx is None:
        raise EngineError(f"docker context {printable(name, 60)} does not exist", hint="docker context ls")
    return str(ctx.Host or DEFAULT_HOST)


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
