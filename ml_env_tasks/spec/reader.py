"""Reading an environment file: ``load`` (bounded, text only) and ``parse`` (a document's text
into the model, through ``validate``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..errors import SpecError
from ..registry.refs import check_image_ref
from ..safe.grammar import NAME, digits, matches, printable
from .environment import (
    CURATED_DIR,
    RESERVED_PREFIX,
    BaseImage,
    BaseRegistry,
    Environment,
    FileRef,
    IndexConfig,
    lock_packages,
    lock_path_for,
)
from .pins import lock_to_read

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

MAX_SPEC_BYTES = 1 * 2**20
FOREIGN = (".yml", ".yaml", ".json", ".txt")  # what `ml-env import` reads


def _import_hint(shown: str) -> str:
    return (
        f"not an environment file: an Azure ML, conda or requirements file? `ml-env import {printable(shown, 120)} "
        "-o envs/NAME.toml`, then use envs/NAME.toml"
    )


def _registered_hint(shown: str) -> str | None:
    """A missing file named like a registered version (``myenv:2``): where that version's file is."""
    name, sep, version = shown.partition(":")
    if not (sep and matches(NAME, name) and digits(version)):
        return None
    return (
        f"a registered version? `ml-env get {shown} -o DIR` writes its environment file into DIR, to plan or "
        f"build from there; train, serve, smoke-test and package take {shown} as it is"
    )


# --- loading -----------------------------------------------------------------------------


def load(path: str | Path, *, locked: bool = False) -> Environment:
    """Read and validate an environment file. ``locked`` also reads the lock file beside it."""
    from ..safe.paths import check_path_text, read_inside

    shown = str(path)
    check_path_text(shown, file=None, key=None, what="environment file")
    p = Path(path)
    try:
        p.stat()
    except FileNotFoundError:
        raise SpecError("environment file not found", file=printable(shown), hint=_registered_hint(shown)) from None
    except OSError as e:
        raise SpecError(f"cannot be read: {e.strerror}", file=printable(shown)) from None
    if p.is_dir():
        v1 = (p / "azureml_environment.json").is_file()
        raise SpecError(
            "is a directory, expected an environment .toml file", file=shown, hint=_import_hint(shown) if v1 else None
        )
    from ..safe.fsutil import read_text_bounded

    try:
        text = read_text_bounded(p, MAX_SPEC_BYTES, error=SpecError, what="environment file", shown=shown)
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", file=shown) from None
    try:
        env = parse(text, p, shown=shown)
    except SpecError as e:  # an Azure, conda or requirements file given where an environment file goes
        if e.hint is None and p.suffix in FOREIGN or (p.suffix != ".toml" and e.message.startswith("invalid TOML")):
            e.hint = _import_hint(shown)
        raise
    if locked:
        lp = lock_to_read(p)
        if not lp.exists():
            raise SpecError(
                f"--locked needs the lock file {lp}, which does not exist",
                file=shown,
                hint="build once without --locked to write it",
            )
        from ..safe.paths import project_root

        # beside the spec (inside the project), or a curated environment's in the user cache
        folder = lp.parent if lp.parent != p.parent else p.parent
        root = folder if lp.parent != p.parent else project_root(p.parent)
        real, data = read_inside(folder, lp.name, root, file=shown, key=None, what="lock file")
        import hashlib

        env = env.with_lock(FileRef(lp, real, hashlib.sha256(data).hexdigest(), len(data), data))
    return env


def parse(
    text: str, path: Path, *, shown: str | None = None, recorded_wheels: Mapping[str, str] | None = None
) -> Environment:
    """``recorded_wheels`` (file name -> sha256, as a versions file records them) stands in for
    wheels that are absent, so two registered versions can be compared without their bytes."""
    from ..safe.untrusted import check_depth
    from .validate import parse_document

    where = shown or str(path)
    check_depth(text, toml=True, error=SpecError, file=where)
    try:
        return parse_document(text, path, where, recorded_wheels=recorded_wheels)
    except RecursionError:
        raise SpecError("nested too deep to parse: refused", file=where) from None
