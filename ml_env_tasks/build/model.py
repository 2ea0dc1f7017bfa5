"""What a build is asked to do and what it reports: options, result, and where progress goes."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ..spec.environment import Environment

__all__ = ["Reporter", "BuildOptions", "BuildResult", "repository_for", "image_ref"]


class Reporter:
    """Where progress goes. The default writes to stderr; fronts may subclass."""

    def __init__(self, *, stream_logs: bool = True, out: TextIO | None = None) -> None:
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
    lock_dir: Path | None = None  # where concurrent builds serialise; default the user cache's locks/
    builder: str | None = None  # a buildx builder (docker driver)
    compression: str = "gzip"  # the pushed layers' compression: gzip or zstd (force-compression, OCI media types)
    # what build-push-action users add (``extras``): none of it enters the content hash
    tags: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    annotations: tuple[str, ...] = ()
    cache_from: tuple[str, ...] = ()
    cache_to: str | None = None
    platforms: tuple[str, ...] = ()
    check_reproducible: bool = False  # build again with no cache and compare the two images
    no_push: bool = False  # build and check, write nothing to a registry: the image stays in the engine
    rebuild: bool = False  # a registered NAME:VERSION: build its recorded file, not use its registered image

    @property
    def pushes(self) -> bool:
        """A build writes to the registry (image, cache, SBOM): a registry given and --no-push not."""
        return bool(self.registry) and not self.no_push

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> BuildOptions:
        """From resolved option values (CLI flags, action inputs, config): the fields it has."""
        names = set(cls.__dataclass_fields__)
        given: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names and v is not None
        }
        return cls(**given)


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
    python: str | None = None  # the interpreter the environment's packages are installed for
    registry: str | None = None  # where the image was pushed (None: only in the local engine)
    tags: tuple[str, ...] = ()  # extra references given to the image (--tag)
    image_id: str | None = None  # the image config's digest, when the build reported it
    metadata: dict[str, Any] = field(default_factory=dict)  # buildx's build metadata (a build's last pass)
    reproducible: dict[str, Any] | None = None  # --check-reproducible: what the second build showed

    @property
    def pinned(self) -> str:
        """``repository@digest`` for an image in a registry, else the local image name: the one way
        every front names a built image once its digest is known."""
        if self.registry and self.digest:
            return f"{self.image.rsplit(':', 1)[0]}@{self.digest}"
        return self.image

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["unpinned"] = list(self.unpinned)
        d["cache_from"] = list(self.cache_from)
        d["tags"] = list(self.tags)
        return d


def repository_for(env: Environment, opts: BuildOptions) -> str:
    return repository_for_name(env.name, opts)


def repository_for_name(name: str, opts: BuildOptions) -> str:
    from ..registry.reference import repository_named

    return repository_named(opts.repository, "ml-envs/{name}", name)


def image_ref(env: Environment, opts: BuildOptions, h: str | None = None) -> str:
    if h is None:
        from ..spec.hashing import env_hash

        h = env_hash(env)
    repo = repository_for(env, opts)
    return f"{opts.registry}/{repo}:{h}" if opts.registry else f"{repo}:{h}"
