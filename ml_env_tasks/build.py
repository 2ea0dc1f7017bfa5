"""hash → exists? → build with cache → lock → push → verify.

The "exists?" answer comes from a manifest HEAD against the target registry (or the local image
store when no registry is given). An error there is an error, never "exists", unless the
caller asks to build anyway. Two builds of the same environment on one machine serialise on a
file lock and the second finds the first one's image.

A build runs twice through BuildKit: the first builds (and loads) the image so the resolved
package versions can be read from it; the second, all cached, adds the lock as a label,
exports the build cache and pushes. Nothing is pushed unless every step succeeded.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import spec as spec_mod
from .digests import cache_dir
from .dockerfile import SECRET_CA, SECRET_PIP, SECRET_UV, BuildPlan, render, write_context
from .engine import CACHE_BACKENDS
from .errors import BuildError, EngineError, MlEnvError, RegistryError, SpecError, UsageError
from .fsutil import locked, write_atomic
from .hashing import dependency_key, env_hash
from .provenance import git_info
from .redact import Redactor
from .registry import RegistryClient, parse_ref
from .spec import Environment, lock_packages, lock_path_for

__all__ = ["BuildOptions", "BuildResult", "build", "plan", "image_ref", "Reporter", "CACHE_BACKENDS"]

PUSH_ATTEMPTS = 3
_TRANSIENT_PUSH = re.compile(
    r"\b(500 Internal Server Error|502 Bad Gateway|503 Service Unavailable|504 Gateway|429 Too Many)"
)
LOCK_HEADER = "# ml-env lock: the Python packages installed in the image (pip list --format=freeze).\n"


class Reporter:
    """Where progress goes. The default writes to stderr; fronts may subclass."""

    def __init__(self, *, stream_logs: bool = True, out: Any = None) -> None:
        self.stream_logs = stream_logs
        self.out = out or sys.stderr

    def info(self, msg: str) -> None:
        print(f"ml-env: {msg}", file=self.out, flush=True)

    def warn(self, msg: str) -> None:
        print(f"ml-env: warning: {msg}", file=self.out, flush=True)

    def log(self, line: str) -> None:
        if self.stream_logs:
            print(line, file=self.out, flush=True)


@dataclass(frozen=True)
class BuildOptions:
    registry: str | None = None
    repository: str | None = None  # default: ml-envs/<name>
    force: bool = False
    upgrade: bool = False
    locked: bool = False
    pin_base: bool = False
    cache: str = "auto"
    cache_ref: str | None = None
    cache_dir: Path | None = None
    ca_bundle: Path | None = None
    network: str | None = None
    build_on_check_error: bool = False
    insecure: bool = False
    log_dir: Path = field(default_factory=lambda: Path(".ml-env/logs"))
    lock_dir: Path | None = None  # where concurrent builds serialise; default ~/.cache/ml-env/locks


@dataclass(frozen=True)
class BuildResult:
    image: str
    digest: str | None
    hash: str
    built: bool
    cache_hit: bool
    name: str
    cache_backend: str | None = None
    lock_path: str | None = None
    log_path: str | None = None
    seconds: float = 0.0
    unpinned: tuple[str, ...] = ()
    steps: int = 0  # build steps (RUN/COPY/ADD) the first pass saw
    cached_steps: int = 0  # of which BuildKit took from a cache
    cache_from: tuple[str, ...] = ()  # the caches imported

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["unpinned"] = list(self.unpinned)
        d["cache_from"] = list(self.cache_from)
        return d


def repository_for(env: Environment, opts: BuildOptions) -> str:
    return opts.repository or f"ml-envs/{env.name}"


def image_ref(env: Environment, opts: BuildOptions, h: str | None = None) -> str:
    h = h or env_hash(env)
    repo = repository_for(env, opts)
    return f"{opts.registry}/{repo}:{h}" if opts.registry else f"{repo}:{h}"


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
    ref = parse_ref(b.image)
    if ref.digest:
        return env.with_base_digest(ref.digest)
    creds = None
    if b.registry and b.registry.username and b.registry.address == ref.host:
        creds = (b.registry.username, _env_secret(b.registry.password_env, env, "base.registry.password_env"))
    client = RegistryClient(ref.host, insecure=opts.insecure, credentials=creds if creds else True)
    info = client.head_manifest(ref.repository, ref.reference)
    if info is None:
        raise SpecError(f"base image {b.image} does not exist in its registry", file=str(env.path), key="base.image")
    return env.with_base_digest(info.digest)


def _env_secret(name: str | None, env: Environment, key: str) -> str:
    if not name:
        raise SpecError("no environment variable named", file=str(env.path), key=key)
    value = os.environ.get(name)
    if not value:
        raise SpecError(f"environment variable {name} is not set", file=str(env.path), key=key)
    return value


# --- the build ----------------------------------------------------------------------------


def build(path: str | Path, opts: BuildOptions | None = None, reporter: Reporter | None = None) -> BuildResult:
    opts = opts or BuildOptions()
    rep = reporter or Reporter()
    t0 = time.monotonic()
    if opts.cache not in CACHE_BACKENDS:
        raise MlEnvError(f"unknown cache backend {opts.cache!r}; choose one of {', '.join(CACHE_BACKENDS)}")
    if opts.upgrade and opts.locked:
        raise MlEnvError("--upgrade re-resolves packages and --locked installs the lock: choose one")
    env = load_env(path, opts)
    p = render(env)
    ref = image_ref(env, opts, p.hash)
    for w in env.warnings:
        rep.warn(w)
    if env.unpinned and not opts.locked:
        rep.info(
            f"{len(env.unpinned)} unpinned package(s) ({', '.join(env.unpinned[:5])}): the lock records what the image "
            "holds; --upgrade re-resolves them"
        )

    if not (opts.force or opts.upgrade):
        found = _exists(ref, opts, rep)
        if found is not None:
            lock = _lock_from_registry_if_missing(env, ref, opts, rep)
            return BuildResult(
                ref,
                found,
                p.hash,
                built=False,
                cache_hit=True,
                name=env.name,
                lock_path=lock,
                seconds=time.monotonic() - t0,
                unpinned=tuple(env.unpinned),
            )

    with _build_lock(p.hash, opts, rep):
        if not (opts.force or opts.upgrade):
            found = _exists(ref, opts, rep)
            if found is not None:  # built by a concurrent build while we waited
                return BuildResult(
                    ref, found, p.hash, built=False, cache_hit=True, name=env.name, seconds=time.monotonic() - t0
                )
        return _build(env, p, ref, opts, rep, t0)


def _exists(ref: str, opts: BuildOptions, rep: Reporter) -> str | None:
    """The digest of the image at ``ref`` if it exists; None if it does not. Errors raise."""
    if not opts.registry:
        from .engine import Engine

        return Engine().local_image_id(ref)
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


def _lock_from_registry_if_missing(env: Environment, ref: str, opts: BuildOptions, rep: Reporter) -> str | None:
    """A fresh checkout reuses an image built elsewhere: bring its lock file along from the label."""
    lp = lock_path_for(env.path)
    if lp.exists() or not opts.registry:
        return str(lp) if lp.exists() else None
    r = parse_ref(ref)
    try:
        cfg = RegistryClient(r.host, insecure=opts.insecure).image_config(r.repository, r.reference)
    except RegistryError as e:
        rep.warn(f"could not read the lock label of {ref}: {e.message}")
        return None
    text = ((cfg or {}).get("config") or {}).get("Labels", {}).get("ml-env.lock")
    if text:
        write_atomic(lp, text)
        rep.info(f"wrote {lp} from the image's label")
        return str(lp)
    return None


@contextlib.contextmanager
def _build_lock(h: str, opts: BuildOptions, rep: Reporter) -> Iterator[None]:
    """Builds of one environment on one machine take turns; a waiting build says so."""
    d = opts.lock_dir or cache_dir() / "locks"
    with locked(d / f"{h}.lock", on_wait=lambda: rep.info(f"waiting for another build of {h[:12]} to finish")):
        yield


def _build(env: Environment, p: BuildPlan, ref: str, opts: BuildOptions, rep: Reporter, t0: float) -> BuildResult:
    from .engine import Engine

    redactor = Redactor()
    workdir = Path(tempfile.mkdtemp(prefix="ml-env-build-"))
    try:
        context = workdir / "context"
        context.mkdir()
        write_context(p, context)
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        secrets = _secrets(env, opts, secrets_dir, redactor)
        config_dir = _docker_config(env, workdir, redactor)
        engine = Engine(config_dir=config_dir)
        caps = engine.capabilities()
        plan = _cache(env, opts, caps, ref)
        cache_from = _existing_sources(plan, opts, rep)
        backend = plan.backend
        log_path = _log_path(env, p, opts)
        rep.info(f"building {ref} (cache: {backend}, engine {caps.server_version}, buildx {caps.buildx_version})")
        with open(log_path, "w", encoding="utf-8") as logf:

            def on_line(line: str) -> None:
                clean = redactor(line)
                logf.write(clean + "\n")
                rep.log(clean)

            labels = _labels(env, p)
            try:
                first = engine.build(
                    context,
                    tags=[ref],
                    push=False,
                    labels=labels,
                    secrets=secrets,
                    network=opts.network,
                    cache_from=cache_from,
                    cache_to=None,
                    no_cache=opts.upgrade,
                    on_line=on_line,
                )
                lock_text = _read_lock(engine, env, p, ref)
                _check_python_version(engine, env, p, ref, rep)
                if env.lock is not None:
                    _check_locked(env, lock_text)
                labels["ml-env.lock"] = lock_text
                for attempt in range(1, PUSH_ATTEMPTS + 1):
                    try:
                        second = engine.build(
                            context,
                            tags=_extra_tags(ref, opts, backend),
                            push=bool(opts.registry),
                            labels=labels,
                            secrets=secrets,
                            network=opts.network,
                            cache_from=[],
                            cache_to=plan.target,
                            no_cache=False,
                            on_line=on_line,
                        )
                        break
                    except BuildError as e:
                        # every step is cached by now: what fails here is the push or the cache
                        # export, and a registry's 5xx/429 is worth one more try
                        if attempt == PUSH_ATTEMPTS or not _TRANSIENT_PUSH.search(e.message + (e.details or "")):
                            raise
                        rep.warn(f"the registry failed the push ({e.message[-120:]}); trying again")
                        time.sleep(1.0 * attempt)
                _point_moving_ref(plan, opts, rep)
            except MlEnvError as e:
                if e.details:
                    e.details = redactor(e.details)
                e.message = redactor(e.message)
                if isinstance(e, BuildError):
                    e.hint = f"full log: {log_path}"
                raise
        digest = second.digest or first.digest
        if opts.registry:
            digest = _verify_pushed(ref, digest, opts)
        lock_written = None
        if env.lock is None:
            lp = lock_path_for(env.path)
            write_atomic(lp, lock_text)
            lock_written = str(lp)
        rep.info(f"built {ref}@{digest} in {time.monotonic() - t0:.1f}s")
        return BuildResult(
            ref,
            digest,
            p.hash,
            built=True,
            cache_hit=first.all_cached,
            name=env.name,
            cache_backend=backend,
            lock_path=lock_written or (str(env.lock.path) if env.lock else None),
            log_path=str(log_path),
            seconds=time.monotonic() - t0,
            unpinned=tuple(env.unpinned),
            steps=first.steps,
            cached_steps=first.cached,
            cache_from=tuple(c.get("ref") or c.get("src") or c.get("scope") or "" for c in cache_from),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extra_tags(ref: str, opts: BuildOptions, backend: str) -> list[str]:
    if backend == "inline" and opts.registry:
        return [ref, ref.rsplit(":", 1)[0] + ":buildcache"]
    return [ref]


def _index_url(value: str, env: Environment, key: str) -> str:
    """A private index URL from an environment variable: one http(s) URL, nothing else (it is
    written into a config file: a newline would add settings)."""
    from urllib.parse import urlsplit

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


def _secrets(env: Environment, opts: BuildOptions, d: Path, redactor: Redactor) -> list[str]:
    import shlex

    out = []
    if opts.ca_bundle is not None:
        ca = Path(opts.ca_bundle)
        if not ca.is_file():
            raise UsageError(f"CA bundle {ca} not found", hint="--ca-bundle takes a PEM file")
        out.append(f"id={SECRET_CA},src={ca}")
    ix = env.index
    if not ix.empty:
        index = ix.index_url or (
            _index_url(_env_secret(ix.index_url_env, env, "python.index_url_env"), env, "python.index_url_env")
            if ix.index_url_env
            else None
        )
        extras = list(ix.extra_index_urls) + [
            _index_url(
                _env_secret(n, env, f"python.extra_index_urls_env[{i}]"), env, f"python.extra_index_urls_env[{i}]"
            )
            for i, n in enumerate(ix.extra_index_urls_env)
        ]
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


def _docker_config(env: Environment, workdir: Path, redactor: Redactor) -> Path | None:
    """A private docker config that adds the base registry's credentials for this build only."""
    reg = env.base.registry
    if reg is None or not reg.username:
        return None
    password = _env_secret(reg.password_env, env, "base.registry.password_env")
    redactor.add(password)
    from .credentials import private_docker_config

    return private_docker_config(workdir, reg.address, reg.username, password)


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
    import hashlib

    repo = repository_for(env, opts)
    cache_repo = f"{repo.rsplit('/', 1)[0]}/buildcache" if "/" in repo else f"{repo}-buildcache"
    exact = opts.cache_ref or f"{opts.registry}/{cache_repo}:{dependency_key(env)[:40]}"
    last = exact.rsplit("/", 1)[-1]
    base = exact.rsplit(":", 1)[0] if ":" in last else exact
    moving = f"{base}:env-{env.name[:60]}-{hashlib.sha256(repo.encode()).hexdigest()[:8]}"
    return exact, moving


