"""What a smoke test tested, and which of a digest's smoke-test records the gate counts.

A record names the digest it tested and the *combination* that ran on it: the entry script (its
file name and its folder's snapshot hash, the snapshot ``serve`` copies in and ``package`` puts in
an image) and each model mounted (its layer digest: what ``model register`` stores and
``package`` puts in an image for that folder), or neither for a packaged image, which holds both.
Records written before records named them carry no such fields and are read as naming neither.

The rule (``gate``), for ``promote``/``verify --require smoke-test`` and the signed records of
the ``signed`` gate alike:

- a combination named (``--entry``/``--model``, hashed the same way): the newest record of that
  very combination against the digest must have passed; records of other combinations (another
  entry script, another model) do not count, failing or passing;
- none named: the image itself is what runs, so every combination tested against the digest
  counts, and the newest record of each must have passed (a packaged image has one combination:
  itself as it is).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.digests import is_digest
from ..safe.grammar import ENTRY_SCRIPT, MODEL_NAME, matches, printable

__all__ = [
    "Combination",
    "Verdict",
    "of_record",
    "newest_each",
    "gate",
    "passed",
    "from_files",
    "entry_of",
    "model_digests",
]

HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
FIELDS = ("entry", "entry_folder_sha256", "models")
MAX_MODELS = 64


@dataclass(frozen=True)
class Combination:
    """One combination: nothing mounted (a packaged image), or an entry script and its models."""

    entry: str = ""  # the entry script's file name; "" none mounted
    entry_folder: str = ""  # sha256 (hex) of the entry folder's snapshot
    models: tuple[tuple[str, str], ...] = ()  # (name, layer digest), sorted; "" is AZUREML_MODEL_DIR itself

    def fields(self) -> dict[str, Any]:
        """What a record carries: written as it is into the smoke-test record (and its signature)."""
        return {"entry": self.entry, "entry_folder_sha256": self.entry_folder, "models": dict(self.models)}

    def describe(self) -> str:
        if not self.entry and not self.models:
            return "the image as it is (nothing mounted)"
        parts = [f"entry {printable(self.entry, 100)} (folder {self.entry_folder[:12]})"] if self.entry else []
        parts += [f"model {printable(n, 63) + ' ' if n else ''}{d[:19]}" for n, d in self.models]
        return " + ".join(parts)


def of_record(record: dict[str, Any]) -> Combination | None:
    """The combination a record names (read from a registry: untrusted), None when malformed. A
    record without the fields (written before records named them) names nothing mounted."""
    if not any(k in record for k in FIELDS):
        return Combination()
    entry, folder, models = record.get("entry"), record.get("entry_folder_sha256"), record.get("models")
    if not (isinstance(entry, str) and isinstance(folder, str) and isinstance(models, dict)):
        return None
    if (entry == "") != (folder == "") or len(models) > MAX_MODELS:
        return None
    if entry and not (matches(ENTRY_SCRIPT, entry) and HEX64.fullmatch(folder)):
        return None
    for name, digest in models.items():
        if not ((name == "" or matches(MODEL_NAME, name)) and is_digest(digest)):
            return None
    if "" in models and len(models) > 1:
        return None
    return Combination(entry, folder, tuple(sorted(models.items())))


def passed(record: dict[str, Any]) -> bool:
    return not record["failed"] and record["passed"] > 0


def newest_each(records: Iterable[dict[str, Any]]) -> list[tuple[Combination, dict[str, Any]]]:
    """The newest record of each combination (records newest first, as ``smoke_records`` gives
    them), in that order; a record naming a malformed combination is left out."""
    seen: dict[Combination, dict[str, Any]] = {}
    for r in records:
        t = of_record(r)
        if t is not None:
            seen.setdefault(t, r)
    return list(seen.items())


@dataclass(frozen=True)
class Verdict:
    ok: bool
    line: str  # passed: "passed ..." (what counted); refused: why, in one line
    counted: tuple[dict[str, Any], ...] = ()  # the records the verdict rests on


def gate(records: list[dict[str, Any]], want: Combination | None, where: str) -> Verdict:
    """The smoke-test gate over a digest's records (newest first): see the module's rule."""
    groups = newest_each(records)
    if want is not None:
        hit = next((r for t, r in groups if t == want), None)
        if hit is None:
            others = f" (records of {len(groups)} other from_files(s) do not count)" if groups else ""
            return Verdict(False, f"no smoke test of {want.describe()} recorded against {where}{others}")
        return Verdict(passed(hit), _said(want, hit, where), (hit,))
    if not groups:
        return Verdict(False, f"{where} has no smoke test recorded against it")
    for t, r in groups:
        if not passed(r):
            hint = (
                "; name the combination that runs (--entry/--model) to count its records only"
                if len(groups) > 1
                else ""
            )
            return Verdict(False, _said(t, r, where) + hint, (r,))
    t, r = groups[0]
    if len(groups) == 1:
        return Verdict(True, _said(t, r, where), (r,))
    return Verdict(True, f"passed: the newest record of each of the {len(groups)} combinations tested against "
                         f"{where} passed (the last at {printable(r['time'], 40)})", tuple(r for _, r in groups))  # fmt: skip


def _said(t: Combination, r: dict[str, Any], where: str) -> str:
    when = printable(r["time"], 40)
    if passed(r):
        return f"passed {r['passed']} cases at {when} ({t.describe()})"
    total = r["passed"] + r["failed"]
    return f"the last smoke test of {t.describe()} on {where} ({when}) failed: {r['failed']} of {total} cases"


# --- a combination from the files, hashed as serve, smoke-test and package hash them ----------


def entry_of(entry: Path, *, warn: Any = print) -> tuple[str, str]:
    """(file name, its folder's snapshot hash): the entry as ``serve`` copies it in."""
    from ..runs.snapshot import snapshot

    if not entry.is_file():
        raise UsageError(f"entry script {printable(entry, 120)} not found")
    snap = snapshot(entry.parent, warn=warn)
    if not snap.has(entry.name):
        raise UsageError(f"entry script {printable(entry, 120)} is ignored by its folder's ignore file")
    return entry.name, snap.hash


def from_files(entry: Path | None, models: dict[str, Path], *, warn: Any = print) -> Combination:
    """The combination of an entry script and model folders, hashed as a smoke test of them is."""
    if models and entry is None:
        raise UsageError("--model names a model mounted beside an entry script: give --entry too")
    name, folder = entry_of(entry, warn=warn) if entry is not None else ("", "")
    return Combination(name, folder, model_digests(models, warn=warn))


def model_digests(models: dict[str, Path], *, complete: bool = False, warn: Any = print) -> tuple[tuple[str, str], ...]:
    """(mount name, layer digest) of each model folder, sorted. ``complete``: a folder whose digest
    leaves out files that a mount shows is refused (a record naming that digest would not name
    what the scoring code could read)."""
    from ..models import model_digest

    out = []
    for mount, path in sorted(models.items()):
        if not path.is_dir():
            raise UsageError(f"model {mount + ' ' if mount else ''}directory {printable(path, 120)} not found")
        digest, left_out = model_digest(path, warn=warn)
        if complete and left_out:
            raise UsageError(
                f"model {printable(path, 120)}: {len(left_out)} file(s) are mounted but left out of its digest by its "
                f"ignore rules ({', '.join(printable(x, 60) for x in left_out[:3])}): the smoke-test record could "
                "not name what was tested",
                hint="take the ignore file out of the model folder, or --no-record",
            )
        out.append((mount, digest))
    return tuple(out)
