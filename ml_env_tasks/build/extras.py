"""What docker/build-push-action users add to a build: extra tags, labels, annotations, cache
imports and exports, a builder, platforms. None of it enters the content hash.

Each value is checked here, whole, before anything runs: a label or annotation key follows the
label grammar and cannot claim an ``ml-env.*`` key (those say what the image is and are ours);
a cache entry is buildx's ``type=...,key=value`` CSV with known types; a tag is a tag or a full
image reference. Values reach buildx as separate arguments (labels) or as quoted CSV fields of
``--output`` (annotations), never through a Dockerfile.

Tags are applied to built and reused images alike (a reused image gets them too: a re-run
converges). Labels and annotations are written when the image is built: the image tagged by a
content hash is never rebuilt for them, nor copied into a variant that carries them. Given for a
reused image, they must be on it already (a re-run with the same values converges); any other is
refused in one line (``exists.check_reused``), never dropped. A label the environment file sets is part
of the content hash: one given here with another value is refused as well.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import EngineError, UsageError
from ..safe.grammar import LABEL_KEY, TAG, has_control, matches, printable

__all__ = [
    "CACHE_TYPES",
    "Extras",
    "cache_entry",
    "check_platforms",
    "key_values",
    "native_platform",
    "output_spec",
    "tag_refs",
]

CACHE_TYPES = ("registry", "local", "gha", "inline", "s3", "azblob")
MAX_VALUE = 4096
MAX_ITEMS = 64


@dataclass(frozen=True)
class Extras:
    labels: dict[str, str]
    annotations: dict[str, str]
    cache_from: tuple[dict[str, str], ...]
    cache_to: dict[str, str] | None


def _bounded_list(items: Iterable[str], what: str) -> list[str]:
    out = list(items)
    if len(out) > MAX_ITEMS:
        raise UsageError(f"{what}: {len(out)} given, at most {MAX_ITEMS}")
    return out


def key_values(items: Iterable[str], what: str) -> dict[str, str]:
    """``KEY=VALUE`` items (labels, annotations) checked whole; the value is never echoed."""
    out: dict[str, str] = {}
    for item in _bounded_list(items, what):
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"{what} {printable(key, 60)!r}: give KEY=VALUE")
        if not matches(LABEL_KEY, key) or len(key) > 128:
            raise UsageError(
                f"{what} key {printable(key, 60)!r} is not a label key",
                hint="lower-case letters, digits, '.' and '-', e.g. org.opencontainers.image.source",
            )
        if key == "ml-env" or key.startswith("ml-env."):
            raise UsageError(f"{what} {key!r}: ml-env.* keys are set by ml-env and say what the image is")
        if has_control(value) or len(value) > MAX_VALUE:
            raise UsageError(f"{what} {key!r}: the value must be one line of at most {MAX_VALUE} characters")
        out[key] = value
    return out


def cache_entry(text: str, what: str) -> dict[str, str]:
    """One buildx cache entry, ``type=registry,ref=host/repo:tag[,mode=max]`` (CSV, as buildx reads it)."""
    if has_control(text) or len(text) > MAX_VALUE:
        raise UsageError(f"{what}: one line of at most {MAX_VALUE} characters")
    if "=" not in text:  # buildx's shorthand: a bare reference is a registry cache
        text = f"type=registry,ref={text}"
    try:
        rows = list(csv.reader([text]))
    except csv.Error:
        rows = []
    if len(rows) != 1:
        raise UsageError(f"{what}: not a cache entry like type=registry,ref=host/repo:tag")
    entry: dict[str, str] = {}
    for field in rows[0]:
        key, sep, value = field.partition("=")
        key = key.strip()
        if not sep or not key.replace("-", "").replace("_", "").isalnum() or not key.isascii() or key in entry:
            raise UsageError(f"{what}: {printable(field, 60)!r} is not KEY=VALUE (each key once)")
        entry[key] = value
    if "type" not in entry:
        raise UsageError(f"{what}: type=... is missing (one of {', '.join(CACHE_TYPES)})")
    if entry["type"] not in CACHE_TYPES:
        raise UsageError(f"{what}: cache type {printable(entry['type'], 40)!r} is not one of {', '.join(CACHE_TYPES)}")
    if entry["type"] == "registry" and not entry.get("ref"):
        raise UsageError(f"{what}: a registry cache needs ref=host/repository:tag")
    if entry["type"] == "registry":
        from ..registry import parse_ref

        try:
            parse_ref(entry["ref"])
        except UsageError as e:
            raise UsageError(f"{what}: ref: {e.message}") from None
    return entry


def parse(opts: Any) -> Extras:
    """The extras of a build's options, checked (raises UsageError naming the option)."""
    return Extras(
        labels=key_values(opts.labels, "label"),
        annotations=key_values(opts.annotations, "annotation"),
        cache_from=tuple(cache_entry(c, "cache-from") for c in _bounded_list(opts.cache_from, "cache-from")),
        cache_to=cache_entry(opts.cache_to, "cache-to") if opts.cache_to else None,
    )