def _cache(env: Environment, opts: BuildOptions, caps: Any, ref: str) -> CachePlan:
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
    repo_ref = ref.rsplit(":", 1)[0]
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
    src = ({"type": "registry", "ref": f"{repo_ref}:buildcache"},) if opts.registry else ()
    return CachePlan("inline", src, {"type": "inline"})


def _existing_sources(plan: CachePlan, opts: BuildOptions, rep: Reporter) -> list[dict[str, str]]:
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


def _point_moving_ref(plan: CachePlan, opts: BuildOptions, rep: Reporter) -> None:
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


def _labels(env: Environment, p: BuildPlan) -> dict[str, str]:
    labels = dict(env.labels)
    labels["org.opencontainers.image.title"] = env.name
    if env.description:
        labels["org.opencontainers.image.description"] = env.description
    if env.version:
        labels["org.opencontainers.image.version"] = env.version
    git = git_info(env.path.parent)
    if git.commit:
        labels["org.opencontainers.image.revision"] = git.commit
    labels["ml-env.name"] = env.name
    labels["ml-env.hash"] = p.hash
    labels["ml-env.spec"] = p.canonical
    return labels


def _read_lock(engine: Any, env: Environment, p: BuildPlan, ref: str) -> str:
    body = ""
    if p.python is not None:
        out = engine.run_capture(
            ref, [p.python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], entrypoint=""
        )
        body = "".join(sorted(line.strip() + "\n" for line in out.splitlines() if "==" in line))
    return LOCK_HEADER + f"# environment: {env.name}\n" + body


