"""Lock files: where an environment's lock lives and the pins it holds.

Apart from the Environment model so that the fast paths (a no-op build bringing the lock along
from the image label) need not load the model.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["lock_packages", "lock_path_for"]


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


def lock_path_for(spec_path: Path) -> Path:
    """``envs/sklearn.toml`` → ``envs/sklearn.lock``."""
    return spec_path.with_suffix(".lock")
