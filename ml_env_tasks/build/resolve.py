"""Resolve once: an environment reference and build options → the image to run, decided once.

A reference is an environment file (``envs/x.toml``), a curated environment (``curated/sklearn``),
a registered version (``NAME:VERSION``, from the versions file), or an image (``host/repo:tag``,
``...@sha256:...``). Files are loaded once (pinned with ``--pin-base``), built or reused by
hash, and what the build decided — the image, its digest, the interpreter its packages are
installed for — is carried along; nothing downstream loads the spec again or guesses.

A registered version is its registered image, by digest, where the versions file says it lives
(its registry and repository, whatever ``--registry``/``--repository`` say): nothing is built.
A curated environment registered here with its current hash is that registered image too.
``--rebuild`` (``BuildOptions.rebuild``) builds the recorded environment file instead, and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SpecError, UsageError
from ..safe.grammar import digits

if TYPE_CHECKING:
    from ..catalog.versions import VersionEntry
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
    registered: str | None = None  # NAME:VERSION, when this is a registered version's image

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
    before_build: Callable[[Environment], object] | None = None,
) -> ResolvedEnv:
    """Build (or reuse) an environment file's image, or look an image reference up.

    An unchanged environment file whose image exists is answered without parsing it again
    (``speccache``), unless ``need_env`` asks for the loaded Environment itself. ``before_build``
    is the caller's checks of a loaded environment (a command's checks that need the file's
    content): they run before anything is built."""
    from . import BuildOptions, Reporter

    bopts = opts or BuildOptions()
    rep = reporter or Reporter(stream_logs=False)
    path: Path | None = None
    if ref.startswith("curated/"):
        from ..catalog import resolve_curated

        path = resolve_curated(ref)
        if versions is not None and not (need_env or bopts.rebuild):
            found = _registered_curated(ref, path, versions, bopts, rep, need_inference)
            if found is not None:
                return found
    elif is_environment_file(ref):
        path = Path(ref)
    elif versions is not None and _looks_registered(ref, versions):
        from ..catalog.versions import Versions

        entry = Versions(versions).get(ref)
        if not bopts.rebuild:
            return _registered(ref, entry, versions, bopts, rep, need_inference)
        path = _restore_registered(ref, versions)
        bopts = _rebuild_where(entry, versions, bopts)
        rep.info(f"{entry.ref}: --rebuild: building its recorded environment file (the registered image is "
                 f"{entry.image.rsplit(':', 1)[0]}@{entry.digest or '-'})")  # fmt: skip
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
        if before_build is not None:
            before_build(env)
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
    from ..registry import parse_ref
    from ..spec import check_image_ref

    check_image_ref(ref, None, "--env")
    c = engine.current().containers
    digest = c.image_digest(ref)
    labels = c.image_labels(ref) if digest else {}
    in_registry = False
    if digest is None:
        found = _in_registry(parse_ref(ref), opts)
        if found is None:
            raise UsageError(f"image {ref} is neither in the local engine nor in its registry")
        (digest, labels), in_registry = found, True
    python, server = _from_labels(labels)
    return ResolvedEnv(ref, ref, digest, python, None, labels.get("ml-env.name"), labels.get("ml-env.hash"),
                       in_registry=in_registry, labels=labels, inference_server=server)  # fmt: skip


def _in_registry(r: Any, opts: BuildOptions) -> tuple[str, dict[str, str]] | None:
    """(digest, labels) of an image in its registry; None when the registry does not have it."""
    from ..registry import RegistryClient

    client = RegistryClient(r.host, insecure=opts.insecure)
    found = client.head_manifest(r.repository, r.reference)
    if found is None:
        return None
    cfg = client.image_config(r.repository, found.digest) or {}
    got = (cfg.get("config") or {}).get("Labels") or {}
    return found.digest, ({str(k): str(v) for k, v in got.items()} if isinstance(got, dict) else {})


def _from_labels(labels: dict[str, str]) -> tuple[str, str]:
    """(interpreter, scoring server) an image's labels name, each only when it is a plain value:
    a label from a registry is untrusted."""
    from ..spec.environment import INFERENCE_SERVERS

    python = labels.get("ml-env.python") or "python3"
    if not python.replace("/", "").replace(".", "").replace("-", "").replace("_", "").isalnum():
        python = "python3"
    server = labels.get("ml-env.inference.server", "builtin")
    return python, server if server in INFERENCE_SERVERS else "builtin"


REBUILD_HINT = "--rebuild builds it from its recorded environment file"


def _registered(
    given: str, entry: VersionEntry, versions: Path, opts: BuildOptions, rep: Reporter, need_inference: bool
) -> ResolvedEnv:
    """A registered version's own image, by its recorded digest, where the entry says it lives."""
    file = str(versions)
    if not entry.digest:
        raise UsageError(f"{entry.ref} was registered without a digest", file=file, hint=REBUILD_HINT)
    where = entry.location(file)
    if where is not None:
        from ..registry import parse_ref

        image = f"{where[0]}/{where[1]}@{entry.digest}"
        found = _in_registry(parse_ref(image), opts)
        if found is None:
            raise UsageError(
                f"{entry.ref}: its image {image} is not in {where[0]} any more", file=file, hint=REBUILD_HINT
            )
        labels = found[1]
    else:  # registered without a registry: the image of the engine that built it, if it still is
        from .. import engine

        image = entry.image
        c = engine.current().containers
        img = c.image(image) or {}
        have = {str(d).split("@", 1)[-1] for d in img.get("RepoDigests") or []} | {str(img.get("Id"))}
        if entry.digest not in have:
            raise UsageError(f"{entry.ref}: its image {image} is not in this engine as registered "
                             f"({entry.digest[:19]})", file=file, hint=REBUILD_HINT)  # fmt: skip
        labels = c.image_labels(image)
    if labels.get("ml-env.hash") != entry.hash:
        raise UsageError(f"{entry.ref}: {image} is not the image of its recorded hash {entry.hash[:12]}", file=file)
    if need_inference and "ml-env.inference.server" not in labels:
        raise SpecError(
            "this environment has no scoring server",
            file=file,
            key=entry.ref,
            hint="register one with inference = true",
        )
    if opts.registry and where is not None and opts.registry != where[0]:
        rep.info(f"{entry.ref} is in {where[0]} (the versions file says so): --registry {opts.registry} is not used")
    rep.info(f"environment {entry.ref}: its registered image {image}")
    python, server = _from_labels(labels)
    return ResolvedEnv(given, image, entry.digest, python, None, entry.name, entry.hash, False, 0.0, where is not None,
                       entry.shm_size, labels=labels, inference_server=server, registered=entry.ref)  # fmt: skip


