"""Lock files: where an environment's lock lives and the pins it holds.

Apart from the Environment model so that the fast paths (a no-op build bringing the lock along
from the image label) need not load the model.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["lock_packages", "lock_path_for", "lock_to_read"]


def lock_packages(text: str) -> dict[str, str]:
    """``name -> version`` from a lock file, comments and blank lines ignored, names normalised."""
    from packaging.utils import canonicalize_name

    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver.strip()
    return dict(sorted(out.items()))


CURATED = Path(__file__).resolve().parent / "curated"


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
        if spec_path.resolve().parent == CURATED:
            from .digests import cache_dir

            return cache_dir() / "curated" / spec_path.with_suffix(".lock").name
    except OSError:
        pass
    return spec_path.with_suffix(".lock")
