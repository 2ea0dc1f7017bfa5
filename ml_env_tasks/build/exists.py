"""Is the image there already: the registry's (or the engine's) answer for a content-hash tag,
what a build announces before it starts, and the warning when the base tag moved since the image
was built; and whether the labels and annotations a build is given are on a reused image already
(``check_reused``). Used by the no-op fast path (``reuse``) and by the build (``flow``) alike."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import MlEnvError, RegistryError, UsageError
from .model import BuildOptions, Reporter

__all__ = ["BASE_DIGEST_LABEL", "announce", "image_exists", "warn_if_base_moved", "check_reused"]

BASE_DIGEST_LABEL = "ml-env.base.digest"  # what the base tag named at build time; not part of the hash


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

    from ..safe.digests import cache_dir

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
    from ..registry import RegistryClient, parse_ref
    from ..registry.refs import DOCKER_HUB

    r = parse_ref(image)
    if r.host == DOCKER_HUB:
        from .. import engine

        return engine.current().containers.distribution(image, "docker.io")
    info = RegistryClient(r.host, insecure=opts.insecure).head_manifest(r.repository, r.reference)
    return info.digest if info else None


def check_reused(image: str, digest: str | None, opts: BuildOptions) -> None:
    """Labels and annotations given for a reused image: each must be on it already, with that value.
    Otherwise one ``UsageError`` naming the first that is not (they are not part of the content
    hash, so the image that hash names cannot take them without becoming another image)."""
    from .extras import parse

    extra = parse(opts)
    hint = ("labels and annotations describe the build that made an image; put lasting labels in the environment "
            "file (they are hashed), drop this one, or rebuild with --force (force: true): a new digest under the "
            "same hash tag")  # fmt: skip
    why = f"{image} exists (its content hash is already there) and was reused, not built:"
    if extra.labels:
        have = _image_labels(image, opts)
        for key, value in extra.labels.items():
            if have.get(key) != value:
                said = "has another value" if key in have else "does not carry it"
                raise UsageError(f"label {key}: {why} it {said}", hint=hint)
    if extra.annotations:
        written = _manifest_annotations(image, digest, opts)
        for key, value in extra.annotations.items():
            if written is None:
                raise UsageError(f"annotation {key}: {why} the engine does not show an image's annotations", hint=hint)
            if written.get(key) != value:
                said = "has another value" if key in written else "does not carry it"
                raise UsageError(f"annotation {key}: {why} its manifest {said}", hint=hint)


def _manifest_annotations(image: str, digest: str | None, opts: BuildOptions) -> dict[str, str] | None:
    """The annotations of the image manifest a build wrote them on (an index's image for a real
    platform); None for an image in the engine only, which does not show them."""
    import json

    from ..registry import RegistryClient, parse_ref

    if not opts.registry:
        return None
    r = parse_ref(image)
    client = RegistryClient(r.host, insecure=opts.insecure)
    doc: Any = None
    ref: Any = digest or r.reference
    for _ in range(2):  # the index, then its image
        got = client.get_manifest(r.repository, ref)
        try:
            doc = json.loads(got[1]) if got is not None else None
        except ValueError:
            return {}
        children = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(children, list):
            break
        ref = next((m.get("digest") for m in children if isinstance(m, dict)
                    and (m.get("platform") or {}).get("os") not in (None, "unknown")), None)  # fmt: skip
        if not isinstance(ref, str):
            return {}
    found = doc.get("annotations") if isinstance(doc, dict) else None
    return {str(k): v for k, v in found.items() if isinstance(v, str)} if isinstance(found, dict) else {}
