"""The declared environment: the model (``environment``), reading a file (``reader``: ``load``,
bounded, text only) and validating it (``validate``, every error naming the file and the key at
fault: ``envs/x.toml: python.packages[2]: ...``), conda files (``conda``), what a base
Dockerfile may hold (``dockerlint``), the canonical form and the content hash (``hashing``) and
the lock grammar (``pins``). Referenced files are read once, here, so hashing and rendering work
on contents, never on paths; every referenced path resolves inside the environment's project.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from ..registry.refs import check_image_ref
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
    from .reader import MAX_SPEC_BYTES, load, parse

# the names below load their module on first use (PEP 562): importing one room of spec (the lock
# grammar, say) does not load the reader, the validator or the registry's references
_WHERE = {
    "check_image_ref": "..registry.refs",
    "MAX_SPEC_BYTES": ".reader",
    "load": ".reader",
    "parse": ".reader",
    **dict.fromkeys(
        ("CURATED_DIR", "RESERVED_PREFIX", "BaseImage", "BaseRegistry", "Environment", "FileRef", "IndexConfig",
         "lock_packages", "lock_path_for"),
        ".environment",
    ),
}  # fmt: skip

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
    "MAX_SPEC_BYTES",
]


__getattr__ = attributes(__name__, _WHERE, globals())
