"""Promotion by digest from one registry to another, recorded in the release ledger.

The source digest is resolved once; everything after uses it. The copy goes registry to
registry over the OCI distribution API, never through a Docker daemon: blobs the destination
has are skipped, blobs inside one registry are mounted across repositories, others are streamed
(no whole layer in memory, a few at a time) and hashed as they pass. Indexes are copied as they
are, children first (every platform and the ``unknown/unknown`` attestation manifests), so the
destination digest equals the source digest; a single manifest stays a single manifest.
Manifests go by digest after every blob they need is there; tags are set last and verified.
An interrupted promotion therefore never leaves a destination tag on an incomplete image.

Races. The ledger is read (and must be valid) and locked before any registry is touched, and
stays locked until the promotion is recorded. The tag writes run under a per-destination lock:
each tag is checked again just before it is written and verified after; a promotion that finds
its tag taken by another digest in between exits 5 naming the digest that won. On one machine
that makes concurrent promotions to one tag exact: one wins. Across machines a registry has no
compare-and-swap: the re-check and the verification narrow the window and report a lost race,
but two writers can still both write; the ledger then shows both, and the registry the last.

Re-runs converge: when the destination already holds the digest under every requested tag,
nothing is copied; if the ledger has no record of it, one is added, marked ``found``.

Signature/attestation tags (``sha256-<hex>.sig``, ``.att``, ``.sbom``) are copied when present,
and OCI referrers when the source registry has the referrers API.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError, TagConflict, UsageError
from ..registry import Reference, RegistryClient, check_registry_host, parse_ref
from ..safe.fsutil import locked
from ..safe.grammar import TAG, matches, printable
from .copy import Progress, Tree, collect, copy_blobs, copy_referrers, validate_manifest
from .ledger import Ledger, Promotion, environment_hash, environment_name
from .ledger_oci import open_ledger
from .tested import Combination

if TYPE_CHECKING:  # a promotion that signs nothing never loads cosign's edge
    from .cosign import Key, Trust

__all__ = ["PromoteOptions", "PromoteResult", "Progress", "promote", "TagConflict"]


@dataclass(frozen=True)
class PromoteOptions:
    source: str
    destination: str  # host/repo, optionally :tag
    tags: tuple[str, ...] = ()
    allow_overwrite: bool = False
    dry_run: bool = False
    insecure: bool = False
    ledger: Path | str | None = Path("releases.toml")  # a file, oci://HOST/REPO[:TAG], or "registry"
    copy_referrers: bool = True
    jobs: int = 4  # blobs copied at once
    require: tuple[str, ...] = ()  # gates the digest must have passed: "smoke-test"
    spec: Path | None = None  # with the smoke-test gate: the environment file whose lock was tested
    tested: Combination | None = None  # with the smoke-test gate: the combination that runs (None: every one tested)
    sign: Key | None = None  # sign the destination digest (and attest what it carries) with this key
    trust: Trust | None = None  # with the signed gate: whose signature the source digest must carry
    ca_bundle: Path | None = None  # for cosign's TLS


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
    recorded_found: bool = False  # a no-op that added the missing ledger record
    dry_run: bool = False
    plan: list[str] = field(default_factory=list)
    environment: dict[str, str] = field(default_factory=dict)
    ledger_entry: dict[str, Any] | None = None
    signed: dict[str, Any] | None = None  # what signing at the destination did (Signed.to_json)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _ref_host(ref: str, what: str) -> None:
    """The registry part of an image reference: no scheme, no credentials (never echoed)."""
    if "://" in ref:
        raise UsageError(f"the {what} must be host[:port]/repository without a scheme or credentials")
    check_registry_host(ref.split("/", 1)[0], f"{what} registry")


def _dest(opts: PromoteOptions) -> tuple[Reference, list[str]]:
    _ref_host(opts.destination, "destination")
    d = parse_ref(opts.destination)
    if d.digest:
        raise UsageError("the destination must be a repository (with an optional tag), not a digest")
    tags = list(opts.tags)
    explicit = opts.destination.rsplit("/", 1)[-1]
    if ":" in explicit and d.tag:
        tags.insert(0, d.tag)
    if not tags:
        raise UsageError("no destination tag: give --tag (several allowed) or dest:tag")
    for t in tags:
        if not matches(TAG, t):
            raise UsageError(f"{printable(t, 140)!r} is not a valid tag", hint="letters, digits, '_', '.', '-'; ≤ 128")
    return Reference(d.host, d.repository), list(dict.fromkeys(tags))


def promote(
    opts: PromoteOptions,
    *,
    info: Callable[[str], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> PromoteResult:
    say = info or (lambda _m: None)
    t0 = time.monotonic()
    _ref_host(opts.source, "source")
    src = parse_ref(opts.source)
    dst, tags = _dest(opts)
    if opts.jobs < 1 or opts.jobs > 32:
        raise UsageError("--jobs must be between 1 and 32")
    if opts.require:
        from .attest import check_gates

        check_gates(opts.require)
    if "signed" in opts.require and opts.trust is None:
        raise UsageError(
            "--require signed needs who is trusted: --verify-key (a public key file, env://NAME or a KMS URI), "
            "or --certificate-identity with --certificate-oidc-issuer"
        )
    if opts.spec is not None and "smoke-test" not in opts.require:
        raise UsageError("--spec names the lock a smoke test must have used: it goes with --require smoke-test")
    if opts.tested is not None and "smoke-test" not in opts.require:
        raise UsageError("--entry/--model name what a smoke test must have tested: they go with --require smoke-test")
    _not_the_ledger(dst, tags, opts.ledger)
    expected_lock = _spec_lock(opts.spec) if opts.spec is not None and "smoke-test" in opts.require else None
    opened: contextlib.AbstractContextManager[Ledger | None] = contextlib.nullcontext(None)
    if opts.ledger is not None and not opts.dry_run:
        opened = open_ledger(opts.ledger, insecure=opts.insecure, destination=f"{dst.host}/{dst.repository}")
    with opened as ledger, ledger.locked() if ledger else contextlib.nullcontext():
        if ledger:
            ledger.check()  # a corrupt ledger stops us before an image is copied
        return _promote(opts, src, dst, tags, ledger, say, progress, t0, expected_lock)


def _not_the_ledger(dst: Reference, tags: list[str], ledger: Path | str | None) -> None:
    """A destination tag that names a registry-kept ledger is refused: an image written there
    (with --allow-overwrite) replaced the whole release history, and every later promotion of
    that destination failed on a ledger that is no ledger."""
    from .ledger_oci import PREFIX, is_remote, ledger_location, with_ledger_tag

    repo = f"{dst.host}/{dst.repository}"
    kept = {PREFIX + with_ledger_tag(repo)}
    if ledger is not None and is_remote(text := ledger_location(ledger, repo)):
        kept.add(PREFIX + with_ledger_tag(text[len(PREFIX) :]))
    for t in tags:
        if f"{PREFIX}{repo}:{t}" in kept:
            raise UsageError(
                f"tag {t} of {repo} holds the release ledger; an image is never promoted over it",
                hint="choose another tag",
            )


def _spec_lock(spec: Path) -> str:
    """The sha256 of the lock beside an environment file (what its tested image must hold)."""
    from ..safe.fsutil import read_bounded
    from ..spec import lock_path_for
    from ..spec.pins import MAX_LOCK

    lock = lock_path_for(spec)
    try:
        return hashlib.sha256(read_bounded(lock, MAX_LOCK, error=UsageError, what="lock file")).hexdigest()
    except OSError:
        raise UsageError(f"--spec {spec}: it has no lock ({lock.name}) to compare the tested image with") from None


def _check_gates(sc: RegistryClient, src: Reference, digest: str, opts: PromoteOptions, lock: str | None) -> str:
    """Refuse (exit 5) a digest that has not passed the required gates; a line saying it has."""
    from ..errors import GateRefused
    from .attest import smoke_records
    from .tested import gate

    where = src.pinned(digest)
    verdict = gate(smoke_records(sc, src.repository, digest), opts.tested, where)
    if not verdict.ok:
        raise GateRefused(
            verdict.line,
            hint="`ml-env smoke-test --env <that image@digest>` (or the smoke-test action) records one"
            if not verdict.counted
            else None,
        )
    if lock is not None and any(r.get("lock_sha256") != lock for r in verdict.counted):
        raise GateRefused(
            f"{where} was smoke-tested with another lock than {opts.spec}'s: the lock changed since the test",
            hint="build, smoke-test and promote the image of the current lock",
        )
    return f"gate smoke-test: {verdict.line}"


def _promote(
    opts: PromoteOptions,
    src: Reference,
    dst: Reference,
    tags: list[str],
    ledger: Ledger | None,
    say: Callable[[str], None],
    progress: Callable[[Progress], None] | None,
    t0: float,
    expected_lock: str | None = None,
) -> PromoteResult:
    sc = RegistryClient(src.host, insecure=opts.insecure)
    dc = sc if dst.host == src.host else RegistryClient(dst.host, insecure=opts.insecure)
    got = sc.get_manifest(src.repository, src.reference)
    if got is None:
        raise UsageError(f"source {opts.source} not found")
    top, body = got
    digest = top.digest
    validate_manifest(body, f"source {src.pinned(digest)}")
    say(f"source {opts.source} is {digest}")
    if "smoke-test" in opts.require:
        say(_check_gates(sc, src, digest, opts, expected_lock))
    if "signed" in opts.require:
        from .signing import check_signed

        say("gate signed: " + check_signed(src.pinned(digest), opts.trust, smoke_test="smoke-test" in opts.require,
                                           tested=opts.tested, insecure=opts.insecure, ca_bundle=opts.ca_bundle))  # fmt: skip
    result = PromoteResult(
        digest, src.pinned(digest), f"{dst.host}/{dst.repository}", [f"{dst.host}/{dst.repository}:{t}" for t in tags]
    )

    # tag policy, before anything is written
    state = _tag_state(dc, dst, tags, digest)
    conflicts = [f"{t} -> {have}" for t, have in state.items() if have not in (None, digest)]
    if conflicts and not opts.allow_overwrite:
        raise TagConflict(
            f"destination {result.destination} has tags pointing at other images: {', '.join(conflicts)}",
            hint="promotion never moves a tag silently; pass --allow-overwrite to move it",
        )
    for t, have in state.items():
        if have is None:
            result.plan.append(f"tag {t}: new")
        elif have == digest:
            result.plan.append(f"tag {t}: already {digest[:19]}")
        else:
            result.plan.append(f"tag {t}: move from {have[:19]} (allowed)")
            result.moved_tags.append(f"{t} (was {have})")
    if all(have == digest for have in state.values()):  # each tag HEAD answered this very manifest
        result.no_op = True
        say(f"{digest[:19]} is already promoted as {', '.join(tags)}: nothing to copy")
        if opts.copy_referrers:  # signatures added since the last promotion travel too (2 requests)
            copy_referrers(sc, dc, src.repository, dst.repository, digest, opts.jobs, result, say,
                           suffixes=(".sig", ".att"), referrers=False)  # fmt: skip
        _sign(opts, dst, digest, result, say)
        known = ledger.recorded(result.destination, digest, tuple(tags)) if ledger is not None else None
        if known is not None:
            result.environment = {"name": known.environment, "hash": known.environment_hash}
        else:
            result.environment = _environment(sc, src.repository, digest)
        if ledger is not None and known is None:
            entry = _entry(result, tags, found=True)
            ledger.append(entry)
            result.ledger_entry, result.recorded_found = entry.to_dict(), True
            say(f"the ledger had no record of it: recorded {digest[:19]} as found at {', '.join(tags)}")
        result.seconds = time.monotonic() - t0
        return result

    result.environment = _environment(sc, src.repository, digest)
    tree = Tree()
    collect(sc, src.repository, digest, body, top.media_type, tree)
    if opts.dry_run:
        result.dry_run = True
        for d, size in tree.blobs.items():
            if dc.blob_exists(dst.repository, d):
                result.skipped_blobs += 1
            else:
                how = "mount" if sc.host == dc.host else "copy"
                result.plan.append(f"blob {d[:19]} {size / 2**20:.1f} MiB: {how}")
        for d, _b, mt in tree.manifests:
            result.plan.append(f"manifest {d[:19]} ({mt.rsplit('.', 2)[-2] if '.' in mt else mt})")
        result.seconds = time.monotonic() - t0
        return result

    copy_blobs(sc, dc, src.repository, dst.repository, tree.blobs, opts.jobs, result, progress)
    for d, b, mt in tree.manifests:
        if dc.head_manifest(dst.repository, d) is None:
            put = dc.put_manifest(dst.repository, d, b, mt)
            if put and put != d:
                raise RegistryError(f"destination stored manifest {d[:19]} as {put[:19]}")
            result.manifests += 1
    if opts.copy_referrers:
        copy_referrers(sc, dc, src.repository, dst.repository, digest, opts.jobs, result, say)
    _write_tags(dc, dst, tags, digest, body, top.media_type, opts.allow_overwrite)
    _sign(opts, dst, digest, result, say)
    result.seconds = time.monotonic() - t0
    say(
        f"promoted {digest[:19]} to {', '.join(result.refs)}: {result.copied_blobs} blobs copied "
        f"({result.copied_bytes / 2**20:.1f} MiB), {result.mounted_blobs} mounted, {result.skipped_blobs} already there"
    )
    if ledger is not None:
        entry = _entry(result, tags, found=False)
        ledger.append(entry)
        result.ledger_entry = entry.to_dict()
    return result


def _sign(opts: PromoteOptions, dst: Reference, digest: str, result: PromoteResult, say: Callable[[str], None]) -> None:
    """With a signing key: the destination digest signed, with what it carries attested."""
    if opts.sign is None:
        return
    from .signing import sign_release

    done = sign_release(dst.pinned(digest), opts.sign, insecure=opts.insecure, ca_bundle=opts.ca_bundle, say=say)
    result.signed = done.to_json()


def _tag_state(dc: RegistryClient, dst: Reference, tags: list[str], digest: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for t in tags:
        have = dc.head_manifest(dst.repository, t)
        out[t] = have.digest if have else None
    return out


def _write_tags(
    dc: RegistryClient, dst: Reference, tags: list[str], digest: str, body: bytes, media_type: str, overwrite: bool
) -> None:
    """Set the tags under the destination's lock: re-check each just before writing it, verify all
    after. A tag another promotion took in between is a lost race (exit 5, naming the winner)."""
    from ..safe.digests import cache_dir

    key = hashlib.sha256(f"{dst.host}/{dst.repository}".encode()).hexdigest()[:32]
    with locked(cache_dir() / "locks" / f"promote-{key}.lock"):
        for t in tags:
            have = dc.head_manifest(dst.repository, t)
            if have is not None and have.digest != digest and not overwrite:
                raise TagConflict(
                    f"lost a race for {dst.host}/{dst.repository}:{t}: another promotion set it to {have.digest}",
                    hint="the digest above is what the tag is now; promote again with --allow-overwrite to replace it",
                )
            dc.put_manifest(dst.repository, t, body, media_type)
        for t in tags:
            have = dc.head_manifest(dst.repository, t)
            if have is None or have.digest != digest:
                raise TagConflict(
                    f"lost a race for {dst.host}/{dst.repository}:{t}: after writing {digest[:19]} it is "
                    f"{have.digest if have else 'missing'}",
                    hint="another writer (another machine) changed it at the same time; the registry keeps the last",
                )


def _environment(sc: RegistryClient, repo: str, digest: str) -> dict[str, str]:
    """The environment's name and hash from the image's ml-env labels (when it is one of ours).

    Labels come from the registry: a name that is not an environment name is dropped."""
    with contextlib.suppress(RegistryError):
        cfg = sc.image_config(repo, digest) or {}
        labels = (cfg.get("config") or {}).get("Labels") or {}
        if isinstance(labels, dict):
            return {
                "name": environment_name(labels.get("ml-env.name")),
                "hash": environment_hash(labels.get("ml-env.hash")),
            }
    return {"name": "", "hash": ""}


def _entry(result: PromoteResult, tags: list[str], *, found: bool) -> Promotion:
    from .provenance import git_info

    git = git_info(Path.cwd())
    env = os.environ
    run_url = None
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        run_url = f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return Promotion(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        digest=result.digest,
        destination=result.destination,
        tags=tuple(tags),
        environment=result.environment.get("name", ""),
        environment_hash=result.environment.get("hash", ""),
        source=result.source,
        git_revision=git.commit or "",
        actor=printable(env.get("GITHUB_ACTOR") or env.get("USER") or _user_name(), 100),
        ci_run_url=run_url,
        moved_tags=tuple(result.moved_tags),
        found=found,
        signed_by=str((result.signed or {}).get("fingerprint") or (result.signed or {}).get("by") or ""),
        signed=tuple(k for k in ("image", "sbom", "provenance", "smoke-test")
                     if k in (result.signed or {}).get("signed", []) + (result.signed or {}).get("already", [])),
    )  # fmt: skip


def _user_name() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
