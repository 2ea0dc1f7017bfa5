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
import fcntl
import os
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
from .dockerfile import SECRET_CA, SECRET_PIP, BuildPlan, render, write_context
from .engine import CACHE_BACKENDS
from .errors import BuildError, EngineError, MlEnvError, RegistryError, SpecError
from .hashing import dependency_key, env_hash
from .provenance import git_info
from .redact import Redactor
from .registry import RegistryClient, parse_ref
from .spec import Environment, lock_packages, lock_path_for

__all__ = ["BuildOptions", "BuildResult", "build", "plan", "image_ref", "Reporter", "CACHE_BACKENDS"]

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

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["unpinned"] = list(self.unpinned)
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

    with _build_lock(p.hash, opts):
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
        _write_atomic(lp, text)
        rep.info(f"wrote {lp} from the image's label")
        return str(lp)
    return None


@contextlib.contextmanager
def _build_lock(h: str, opts: BuildOptions) -> Iterator[None]:
    d = opts.lock_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ml-env" / "locks"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / f"{h}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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
        backend, cache_from, cache_to = _cache(env, opts, caps, ref)
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
                second = engine.build(
                    context,
                    tags=_extra_tags(ref, opts, backend),
                    push=bool(opts.registry),
                    labels=labels,
                    secrets=secrets,
                    network=opts.network,
                    cache_from=[],
                    cache_to=cache_to,
                    no_cache=False,
                    on_line=on_line,
                )
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
            _write_atomic(lp, lock_text)
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
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _extra_tags(ref: str, opts: BuildOptions, backend: str) -> list[str]:
    if backend == "inline" and opts.registry:
        return [ref, ref.rsplit(":", 1)[0] + ":buildcache"]
    return [ref]


def _secrets(env: Environment, opts: BuildOptions, d: Path, redactor: Redactor) -> list[str]:
    out = []
    if opts.ca_bundle is not None:
        ca = Path(opts.ca_bundle)
        if not ca.is_file():
            raise MlEnvError(f"CA bundle {ca} not found", hint="--ca-bundle takes a PEM file")
        out.append(f"id={SECRET_CA},src={ca}")
    ix = env.index
    if not ix.empty:
        index = ix.index_url or (
            _env_secret(ix.index_url_env, env, "python.index_url_env") if ix.index_url_env else None
        )
        extras = list(ix.extra_index_urls) + [
            _env_secret(n, env, f"python.extra_index_urls_env[{i}]") for i, n in enumerate(ix.extra_index_urls_env)
        ]
        lines = ["[global]"]
        if index:
            lines.append(f"index-url = {index}")
            redactor.add_url(index)
        if extras:
            lines.append("extra-index-url = " + "\n    ".join(extras))
            for u in extras:
                redactor.add_url(u)
        f = d / "pip.conf"
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        out.append(f"id={SECRET_PIP},src={f}")
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


def _cache(
    env: Environment, opts: BuildOptions, caps: Any, ref: str
) -> tuple[str, list[dict[str, str]], dict[str, str] | None]:
    want = opts.cache
    supported = caps.cache_backends
    if want == "none":
        return "none", [], None
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
        cref = opts.cache_ref or (default_cache_ref(env, opts) if opts.registry else None)
        if not cref:
            raise MlEnvError("the registry cache needs --registry or --cache-ref")
        return want, [{"type": "registry", "ref": cref}], {"type": "registry", "ref": cref, "mode": "max"}
    if want == "local":
        d = Path(
            opts.cache_dir
            or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ml-env" / "buildcache" / env.name
        )
        d.mkdir(parents=True, exist_ok=True)
        src = [{"type": "local", "src": str(d)}] if (d / "index.json").exists() else []
        return want, src, {"type": "local", "dest": str(d), "mode": "max"}
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
        return want, [{"type": "gha", "scope": scope}], {"type": "gha", "scope": scope, "mode": "max"}
    # inline: the cache rides in the image; the previous build's image is tagged :buildcache
    src = [{"type": "registry", "ref": f"{repo_ref}:buildcache"}] if opts.registry else []
    return "inline", src, {"type": "inline"}


def default_cache_ref(env: Environment, opts: BuildOptions) -> str:
    """``<registry>/<namespace>/buildcache:<dependency key>``: shared by environments whose
    dependency layers are the same (a training environment and its inference twin)."""
    repo = repository_for(env, opts)
    cache_repo = f"{repo.rsplit('/', 1)[0]}/buildcache" if "/" in repo else f"{repo}-buildcache"
    return f"{opts.registry}/{cache_repo}:{dependency_key(env)[:40]}"


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


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
