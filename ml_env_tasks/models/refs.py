"""Model references: the one grammar every command that names a model reads (``model
register|list|get|download``, ``train --register-model``, ``package --model``, ``serve --model``,
``smoke-test --model``).

    MODEL = [HOST "/"] [REPOSITORY "/"] NAME [":" VERSION]

- ``NAME`` (letters, digits, ``_``, ``.``, ``-``): a model in ``--repository`` (``{name}`` is the
  name), else ``models/NAME``;
- ``REPOSITORY/NAME``: the repository itself, as the registry spells it (``team/models/digits``),
  ``NAME`` its last part;
- ``HOST/REPOSITORY``: the registry the model is in (a first part with ``.`` or ``:``, or
  ``localhost``, as Docker reads image references) and the repository in it, whole: what
  ``model register`` prints as ``ref`` is a reference;
- ``:VERSION``: 1, 2, …; none is the latest (``get``, ``download``, ``package``, ``serve``), and
  ``register`` takes none (the registry numbers versions).

Where a model is served or packaged, ``--model`` is ``[MOUNT=]SOURCE``: ``SOURCE`` a folder (one
that exists, or a path written as one: ``./x``, ``../x``, ``/x``, ``~/x``) or a ``MODEL``; one
unnamed model is ``AZUREML_MODEL_DIR`` itself, several are named, each ``AZUREML_MODEL_DIR/MOUNT``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..safe.grammar import MODEL_NAME, digits, has_control, matches, printable

__all__ = ["ModelRef", "ModelArg", "parse_model_ref", "parse_model_args", "FORMS"]

FORMS = "NAME, NAME:VERSION, REPOSITORY/NAME:VERSION or HOST/REPOSITORY/NAME:VERSION"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_PATHS = ("/", "./", "../", "~")


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: int | None = None  # None: the latest
    repository: str | None = None  # named in the reference (REPOSITORY/NAME); else --repository or models/NAME
    registry: str | None = None  # named in the reference (HOST/...); else --registry

    def __str__(self) -> str:
        path = self.repository or self.name
        where = f"{self.registry}/{path}" if self.registry else path
        return where if self.version is None else f"{where}:{self.version}"


@dataclass(frozen=True)
class ModelArg:
    """One ``--model`` of ``package``/``serve``: a folder, or a registered model."""

    mount: str  # "": the one model, AZUREML_MODEL_DIR itself; else its folder under it
    given: str  # SOURCE as given
    folder: Path | None = None
    ref: ModelRef | None = None


def parse_model_ref(text: str, *, what: str = "model") -> ModelRef:
    """A ``MODEL`` reference, whole; one usage error naming ``what`` otherwise."""
    bad = UsageError(f"{what} {printable(text, 120)!r} is not a model name nor reference", hint=FORMS)
    if not isinstance(text, str) or not text or len(text) > 512 or has_control(text):
        raise bad
    head, sep, version = text.rpartition(":")
    if not sep or "/" in version:  # a colon in HOST:PORT only
        head, version = text, ""
    elif not digits(version) or len(version) > 9 or int(version) < 1:
        raise UsageError(f"{what} {printable(head, 120)}: version {printable(version, 20)!r} is not a version number "
                         "(1, 2, ...)")  # fmt: skip
    registry = None
    first, slash, rest = head.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        from ..registry.refs import IMAGE_RE

        m = IMAGE_RE.fullmatch(head)
        if m is None or m.group("host") != first:
            raise bad
        registry, head = first, rest
    parts = head.split("/")
    name = parts[-1]
    if not matches(MODEL_NAME, name):
        raise bad
    repository = None
    if len(parts) > 1 or registry:  # a path in a registry: every part as the distribution spec spells them
        if not all(_COMPONENT.fullmatch(p) for p in parts) or len(head) > 255:
            raise bad
        repository = head  # after a HOST, the path is the repository as Docker reads it
    return ModelRef(name, int(version) if version else None, repository, registry)


def parse_model_args(items: Sequence[str], *, what: str = "--model") -> list[ModelArg]:
    """``--model`` given once or more: ``[MOUNT=]SOURCE`` each (see the module's docstring)."""
    from ..safe.paths import no_link_out

    out: dict[str, ModelArg] = {}
    for item in items:
        mount, sep, source = item.partition("=")
        if not sep:
            mount, source = "", item
        elif not matches(MODEL_NAME, mount):
            raise UsageError(f"{what}: {printable(mount, 60)!r} is not a model name", hint="NAME=FOLDER or NAME=MODEL")
        if mount in out:
            raise UsageError(f"{what} {mount or '(unnamed)'} given twice")
        if not source:
            raise UsageError(f"{what} {mount}=: give a folder or a model ({FORMS})")
        path = Path(source).expanduser()
        if source.startswith(_PATHS) or source in (".", "..") or _is_dir(path):
            if not _is_dir(path):
                raise UsageError(f"{what} {printable(source, 120)}: no such folder")
            out[mount] = ModelArg(mount, source, folder=no_link_out(path, what))
            continue
        try:
            ref = parse_model_ref(source, what=what)
        except UsageError as e:
            raise UsageError(f"{what} {printable(source, 120)!r} is neither a folder here nor a model reference",
                             hint=FORMS) if "version" not in e.message else e from None  # fmt: skip
        out[mount] = ModelArg(mount, source, ref=ref)
    if "" in out and len(out) > 1:
        raise UsageError(f"give either one unnamed {what} or several {what} NAME=FOLDER|MODEL")
    return list(out.values())


def _is_dir(p: Path) -> bool:
    try:
        return p.is_dir()
    except OSError:
        return False
