"""hash → exists? → build with cache → lock → push → verify.

The "exists?" answer comes from a manifest HEAD against the target registry (or the local image
store when no registry is given). An error there is an error, never "exists", unless the
caller asks to build anyway. Two builds of the same environment on one machine serialise on a
file lock and the second finds the first one's image.

``--no-push`` (a pull request's build): the same question is asked of the registry, and an
image there is reused as it is (nothing built, nothing pulled); otherwise the image is built,
locked and checked, and left in the engine under its hash tag. Nothing is written to the
registry: no image, no cache export, no moving cache ref, no SBOM (the registry cache is still
read).

A build runs twice through BuildKit: the first builds (and loads) the image so the resolved
package versions can be read from it; the second, all cached, adds the lock as a label,
exports the build cache and pushes. Nothing is pushed unless every step succeeded.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import spec as spec_mod
from ..errors import BuildError, MlEnvError, RegistryError, SpecError, UsageError
from ..registry import RegistryClient, parse_ref
from ..registry.refs import DOCKER_HUB
from ..release.provenance import git_info
from ..safe.digests import cache_dir
from ..safe.fsutil import locked, write_atomic
from ..safe.redact import Redactor
from ..settings.options import CACHE_BACKENDS
from ..spec import Environment, lock_path_for
from . import extras
from .cache import CachePlan, choose_cache, existing_sources, point_moving_ref, with_user_cache
from .dockerfile import BuildPlan, render
from .exists import BASE_DIGEST_LABEL, announce, image_exists, warn_if_base_moved
from .extras import check_platforms, output_spec
from .lockfile import check_locked, check_python_version, lock_from_registry_if_missing, read_lock
from .model import BuildOptions, BuildResult, Reporter, image_ref
from .resolution import build_how, resolve_layers, workspace
from .secrets import env_secret

if TYPE_CHECKING:
    from ..engine import BuildOutcome, Engine

__all__ = ["build_env", "load_env", "plan", "pin_base"]

PUSH_ATTEMPTS = 3
_TRANSIENT_PUSH = re.compile(
    r"\b(500 Internal Server Error|502 Bad Gateway|503 Service Unavailable|504 Gateway|429 Too Many)"
)


def load_env(path: str | Path, opts: BuildOptions) -> Environment:
    env = spec_mod.load(path, locked=opts.locked)
    if opts.pin_base:
        env = pin_base(env, opts)
    return env


def plan(path: str | Path, opts: BuildOptions) -> tuple[Environment, BuildPlan, str]:
    env = load_env(path, opts)
    p = render(env)
    return env, p, image_ref(env, opts, p.hash)


def pin_base(env: Environment, opts: BuildOptions) -> Environment:
    b = env.base
    if b.image is None:
        raise SpecError(
            "--pin-base needs base.image (a base Dockerfile has no single tag to pin)", file=str(env.path), key="base"
        )
    digest = base_digest(env, opts)
    if digest is None:
        raise SpecError(f"base image {b.image} does not exist in its registry", file=str(env.path), key="base.image")
    return env.with_base_digest(digest)


def base_digest(env: Environment, opts: BuildOptions) -> str | None:
    """The digest ``base.image`` names now (its own digest, or its tag's in the registry); None
    when the registry has no such tag."""
    b = env.base
    assert b.image is not None
    ref = parse_ref(b.image)
    if ref.digest:
        return ref.digest
    creds = None
    if b.registry and b.registry.username and b.registry.address == ref.host:
        password = env_secret(b.registry.password_env, env, "base.registry.password_env", host=b.registry.address)
        creds = (b.registry.username, password)
    if ref.host == DOCKER_HUB and not creds:
        # Docker Hub names are resolved by the engine, which knows its registry mirrors
        from .. import engine

        digest = engine.current().containers.distribution(b.image, "docker.io")
    else:
        client = RegistryClient(ref.host, insecure=opts.insecure, credentials=creds if creds else True)
        info = client.head_manifest(ref.repository, ref.reference)
        digest = info.digest if info else None
    return digest


def build_env(env: Environment, opts: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Build (or reuse) the image of an environment already loaded (and pinned, with --pin-base)."""
    from . import speccache

    rep = reporter or Reporter()
    t0 = time.monotonic()
    if opts.cache not in CACHE_BACKENDS:
        raise UsageError(f"unknown cache backend {opts.cache!r}; choose one of {', '.join(CACHE_BACKENDS)}")
    if opts.upgrade and opts.locked:
        raise UsageError(
            "--upgrade (the build action's no-cache) re-resolves packages and --locked installs the lock: choose one"
        )
    if env.lock is None and (lp := lock_path_for(env.path)).is_dir():  # said now, not after the build
        raise SpecError("is a folder where the build writes the lock", file=str(lp), hint="remove or rename it")
    p = render(env)
    ref = image_ref(env, opts, p.hash)
    if not opts.pin_base:
        speccache.store(env, p.hash, p.python, locked=opts.locked)
    announce(env.warnings, env.unpinned, opts, rep)

    def reused(found: str, lock: str | None) -> BuildResult:
        return BuildResult(
            ref, found, p.hash, built=False, cache_hit=True, name=env.name, lock_path=lock,
            seconds=time.monotonic() - t0, unpinned=tuple(env.unpinned), python=p.python, registry=opts.registry,
        )  # fmt: skip

    if not (opts.force or opts.upgrade or opts.check_reproducible):
        found = image_exists(ref, opts, rep)
        if found is not None:
            if env.base.image and env.base.digest is None:
                warn_if_base_moved(ref, found, env.base.image, opts, rep, lambda: base_digest(env, opts))
            return reused(found, lock_from_registry_if_missing(env.path, ref, opts, rep))
    with _build_lock(p.hash, opts, rep):
        if not (opts.force or opts.upgrade or opts.check_reproducible):
            found = image_exists(ref, opts, rep)
            if found is not None:  # built by a concurrent build while we waited
                return reused(found, None)
        return _build(env, p, ref, opts, rep, t0)


@contextlib.contextmanager
def _build_lock(h: str, opts: BuildOptions, rep: Reporter) -> Iterator[None]:
    """Builds of one environment on one machine take turns; a waiting build says so."""
    d = opts.lock_dir or cache_dir() / "locks"
    with locked(d / f"{h}.lock", on_wait=lambda: rep.info(f"waiting for another build of {h[:12]} to finish")):
        yield


def _build(env: Environment, p: BuildPlan, ref: str, opts: BuildOptions, rep: Reporter, t0: float) -> BuildResult:
    redactor = Redactor()
    workdir = Path(tempfile.mkdtemp(prefix="ml-env-build-"))
    try:
        context, secrets, engine, caps = workspace(env, p, opts, workdir, redactor)
        platforms = check_platforms(opts.platforms, caps.platform, caps.builder, caps.driver)
        extra = extras.parse(opts)
        own_labels = _labels(env, p, extra.labels)  # a --label the environment file contradicts: refused now
        cache = with_user_cache(choose_cache(env, opts, caps, ref), extra, caps)
        if opts.registry and not opts.pushes and cache.target and cache.target.get("type") == "registry":
            cache = CachePlan(cache.backend, cache.sources, None, None)
            rep.info("--no-push: the registry cache is read, not written")
        cache_from = existing_sources(cache, opts, rep)
        log_path = _log_path(env, p, opts)
        rep.info(f"building {ref} (cache: {cache.backend}, engine {caps.server_version}, buildx {caps.buildx_version})")
        with open(log_path, "w", encoding="utf-8") as logf:

            def on_line(line: str) -> None:
                clean = redactor(line)
                logf.write(clean + "\n")
                rep.log(clean)

            labels = {**own_labels, **_base_label(env, opts, rep)}
            extra_tags = [ref.rsplit(":", 1)[0] + ":buildcache"] if cache.backend == "inline" and opts.pushes else []
            how = build_how(opts, platforms)
            # a docker-driver builder puts what it builds in the engine; any other (docker-container,
            # remote, kubernetes) keeps it in its own cache unless told to load it (a tar sent back)
            load = caps.driver != "docker"
            # the first pass carries the image's tag in the engine without its lock: if the build
            # stops before the second pass, the tag goes too (a later build must not reuse it)
            partial = False
            try:
                if p.resolve_dockerfile is not None and len(platforms or []) <= 1:
                    p = resolve_layers(engine, env, p, context, workdir, secrets, cache_from, on_line, opts, how, rep)
                first = engine.build(
                    context, tags=[ref], push=False, labels=labels, secrets=secrets, network=opts.network,
                    cache_from=cache_from, cache_to=None, no_cache=opts.upgrade, on_line=on_line, load=load, **how,
                )  # fmt: skip
                partial = True
                lock_text = read_lock(engine, env, p.python, ref, p.hash)
                check_python_version(engine, env, p.python, ref, rep)
                if env.lock is not None:
                    check_locked(env, lock_text)
                labels["ml-env.lock"] = lock_text
                for attempt in range(1, PUSH_ATTEMPTS + 1):
                    try:
                        names = [ref, *extra_tags]
                        push = opts.pushes
                        output = None
                        loads = load and not push
                        zstd = "zstd" if opts.compression == "zstd" and push else None
                        if extra.annotations or zstd:  # only an --output carries them; it names and pushes too
                            output = output_spec(
                                names, push=push, annotations=extra.annotations, load=loads, compression=zstd
                            )
                            names, push, loads = [], False, False
                        target = cache.target
                        if zstd and target and target.get("type") == "registry":  # the same blobs as the image's
                            target = {**target, "compression": "zstd", "force-compression": "true"}
                        second = engine.build(
                            context, tags=names, push=push, labels=labels, secrets=secrets, network=opts.network,
                            cache_from=[], cache_to=target, no_cache=False, on_line=on_line, output=output,
                            provenance={"mode": "max"} if push else None, load=loads, **how,
                        )  # fmt: skip
                        partial = False
                        break
                    except BuildError as e:
                        # every step is cached by now: what fails here is the push or the cache
                        # export, and a registry's 5xx/429 is worth another try
                        if attempt == PUSH_ATTEMPTS or not _TRANSIENT_PUSH.search(e.message + (e.details or "")):
                            raise
                        rep.warn(f"the registry failed the push ({e.message[-120:]}); trying again")
                        time.sleep(1.0 * attempt)
                point_moving_ref(cache, opts, rep)
                repro = None
                if opts.check_reproducible:
                    repro = _check_reproducible(engine, context, ref, p, labels, secrets, opts, on_line, how, rep)
            except MlEnvError as e:
                if partial:
                    engine.remove_image(ref)
                if e.details:
                    e.details = redactor(e.details)
                e.message = redactor(e.message)
                if isinstance(e, BuildError):
                    e.hint = "; ".join(x for x in (e.hint, f"full log: {log_path}") if x)
                raise
            except BaseException:  # interrupted, or a bug: the same rule
                if partial:
                    engine.remove_image(ref)
                raise
        digest = second.digest or first.digest
        if opts.pushes and digest:
            digest = _attach_sbom(env, p, ref, digest, lock_text, engine, opts)
            digest = _verify_pushed(ref, digest, opts)
            if load:  # the engine holds the first pass (no lock label) under the tag: the registry has the image
                engine.remove_image(ref)
        lock_written = None
        if env.lock is None:
            lp = lock_path_for(env.path)
            write_atomic(lp, lock_text)
            lock_written = str(lp)
        kept = "" if opts.pushes or not opts.registry else " (not pushed: --no-push; the image is in the engine)"
        rep.info(f"built {ref}@{digest} in {time.monotonic() - t0:.1f}s{kept}")
        return BuildResult(
            ref, digest, p.hash, built=True, cache_hit=first.all_cached, name=env.name, cache_backend=cache.backend,
            lock_path=lock_written or (str(env.lock.path) if env.lock else None), log_path=str(log_path),
            seconds=time.monotonic() - t0, unpinned=tuple(env.unpinned), steps=first.steps,
            cached_steps=first.cached, cache_from=tuple(c.get("ref") or c.get("src") or c.get("scope") or "" for c in cache_from),
            python=p.python, registry=opts.registry if opts.pushes else None, image_id=_image_id(engine, ref, second),
            reproducible=repro,
            metadata=_metadata(second.metadata, digest),
        )  # fmt: skip
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _image_id(engine: Engine, ref: str, outcome: BuildOutcome) -> str | None:
    """The ID the engine gives the image (``docker images``); buildx's report if it has none."""
    got = engine.local_image_id(ref) or outcome.metadata.get("containerimage.config.digest")
    return got if isinstance(got, str) else None


def _check_reproducible(engine: Engine, context: Path, ref: str, p: BuildPlan, labels: dict[str, str],
                        secrets: list[str], opts: BuildOptions, on_line: Callable[[str], None], how: dict[str, Any],
                        rep: Reporter) -> dict[str, Any]:  # fmt: skip
    """Build the same context again with no cache (kept in the engine only) and compare."""
    from .reproducible import compare_images

    check = f"{ref.rsplit(':', 1)[0]}:{p.hash[:40]}-reproducible"
    rep.info("building again with no cache to compare (--check-reproducible)")
    engine.build(
        context, tags=[check], push=False, labels=labels, secrets=secrets, network=opts.network, cache_from=[],
        cache_to=None, no_cache=True, on_line=on_line, load=engine.capabilities(opts.builder).driver != "docker", **how,
    )  # fmt: skip
    try:
        found = compare_images(engine, ref, check)
    finally:
        engine.remove_image(check)
    if found.same:
        rep.info(f"reproducible: a build with no cache gave the same {found.layers} layers and config")
    else:
        rep.warn("not reproducible: " + "; ".join(
            ([f"layers {', '.join(str(i + 1) for i in found.differing_layers)} differ"] if found.differing_layers else [])
            + ([f"config {', '.join(found.config_differs)} differs"] if found.config_differs else [])))  # fmt: skip
    return found.to_json()


def _metadata(meta: dict[str, Any], digest: str | None) -> dict[str, Any]:
    """buildx's metadata of the last pass, naming the image's final digest (the SBOM rewrites the index)."""
    out = {k: v for k, v in meta.items() if k.startswith(("containerimage.", "image."))}
    if digest and out.get("containerimage.digest") not in (None, digest):
        out["containerimage.digest"] = digest
        out.pop("containerimage.descriptor", None)
    return out


def _attach_sbom(env: Environment, p: BuildPlan, ref: str, digest: str, lock_text: str, engine: Engine,
                 opts: BuildOptions) -> str:  # fmt: skip
    """The pushed image's SBOM (``sbom``), attached beside BuildKit's provenance: the new digest."""
    from ..release.sbom import (
        CYCLONEDX,
        SPDX,
        Contents,
        attach_attestations,
        cyclonedx_json,
        deb_packages,
        spdx_json,
        statement,
    )
    from ..spec.pins import lock_packages

    r = parse_ref(ref)
    name = f"{r.host}/{r.repository}"
    base = env.base.image
    if base and env.base.digest:
        base = base.split("@", 1)[0] + "@" + env.base.digest
    contents = Contents(name, p.hash, lock_packages(lock_text), deb_packages(engine, ref), base)
    cdx, spdx = cyclonedx_json(contents), spdx_json(contents)

    def make(manifest: str) -> list[tuple[str, bytes]]:
        return [(CYCLONEDX, statement(CYCLONEDX, cdx, name, manifest)), (SPDX, statement(SPDX, spdx, name, manifest))]

    client = RegistryClient(r.host, insecure=opts.insecure)
    return attach_attestations(client, r.repository, r.tag or p.hash, digest, make)


def _labels(env: Environment, p: BuildPlan, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The image's labels: the OCI ones ml-env fills in (title, description, version, revision),
    which a --label of the same key replaces; the environment file's own (hashed: a --label that
    would change one is refused, never dropped); ml-env's."""
    labels = {"org.opencontainers.image.title": env.name}
    if env.description:
        labels["org.opencontainers.image.description"] = env.description
    if env.version:
        labels["org.opencontainers.image.version"] = env.version
    git = git_info(env.path.parent)
    if git.commit:
        labels["org.opencontainers.image.revision"] = git.commit
    for key, value in (extra or {}).items():
        if env.labels.get(key, value) != value:
            raise UsageError(
                f"label {key}: {env.path.name} sets it to another value (its labels are part of the content hash)",
                hint="change it in the environment file, or drop the label",
            )
        labels[key] = value
    labels.update(env.labels)
    labels["ml-env.name"] = env.name
    labels["ml-env.hash"] = p.hash
    labels["ml-env.spec"] = p.canonical
    if p.python:
        labels["ml-env.python"] = p.python  # how a run of this image calls its Python
    if env.inference:
        labels["ml-env.inference.server"] = env.inference_server  # which routes serve/smoke-test probe
    return labels


def _base_label(env: Environment, opts: BuildOptions, rep: Reporter) -> dict[str, str]:
    """``ml-env.base.digest``: what the base tag named when this image was built (not hashed), so a
    later reuse can tell that the tag moved. Resolved just before the build, not by it: a tag
    re-pushed in between is recorded as the newer digest."""
    if env.base.image is None:
        return {}
    try:
        digest = env.base.digest or base_digest(env, opts)
    except MlEnvError as e:
        rep.info(f"could not read the digest of base image {env.base.image} ({e.message}); not recording it")
        return {}
    return {BASE_DIGEST_LABEL: digest} if digest else {}


def _verify_pushed(ref: str, digest: str | None, opts: BuildOptions) -> str:
    r = parse_ref(ref)
    info = RegistryClient(r.host, insecure=opts.insecure).head_manifest(r.repository, r.reference)
    if info is None:
        raise RegistryError(f"{ref} is not in the registry after the push")
    if digest and info.digest != digest:
        raise RegistryError(f"{ref} points at {info.digest}, but the build pushed {digest}")
    return info.digest


def _log_path(env: Environment, p: BuildPlan, opts: BuildOptions) -> Path:
    opts.log_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return opts.log_dir / f"{env.name}-{p.hash[:12]}-{stamp}.log"
