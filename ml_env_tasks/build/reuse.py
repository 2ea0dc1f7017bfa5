"""``build``, and its fast path: an unchanged environment whose image exists is answered
without parsing or rendering anything.

Kept apart from ``flow`` so that a no-op ``ml-env build`` loads only this: the spec summary
cache, one existence check (a registry HEAD, or one Engine API question) and the lock label.
``flow`` is imported only when there is something to parse or build.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ..errors import MlEnvError, RegistryError
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

BASE_DIGEST_LABEL = "ml-env.base.digest"  # what the base tag named at build time; not part of the hash


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
        rep.info(
            f"{result.image} was reused: labels and annotations are written when an image is built (they are not "
            "part of the content hash); --force rebuilds it with them"
        )
    if asked:
        result = apply_tags(result, opts, rep)
    return result


def _check_extras(opts: BuildOptions) -> bool:
    """Check build-push-action style values before anything runs; True when there are tags to apply."""
    if not (opts.labels or opts.annotations or opts.cache_from or opts.cache_to or opts.platforms or opts.tags):
        return False
    from .extras import parse, tag_refs

    parse(opts)
    tag_refs("x/y:z", opts.tags, registry=opts.registry)
    if opts.platforms:
        from .. import engine
        from .extras import check_platforms

        caps = engine.current().capabilities(opts.builder)
        check_platforms(opts.platforms, caps.platform, caps.builder, caps.driver)
    return bool(opts.tags)


def apply_tags(result: BuildResult, opts: BuildOptions, rep: Reporter) -> BuildResult:
    """Give the image its extra tags: in a registry by copying its manifest (moving a tag that
    named another image, as a build does), in the engine with ``docker tag``."""
    import dataclasses

    from .extras import tag_refs

    refs = tag_refs(result.image, opts.tags, registry=opts.registry)
    if not refs:
        return result
    if opts.registry and result.digest:
        from ..promote import PromoteOptions, promote
        from ..registry import parse_ref

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
    from .. import speccache

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


def announce(
    warnings: tuple[str, ...], unpinned: tuple[str, ...] | list[str], opts: BuildOptions, rep: Reporter
) -> None:
    for w in warnings:
        rep.warn(w)
    if unpinned and not opts.locked:
        rep.info(
            f"{len(unpinned)} unpinned package(s) ({', '.join(unpinned[:5])}): the lock records what the image "
            "holds; --upgrade re-resolves them"
        )


def image_exists(ref: str, opts: BuildOptions, rep: Reporter) -> str | None:
    """The digest of the image at ``ref`` if it exists; None if it does not. Errors raise."""
    if not opts.registry:
        from .. import engine

        return engine.current().local_image_id(ref)
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(ref)
    try:
        info = RegistryClient(r.host, insecure=opts.insecure).head_manifest(r.repository, r.reference)
    except RegistryError as e:
        if opts.build_on_check_error:
            rep.warn(f"could not check whether {ref} exists ({e.message}); building as asked")
            return None
        raise RegistryError(
            f"could not check whether {ref} exists: {e.message}",
            hint="an unanswered check is never taken as 'exists'; fix the registry or pass --build-on-check-error",
        ) from None
    return info.digest if info else None


def warn_if_base_moved(
    ref: str,
    found: str,
    base: str,
    opts: BuildOptions,
    rep: Reporter,
    current: Callable[[], str | None] | None = None,
) -> None:
    """One warning when the base tag names another digest than when the image at ``ref`` (whose
    digest or id is ``found``) was built (its ``ml-env.base.digest`` label): the image is reused
    as it is, on the old base.

    Two small questions (the image's labels, a HEAD of the base tag), asked only of an image that
    recorded its base; anything unanswered is no warning, never an error: the check only informs.
    The label is remembered in the user cache (``found`` names content, so it never changes); the
    base tag is asked every time, so a re-push is said on the very next reuse."""
    if opts.pin_base or "@" in base:
        return
    try:
        built_on = _built_on(ref, found, opts)
        if not built_on:
            return  # built before ml-env recorded it
        now = current() if current is not None else _tag_digest(base, opts)
    except MlEnvError:
        return
    if now and now != built_on:
        rep.warn(
            f"base image {base} has moved since {ref} was built (built on {built_on[:19]}, now {now[:19]}); it is "
            "reused on the old base: --pin-base builds on the new one (a new hash), --upgrade rebuilds this one"
        )


def _built_on(ref: str, found: str, opts: BuildOptions) -> str:
    """The image's ``ml-env.base.digest`` label ('' when it has none), remembered in the user cache
    by the image's digest (or id): content-addressed, so the answer never changes."""
    import contextlib
    import os

    from ..digests import cache_dir

    algo, _, hexpart = found.partition(":")
    path = cache_dir() / "base-labels" / f"{algo}-{hexpart}" if hexpart.isalnum() and algo.isalnum() else None
    if path is not None:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return path.read_text()
    value = _image_labels(ref, opts).get(BASE_DIGEST_LABEL) or ""
    if not (value.startswith("sha256:") and len(value) == 71 and all(c in "0123456789abcdef" for c in value[7:])):
        value = ""  # only a digest is a recorded base; anything else (an image not built by ml-env) is none
    if path is not None:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(value)
            os.replace(tmp, path)  # whole or not at all: a concurrent build never reads half
    return value


def _image_labels(ref: str, opts: BuildOptions) -> dict[str, str]:
    if not opts.registry:
        from .. import engine

        return engine.current().containers.image_labels(ref)
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(ref)
    cfg = RegistryClient(r.host, insecure=opts.insecure).image_config(r.repository, r.reference) or {}
    got = (cfg.get("config") or {}).get("Labels") or {}
    return {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}


def _tag_digest(image: str, opts: BuildOptions) -> str | None:
    """The digest a tag names in its registry now (Docker Hub through the engine and its mirrors)."""
    from ..refs import DOCKER_HUB
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(image)
    if r.host == DOCKER_HUB:
        from .. import engine

        return engine.current().containers.distribution(image, "docker.io")
    info = RegistryClient(r.host, insecure=opts.insecure).head_manifest(r.repository, r.reference)
    return info.digest if info else None
