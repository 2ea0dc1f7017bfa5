"""``build``, and its fast path: an unchanged environment whose image exists is answered
without parsing or rendering anything.

Kept apart from ``flow`` so that a no-op ``ml-env build`` loads only this: the spec summary
cache, one existence check (a registry HEAD, or one Engine API question) and the lock label.
``flow`` is imported only when there is something to parse or build.
"""

from __future__ import annotations

import time
from pathlib import Path

from .exists import BASE_DIGEST_LABEL, announce, check_reused, image_exists, warn_if_base_moved
from .lockfile import lock_from_registry_if_missing
from .model import BuildOptions, BuildResult, Reporter, repository_for_name

__all__ = [
    "BASE_DIGEST_LABEL",
    "announce",
    "apply_tags",
    "build",
    "image_exists",
    "reuse_unchanged",
    "warn_if_base_moved",
]


def build(path: str | Path, opts: BuildOptions | None = None, reporter: Reporter | None = None) -> BuildResult:
    """Load the environment file and build (or reuse) its image.

    An unchanged environment file whose image exists is answered from the spec summary cache
    and one registry HEAD, without parsing the file again (see ``speccache``)."""
    opts = opts or BuildOptions()
    rep = reporter or Reporter()
    asked = _check_extras(opts)
    result = None
    if not (opts.force or opts.upgrade or opts.pin_base or opts.check_reproducible):
        result = reuse_unchanged(path, opts, rep)
    if result is None:
        from .flow import build_env, load_env

        result = build_env(load_env(path, opts), opts, rep)
    if not result.built and (opts.labels or opts.annotations):
        check_reused(result.image, result.digest, opts)  # on it already, or refused: never dropped
    if asked:
        result = apply_tags(result, opts, rep)
    return result


def _check_extras(opts: BuildOptions) -> bool:
    """Check build-push-action style values before anything runs; True when there are tags to apply."""
    if not (opts.labels or opts.annotations or opts.cache_from or opts.cache_to or opts.platforms or opts.tags):
        return False
    from ..errors import UsageError
    from .extras import parse, tag_refs

    extra = parse(opts)
    if opts.no_push and extra.cache_to and extra.cache_to["type"] == "registry":
        raise UsageError(
            "cache-to type=registry writes to a registry, and --no-push (push: false) writes nothing there"
        )
    tag_refs("x/y:z", opts.tags, registry=opts.registry)
    if opts.platforms:
        from .. import engine
        from .extras import check_platforms

        caps = engine.current().capabilities(opts.builder)
        check_platforms(opts.platforms, caps.platform, caps.builder, caps.driver)
    return bool(opts.tags)


def apply_tags(result: BuildResult, opts: BuildOptions, rep: Reporter) -> BuildResult:
    """Give the image its extra tags: in a registry by copying its manifest (moving a tag that
    named another image, as a build does), in the engine with ``docker tag``. With --no-push, in
    the engine only, to an image built there: one reused from the registry is not in the engine,
    and gets none (said, and left out of the result's tags)."""
    import dataclasses

    from .extras import tag_refs

    refs = tag_refs(result.image, opts.tags, registry=opts.registry)
    if not refs:
        return result
    if opts.no_push and opts.registry and not result.built:
        rep.info(f"not tagged {', '.join(refs)}: {result.image} is in the registry, not in the engine, and --no-push "
                 "writes nothing to the registry")  # fmt: skip
        return result
    if opts.pushes and result.digest:
        from ..registry import parse_ref
        from ..release.promote import PromoteOptions, promote

        by_repo: dict[str, list[str]] = {}
        for r in refs:
            ref = parse_ref(r)
            by_repo.setdefault(f"{ref.host}/{ref.repository}", []).append(ref.tag or "latest")
        for dest, tags in by_repo.items():
            promote(
                PromoteOptions(
                    source=result.pinned, destination=dest, tags=tuple(tags), allow_overwrite=True,
                    insecure=opts.insecure, ledger=None,
                )
            )  # fmt: skip
    else:
        from .. import engine

        eng = engine.current()
        for r in refs:
            eng.tag_image(result.image, r)
    rep.info(f"tagged {result.image.rsplit(':', 1)[0]}@{(result.digest or '')[:19]} as {', '.join(refs)}")
    return dataclasses.replace(result, tags=tuple(refs))


def reuse_unchanged(path: str | Path, opts: BuildOptions, rep: Reporter) -> BuildResult | None:
    """The image of an environment file parsed before and unchanged since, if it exists."""
    from . import speccache

    t0 = time.monotonic()
    s = speccache.lookup(path, locked=opts.locked)
    if s is None:
        return None
    announce(s.warnings, s.unpinned, opts, rep)
    repo = repository_for_name(s.name, opts)
    ref = f"{opts.registry}/{repo}:{s.hash}" if opts.registry else f"{repo}:{s.hash}"
    found = image_exists(ref, opts, rep)
    if found is None:
        return None
    if s.base:
        warn_if_base_moved(ref, found, s.base, opts, rep)
    lock = lock_from_registry_if_missing(Path(path), ref, opts, rep)
    return BuildResult(
        ref, found, s.hash, built=False, cache_hit=True, name=s.name, lock_path=lock,
        seconds=time.monotonic() - t0, unpinned=s.unpinned, python=s.python, registry=opts.registry,
    )  # fmt: skip