def _registered_curated(
    given: str, path: Path, versions: Path, opts: BuildOptions, rep: Reporter, need_inference: bool
) -> ResolvedEnv | None:
    """``curated/NAME`` registered here (``register curated/NAME``) with the hash its file has now:
    that registered image. None when no version of it has this hash (the file is built or reused)."""
    from ..catalog.versions import Versions
    from . import speccache

    if not versions.is_file():
        return None
    s = speccache.lookup(path, locked=opts.locked)
    if s is not None and not opts.pin_base:
        name, h = s.name, s.hash
    else:
        from ..spec.hashing import env_hash
        from .flow import load_env

        env = load_env(path, opts)
        name, h = env.name, env_hash(env)
    mine = Versions(versions).entries(name)
    same = [e for e in mine if e.hash == h]
    if not same:
        if mine:
            rep.info(f"{given}: no registered version of {name} has its current hash {h[:12]}: building it")
        return None
    return _registered(given, same[-1], versions, opts, rep, need_inference)


def _rebuild_where(entry: VersionEntry, versions: Path, opts: BuildOptions) -> BuildOptions:
    """``--rebuild``: where the image goes, the given registry and repository, else the entry's."""
    import dataclasses

    where = entry.location(str(versions))
    if where is None or opts.registry:
        return opts
    return dataclasses.replace(opts, registry=where[0], repository=opts.repository or where[1])


def registered_location(ref: str, versions: Path | None) -> tuple[str, str] | None:
    """(registry, repository) of a registered ``NAME:VERSION``'s image, from its versions file
    entry; None for anything else (a file, ``curated/NAME``, an image, a version registered
    without a registry)."""
    if versions is None or is_environment_file(ref) or not _looks_registered(ref, versions):
        return None  # curated/NAME is no NAME:VERSION
    from ..catalog.versions import Versions

    return Versions(versions).get(ref).location(str(versions))


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
