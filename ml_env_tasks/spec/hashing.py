"""Canonical form and content hash of an environment; ``explain`` of two specs' differences.

The hash is sha256 over canonical JSON (sorted keys, no spaces, UTF-8). What goes in:
everything that changes the image — base, Python setup, the *contents* of referenced files
(for a conda file: what it installs),
apt packages, env vars, labels, build args, the lock when building ``--locked``, and ``RENDERER``, the version of the Dockerfile renderer (a change in how we render is a
change in the image). What stays out: name, description, version, ``docker.shm_size`` (a run
setting), and where files live on disk.

Order is dropped where it has no effect (package sets, apt packages, env vars, requirements
files, wheels) and kept where it does (a base Dockerfile's text). Secrets never enter the
canonical form: literal index URLs are reduced to their sha256, env-var references to their
names — the canonical JSON is stored as an image label and must not leak them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ..build.stack import UV_VERSION, inference_stack, split_stack
from .environment import Environment
from .pins import lock_packages

__all__ = ["RENDERER", "canonical", "canonical_json", "dependency_key", "env_hash", "explain", "Difference"]

RENDERER = 1


def _sha(s: str | bytes) -> str:
    return hashlib.sha256(s.encode() if isinstance(s, str) else s).hexdigest()


def canonical(env: Environment) -> dict[str, Any]:
    b = env.base
    base: dict[str, Any]
    if b.image is not None:
        base = {"image": b.image}
        if b.digest:
            base["digest"] = b.digest
    else:
        source = b.dockerfile_source or ""
        base = {"dockerfile_sha256": _sha(source.replace("\r\n", "\n"))}
    if b.registry is not None:
        base["registry"] = b.registry.address
    python: dict[str, Any] = {
        "user_managed": env.user_managed,
        "interpreter": env.interpreter,
        "packages": sorted(env.packages),
        "requirements": sorted(r.sha256 for r in env.requirements),
        "wheels": sorted([w.path.name, w.sha256] for w in env.wheels),
    }
    if env.conda_file is not None:
        # what the conda file installs, not its bytes: comments and layout change nothing
        python["conda"] = {
            "python": env.conda_python,
            "packages": sorted(env.conda_packages),
            "channels": list(env.conda_channels),
        }
        python["conda_pip"] = sorted(env.conda_pip)
        if env.conda_installer != "pip":  # only when set, so existing hashes stay
            python["conda_installer"] = env.conda_installer
    if env.installer != "pip":  # only when set, so existing hashes stay
        python["installer"] = {"name": env.installer, "version": UV_VERSION}
    if env.splits_layers:  # a layer per declared package; "one", the default, keeps the hashes environments had
        python["layers"] = split_stack()
    ix = env.index
    if not ix.empty:
        python["index"] = {
            "index_url": _sha(ix.index_url) if ix.index_url else None,
            "index_url_env": ix.index_url_env,
            "extra_index_urls": sorted(_sha(u) for u in ix.extra_index_urls),
            "extra_index_urls_env": sorted(ix.extra_index_urls_env),
        }
    out: dict[str, Any] = {
        "renderer": RENDERER,
        "base": base,
        "python": python,
        "apt": sorted(set(env.apt)),
        "env": dict(sorted(env.variables.items())),
        "labels": dict(sorted(env.labels.items())),
        "build_args": dict(sorted(env.build_args.items())),
    }
    if env.inference:
        # only when set, so environments without it keep their hashes
        out["inference"] = inference_stack(env.inference_server)
    if env.lock is not None:
        # the packages, not the file: comments and order do not change what gets installed
        out["lock"] = lock_packages(env.lock.text)
    return out


# fields that add no layer (image metadata) or only layers after every dependency (inference)
_NOT_DEPENDENCIES = ("env", "labels", "inference")


def dependency_key(env: Environment) -> str:
    """Hash of what makes the dependency layers: environments that agree on it share a build cache.

    A training environment and its inference twin (``inference = true``) have the same key.
    """
    deps = {k: v for k, v in canonical(env).items() if k not in _NOT_DEPENDENCIES}
    return _sha(json.dumps(deps, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def canonical_json(env: Environment) -> str:
    return json.dumps(canonical(env), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def env_hash(env: Environment) -> str:
    """The environment's content hash: 64 hex digits, also its image tag."""
    return _sha(canonical_json(env))


@dataclass(frozen=True)
class Difference:
    field: str
    a: Any
    b: Any

    def __str__(self) -> str:
        return f"{self.field}: {_show(self.a)} -> {_show(self.b)}"


def _show(v: Any) -> str:
    if v is MISSING:
        return "(absent)"
    return json.dumps(v, sort_keys=True)


MISSING = object()


def explain(a: Environment, b: Environment) -> list[Difference]:
    """The fields of the canonical form that differ: why two specs hash differently."""
    out: list[Difference] = []
    _diff(canonical(a), canonical(b), "", out)
    return out


def _diff(a: Any, b: Any, prefix: str, out: list[Difference]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            _diff(a.get(k, MISSING), b.get(k, MISSING), f"{prefix}.{k}" if prefix else k, out)
        return
    if isinstance(a, list) and isinstance(b, list) and a != b:
        sa = {json.dumps(x, sort_keys=True) for x in a}
        sb = {json.dumps(x, sort_keys=True) for x in b}
        removed = sorted(sa - sb)
        added = sorted(sb - sa)
        if removed or added:
            for r in removed:
                out.append(Difference(prefix, json.loads(r), MISSING))
            for ad in added:
                out.append(Difference(prefix, MISSING, json.loads(ad)))
            return
    if a != b:
        out.append(Difference(prefix, a, b))