def _check_python_version(engine: Any, env: Environment, p: BuildPlan, ref: str, rep: Reporter) -> None:
    """A conda file that pins python is installed with the base's Python: say when they differ."""
    if not env.conda_python or p.python is None:
        return
    got = engine.run_capture(
        ref, [p.python, "-c", "import platform; print(platform.python_version())"], entrypoint=""
    ).strip()
    want = env.conda_python.rstrip(".*")
    if not (got == want or got.startswith(want + ".")):
        rep.warn(
            f"the conda file asks for python {env.conda_python}; the base image has {got}, which is what the image uses"
        )


def _check_locked(env: Environment, got: str) -> None:
    assert env.lock is not None
    want = lock_packages(env.lock.text)
    have = lock_packages(got)
    extra = sorted(f"{n}=={v}" for n, v in have.items() if n not in want)
    moved = sorted(f"{n} {want[n]} -> {v}" for n, v in have.items() if n in want and want[n] != v)
    if extra or moved:
        raise BuildError(
            "the image does not match the lock: "
            + "; ".join(
                ([f"not in the lock: {', '.join(extra)}"] if extra else [])
                + ([f"changed: {', '.join(moved)}"] if moved else [])
            ),
            file=str(env.lock.path),
            hint="the spec changed since the lock was written; build without --locked to refresh it",
        )


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
