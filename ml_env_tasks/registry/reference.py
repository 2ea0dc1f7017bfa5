"""Image references and registry hosts: the grammar, Docker Hub's naming rule, loopback."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError
from ..safe.grammar import printable
from .constants import HOST_RE
from .refs import DOCKER_HUB, IMAGE_RE

__all__ = ["Reference", "ManifestInfo", "parse_ref", "check_registry_host", "is_loopback", "repository_named"]


@dataclass(frozen=True)
class Reference:
    host: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when known, else the tag."""
        return self.digest or self.tag or "latest"

    def __str__(self) -> str:
        s = f"{self.host}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    def pinned(self, digest: str) -> str:
        """``host/repository@digest``: the one way an image is named once its digest is known."""
        return f"{self.host}/{self.repository}@{digest}"


def parse_ref(ref: str) -> Reference:
    m = IMAGE_RE.fullmatch(ref) if isinstance(ref, str) and len(ref) <= 512 else None
    if not m:
        raise UsageError(
            f"{printable(ref, 100)!r} is not a valid image reference", hint="e.g. registry:5000/team/image:tag"
        )
    host, path, tag, digest = m.group("host"), m.group("path"), m.group("tag"), m.group("digest")
    if host is None or ("." not in host and ":" not in host and host != "localhost"):
        # docker's rule: the first component is a registry only if it looks like a host
        if host is not None:
            path = f"{host}/{path}"
        host = DOCKER_HUB
        if "/" not in path:
            path = f"library/{path}"
    if tag is None and digest is None:
        tag = "latest"
    return Reference(host, path, tag, digest)


def check_registry_host(value: str, what: str = "--registry") -> str:
    """A registry is ``host[:port]``: no scheme, no path, no credentials (and never echoed if it has them)."""
    if "@" in value or "://" in value:
        raise UsageError(
            f"{what} must be host[:port] without a scheme or credentials",
            hint="log in with `docker login` (or ML_ENV_REGISTRY_USERNAME/PASSWORD) instead",
        )
    if not HOST_RE.fullmatch(value):
        raise UsageError(f"{what} {printable(value, 80)!r} is not a registry host[:port]")
    return value


def repository_named(setting: str | None, default: str, name: str) -> str:
    """A repository from a setting (a flag, ``ML_ENV_*REPOSITORY``, ``repository`` in a config file):
    ``{name}`` is replaced by the environment's (or model's) name, so one setting serves every
    environment of a project (``acme/ml/{name}``); no setting: the default (``ml-envs/{name}``)."""
    return (setting or default).replace("{name}", name)


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` is this machine by its address: a literal IPv4 address in
    127.0.0.0/8, ``[::1]``, or exactly ``localhost``. A name that merely starts with ``127.``
    (``127.attacker.example``) is a name like any other: plain http is never allowed to it."""
    import ipaddress

    if "@" in host or "/" in host:  # user info or a path: not a host[:port] ("127.0.0.1:1@evil.example")
        return False
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    if name in ("localhost", "[::1]"):
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ManifestInfo:
    digest: str
    media_type: str
    size: int