def tag_refs(image: str, tags: Iterable[str], *, registry: str | None) -> list[str]:
    """Full references for extra tags: ``TAG`` is a tag of the image's own repository;
    ``[HOST/]REPOSITORY:TAG`` names another. Digests are not tags."""
    from ..registry import parse_ref

    repo = image.rsplit(":", 1)[0]
    out: list[str] = []
    for t in _bounded_list(tags, "tag"):
        if matches(TAG, t):
            out.append(f"{repo}:{t}")
            continue
        if "@" in t or has_control(t):
            raise UsageError(f"tag {printable(t, 80)!r}: a tag, or host/repository:tag (no digest)")
        last = t.rsplit("/", 1)[-1]
        if ":" not in last:
            raise UsageError(f"tag {printable(t, 80)!r}: a full reference needs its :tag")
        if registry:
            try:
                ref = parse_ref(t)
            except UsageError as e:
                raise UsageError(f"tag {printable(t, 80)!r}: {e.message}") from None
            out.append(f"{ref.host}/{ref.repository}:{ref.tag}")
        else:
            name, _, tag = t.rpartition(":")
            if not matches(TAG, tag) or not name or any(not p for p in name.split("/")):
                raise UsageError(f"tag {printable(t, 80)!r} is not an image reference")
            out.append(t)
    return list(dict.fromkeys(r for r in out if r != image))


_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}  # fmt: skip


def native_platform(os_type: str | None, architecture: str | None) -> str:
    return f"{(os_type or 'linux').lower()}/{_ARCH.get((architecture or '').lower(), (architecture or '?').lower())}"


def check_platforms(platforms: Iterable[str], native: str, builder: str, driver: str) -> list[str]:
    """The platforms a build may ask for: the engine's own, once.

    An image is tagged by its environment's content hash, which does not name a platform: two
    platforms under one tag need an index (a multi-platform builder, and a hash that knows it)."""
    wanted = [p.strip().lower() for item in platforms for p in item.split(",") if p.strip()]
    wanted = list(dict.fromkeys(wanted))
    if not wanted:
        return []
    if len(wanted) > 1:
        raise EngineError(
            f"platforms {', '.join(wanted)}: builder {builder!r} (driver {driver}) builds one platform per image here",
            hint="ml-env tags an image by its environment's content hash, which names no platform; build each "
            "platform on a machine of that platform",
        )
    p = wanted[0]
    if not (p == native or p.startswith(native + "/")):
        raise EngineError(
            f"platform {printable(p, 40)} is not the engine's own ({native}): builder {builder!r} (driver {driver})",
            hint="the content hash names no platform, so ml-env builds for the engine's platform only",
        )
    return wanted


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ",\"'") else text


def output_spec(
    names: list[str], *, push: bool, annotations: dict[str, str], load: bool = False, compression: str | None = None
) -> dict[str, str]:
    """buildx's ``--output type=image,...`` carrying manifest annotations (``type=docker``: loaded
    into the engine, for a builder that does not put images there itself).

    python-on-whales joins a dict as ``k=v,k=v``; a field with a comma or a quote is written as one
    quoted CSV field (``"k=v,w"``), the way buildx's CSV reader wants it."""
    fields = [("type", "docker" if load else "image"), ("name", ",".join(names))]
    fields += [] if load else [("push", "true" if push else "false")]
    fields += [(f"annotation-manifest.{k}", v) for k, v in annotations.items()]
    if compression:  # every layer, the base's too, recompressed; zstd needs OCI media types
        fields += [("compression", compression), ("force-compression", "true"), ("oci-mediatypes", "true")]
    out: dict[str, str] = {}
    for k, v in fields:
        whole = _csv_field(f"{k}={v}")
        if whole.startswith('"'):
            key, _, value = whole.partition("=")
            out[key] = value
        else:
            out[k] = v
    return out
