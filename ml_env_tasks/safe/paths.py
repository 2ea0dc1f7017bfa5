"""Containment: the one rule for every path a spec, an import or a record names.

A path named by an untrusted file resolves, symlinks included, inside its allowed root or it is
an error naming the file and key; its text is never read first. The root of an environment file
is its *project*: the nearest folder above it holding ``.git`` or ``pyproject.toml``, else the
environment file's own folder. A source snapshot's root is the source folder itself.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SpecError
from .grammar import has_control

__all__ = ["no_link_out", "project_root", "resolve_inside", "read_inside", "check_path_text", "MAX_TEXT_FILE"]

MAX_TEXT_FILE = 4 * 2**20  # requirements, conda files, Dockerfiles, imported Azure files


def project_root(start: Path) -> Path:
    """The project a file belongs to: the nearest ancestor folder with ``.git`` or ``pyproject.toml``."""
    here = start.resolve()
    for d in (here, *here.parents):
        if (d / ".git").exists() or (d / "pyproject.toml").is_file():
            return d
    return here


def check_path_text(rel: str, *, file: str | None, key: str | None, what: str) -> None:
    """A path must be text: no NUL, CR, LF or other control character (they would reach a shell,
    a Dockerfile or a log)."""
    if has_control(rel):
        raise SpecError(f"the {what} path contains a control character (NUL, CR, LF, ...)", file=file, key=key)


def resolve_inside(base: Path, rel: str, root: Path, *, file: str | None, key: str | None, what: str) -> Path:
    """``rel`` (relative to ``base``, or absolute) resolved with its symlinks; it must exist and
    lie inside ``root``. Errors name the file and key, never what the path holds."""
    check_path_text(rel, file=file, key=key, what=what)
    p = Path(rel) if Path(rel).is_absolute() else base / rel
    try:
        resolved = p.resolve(strict=True)
    except FileNotFoundError:
        raise SpecError(f"{what} {rel!r} not found (looked at {p})", file=file, key=key) from None
    except RuntimeError:  # a symlink loop
        raise SpecError(f"{what} {rel!r} is a symlink loop", file=file, key=key) from None
    except OSError as e:
        raise SpecError(f"{what} {rel!r} cannot be read: {e.strerror}", file=file, key=key) from None
    real_root = root.resolve()
    if not resolved.is_relative_to(real_root):
        raise SpecError(
            f"{what} {rel!r} resolves outside the project ({real_root})",
            file=file,
            key=key,
            hint="files an environment names must live in its project (symlinks are followed to check)",
        )
    return resolved


def read_inside(
    base: Path,
    rel: str,
    root: Path,
    *,
    file: str | None,
    key: str | None,
    what: str,
    limit: int | None = MAX_TEXT_FILE,
) -> tuple[Path, bytes]:
    """(resolved path, bytes) of a regular file inside ``root``, refused above ``limit`` bytes."""
    resolved = resolve_inside(base, rel, root, file=file, key=key, what=what)
    if resolved.is_dir():
        raise SpecError(f"{what} {rel!r} is a directory, expected a file", file=file, key=key)
    if not resolved.is_file():
        raise SpecError(f"{what} {rel!r} is not a regular file", file=file, key=key)
    from .fsutil import read_bounded

    try:
        data = read_bounded(resolved, limit if limit is not None else 2**62, error=SpecError, what=what)
    except SpecError as e:
        raise SpecError(f"{what} {rel!r} {e.message}", file=file, key=key) from None
    except OSError as e:
        raise SpecError(f"{what} {rel!r} cannot be read: {e.strerror}", file=file, key=key) from None
    return resolved, data


def no_link_out(value: Path, what: str) -> Path:
    """A relative path a command takes (a flag, an input, a default such as ``runs``) that stays in
    the working folder as written must stay there once its symlinks are followed: in CI the
    workflow names ``./data`` or ``runs``, but a pull request decides what is at that path, and a
    committed ``data -> /home/runner`` would hand a host folder to a run (or write a run's files
    there). A path the user wrote with ``..`` or absolute is theirs to choose and left as it is."""
    import os

    from ..errors import UsageError

    if value.is_absolute():
        return value
    cwd = Path.cwd().resolve()
    if not Path(os.path.normpath(cwd / value)).is_relative_to(cwd):
        return value
    try:
        real = (cwd / value).resolve()
    except (OSError, RuntimeError):
        return value  # a loop or an unreadable link: the command's own read says so
    if not real.is_relative_to(cwd):
        raise UsageError(
            f"{what} {value} leads out of the working folder through a symlink (to {real})",
            hint="a path in the checkout may be a link a pull request committed; give the real path if you mean it",
        )
    return value
