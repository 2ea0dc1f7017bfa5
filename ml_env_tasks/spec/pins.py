"""Lock files: where an environment's lock lives and the pins it holds.

Apart from the Environment model so that the fast paths (a no-op build bringing the lock along
from the image label) need not load the model.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

__all__ = [
    "lock_packages", "lock_path_for", "lock_to_read", "is_lock_text", "read_lock_file", "MAX_LOCK", "LOCK_HEADER",
]  # fmt: skip

LOCK_HEADER = "# ml-env lock: the Python packages installed in the image (pip list --format=freeze).\n"

MAX_LOCK = 4 * 2**20
# what `pip list --format=freeze` writes: a name, ==, a version (PEP 440, local part included)
_PIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*", re.A)


def _pins(text: str) -> list[str | None]:
    """Each non-blank, non-comment line: the pin, or None when it is not one."""
    out: list[str | None] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line if _PIN.fullmatch(line) else None)
    return out


def is_lock_text(text: str) -> bool:
    """Whether outside text (an image label) is a lock ml-env wrote: bounded, pins only."""
    return len(text) < MAX_LOCK and text.startswith(LOCK_HEADER) and None not in _pins(text)


def read_lock_file(path: Path) -> str | None:
    """A lock file's text if it is a regular file of a sane size (never a FIFO or a device, which
    would hang or never end); None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_LOCK:  # a folder opens too; fdopen would refuse it
        os.close(fd)
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read(MAX_LOCK + 1)[:MAX_LOCK].decode("utf-8", "replace")


def lock_packages(text: str) -> dict[str, str]:
    """``name -> version`` from a lock file, comments and blank lines ignored, names normalised."""
    from packaging.utils import canonicalize_name

    out = {}
    for line in _pins(text):
        if line is not None:  # anything but a pin is no package (and never echoed)
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver
    return dict(sorted(out.items()))


CURATED_DIR = Path(__file__).resolve().parents[1] / "curated"  # the curated environments (package data)


def lock_to_read(spec_path: Path) -> Path:
    """The lock an environment has: its own (``lock_path_for``), else for a curated environment
    the one shipped beside it in the package (read, never written)."""
    own = lock_path_for(spec_path)
    shipped = spec_path.with_suffix(".lock")
    return own if own.exists() or own == shipped or not shipped.exists() else shipped


def lock_path_for(spec_path: Path) -> Path:
    """Where an environment's lock is written: ``envs/sklearn.toml`` → ``envs/sklearn.lock``. A
    curated environment is part of the installed package, which is not the user's to write in:
    its lock goes to the user cache (``~/.cache/ml-env/curated/NAME.lock``); clone it to keep the
    lock in the project."""
    try:
        if spec_path.resolve().parent == CURATED_DIR:
            from ..safe.digests import cache_dir

            return cache_dir() / "curated" / spec_path.with_suffix(".lock").name
    except OSError:
        pass
    return spec_path.with_suffix(".lock")
