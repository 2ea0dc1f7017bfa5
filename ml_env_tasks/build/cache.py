"""Which build cache a build imports and exports, and keeping the moving ref current."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError, RegistryError, UsageError
from ..registry import RegistryClient, parse_ref
from ..safe.digests import cache_dir
from ..spec import Environment
from ..spec.hashing import dependency_key
from .extras import Extras
from .model import BuildOptions, Reporter, repository_for

__all__ = ["CachePlan", "cache_refs", "choose_cache", "existing_sources", "point_moving_ref"]


@dataclass(frozen=True)
class CachePlan:
    """Where a build imports its cache from and exports it to.

    With the registry backend there are two refs in ``<namespace>/buildcache``: the *exact* one,
    tagged by the dependency key (a training environment and its inference twin share it), and a
    *moving* one per environment, ``env-<name>-<repo hash>``, that always holds the environment's
    last build. A changed dependency has no exact cache yet, but the moving ref still serves
    every layer before the change. Imports list only refs that exist (no importer error on a
    first build); the export goes to the exact ref, then the moving ref is pointed at it."""

    backend: str
    sources: tuple[dict[str, str], ...] = ()
    target: dict[str, str] | None = None
    moving: str | None = None  # registry backend: the ref to re-point at the exported cache


def cache_refs(env: Environment, opts: BuildOptions) -> tuple[str, str]:
    """(exact, moving) registry cache refs of an environment."""
    repo = repository_for(env, opts)
    cache_repo = f"{repo.rsplit('/', 1)[0]}/buildcache" if "/" in repo else f"{repo}-buildcache"
    exact = opts.cache_ref or f"{opts.registry}/{cache_repo}:{dependency_key(env)[:40]}"
    last = exact.rsplit("/", 1)[-1]
    base = exact.rsplit(":", 1)[0] if ":" in last else exact
    moving = f"{base}:env-{env.name[:60]}-{hashlib.sha256(repo.encode()).hexdigest()[:8]}"
    return exact, moving


def choose_cache(env: Environment, opts: BuildOptions, caps: Any, ref: str) -> CachePlan:
    want = opts.cache
    supported = caps.cache_backends
    if want == "none":
        return CachePlan("none")
    if want == "auto":
        if opts.registry and "registry" in supported:
            want = "registry"
        elif "local" in supported:
            want = "local"
        else:
            want = "inline"
    if want not in supported:
        store = "containerd" if caps.containerd_store else "classic"
        raise EngineError(
            f"cache backend {want!r} is not supported by this builder (driver {caps.driver}, {store} image store); "
            f"it supports: {', '.join(supported)}",
            hint="turn on the containerd image store (features.containerd-snapshotter) or use --cache inline",
        )
    if want == "registry":
        if not (opts.registry or opts.cache_ref):
            raise UsageError("the registry cache needs --registry or --cache-ref")
        exact, moving = cache_refs(env, opts)
        return CachePlan(
            want,
            ({"type": "registry", "ref": exact}, {"type": "registry", "ref": moving}),
            {"type": "registry", "ref": exact, "mode": "max"},
            moving,
        )
    if want == "local":
        d = Path(opts.cache_dir or cache_dir() / "buildcache" / env.name)
        d.mkdir(parents=True, exist_ok=True)
        src = ({"type": "local", "src": str(d)},) if (d / "index.json").exists() else ()
        return CachePlan(want, src, {"type": "local", "dest": str(d), "mode": "max"})
    if want == "gha":
        if not (
            os.environ.get("ACTIONS_RUNTIME_TOKEN")
            and (os.environ.get("ACTIONS_CACHE_URL") or os.environ.get("ACTIONS_RESULTS_URL"))
        ):
            raise EngineError(
                "the gha cache needs ACTIONS_RUNTIME_TOKEN and ACTIONS_CACHE_URL, which GitHub Actions gives a step "
                "only through actions/github-script or crazy-max/ghaction-github-runtime",
            )
        scope = f"ml-env-{env.name}"
        return CachePlan(want, ({"type": "gha", "scope": scope},), {"type": "gha", "scope": scope, "mode": "max"})
    # inline: the cache rides in the image; the previous build's image is tagged :buildcache
    src = ({"type": "registry", "ref": f"{ref.rsplit(':', 1)[0]}:buildcache"},) if opts.registry else ()
    return CachePlan("inline", src, {"type": "inline"})


def existing_sources(plan: CachePlan, opts: BuildOptions, rep: Reporter) -> list[dict[str, str]]:
    """The registry cache refs that exist: BuildKit prints an alarming ERROR for a missing one."""
    out = []
    for src in plan.sources:
        if src.get("type") != "registry":
            out.append(src)
            continue
        r = parse_ref(src["ref"])
        try:
            if RegistryClient(r.host, insecure=opts.insecure).head_manifest(r.repository, r.reference) is not None:
                out.append(src)
        except RegistryError as e:
            rep.warn(f"cache {src['ref']} could not be checked ({e.message}); building without it")
    return out


def point_moving_ref(plan: CachePlan, opts: BuildOptions, rep: Reporter) -> None:
    """After a registry cache export: the environment's moving ref names what was just exported."""
    if plan.moving is None or plan.target is None:
        return
    exact, moving = parse_ref(plan.target["ref"]), parse_ref(plan.moving)
    try:
        client = RegistryClient(exact.host, insecure=opts.insecure)
        got = client.get_manifest(exact.repository, exact.reference)
        if got is not None and exact.repository == moving.repository:
            client.put_manifest(moving.repository, moving.reference, got[1], got[0].media_type)
    except RegistryError as e:
        rep.warn(f"the build succeeded, but its cache could not be named {plan.moving}: {e.message}")


def with_user_cache(plan: CachePlan, extra: Extras, caps: Any) -> CachePlan:
    """ml-env's cache choice plus the user's --cache-from; a --cache-to replaces the export."""
    if extra.cache_to and extra.cache_to["type"] not in caps.cache_backends:
        raise EngineError(
            f"--cache-to type={extra.cache_to['type']}: builder {caps.builder!r} (driver {caps.driver}) exports "
            f"only {', '.join(caps.cache_backends)}"
        )
    sources = plan.sources + tuple(s for s in extra.cache_from if s not in plan.sources)
    if extra.cache_to:
        return CachePlan(plan.backend, sources, extra.cache_to, None)
    return CachePlan(plan.backend, sources, plan.target, plan.moving)
