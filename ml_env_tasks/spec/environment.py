"""The Environment model: what an environment file declares, as frozen dataclasses.

``spec.load`` makes one from a file (validated by ``specparse``); hashing, rendering, building
and the fronts read it. Referenced files are held as :class:`FileRef` (contents read once,
wheels by digest), so nothing downstream reads a path the spec named.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from .pins import CURATED_DIR, lock_packages, lock_path_for

__all__ = [
    "BaseImage",
    "BaseRegistry",
    "Environment",
    "FileRef",
    "IndexConfig",
    "lock_packages",
    "lock_path_for",
    "CURATED_DIR",
    "INFERENCE_SERVERS",
    "RESERVED_PREFIX",
]

RESERVED_PREFIX = "ml-env-"
# inference.server: ml-env's own scoring server (the default) or Microsoft's azmlinfsrv
INFERENCE_SERVERS = ("builtin", "azureml")


@dataclass(frozen=True)
class FileRef:
    """A file the spec references: where it was named, where it really is, what it holds.

    ``data`` is kept for text files (small, parsed or hashed as text); a wheel keeps only its
    digest and size and is streamed from ``real`` when the build context is made."""

    path: Path  # as named (relative paths joined to the environment file's folder)
    real: Path  # resolved, symlinks followed (inside the project)
    sha256: str
    size: int
    data: bytes | None = None

    @property
    def text(self) -> str:
        return self.read().decode("utf-8")

    def read(self) -> bytes:
        return self.data if self.data is not None else self.real.read_bytes()


@dataclass(frozen=True)
class BaseRegistry:
    address: str
    username: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class BaseImage:
    image: str | None = None
    dockerfile: FileRef | None = None  # a path, read
    dockerfile_text: str | None = None  # inline text
    registry: BaseRegistry | None = None
    digest: str | None = None  # filled by --pin-base

    @property
    def dockerfile_source(self) -> str | None:
        if self.dockerfile is not None:
            return self.dockerfile.text
        return self.dockerfile_text


@dataclass(frozen=True)
class IndexConfig:
    """pip index settings. Values are either literal URLs (no credentials) or env var names."""

    index_url: str | None = None
    index_url_env: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    extra_index_urls_env: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.index_url or self.index_url_env or self.extra_index_urls or self.extra_index_urls_env)


@dataclass(frozen=True)
class Environment:
    path: Path
    name: str
    version: str | None = None
    description: str | None = None
    inference: bool = False  # add the scoring server (Azure's inferencing_stack_version)
    inference_server: str = "builtin"  # which one: INFERENCE_SERVERS (inference.server)
    base: BaseImage = field(default_factory=BaseImage)
    user_managed: bool = False
    interpreter: str = "python3"
    packages: tuple[str, ...] = ()
    requirements: tuple[FileRef, ...] = ()
    conda_file: FileRef | None = None
    conda_pip: tuple[str, ...] = ()
    conda_python: str | None = None
    conda_installer: str = "pip"
    installer: str = "pip"  # what installs the Python packages: pip, or uv (opt-in)
    layers: str = "one"  # python.layers: every dependency by kind ("one"), or a layer per declared package ("split")
    conda_packages: tuple[str, ...] = ()  # installed with the base image's conda (conda_installer = "conda")
    conda_channels: tuple[str, ...] = ()
    wheels: tuple[FileRef, ...] = ()
    index: IndexConfig = field(default_factory=IndexConfig)
    apt: tuple[str, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)  # [env]: baked into the image
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    lock: FileRef | None = None  # only set when building --locked
    warnings: tuple[str, ...] = ()  # things the user should know, e.g. conda packages taken from PyPI

    @property
    def has_python_deps(self) -> bool:
        return bool(self.packages or self.requirements or self.conda_pip or self.wheels or self.inference)

    @property
    def splits_layers(self) -> bool:
        """Whether the dependencies are installed a layer per declared package (``python.layers``):
        on a base image (a base Dockerfile's stages are the user's), with something to install."""
        if self.layers != "split" or self.base.image is None or self.conda_packages:
            return False  # a base Dockerfile's stages are the user's; conda's own packages are the base's
        if not (self.packages or self.requirements or self.conda_pip or self.wheels):
            return False
        # a requirements file with options of its own (an index, --hash, --no-binary) is
        # installed as written: a layer installs bare pins, which would drop them
        return not any(
            line.lstrip().startswith("-") and not line.lstrip().startswith(("-r ", "-c "))
            for r in self.requirements
            for line in r.read().decode("utf-8", "replace").splitlines()
        )

    @property
    def unpinned(self) -> list[str]:
        """Packages whose version is not fixed with ==/===: the lock is what tells their version."""
        from packaging.requirements import Requirement

        out = []
        for p in self.packages + self.conda_pip:
            req = Requirement(p)
            if req.url:
                continue
            if not any(s.operator in ("==", "===") and "*" not in s.version for s in req.specifier):
                out.append(p)
        return out

    def with_lock(self, lock: FileRef | None) -> Environment:
        return dataclasses.replace(self, lock=lock)

    def with_base_digest(self, digest: str) -> Environment:
        return dataclasses.replace(self, base=dataclasses.replace(self.base, digest=digest))
