"""Limits and media types of the registry client."""

from __future__ import annotations

import re

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
MAX_MANIFEST = 4 * 2**20  # the OCI distribution spec's minimum a registry must accept
MAX_SMALL_BODY = 1 * 2**20  # tokens, error bodies, tag lists, referrers
MAX_REDIRECTS = 5
# Overall deadlines: a socket timeout bounds one read, and a registry that drips a byte a second
# resets it forever. A whole exchange (connect, headers, body) must finish within DEADLINE seconds
# plus one second per MIN_RATE bytes it may carry; a streamed blob, each CHUNK likewise.
DEADLINE = 60.0
MIN_RATE = 256 * 1024
CHUNK = 4 << 20
HOST_RE = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:]+\](:[0-9]{1,5})?|localhost(:[0-9]{1,5})?", re.ASCII)
ERROR_CODE_RE = re.compile(r"[A-Z_]{1,64}", re.ASCII)
