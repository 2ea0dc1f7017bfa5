"""Promotion by digest from one registry to another, and the release ledger.

The source digest is resolved once; everything after uses it. The copy goes registry to
registry over the OCI distribution API, never through a Docker daemon: blobs the destination
has are skipped, blobs inside one registry are mounted across repositories, others are streamed
(no whole layer in memory) and checked against their digest. Indexes are copied as they are,
children first (every platform and the ``unknown/unknown`` attestation manifests), so the
destination digest equals the source digest; a single manifest stays a single manifest.
Manifests go by digest after every blob they need is there; tags are set last and verified.
An interrupted promotion therefore never leaves a destination tag on an incomplete image.

Signature/attestation tags (``sha256-<hex>.sig``, ``.att``, ``.sbom``) are copied when present,
and OCI referrers when the source registry has the referrers API.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import MlEnvError, RegistryError, RegistryTransient, RegistryUnreachable
from .provenance import git_info
from .registry import BlobIntegrityError, Reference, RegistryClient, parse_ref

__all__ = ["PromoteOptions", "PromoteResult", "promote", "Ledger", "LEDGER_DEFAULT"]

LEDGER_DEFAULT = Path("releases.toml")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")
DIGEST_TAG_SUFFIXES = (".sig", ".att", ".sbom")
TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
BLOB_ATTEMPTS = 3


class TagConflict(MlEnvError):
    """A destination tag points at another digest and overwriting was not allowed."""

    exit_code = 5


@dataclass(frozen=True)
class PromoteOptions:
    source: str
    destination: str  # host/repo, optionally :tag
    tags: tuple[str, ...] = ()
    allow_overwrite: bool = False
    dry_run: bool = False
    insecure: bool = False
    ledger: Path | None = LEDGER_DEFAULT
    copy_referrers: bool = True


@dataclass
class PromoteResult:
    digest: str
    source: str
    destination: str
    refs: list[str]
    copied_blobs: int = 0
    mounted_blobs: int = 0
    skipped_blobs: int = 0
    copied_bytes: int = 0
    manifests: int = 0
    referrers: list[str] = field(default_factory=list)
    moved_tags: list[str] = field(default_factory=list)  # tags that pointed elsewhere before
    no_op: bool = False
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    environment: dict[str, str | None] = field(default_factory=dict)
    ledger_entry: dict[str, Any] | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def _dest(opts: PromoteOptions) -> tuple[Reference, list[str]]:
    d = parse_ref(opts.destination if "/" in opts.destination else f"{opts.destination}/")
    tags = list(opts.tags)
    if d.digest:
        raise MlEnvError(f"destination {opts.destination} must be a repository (with an optional tag), not a digest")
    explicit = opts.destination.rsplit("/", 1)[-1]
    if ":" in explicit and d.tag:
        tags.insert(0, d.tag)
    if not tags:
        raise MlEnvError("no destination tag: give --tag (several allowed) or dest:tag")
    for t in tags:
        if not TAG_RE.match(t):
            raise MlEnvError(f"{t!r} is not a valid tag")
    return Reference(d.host, d.repository), list(dict.fromkeys(tags))


def promote(opts: PromoteOptions, *, info: Callable[[str], None] | None = None) -> PromoteResult:
    say = info or (lambda _m: None)
    t0 = time.monotonic()
    src = parse_ref(opts.source)
    dst, tags = _dest(opts)
    sc = RegistryClient(src.host, insecure=opts.insecure)
    dc = sc if dst.host == src.host else RegistryClient(dst.host, insecure=opts.insecure)
    got = sc.get_manifest(src.repository, src.reference)
    if got is None:
        raise MlEnvError(f"source {opts.source} not found")
    top, body = got
    digest = top.digest
    if src.digest and src.digest != digest:
        raise RegistryError(f"source {opts.source} served a manifest whose digest is {digest}")
    pinned = f"{src.host}/{src.repository}@{digest}"
    say(f"source {opts.source} is {digest}")
    result = PromoteResult(
        digest, pinned, f"{dst.host}/{dst.repository}", [f"{dst.host}/{dst.repository}:{t}" for t in tags]
    )
    result.environment = _environment(sc, src.repository, digest)

    # tag policy, before anything is written
    conflicts = []
    for t in tags:
        have = dc.head_manifest(dst.repository, t)
        if have is None:
            result.plan.append(f"tag {t}: new")
        elif have.digest == digest:
            result.plan.append(f"tag {t}: already {digest[:19]}")
        elif opts.allow_overwrite:
            result.plan.append(f"tag {t}: move from {have.digest[:19]} (allowed)")
            result.moved_tags.append(f"{t} (was {have.digest})")
        else:
            conflicts.append(f"{t} -> {have.digest}")
    if conflicts:
        raise TagConflict(
            f"destination {dst.host}/{dst.repository} has tags pointing at other images: {', '.join(conflicts)}",
            hint="promotion never moves a tag silently; pass --allow-overwrite to move it",
        )
    all_there = all(p.startswith(f"tag {t}: already") for p, t in zip(result.plan, tags, strict=True))
    if all_there and dc.head_manifest(dst.repository, digest) is not None:
        result.no_op = True
        result.seconds = time.monotonic() - t0
        say(f"{digest[:19]} is already promoted as {', '.join(tags)}: nothing to do")
        return result
    result.environment = _environment(sc, src.repository, digest)
    if opts.dry_run:
        result.dry_run = True
        _walk(sc, src.repository, digest, body, top.media_type, dry=True, dc=dc, dst_repo=dst.repository, result=result)
        result.seconds = time.monotonic() - t0
        return result

    _walk(sc, src.repository, digest, body, top.media_type, dry=False, dc=dc, dst_repo=dst.repository, result=result)
    if opts.copy_referrers:
        _copy_referrers(sc, dc, src.repository, dst.repository, digest, result, say)
    for t in tags:
        dc.put_manifest(dst.repository, t, body, top.media_type)
    for t in tags:
        have = dc.head_manifest(dst.repository, t)
        if have is None or have.digest != digest:
            raise RegistryError(
                f"after the copy {dst.host}/{dst.repository}:{t} is {have.digest if have else 'missing'}, not {digest}"
            )
    result.seconds = time.monotonic() - t0
    say(
        f"promoted {digest[:19]} to {', '.join(result.refs)}: {result.copied_blobs} blobs copied "
        f"({result.copied_bytes / 2**20:.1f} MiB), {result.mounted_blobs} mounted, {result.skipped_blobs} already there"
    )
    if opts.ledger is not None:
        result.ledger_entry = Ledger(opts.ledger).append(_entry(result, opts))
    return result


def _walk(
    sc: RegistryClient,
    src_repo: str,
    digest: str,
    body: bytes,
    media_type: str,
    *,
    dry: bool,
    dc: RegistryClient,
    dst_repo: str,
    result: PromoteResult,
) -> None:
    """Copy one manifest and what it needs, children and blobs first, the manifest itself last."""
    doc = json.loads(body)
    mt = media_type or doc.get("mediaType", "")
    if mt in INDEX_TYPES or "manifests" in doc:
        for child in doc.get("manifests") or []:
            if not dry and dc.head_manifest(dst_repo, child["digest"]) is not None:
                continue
            got = sc.get_manifest(src_repo, child["digest"])
            if got is None:
                raise RegistryError(f"the index {digest} names {child['digest']}, which the source does not have")
            _walk(sc, src_repo, child["digest"], got[1], child.get("mediaType") or got[0].media_type, dry=dry, dc=dc,
                  dst_repo=dst_repo, result=result)  # fmt: skip
    else:
        blobs = [doc["config"]] + list(doc.get("layers") or [])
        for b in blobs:
            _copy_blob(sc, dc, src_repo, dst_repo, b["digest"], int(b.get("size") or 0), dry, result)
    if dry:
        result.plan.append(f"manifest {digest[:19]} ({mt.rsplit('.', 2)[-2] if '.' in mt else mt})")
        return
    put = dc.put_manifest(dst_repo, digest, body, mt)
    if put and put != digest:
        raise RegistryError(f"destination stored manifest {digest} as {put}")
    result.manifests += 1


def _copy_blob(
    sc: RegistryClient,
    dc: RegistryClient,
    src_repo: str,
    dst_repo: str,
    digest: str,
    size: int,
    dry: bool,
    result: PromoteResult,
) -> None:
    if dc.blob_exists(dst_repo, digest):
        result.skipped_blobs += 1
        return
    same_registry = sc.host == dc.host
    if dry:
        result.plan.append(f"blob {digest[:19]} {size / 2**20:.1f} MiB: {'mount' if same_registry else 'copy'}")
        return
    if same_registry and dc.mount_blob(dst_repo, digest, src_repo):
        result.mounted_blobs += 1
        return
    for attempt in range(1, BLOB_ATTEMPTS + 1):
        try:
            dc.upload_stream(dst_repo, digest, sc.blob_chunks(src_repo, digest))
            break
        except (RegistryUnreachable, BlobIntegrityError) as e:
            if attempt == BLOB_ATTEMPTS:
                raise RegistryError(f"copying blob {digest[:19]} failed {attempt} times: {e.message}") from None
            time.sleep(0.2 * attempt)
        except RegistryTransient:
            if attempt == BLOB_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)
    if not dc.blob_exists(dst_repo, digest):
        raise RegistryError(f"blob {digest[:19]} is not in {dc.host}/{dst_repo} after its upload")
    result.copied_blobs += 1
    result.copied_bytes += size


def _copy_referrers(
    sc: RegistryClient,
    dc: RegistryClient,
    src_repo: str,
    dst_repo: str,
    digest: str,
    result: PromoteResult,
    say: Callable[[str], None],
) -> None:
    algo, hexd = digest.split(":", 1)
    for suffix in DIGEST_TAG_SUFFIXES:
        tag = f"{algo}-{hexd}{suffix}"
        got = sc.get_manifest(src_repo, tag)
        if got is None:
            continue
        info, body = got
        _walk(sc, src_repo, info.digest, body, info.media_type, dry=False, dc=dc, dst_repo=dst_repo, result=result)
        dc.put_manifest(dst_repo, tag, body, info.media_type)
        result.referrers.append(tag)
        say(f"copied {tag}")
    for ref in sc.referrers(src_repo, digest) or []:
        got = sc.get_manifest(src_repo, ref["digest"])
        if got is None:
            continue
        _walk(
            sc, src_repo, ref["digest"], got[1], got[0].media_type, dry=False, dc=dc, dst_repo=dst_repo, result=result
        )
        result.referrers.append(ref["digest"])


def _environment(sc: RegistryClient, repo: str, digest: str) -> dict[str, str | None]:
    """The environment's name and hash from the image's ml-env labels (when it is one of ours)."""
    with contextlib.suppress(RegistryError, ValueError, KeyError, TypeError):
        cfg = sc.image_config(repo, digest) or {}
        labels = (cfg.get("config") or {}).get("Labels") or {}
        return {"name": labels.get("ml-env.name"), "hash": labels.get("ml-env.hash")}
    return {"name": None, "hash": None}


def _entry(result: PromoteResult, opts: PromoteOptions) -> dict[str, Any]:
    git = git_info(Path.cwd())
    env = os.environ
    run_url = None
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        run_url = f"{env.get('GITHUB_SERVER_URL', 'https://github.com')}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    entry: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": result.environment.get("name") or "",
        "environment_hash": result.environment.get("hash") or "",
        "digest": result.digest,
        "source": result.source,
        "destination": result.destination,
        "tags": [r.rsplit(":", 1)[1] for r in result.refs],
        "git_revision": git.commit or "",
        "actor": env.get("GITHUB_ACTOR") or env.get("USER") or _user_name(),
    }
    if run_url:
        entry["ci_run_url"] = run_url
    if result.moved_tags:
        entry["moved_tags"] = result.moved_tags
    return entry


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


# --- the ledger ---------------------------------------------------------------------------


class Ledger:
    """A TOML file of ``[[promotion]]`` entries, appended atomically (lock, temp file, rename)."""

    table = "promotion"
    name_key = "environment"  # the entry field that names the environment
    header = (
        "Release ledger: one [[promotion]] per promotion, appended by `ml-env promote`.",
        "Do not edit by hand; `ml-env ledger show` reads it.",
    )

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _read(self) -> Any:
        import tomlkit

        if not self.path.exists():
            doc = tomlkit.document()
            for line in self.header:
                doc.add(tomlkit.comment(line))
            return doc
        try:
            return tomlkit.parse(self.path.read_text(encoding="utf-8"))
        except Exception as e:
            raise MlEnvError(f"the ledger is not valid TOML: {e}", file=str(self.path)) from None

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        import tomlkit

        with self._locked():
            doc = self._read()
            if self.table not in doc:
                doc.add(self.table, tomlkit.aot())
            table = tomlkit.table()
            for k, v in entry.items():
                table.add(k, tomlkit.string(v, multiline=True) if isinstance(v, str) and "\n" in v else v)
            doc[self.table].append(table)  # type: ignore[union-attr]
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(tomlkit.dumps(doc))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        return entry

    def entries(self, env: str | None = None) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        doc = self._read().unwrap()
        out = list(doc.get(self.table) or [])
        return [e for e in out if env is None or e.get(self.name_key) == env]

    def current(self, env: str | None, tag: str) -> dict[str, Any] | None:
        """Which digest ``tag`` is for ``env`` now, and since when (the promotion that set it)."""
        found = None
        for e in self.entries(env):
            if tag in (e.get("tags") or []):
                if found is None or e["digest"] != found["digest"]:
                    found = {"environment": e.get("environment"), "tag": tag, "digest": e["digest"], "since": e["time"],
                             "destination": e.get("destination")}  # fmt: skip
        return found
