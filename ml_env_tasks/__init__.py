"""ml_env_tasks: declare an ML environment once, build it into a content-addressed image."""

from __future__ import annotations

from .errors import (
    BuildError,
    EngineError,
    MlEnvError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachable,
    SpecError,
)

__all__ = [
    "BuildError",
    "EngineError",
    "MlEnvError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryTransient",
    "RegistryUnreachable",
    "SpecError",
]
