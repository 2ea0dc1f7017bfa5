"""Building an environment's image: hash → exists? → BuildKit with cache → lock → push → verify.

``model`` (options, result, reporter), ``reuse`` (the no-op fast path), ``flow`` (the build),
``cache`` (which cache refs), ``secrets`` (what reaches the build as secret mounts), ``lockfile``
(the lock read from the image).

The names below load their module on first use (PEP 562): a no-op build imports ``reuse`` and
``model`` only, not the renderer, the parsers or the registry client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import attributes

if TYPE_CHECKING:
    from ..settings.options import CACHE_BACKENDS
    from .cache import CachePlan, cache_refs, choose_cache
    from .flow import build_env, load_env, pin_base, plan
    from .model import BuildOptions, BuildResult, Reporter, image_ref, repository_for
    from .resolution import resolve_plan
    from .reuse import build

_WHERE = {
    "CACHE_BACKENDS": "..options",
    "CachePlan": ".cache",
    "cache_refs": ".cache",
    "choose_cache": ".cache",
    "build": ".reuse",
    "build_env": ".flow",
    "load_env": ".flow",
    "pin_base": ".flow",
    "plan": ".flow",
    "resolve_plan": ".resolution",
    "BuildOptions": ".model",
    "BuildResult": ".model",
    "Reporter": ".model",
    "image_ref": ".model",
    "repository_for": ".model",
}

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
    "resolve_plan",
]


__getattr__ = attributes(__name__, _WHERE, globals())
