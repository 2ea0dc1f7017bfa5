"""Resources of a container (training run, scoring service): one type, parsed once.

Sizes take Docker's forms (``512m``, ``4g``, ``2GiB``, bytes) and are kept in bytes; a value
that is not one is a UsageError naming the option.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import UsageError
from ..safe.grammar import parse_size, printable

__all__ = ["Resources"]

_GPUS = re.compile(r"all|[0-9]{1,3}|(device=)?[A-Za-z0-9_-]+(,[A-Za-z0-9_-]+)*", re.ASCII)


def _size(value: Any, flag: str) -> int | None:
    if value is None or value == "":
        return None
    n = parse_size(value)
    if n is None or n <= 0:
        raise UsageError(f"{flag} {printable(value, 40)!r} is not a size", hint='e.g. "512m", "4g"')
    return n


@dataclass(frozen=True)
class Resources:
    cpus: float | None = None
    memory: int | None = None  # bytes
    shm_size: int | None = None  # bytes
    gpus: str | None = None  # all | N | device=ID[,ID]

    @classmethod
    def parse(
        cls,
        *,
        cpus: Any = None,
        memory: Any = None,
        shm_size: Any = None,
        gpus: Any = None,
        prefix: str = "--",
    ) -> Resources:
        c = None
        if cpus not in (None, ""):
            try:
                c = float(cpus)
            except (TypeError, ValueError):
                raise UsageError(f"{prefix}cpus {printable(cpus, 40)!r} is not a number") from None
            if not 0.001 <= c <= 1024:  # below a thousandth the engine's NanoCPUs round to 0: no limit at all
                raise UsageError(f"{prefix}cpus must be between 0.001 and 1024")
        g = None
        if gpus not in (None, ""):
            if not isinstance(gpus, str) or not _GPUS.fullmatch(gpus):
                raise UsageError(f"{prefix}gpus {printable(gpus, 40)!r}: use all, a count, or device=ID[,ID]")
            g = gpus
        return cls(c, _size(memory, f"{prefix}memory"), _size(shm_size, f"{prefix}shm-size"), g)

    def with_default_shm(self, shm: str | None) -> Resources:
        if self.shm_size is not None or not shm:
            return self
        return Resources(self.cpus, self.memory, _size(shm, "docker.shm_size"), self.gpus)

    def to_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "memory": self.memory, "shm_size": self.shm_size, "gpus": self.gpus}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resources:
        return cls.parse(cpus=d.get("cpus"), memory=d.get("memory"), shm_size=d.get("shm_size"), gpus=d.get("gpus"))
