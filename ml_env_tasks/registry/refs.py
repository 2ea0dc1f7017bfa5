"""The image reference grammar, kept apart so that registry code does not load the spec model."""

from __future__ import annotations

import re

__all__ = ["IMAGE_RE", "DOCKER_HUB", "check_image_ref"]

DOCKER_HUB = "registry-1.docker.io"  # where a name without a registry host lives

# docker reference grammar, simplified: [host[:port]/]path[:tag][@sha256:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
# matched with fullmatch only (``$`` would accept a trailing newline); ASCII classes
IMAGE_RE = re.compile(
    rf"(?:(?P<host>{_HOST})/)?(?P<path>{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>\w[\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?",
    re.ASCII,
)


def check_image_ref(ref: str, file: str | None, key: str) -> None:
    """An image reference, whole (a trailing newline is not one), or a SpecError naming file and key."""
    from ..errors import SpecError
    from ..safe.grammar import printable

    if not isinstance(ref, str) or IMAGE_RE.fullmatch(ref) is None:
        raise SpecError(
            f"{printable(ref, 100)!r} is not a valid image reference",
            file=file,
            key=key,
            hint="e.g. registry:5000/team/image:tag",
        )
