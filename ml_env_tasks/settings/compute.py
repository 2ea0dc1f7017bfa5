"""Compute targets, as Azure ML names them: ``[compute.NAME]`` tables (``[tool.ml-env.compute.NAME]``
in ``pyproject.toml``), each a ``type`` and its settings, and ``default_compute`` naming the one
``train`` uses without ``--compute``.

- ``type = "docker"``: a Docker engine; ``context`` (a docker context) or none (the current one).
- ``type = "slurm"``: a Slurm cluster (the machine's ``SLURM_CONF``); ``partition``, ``account``,
  ``qos``, ``nodes`` (default 1), ``launcher`` (what runs the image on each node: ``docker`` or
  ``podman``, run in the tests; ``apptainer`` or ``enroot`` through pyxis, rendered only), ``shared`` (a folder every node sees at the same path, where a run's code, inputs
  and outputs travel).
- ``type = "kubernetes"``: a Job written out, as ``--runner kubernetes``: ``emit`` (the file),
  ``namespace``, ``output_claim`` (``--output-pvc``); flags given win.

A field of the same target may come from several files: the project's wins, then the user's,
then the machine's. The project may declare targets but not choose a host folder (``shared``)
or an engine (``context``): those are the user's or the machine's word only, like ``builder``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.grammar import matches, printable
from .files import Layers

__all__ = ["Target", "targets", "target", "TYPES", "FIELDS", "LAUNCHERS"]

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", re.ASCII)  # a target's, a partition's, an account's

TYPES = ("docker", "slurm", "kubernetes")
LAUNCHERS = ("docker", "podman", "apptainer", "enroot")  # docker and podman run in the tests; the others are rendered
# each type's settings and the type of each; "type" itself is every target's
FIELDS: dict[str, dict[str, type]] = {
    "docker": {"context": str},
    "slurm": {"partition": str, "account": str, "qos": str, "nodes": int, "launcher": str, "shared": str},
    "kubernetes": {"namespace": str, "emit": str, "output_claim": str},
}
USER_ONLY = {
    "shared": "chooses a host folder runs are written to and read from",
    "context": "chooses the engine code and secrets run on",
    "emit": "chooses a host file written",
}


@dataclass(frozen=True)
class Target:
    name: str
    type: str
    settings: dict[str, Any] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)  # setting -> the file that gave it

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.type, **self.settings, "declared_in": self.where}


def targets(layers: Layers) -> dict[str, Target]:
    """Every target the config files declare, fields merged (project > user > machine)."""
    merged: dict[str, dict[str, Any]] = {}
    where: dict[str, dict[str, str]] = {}
    for layer, f in (("site", layers.site), ("user", layers.user), ("project", layers.project)):
        tables = f.get("compute")
        if tables is None:
            continue
        for name, table in tables.items():
            key = f"compute.{name}"
            if not isinstance(table, dict) or not matches(NAME, str(name)):
                raise UsageError("must be a table named with letters, digits, '_', '.', '-'", file=str(f.path),
                                 key=printable(key, 80))  # fmt: skip
            for k, v in table.items():
                if layer == "project" and k in USER_ONLY:
                    raise UsageError(
                        f"the project's config cannot set this: it {USER_ONLY[k]}", file=str(f.path),
                        key=f"{key}.{k}", hint="set it in your user or machine config ([compute.NAME] there)",
                    )  # fmt: skip
                merged.setdefault(name, {})[k] = v
                where.setdefault(name, {})[k] = str(f.path)
    return {n: _check(n, t, where[n]) for n, t in merged.items()}


def _check(name: str, table: dict[str, Any], where: dict[str, str]) -> Target:
    kind = table.get("type")
    file = where.get("type") or next(iter(where.values()), None)
    if kind not in TYPES:
        raise UsageError(f"type must be one of {', '.join(TYPES)}", file=file, key=f"compute.{name}.type")
    allowed = FIELDS[str(kind)]
    settings: dict[str, Any] = {}
    for k, v in table.items():
        if k == "type":
            continue
        key = f"compute.{name}.{k}"
        if k not in allowed:
            raise UsageError(f"unknown key for a {kind} target", file=where[k], key=printable(key, 80),
                             hint=f"known keys: type, {', '.join(sorted(allowed))}")  # fmt: skip
        if not isinstance(v, allowed[k]) or isinstance(v, bool):
            raise UsageError(f"must be a {allowed[k].__name__}", file=where[k], key=key)
        if isinstance(v, str) and not (v.isprintable() and 0 < len(v) <= 1024):
            raise UsageError("must be a non-empty string without control characters", file=where[k], key=key)
        settings[k] = v
    if kind == "slurm":
        if settings.get("launcher", "docker") not in LAUNCHERS:
            raise UsageError(f"launcher must be one of {', '.join(LAUNCHERS)}", file=where.get("launcher"),
                             key=f"compute.{name}.launcher")  # fmt: skip
        if not 1 <= int(settings.get("nodes", 1)) <= 64:
            raise UsageError("nodes must be between 1 and 64", file=where.get("nodes"), key=f"compute.{name}.nodes")
        for k in ("partition", "account", "qos"):
            if k in settings and not matches(NAME, settings[k]):
                raise UsageError("must be a Slurm name (letters, digits, '_', '.', '-')", file=where[k],
                                 key=f"compute.{name}.{k}")  # fmt: skip
        if "shared" in settings and not Path(settings["shared"]).is_absolute():
            raise UsageError("must be an absolute path every node sees", file=where["shared"],
                             key=f"compute.{name}.shared")  # fmt: skip
    return Target(name, str(kind), settings, where)


def target(layers: Layers, name: str) -> Target:
    found = targets(layers)
    if name not in found:
        known = ", ".join(sorted(found)) or "none declared"
        raise UsageError(f"--compute {printable(name, 60)!r}: no such compute target ({known})",
                         hint="declare it as [compute.NAME] in your config or [tool.ml-env.compute.NAME]")  # fmt: skip
    return found[name]
