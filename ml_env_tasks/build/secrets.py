"""What a build needs that must never be stored: index URLs with tokens, a CA bundle, the base
registry's password. All of it reaches BuildKit as secret mounts (files of mode 0600 in a
private temporary folder) or a private docker config, and every value joins the redactor."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import SpecError, UsageError
from ..safe.redact import Redactor
from ..spec import Environment
from .dockerfile import SECRET_CA, SECRET_PIP, SECRET_UV
from .model import BuildOptions

__all__ = ["build_secrets", "docker_config_for", "env_secret", "allowed_spec_env", "SPEC_ENV"]


SPEC_ENV = "ML_ENV_SPEC_ENV"


def allowed_spec_env() -> frozenset[str]:
    """What the invoking user lets environment files read: ``NAME`` (an index URL variable, whose
    value names its own host) or ``NAME@HOST`` (a registry password, sent to HOST only), from
    ``$ML_ENV_SPEC_ENV`` (commas or spaces) and ``spec_env`` in the user's or machine's config;
    never from the project, which a pull request writes."""
    from ..settings.files import user_layers
    from ..settings.groups import SPEC_ENV as OPTION

    assert OPTION.env == SPEC_ENV and OPTION.config == "spec_env"
    found = set(os.environ.get(SPEC_ENV, "").replace(",", " ").split())
    layers = user_layers()
    for layer in (layers.user, layers.site):
        v = layer.get(OPTION.config)
        if isinstance(v, list):
            found.update(x.strip() for x in v if isinstance(x, str))
    return frozenset(found)


def env_secret(name: str | None, env: Environment, key: str, *, host: str | None = None) -> str:
    """The value of the environment variable a spec names (never the spec's own text), if the
    invoking user allowed the spec to read it (for ``host``, when it is a registry password)."""
    if not name:
        raise SpecError("no environment variable named", file=str(env.path), key=key)
    entry = f"{name}@{host}" if host else name
    if entry not in allowed_spec_env():
        raise SpecError(
            f"reads the environment variable {name}{f' for {host}' if host else ''}, which the user has not allowed",
            file=str(env.path),
            key=key,
            hint=f"an environment file is repository content; to let it, add {entry!r} to ${SPEC_ENV} or to "
            "spec_env in your user or machine config (never the project's)",
        )
    value = os.environ.get(name)
    if not value:
        raise SpecError(f"environment variable {name} is not set", file=str(env.path), key=key)
    return value


def _index_url(value: str, env: Environment, key: str) -> str:
    """A private index URL from an environment variable: one http(s) URL, nothing else (it is
    written into a config file: a newline would add settings)."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() or ord(c) < 32 for c in value):
        raise SpecError("the environment variable it names does not hold one http(s) URL", file=str(env.path), key=key)
    return value


def _secret_file(d: Path, name: str, text: str) -> Path:
    f = d / name
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return f


def build_secrets(env: Environment, opts: BuildOptions, d: Path, redactor: Redactor) -> list[str]:
    """``--secret`` specs for buildx: the CA bundle, a pip config (and uv's) for private indexes."""
    out = []
    if opts.ca_bundle is not None:
        ca = Path(opts.ca_bundle)
        if not ca.is_file():
            raise UsageError(f"CA bundle {ca} not found", hint="--ca-bundle takes a PEM file")
        out.append(f"id={SECRET_CA},src={ca}")
    ix = env.index
    if ix.empty:
        return out
    index = None
    if ix.index_url:
        index = ix.index_url
    elif ix.index_url_env:
        index = _index_url(env_secret(ix.index_url_env, env, "python.index_url_env"), env, "python.index_url_env")
    extras = list(ix.extra_index_urls)
    for i, n in enumerate(ix.extra_index_urls_env):
        key = f"python.extra_index_urls_env[{i}]"
        extras.append(_index_url(env_secret(n, env, key), env, key))
    for u in ([index] if index else []) + extras:
        redactor.add_url(u)
    lines = ["[global]"]
    if index:
        lines.append(f"index-url = {index}")
    if extras:
        lines.append("extra-index-url = " + "\n    ".join(extras))
    out.append(f"id={SECRET_PIP},src={_secret_file(d, 'pip.conf', chr(10).join(lines) + chr(10))}")
    if env.installer == "uv":
        uv = []
        if index:
            uv.append(f"export UV_DEFAULT_INDEX={shlex.quote(index)}")
        if extras:
            uv.append(f"export UV_INDEX={shlex.quote(' '.join(extras))}")
        out.append(f"id={SECRET_UV},src={_secret_file(d, 'uv.env', chr(10).join(uv) + chr(10))}")
    return out


def docker_config_for(env: Environment, workdir: Path, redactor: Redactor) -> Path | None:
    """A private docker config that adds the base registry's credentials for this build only."""
    reg = env.base.registry
    if reg is None or not reg.username:
        return None
    password = env_secret(reg.password_env, env, "base.registry.password_env", host=reg.address)
    redactor.add(password)
    from ..registry.credentials import private_docker_config

    return private_docker_config(workdir, reg.address, reg.username, password)
