"""Environment versions, Azure's register/list/get: a TOML file kept in the repository.

``register`` records name, version, hash, digest, image and the environment file itself (with
the text files it references), so ``get`` can write any version back and ``diff`` can explain
two. A changed hash under the same name gets the next version; an unchanged one keeps its
version. The file is appended under a lock through a temporary file and a rename; in a team it
is committed like code, so versions are reviewed and merge like any change.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from . import spec
from .errors import MlEnvError
from .hashing import Difference, env_hash, explain
from .promote import Ledger

__all__ = ["Versions", "REGISTRY_DEFAULT"]

REGISTRY_DEFAULT = Path("envs/versions.toml")


class Versions(Ledger):
    """The same atomic append-only TOML file as the ledger, with ``[[environment]]`` entries."""

    table = "environment"
    name_key = "name"
    header = (
        "Environment versions: one [[environment]] per registered version, written by `ml-env register`.",
        "Commit it; `ml-env list`, `get NAME[:VERSION]` and `diff NAME:A NAME:B` read it.",
    )

    def register(
        self, env: spec.Environment, *, image: str, digest: str | None, registry: str | None
    ) -> tuple[dict[str, Any], bool]:
        """(entry, created): an unchanged hash keeps its version and writes nothing."""
        h = env_hash(env)
        mine = self.entries(env.name)
        if mine and mine[-1]["hash"] == h:
            return mine[-1], False
        files = {}
        base = env.path.parent
        for ref in (
            list(env.requirements)
            + ([env.conda_file] if env.conda_file else [])
            + ([env.base.dockerfile] if env.base.dockerfile else [])
        ):
            try:
                files[str(ref.path.resolve().relative_to(base.resolve()))] = ref.text
            except ValueError:
                raise MlEnvError(
                    f"{ref.path} is outside the environment's directory; versions keep only files beside it"
                ) from None
        entry: dict[str, Any] = {
            "name": env.name,
            "version": max((int(e["version"]) for e in mine), default=0) + 1,
            "hash": h,
            "digest": digest or "",
            "image": image,
            "registry": registry or "",
            "registered": datetime.now(UTC).isoformat(timespec="seconds"),
            "spec": env.path.read_text(encoding="utf-8"),
            "files": files,
        }
        if env.wheels:
            entry["wheels"] = {w.path.name: w.sha256 for w in env.wheels}
        return self.append(entry), True

    def get(self, ref: str) -> dict[str, Any]:
        name, _, version = ref.partition(":")
        mine = self.entries(name)
        if not mine:
            raise MlEnvError(f"no environment {name!r} is registered", file=str(self.path))
        if not version:
            return mine[-1]
        for e in mine:
            if str(e["version"]) == version:
                return e
        raise MlEnvError(
            f"{name} has no version {version} (has {', '.join(str(e['version']) for e in mine)})", file=str(self.path)
        )

    def write_back(self, entry: dict[str, Any], out: Path) -> Path:
        """The registered environment file and its text files, into ``out`` (a .toml path)."""
        out.parent.mkdir(parents=True, exist_ok=True)
        for rel, text in (entry.get("files") or {}).items():
            p = out.parent / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        out.write_text(entry["spec"])
        return out

    def diff(self, a: str, b: str) -> list[Difference]:
        ea, eb = self.get(a), self.get(b)
        with tempfile.TemporaryDirectory(prefix="ml-env-diff-") as td:
            sa = spec.load(self.write_back(ea, Path(td) / "a" / "env.toml"))
            sb = spec.load(self.write_back(eb, Path(td) / "b" / "env.toml"))
            return explain(sa, sb)

    def latest(self) -> list[dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for e in self.entries():
            out[e["name"]] = e
        return sorted(out.values(), key=lambda e: e["name"])
