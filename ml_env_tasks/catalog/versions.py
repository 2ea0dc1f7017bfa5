"""Environment versions, Azure's register/list/get: a TOML file kept in the repository.

``register`` records name, version, hash, digest, image and the environment file itself (with
the text files it references), so ``get`` can write any version back and ``diff`` can explain
two. A changed hash under the same name gets the next version; an unchanged one keeps its
version. The file is appended under a lock through a temporary file and a rename (``tomllog``);
in a team it is committed like code, so versions are reviewed and merge like any change.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import spec
from ..errors import SpecError, UsageError
from ..safe.fsutil import read_text_bounded, write_atomic
from ..safe.grammar import NAME, matches, printable
from ..safe.tomllog import TomlLog
from ..spec import MAX_SPEC_BYTES
from ..spec.hashing import Difference, env_hash, explain
from . import wheelstore

__all__ = ["Versions", "VersionEntry", "VERSIONS_DEFAULT"]

VERSIONS_DEFAULT = Path("envs/versions.toml")


HASH = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class VersionEntry:
    name: str
    version: int
    hash: str
    digest: str
    image: str
    registry: str
    registered: str
    spec: str  # the environment file's text
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text (requirements, conda, Dockerfile)
    wheels: dict[str, str] = field(default_factory=dict)  # wheel file name -> sha256

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    def location(self, file: str) -> tuple[str, str] | None:
        """(registry, repository) the registered image lives in, from this entry (None: it was
        registered without a registry, so it is in the engine that built it). The versions file is
        repository content: the image must parse and be in the registry the entry names."""
        if not self.registry:
            return None
        from ..registry import check_registry_host, parse_ref

        check_registry_host(self.registry, f"{file}: {self.ref} registry")
        r = parse_ref(self.image)
        if r.host != self.registry:
            raise UsageError(f"{self.ref}: its image is not in its registry {self.registry}", file=file)
        return r.host, r.repository

    @property
    def shm_size(self) -> str | None:
        """``docker.shm_size`` of the recorded environment file (a run setting, outside the hash)."""
        from ..safe.grammar import parse_size
        from ..safe.untrusted import toml_loads

        try:
            doc = toml_loads(self.spec, error=SpecError, file=self.ref)
        except ValueError:
            return None
        docker = doc.get("docker")
        shm = docker.get("shm_size") if isinstance(docker, dict) else None
        return str(shm) if isinstance(shm, (str, int)) and parse_size(shm) is not None else None

    def summary(self) -> dict[str, Any]:
        """What ``list``/``register --json`` show: everything but the file texts."""
        return {k: v for k, v in self.to_dict().items() if k not in ("spec", "files")}

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        if not self.wheels:
            d.pop("wheels")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionEntry:
        def s(key: str) -> str:
            v = d.get(key, "")
            if not isinstance(v, str):
                raise ValueError(f"{key} must be a string")
            return v

        version = d.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("version must be a positive integer")
        files, wheels = d.get("files") or {}, d.get("wheels") or {}
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("files must be a table of texts")
        if not isinstance(wheels, dict):
            raise ValueError("wheels must be a table")
        name = s("name")
        if not matches(NAME, name):
            raise ValueError("name is not an environment name")
        if not HASH.fullmatch(s("hash")):  # a cache folder is named after it: never a path
            raise ValueError("hash is not a sha256 content hash")
        return cls(name, version, s("hash"), s("digest"), s("image"), s("registry"), s("registered"), s("spec"),
                   {str(k): v for k, v in files.items()}, {str(k): str(v) for k, v in wheels.items()})  # fmt: skip


class Versions(TomlLog):
    """The same atomic append-only TOML file as the ledger, with ``[[environment]]`` entries."""

    table = "environment"
    header = (
        "Environment versions: one [[environment]] per registered version, written by `ml-env register`.",
        "Commit it; `ml-env list`, `get NAME[:VERSION]` and `diff NAME:A NAME:B` read it.",
    )

    def entries(self, name: str | None = None) -> list[VersionEntry]:
        return [e for e in self.typed_entries(VersionEntry.from_dict) if name is None or e.name == name]

    def register(
        self, env: spec.Environment, *, image: str, digest: str | None, registry: str | None
    ) -> tuple[VersionEntry, bool]:
        """(entry, created): an unchanged hash keeps its version and writes nothing."""
        h = env_hash(env)
        with self.locked():
            mine = self.entries(env.name)
            if mine and mine[-1].hash == h:
                return mine[-1], False
            files = self.recordable(env)
            entry = VersionEntry(
                name=env.name,
                version=max((e.version for e in mine), default=0) + 1,
                hash=h,
                digest=digest or "",
                image=image,
                registry=registry or "",
                registered=datetime.now(UTC).isoformat(timespec="seconds"),
                spec=read_text_bounded(env.path, MAX_SPEC_BYTES, error=SpecError, what="environment file"),
                files=files,
                wheels={w.path.name: w.sha256 for w in env.wheels},
            )
            self.append_raw(entry.to_dict())
        return entry, True

    def recordable(self, env: spec.Environment) -> dict[str, str]:
        """The text files a version of ``env`` keeps (path beside the environment file -> text);
        an error for a file or a wheel it could not restore (outside the environment's folder).
        ``register`` asks before it builds: what would be refused is refused first."""
        files = {}
        base = env.path.parent.resolve()
        where = str(env.path)
        for ref in (
            list(env.requirements)
            + ([env.conda_file] if env.conda_file else [])
            + ([env.base.dockerfile] if env.base.dockerfile else [])
        ):
            try:
                files[ref.path.resolve().relative_to(base).as_posix()] = ref.text
            except ValueError:
                raise UsageError(
                    f"{ref.path} is outside the environment's directory; versions keep only files beside it",
                    file=where,
                ) from None
        for w in env.wheels:
            if not w.path.resolve().is_relative_to(base):
                raise UsageError(
                    f"wheel {w.path} is outside the environment's directory; a version restores its wheels "
                    "only beside the environment file",
                    file=where,
                    key="python.wheels",
                )
        return files

    def get(self, ref: str) -> VersionEntry:
        name, _, version = ref.partition(":")
        if not matches(NAME, name):
            raise UsageError(f"{printable(ref, 80)!r} is not NAME[:VERSION]")
        mine = self.entries(name)
        if not mine:
            raise UsageError(f"no environment {name!r} is registered", file=str(self.path))
        if not version:
            return mine[-1]
        for e in mine:
            if str(e.version) == version:
                return e
        raise UsageError(
            f"{name} has no version {printable(version, 20)} (has {', '.join(str(e.version) for e in mine)})",
            file=str(self.path),
        )

    def write_back(self, entry: VersionEntry, out: Path) -> Path:
        """The registered environment file and its text files, into ``out`` (a .toml path)."""
        from ..safe.paths import check_path_text

        root = out.parent.resolve()
        for rel in entry.files:
            check_path_text(rel, file=str(self.path), key=entry.ref, what="registered file")
            target = (out.parent / rel).resolve()
            if not target.is_relative_to(root):
                raise UsageError(f"{entry.ref}: a registered file would be written outside {out.parent}; refused")
        out.parent.mkdir(parents=True, exist_ok=True)
        for rel, text in entry.files.items():
            (out.parent / rel).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(out.parent / rel, text)  # a rename: never through a link
        write_atomic(out, entry.spec)
        return out

    def restore(self, entry: VersionEntry, folder: Path, *, force: bool = False) -> tuple[list[Path], str | None]:
        """``get -o DIR``: the environment file (``DIR/<name>.toml``), its files and its private
        wheels (from the image's registry, checked against the recorded digests, where the spec
        names them), into a folder; nothing is overwritten unless ``force``, and nothing is
        written when a wheel cannot be had intact. (written, why the wheels were not restored)."""
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{folder} is a file; -o takes a folder")
        out = folder / f"{entry.name}.toml"
        wheels = wheelstore.targets(entry, folder)
        targets = [out] + [folder / rel for rel in entry.files] + list(wheels.values())
        linked = [str(t) for t in targets if t.is_symlink()]
        if linked:
            raise UsageError(f"not writing through a symlink: {', '.join(linked)}")
        clash = [str(t) for t in targets if t.exists()]
        if clash and not force:
            raise UsageError(f"not overwriting {', '.join(clash)}", hint="--force overwrites them")
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        try:
            written, note = self._restore_into(entry, out, wheels)
        except BaseException:
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            raise
        return [out, *(folder / rel for rel in entry.files), *written[1:]], note

    def restore_cached(self, entry: VersionEntry, out: Path) -> Path:
        """A registered version for a build (``NAME:VERSION`` where an environment is expected):
        written once into ``out``'s folder with its wheels; a wheel that cannot be had is an error."""
        wheels = wheelstore.targets(entry, out.parent)
        if out.exists() and all(p.exists() for p in wheels.values()):
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        _, note = self._restore_into(entry, out, wheels)
        if note:
            raise UsageError(f"{note}; {entry.ref} cannot be built here", hint="`ml-env get` writes it without them")
        return out

    def _restore_into(self, entry: VersionEntry, out: Path, wheels: dict[str, Path]) -> tuple[list[Path], str | None]:
        """Wheels downloaded and verified first (staged beside ``out``), then everything written."""
        with tempfile.TemporaryDirectory(prefix=".ml-env-wheels-", dir=out.parent) as td:
            staged, note = wheelstore.download(entry, Path(td))
            self.write_back(entry, out)
            written = [out]
            for name, tmp in staged.items():
                wheels[name].parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, wheels[name])
                written.append(wheels[name])
        return written, note

    def diff(self, a: str, b: str) -> list[Difference]:
        ea, eb = self.get(a), self.get(b)
        with tempfile.TemporaryDirectory(prefix="ml-env-diff-") as td:
            # wheels are not in the versions file: their recorded digests are what is compared
            sa, sb = (
                spec.parse(
                    e.spec, self.write_back(e, Path(td) / side / "env.toml"), shown=e.ref, recorded_wheels=e.wheels
                )
                for e, side in ((ea, "a"), (eb, "b"))
            )
            return explain(sa, sb)

    def latest(self) -> list[VersionEntry]:
        out: dict[str, VersionEntry] = {}
        for e in self.entries():
            out[e.name] = e
        return sorted(out.values(), key=lambda e: e.name)
