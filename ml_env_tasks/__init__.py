"""ml_env_tasks: declare an ML environment once, build it into a content-addressed image."""

from __future__ import annotations

from .errors import (
    BlobIntegrityError,
    BuildError,
    EngineError,
    GateRefused,
    LogError,
    MlEnvError,
    RecordError,
    RegistryAuthError,
    RegistryError,
    RegistryTransient,
    RegistryUnreachable,
    ServiceFailed,
    SpecError,
    TagConflict,
    UsageError,
)

__all__ = [
    "BlobIntegrityError",
    "BuildError",
    "EngineError",
    "GateRefused",
    "LogError",
    "MlEnvError",
    "RecordError",
    "RegistryAuthError",
    "RegistryError",
    "RegistryTransient",
    "RegistryUnreachable",
    "ServiceFailed",
    "SpecError",
    "TagConflict",
    "UsageError",
]
