"""The Environment model: what an environment file declares, and how one is loaded.

Every error names the file and the key at fault (``envs/x.toml: python.packages[2]: ...``).
Referenced files (requirements, conda file, base Dockerfile, lock) are read here, once, so that
hashing and rendering work on contents, never on paths; wheels are hashed here (streamed) and
copied into the build context later. Every referenced path resolves inside the environment's
project (see ``paths``). The validation itself lives in ``specparse``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from .errors import SpecError
from .grammar import printable

__all__ = [
    "BaseImage",
    "BaseRegistry",
    "Environment",
    "FileRef",
    "IndexConfig",
    "load",
    "parse",
    "lock_packages",
    "lock_path_for",
    "check_image_ref",
    "CURATED_DIR",
    "RESERVED_PREFIX",
]

RESERVED_PREFIX = "ml-env-"
CURATED_DIR = Path(__file__).parent / "curated"
MAX_SPEC_BYTES = 1 * 2**20


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
    conda_packages: tuple[str, ...] = ()  # installed with the base image's conda (conda_installer = "conda")
    conda_channels: tuple[str, ...] = ()
    wheels: tuple[FileRef, ...] = ()
    index: IndexConfig = field(default_factory=IndexConfig)
    apt: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    lock: FileRef | None = None  # only set when building --locked
    warnings: tuple[str, ...] = ()  # things the user should know, e.g. conda packages taken from PyPI

    @property
    def has_python_deps(self) -> bool:
        return bool(self.packages or self.requirements or self.conda_pip or self.wheels or self.inference)

    @property
    def unpinned(self) -> list[str]:
        """Packages whose version is not fixed with ==/===: the lock is what tells their version."""
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


def lock_packages(text: str) -> dict[str, str]:
    """``name -> version`` from a lock file, comments and blank lines ignored, names normalised."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver.strip()
    return dict(sorted(out.items()))


def lock_path_for(spec_path: Path) -> Path:
    """``envs/sklearn.toml`` → ``envs/sklearn.lock``."""
    return spec_path.with_suffix(".lock")


# --- loading -----------------------------------------------------------------------------


def load(path: str | Path, *, locked: bool = False) -> Environment:
    """Read and validate an environment file. ``locked`` also reads the lock file beside it."""
    from .paths import check_path_text, read_inside

    shown = str(path)
    check_path_text(shown, file=None, key=None, what="environment file")
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SpecError("environment file not found", file=printable(shown)) from None
    except OSError as e:
        raise SpecError(f"cannot be read: {e.strerror}", file=printable(shown)) from None
    if p.is_dir():
        raise SpecError("is a directory, expected an environment .toml file", file=shown)
    try:
        if st.st_size > MAX_SPEC_BYTES:
            raise SpecError(f"larger than {MAX_SPEC_BYTES} bytes: not an environment file", file=shown)
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", file=shown) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", file=shown) from None
    env = parse(text, p, shown=shown)
    if locked:
        lp = lock_path_for(p)
        if not lp.exists():
            raise SpecError(
                f"--locked needs the lock file {lp}, which does not exist",
                file=shown,
                hint="build once without --locked to write it",
            )
        from .paths import project_root

        real, data = read_inside(p.parent, lp.name, project_root(p.parent), file=shown, key=None, what="lock file")
        import hashlib

        env = env.with_lock(FileRef(lp, real, hashlib.sha256(data).hexdigest(), len(data), data))
    return env


def parse(text: str, path: Path, *, shown: str | None = None) -> Environment:
    from .specparse import parse_document

    return parse_document(text, path, shown or str(path))


def check_image_ref(ref: str, file: str | None, key: str) -> None:
    from .refs import IMAGE_RE

    if IMAGE_RE.fullmatch(ref) is None:
        raise SpecError(
            f"{ref!r} is not a valid image reference", file=file, key=key, hint="e.g. registry:5000/team/image:tag"
        )
