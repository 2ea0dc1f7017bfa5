"""OCI distribution: image references, the HTTP transport (auth, retries, bounds) and the
manifest/blob operations builds and promotions use. Auth comes from the docker config
(``registry.credentials``), read only when a registry asks for it."""

from __future__ import annotations

from .client import RegistryClient
from .constants import MANIFEST_TYPES
from .reference import ManifestInfo, Reference, check_registry_host, is_loopback, parse_ref
from .transport import Response

__all__ = [
    "MANIFEST_TYPES",
    "ManifestInfo",
    "Reference",
    "RegistryClient",
    "Response",
    "check_registry_host",
    "is_loopback",
    "parse_ref",
]
