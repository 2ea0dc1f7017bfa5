"""Building an environment's image: hash → exists? → BuildKit with cache → lock → push → verify.

``model`` (options, result, reporter), ``flow`` (the build), ``cache`` (which cache refs),
``secrets`` (what reaches the build as secret mounts), ``lockfile`` (the lock read from the image).
"""

from __future__ import annotations

from ..options import CACHE_BACKENDS
from .cache import CachePlan, cache_refs, choose_cache
from .flow import build, build_env, load_env, pin_base, plan
from .model import BuildOptions, BuildResult, Reporter, image_ref, repository_for

__all__ = [
    "CACHE_BACKENDS",
    "BuildOptions",
    "BuildResult",
    "CachePlan",
    "Reporter",
    "build",
    "build_env",
    "cache_refs",
    "choose_cache",
    "image_ref",
    "load_env",
    "pin_base",
    "plan",
    "repository_for",
]
