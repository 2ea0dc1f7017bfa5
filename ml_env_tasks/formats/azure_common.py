"""What every Azure import shares: the result (``Imported``: a TOML document, the files it
names, warnings), the files carried from the source's project, and the inference server a conda
or requirements file asks for."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from ..build.stack import AZUREML_PACKAGES
from ..errors import SpecError
from ..safe.fsutil import read_bounded
from ..safe.grammar import ENV_NAME, matches, printable
from ..safe.paths import MAX_TEXT_FILE, project_root, read_inside
from .azure_fields import _Fields

AZURE_INFERENCE_PACKAGES = ("azureml-defaults", "azureml-inference-server-http")


@dataclass
class Imported:
    name: str
    doc: tomlkit.TOMLDocument
    warnings: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the output, named in the document

    def text(self) -> str:
        return tomlkit.dumps(self.doc)

    def write(self, output: Path) -> list[Path]:
        """Write the environment file and its files beside it; nothing is written unless the
        result loads as an environment file, and nothing existing is overwritten."""
        import shutil
        import tempfile

        from .. import spec

        folder = output.parent
        targets = [output] + [folder / n for n in self.files]
        clash = [str(t) for t in targets if t.exists() or t.is_symlink()]
        if clash:
            raise SpecError(f"not overwriting {', '.join(clash)}", hint="choose another -o, or move them away")
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".ml-env-import-", dir=folder))
        try:
            for n, data in self.files.items():
                (stage / n).write_bytes(data)
            (stage / output.name).write_text(self.text())
            try:
                spec.load(stage / output.name)
            except SpecError as e:
                raise SpecError(f"the imported environment would not load, so nothing was written: {e.message}",
                                key=e.key, hint=e.hint) from None  # fmt: skip
            for t in targets:
                (stage / t.name).rename(t)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return targets


def _name(raw: str | None, source: Path, warnings: list[str]) -> str:
    name = raw or source.stem or "imported"
    clean = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63] or "imported"
    if clean != name:
        warnings.append(f"name {printable(name)!r} became {clean!r} (lowercase letters, digits, '.', '_', '-')")
    return clean


def _start(source: Path, kind: str, raw_name: str | None) -> tuple[tomlkit.TOMLDocument, list[str], str]:
    """A new commented document with its name: (document, warnings, name)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported from {kind} {printable(source.name, 80)} by `ml-env import`."))
    doc.add(tomlkit.comment("Fields the importer could not map are listed in its warnings; review, then build."))
    w: list[str] = []
    name = _name(raw_name, source, w)
    doc.add("name", name)
    return doc, w, name


def _carry(source_dir: Path, rel: str, *, file: Path, key: str, what: str) -> bytes:
    """The bytes of a file an Azure file names, which must lie inside the source's project."""
    _, data = read_inside(source_dir, rel, project_root(source_dir), file=str(file), key=key, what=what)
    return data


def _read(src: Path) -> bytes:
    """An imported file's bytes: a regular file of at most MAX_TEXT_FILE bytes (never a device or a FIFO)."""
    try:
        return read_bounded(src, MAX_TEXT_FILE, error=SpecError, what="environment file")
    except OSError as e:
        raise SpecError(f"cannot be read: {e.strerror}", file=str(src)) from None


def _password_env(address: str) -> str:
    """``myacr.azurecr.io`` → ``MYACR_AZURECR_IO_PASSWORD``; an address starting with a digit gets
    a ``REGISTRY_`` prefix, so the name is always a valid environment variable name."""
    var = re.sub(r"[^A-Z0-9]+", "_", address.upper()).strip("_") + "_PASSWORD"
    if not matches(ENV_NAME, var):
        var = "REGISTRY_" + var
    return var


def _conda(
    data: bytes, filename: str, files: dict[str, bytes], pyt: Any, doc: tomlkit.TOMLDocument, w: list[str]
) -> None:
    """A conda file the imported environment names: carried beside the output, and read for
    Azure's inference packages."""
    files[filename] = data
    pyt.add("conda_file", filename)
    _inference_from_conda(data, doc, w)


def _inference_from_conda(conda: bytes, doc: tomlkit.TOMLDocument, w: list[str]) -> None:
    """A conda file that installs Azure's scoring server (``azureml-defaults`` brings it) is an
    environment whose scripts are written for it: ``inference.server = "azureml"``."""
    text = conda.decode("utf-8", errors="replace")
    for pkg in AZURE_INFERENCE_PACKAGES:
        if re.search(rf"^\s*-\s*{pkg}(?=\s*(?:[=<>!~\[;#]|$))", text, re.M):
            _azureml_server(doc)
            w.append(
                f'{pkg} in the conda file is Azure\'s inference stack: inference.server = "azureml" '
                f"(the inference layer installs {AZUREML_PACKAGES[0]} and runs azmlinfsrv)"
            )
            return


def _azureml_server(doc: tomlkit.TOMLDocument) -> None:
    if "inference" in doc:
        del doc["inference"]  # `inference = true` from the source's own flag: the table says more
    t = tomlkit.table()
    t.add("server", "azureml")
    t["server"].comment("Azure's own scoring server, as the source's dependencies ask")
    doc.add("inference", t)


def _registry(f: _Fields, reg: dict[str, Any], where: str, base: Any, w: list[str]) -> None:
    """``baseImageRegistry`` → ``base.registry``: the password never written, its variable named."""
    address = f.text(reg, "address", f"{where}.address")
    user = f.text(reg, "username", f"{where}.username")
    if not address:
        if user or reg.get("password"):
            w.append(f"{f.prefix}{where}: a username or password without an address: not imported")
        return
    r = tomlkit.inline_table()
    r.add("address", address)
    if user:
        r.add("username", user)
        r.add("password_env", _password_env(address))
    base.add("registry", r)
    if reg.get("password"):
        var = _password_env(address)
        w.append(
            f"{f.prefix}{where}.password: not written: set the environment variable {var} to it, "
            f"and allow the environment file to read it for that registry: ML_ENV_SPEC_ENV={var}@{address}"
        )
