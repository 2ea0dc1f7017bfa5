"""Where a build or run came from: the git commit and whether the work tree was dirty."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GitInfo", "git_info"]


@dataclass(frozen=True)
class GitInfo:
    commit: str | None
    dirty: bool | None


def git_info(where: Path, files: Iterable[str] | None = None) -> GitInfo:
    """The commit checked out at ``where`` and its dirty flag; (None, None) outside a repository.

    Dirty: a tracked file changed, or — with ``files``, the paths (relative to ``where``) a run's
    snapshot ships — one of those files is untracked (and not ignored by git): the commit does not
    hold it, so it does not say what ran."""
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return GitInfo(None, None)
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        if dirty is False and files is not None:
            dirty = _ships_untracked(where, set(files))
        return GitInfo(head.stdout.strip(), dirty)
    except (OSError, subprocess.TimeoutExpired):
        return GitInfo(None, None)


def _ships_untracked(where: Path, files: set[str]) -> bool | None:
    """Whether any of ``files`` is untracked and not ignored (None when git cannot say)."""
    if not files:
        return False
    # paths relative to ``where`` (git's working directory here), NUL-separated: any name at all
    out = subprocess.run(
        ["git", "-C", str(where), "ls-files", "--others", "--exclude-standard", "-z", "--", "."],
        capture_output=True,
        timeout=30,
    )
    if out.returncode != 0:
        return None
    return any(os.fsdecode(p) in files for p in out.stdout.split(b"\0") if p)
