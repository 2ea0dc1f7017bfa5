"""Resolve once: an environment reference and build options → the image to run, decided once.

A reference is an environment file (``envs/x.toml``), a curated environment (``curated/sklearn``),
a registered version (``NAME:VERSION``, from the versions file), or an image (``host/repo:tag``,
``...@sha256:...``). Files are loaded once (pinned with ``--pin-base``), built or reused by
hash, and what the build decided — the image, its digest, the interpreter its packages are
installed for — is carried along; nothing downstream loads the spec again or guesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError, UsageError
from ..safe.grammar import digits

if TYPE_CHECKING:
    from ..spec.environment import Environment
    from . import BuildOptions, Reporter

__all__ = ["ResolvedEnv", "resolve_environment", "is_environment_file"]


@dataclass(frozen=True)
class ResolvedEnv:
    given: str  # what the user named
    image: str  # the image reference as built or given
    digest: str | None
    python: str  # the interpreter a script in this image runs with
    spec: str | None = None  # the environment file, for an environment given as one
    name: str | None = None
    hash: str | None = None
    built: bool = False
    build_seconds: float = 0.0
    in_registry: bool = False
    shm_size: str | None = None  # the environment's docker.shm_size (a run setting)
    env: Environment | None = None  # the loaded environment, when it had to be loaded
    labels: dict[str, str] | None = None  # an image given by reference: its labels
    inference_server: str = "builtin"  # which scoring server the image runs (inference.server)

    @property
    def pinned(self) -> str:
        """``repository@digest`` when the image lives in a registry; else the reference itself."""
        if self.in_registry and self.digest and "@" not in self.image:
            return (
                f"{self.image.rsplit(':', 1)[0] if ':' in self.image.rsplit('/', 1)[-1] else self.image}@{self.digest}"
            )
        return self.image


def is_environment_file(ref: str) -> bool:
    if ref.endswith(".toml"):
        return True
    try:
        return Path(ref).is_file()
    except OSError:  # e.g. a name longer than a path may be: not a file, so an image reference (checked there)
        return False


def resolve_environment(
    ref: str,
    opts: BuildOptions | None,
    *,
    reporter: Reporter | None = None,
    need_inference: bool = False,
    versions: Path | None = None,
    need_env: bool = False,
) -> ResolvedEnv:
    """Build (or reuse) an environment file's image, or look an image reference up.

    An unchanged environment file whose image exists is answered without parsing it again
    (``speccache``), unless ``need_env`` asks for the loaded Environment itself."""
    from . import BuildOptions, Reporter

    bopts = opts or BuildOptions()
    rep = reporter or Reporter(stream_logs=False)
    path: Path | None = None
    if ref.startswith("curated/"):
        from ..catalog import resolve_curated

        path = resolve_curated(ref)
    elif is_environment_file(ref):
        path = Path(ref)
    elif versions is not None and _looks_registered(ref, versions):
        path = _restore_registered(ref, versions)
    if path is not None:
        if not (need_env or bopts.pin_base or bopts.force or bopts.upgrade):
            fast = _unchanged(ref, path, bopts, rep, need_inference)
            if fast is not None:
                return fast
        from . import build_env, load_env

        env = load_env(path, bopts)
        if need_inference and not env.inference:
            raise SpecError(
                "this environment has no scoring server", file=str(path), key="inference", hint="set inference = true"
            )
        result = build_env(env, bopts, rep)
        rep.info(f"environment {result.name}: {'built' if result.built else 'reused'} {result.image}")
        return ResolvedEnv(
            ref, result.image, result.digest, result.python or env.interpreter, str(path), result.name, result.hash,
            result.built, result.seconds, bool(bopts.registry), env.shm_size, env,
            inference_server=env.inference_server,
        )  # fmt: skip
    if _is_folder(ref):  # neither an environment file nor an image: say so before asking a registry
        from ..safe.grammar import printable

        raise UsageError(
            f"environment {printable(ref, 120)!r} is a folder here",
            hint="name the environment file in it (NAME.toml); for an image of that name, give its tag (NAME:TAG)",
        )
    return _image(ref, bopts)


def _is_folder(ref: str) -> bool:
    try:
        return Path(ref).is_dir()
    except OSError:
        return False


def _unchanged(ref: str, path: Path, opts: BuildOptions, rep: Reporter, need_inference: bool) -> ResolvedEnv | None:
    from . import speccache
    from .reuse import reuse_unchanged

    s = speccache.lookup(path, locked=opts.locked)
    if s is None or (need_inference and not s.inference):
        return None  # the full path says what is wrong
    result = reuse_unchanged(path, opts, rep)
    if result is None:
        return None
    rep.info(f"environment {result.name}: reused {result.image}")
    return ResolvedEnv(
        ref, result.image, result.digest, s.python or s.interpreter, str(path), s.name, s.hash, False,
        result.seconds, bool(opts.registry), s.shm_size, inference_server=s.inference_server,
    )  # fmt: skip


def _image(ref: str, opts: BuildOptions) -> ResolvedEnv:
    """An image given by reference: its digest from the engine or its registry, and the
    interpreter its ml-env label names (``python3`` for an image ml-env did not build)."""
    from .. import engine
    from ..registry import RegistryClient, parse_ref
    from ..spec import check_image_ref

    insecure = opts.insecure
    check_image_ref(ref, None, "--env")
    c = engine.current().containers
    digest = c.image_digest(ref)
    labels = c.image_labels(ref) if digest else {}
    in_registry = False
    if digest is None:
        r = parse_ref(ref)
        client = RegistryClient(r.host, insecure=insecure)
        found = client.head_manifest(r.repository, r.reference)
        if found is None:
            raise UsageError(f"image {ref} is neither in the local engine nor in its registry")
        digest, in_registry = found.digest, True
        cfg = client.image_config(r.repository, found.digest) or {}
        got = (cfg.get("config") or {}).get("Labels") or {}
        labels = {str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {}
    python = labels.get("ml-env.python") or "python3"
    if not python.replace("/", "").replace(".", "").replace("-", "").replace("_", "").isalnum():
        python = "python3"  # a label from the registry is untrusted: only a plain path is used
    server = labels.get("ml-env.inference.server", "builtin")  # untrusted too: one of the known names
    from ..spec.environment import INFERENCE_SERVERS

    return ResolvedEnv(ref, ref, digest, python, None, labels.get("ml-env.name"), labels.get("ml-env.hash"),
                       in_registry=in_registry, labels=labels,
                       inference_server=server if server in INFERENCE_SERVERS else "builtin")  # fmt: skip


def _looks_registered(ref: str, versions: Path) -> bool:
    from ..catalog.versions import Versions
    from ..safe.grammar import NAME, matches

    name, sep, version = ref.partition(":")
    if not (sep and matches(NAME, name) and digits(version) and versions.is_file()):
        return False
    return bool(Versions(versions).entries(name))  # a registered name wins over an image of that name


def _restore_registered(ref: str, versions: Path) -> Path:
    """A registered version, written back into the user cache (content-addressed by its hash),
    with its private wheels from the image's registry."""
    from ..catalog.versions import Versions
    from ..safe.digests import cache_dir

    v = Versions(versions)
    entry = v.get(ref)
    root = (cache_dir() / "versions").resolve()
    out = root / entry.hash / f"{entry.name}.toml"
    if not out.resolve().is_relative_to(root):  # the versions file is repository content
        raise UsageError(f"{ref}: its recorded hash is not a content hash", file=str(versions))
    return v.restore_cached(entry, out)
