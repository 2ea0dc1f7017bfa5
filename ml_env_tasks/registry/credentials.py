"""Registry credentials, in one place: the docker config, credential helpers, a private
config for one build, and ``docker login``'s stdin protocol.

Resolution follows docker's (and docker-py's ``docker.auth``): ``credHelpers`` for the host,
then ``auths`` entries (``auth``, ``username``/``password``, ``identitytoken``), then
``credsStore``; then ``ML_ENV_REGISTRY_USERNAME``/``ML_ENV_REGISTRY_PASSWORD``, for one host only:
``ML_ENV_REGISTRY_HOST``, else ``ML_ENV_REGISTRY`` (both the invoking user's environment; a
registry a project's config names never receives them). The tests check
it against docker-py's resolution; it is written out here because importing docker-py costs
about a quarter of a second, which a registry lookup cannot afford.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..safe.fsutil import read_bounded
from ..safe.untrusted import json_loads
from .refs import DOCKER_HUB

MAX_CONFIG = 1 * 2**20

__all__ = [
    "credentials_for",
    "env_credentials_host",
    "docker_config_path",
    "credential_helper_get",
    "private_docker_config",
    "job_docker_config",
]


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG", Path.home() / ".docker")) / "config.json"


def credentials_for(host: str) -> tuple[str, str] | None:
    """(username, secret) for a registry host, or None for anonymous. ``<token>`` as the user
    name means an identity (refresh) token, as docker's credential protocol says.

    The same resolution as docker-py's ``docker.auth`` (credHelpers, then auths entries, then
    credsStore; the tests compare the two), without its import cost."""
    keys = [host]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    cfg: dict[str, Any] = {}
    path = docker_config_path()
    if path.exists():
        try:
            cfg = json_loads(
                read_bounded(path, MAX_CONFIG, error=RegistryError, what="docker config"),
                error=RegistryError,
                file=str(path),
            )
            if not isinstance(cfg, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            raise RegistryError(f"cannot read docker config {path}: {type(e).__name__}") from None
    helpers = cfg.get("credHelpers") or {}
    for k in keys:
        if isinstance(helpers, dict) and isinstance(helpers.get(k), str):
            return _helper(helpers[k], k)
    auths = cfg.get("auths") or {}
    for k in keys + [f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"]:
        entry = auths.get(k) if isinstance(auths, dict) else None
        if not isinstance(entry, dict) or not entry:
            continue
        if entry.get("identitytoken"):
            return "<token>", str(entry["identitytoken"])
        if entry.get("auth"):
            try:
                user, _, pw = base64.b64decode(str(entry["auth"])).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryError(
                    f"docker config {path}: the auth entry for {host} is not base64 user:password"
                ) from None
            return user, pw
        if entry.get("username"):
            return str(entry["username"]), str(entry.get("password", ""))
    if isinstance(cfg.get("credsStore"), str):
        found = _helper(cfg["credsStore"], host, missing_ok=True)
        if found:
            return found
    env_user, env_pw = os.environ.get("ML_ENV_REGISTRY_USERNAME"), os.environ.get("ML_ENV_REGISTRY_PASSWORD")
    if env_user and env_pw and host == env_credentials_host():
        return env_user, env_pw
    return None


def env_credentials_host() -> str | None:
    """The one registry ``ML_ENV_REGISTRY_USERNAME``/``_PASSWORD`` are for: ``ML_ENV_REGISTRY_HOST``,
    else ``ML_ENV_REGISTRY``; None when neither is set (then they go nowhere)."""
    return (os.environ.get("ML_ENV_REGISTRY_HOST") or os.environ.get("ML_ENV_REGISTRY") or "").strip() or None


def _helper(name: str, host: str, missing_ok: bool = False) -> tuple[str, str] | None:
    return credential_helper_get(name, host, missing_ok=missing_ok)


def credential_helper_get(name: str, host: str, *, missing_ok: bool = False) -> tuple[str, str] | None:
    """Ask ``docker-credential-<name>`` for a registry's credentials (the docker config protocol)."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise RegistryError("the docker config names a credential helper that is not a plain name")
    exe = f"docker-credential-{name}"
    try:
        p = subprocess.run([exe, "get"], input=host, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise RegistryError(f"credential helper {exe} named in the docker config is not installed") from None
    except subprocess.TimeoutExpired:
        raise RegistryError(f"credential helper {exe} did not answer in 30s") from None
    if p.returncode != 0:
        if missing_ok or "credentials not found" in (p.stdout + p.stderr).lower():
            return None
        raise RegistryError(f"credential helper {exe} failed for {host}")
    try:
        data = json.loads(p.stdout)
        user, secret = str(data.get("Username", "")), str(data.get("Secret", ""))
    except (ValueError, AttributeError):
        raise RegistryError(f"credential helper {exe} answered something that is not its JSON") from None
    return user, secret


def private_docker_config(directory: Path, address: str, username: str, password: str) -> Path:
    """A copy of the user's docker config with one more ``auths`` entry, in ``directory`` (mode
    0700/0600), for a build that pulls a private base with credentials named by the spec."""

    def add(cfg: dict[str, Any]) -> None:
        found = cfg.get("auths")
        auths: dict[str, Any] = found if isinstance(found, dict) else {}
        auths[address] = {"auth": base64.b64encode(f"{username}:{password}".encode()).decode()}
        cfg["auths"] = auths

    return _private_copy(directory / "docker-config", add)


def job_docker_config(directory: Path, registry: str) -> Path:
    """A copy of the user's docker config in ``directory`` that a ``docker login`` to ``registry``
    writes into as a file: no credential store, no helper for that registry (either would keep
    the password outside the folder, past the job)."""

    def file_only(cfg: dict[str, Any]) -> None:
        cfg.pop("credsStore", None)
        helpers = cfg.get("credHelpers")
        if isinstance(helpers, dict):
            helpers.pop(registry, None)

    return _private_copy(directory, file_only)


def _private_copy(d: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    cfg: dict[str, Any] = {}
    src = docker_config_path()
    if src.exists():
        try:
            loaded = json_loads(
                read_bounded(src, MAX_CONFIG, error=RegistryError, what="docker config"),
                error=RegistryError,
                file=str(src),
            )
            cfg = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError, RegistryError):
            cfg = {}
    edit(cfg)
    d.mkdir(mode=0o700)
    fd = os.open(d / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh)
    # the user's builders, contexts and CLI plugins stay what they are (buildx keeps its
    # builders beside the config: without them --builder NAME would name nothing)
    for name in ("buildx", "contexts", "cli-plugins"):
        if (src.parent / name).is_dir():
            os.symlink(src.parent / name, d / name)
    return d
