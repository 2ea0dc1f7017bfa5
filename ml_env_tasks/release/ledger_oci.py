"""The release ledger kept in a registry, next to the images it records.

A CI job starts from a fresh clone: a ledger file in the working tree is whatever the clone
has, and a re-run or another branch writes its own. Kept as an OCI artifact in the destination
repository (``oci://HOST/REPOSITORY[:TAG]``, tag ``ml-env-ledger`` by default), every clone
reads and appends the same history: one manifest (artifactType
``application/vnd.ml-env.ledger.v1+toml``, the empty config) whose one layer is the ledger's
TOML, exactly as a file ledger holds it.

Writes are optimistic: the artifact is read, entries are appended to a private copy, and the
new artifact is written under the tag only if the tag still names what was read; if another
writer moved it in between, its ledger is read again and our entries appended after its own
(entries are append-only, so that merge is exact), up to a few times. A registry has no
compare-and-swap, so two writers at the very same moment can still both write: the tag is
verified after the write, and a lost write is retried the same way. What the registry serves
is untrusted: the artifact must be exactly that shape, the layer at most MAX_LOG_BYTES, and its
TOML is read by the same strict reader as a file.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import LogError, RegistryError, UsageError
from ..registry import artifacts as art
from ..safe.fsutil import write_atomic
from ..safe.grammar import TAG, matches, printable
from ..safe.tomllog import MAX_LOG_BYTES, TomlLog
from .ledger import Ledger

if TYPE_CHECKING:
    from ..registry import RegistryClient

__all__ = ["LEDGER_TAG", "ARTIFACT_TYPE", "RemoteLedger", "is_remote", "open_ledger", "ledger_location"]

PREFIX = "oci://"
LEDGER_TAG = "ml-env-ledger"
ARTIFACT_TYPE = "application/vnd.ml-env.ledger.v1+toml"
WRITE_ATTEMPTS = 5
SETTLE_MIN, SETTLE_MAX = 0.2, 5.0  # seconds to wait before checking a write was not overwritten


def is_remote(location: str | Path | None) -> bool:
    return location is not None and str(location).startswith(PREFIX)


def ledger_location(value: str | Path, destination: str | None) -> str:
    """``registry`` (the destination repository's own ledger), ``oci://...`` or a file path."""
    text = str(value)
    if text == "registry":
        if not destination:
            raise UsageError("--ledger registry keeps the ledger in the destination repository; give oci://HOST/REPO")
        return f"{PREFIX}{destination}:{LEDGER_TAG}"
    return text


def with_ledger_tag(reference: str) -> str:
    """``HOST/REPO[:TAG]`` with the ledger's tag when it names none."""
    return reference if ":" in reference.rsplit("/", 1)[-1] else f"{reference}:{LEDGER_TAG}"


class RemoteLedger(Ledger):
    """A ledger read from (and written back to) a registry; a private file holds it meanwhile."""

    def __init__(self, location: str, *, insecure: bool = False, client: RegistryClient | None = None) -> None:
        from ..registry import RegistryClient, check_registry_host, parse_ref

        rest = location[len(PREFIX) :]
        if "@" in rest or not rest or "/" not in rest:  # (credentials or a digest: never echoed)
            raise UsageError("--ledger oci://...: give oci://HOST/REPOSITORY[:TAG], without credentials or a digest")
        check_registry_host(rest.split("/", 1)[0], "ledger registry")
        ref = parse_ref(with_ledger_tag(rest))
        if not ref.tag or not matches(TAG, ref.tag):
            raise UsageError(f"ledger {printable(location, 120)!r}: the tag is not a tag")
        self._dir = Path(tempfile.mkdtemp(prefix="ml-env-ledger-"))
        super().__init__(self._dir / "releases.toml")
        self.host, self.repository, self.tag = ref.host, ref.repository, ref.tag
        self.where = f"{PREFIX}{ref.host}/{ref.repository}:{ref.tag}"
        self.client = client or RegistryClient(ref.host, insecure=insecure)
        self._read: str | None = None  # the manifest digest this copy was read from
        self._new: list[dict[str, Any]] = []
        try:
            self.pull()
        except BaseException:
            self.close()
            raise

    def lock_key(self) -> str:
        return self.where

    def pull(self) -> None:
        """Read the registry's ledger into the private file (none yet: an empty ledger)."""
        got = self.client.get_manifest(self.repository, self.tag)
        if got is None:
            self.path.unlink(missing_ok=True)
            self._read = None
            return
        info, body = got
        layer = _ledger_layer(body, self.where)
        data = self.client.get_blob(self.repository, layer, limit=MAX_LOG_BYTES)
        try:
            write_atomic(self.path, data.decode("utf-8"))
        except UnicodeDecodeError:
            raise LogError("not UTF-8 text", file=self.where) from None
        self._read = info.digest
        self.entries()  # strict, as a file: a corrupt remote ledger is one LogError naming it

    def append_raw(self, entry: dict[str, Any]) -> None:
        super().append_raw(entry)
        self._new.append(entry)

    @property
    def dirty(self) -> bool:
        return bool(self._new)

    def push(self) -> str:
        """Write the appended entries to the registry; the ledger's new manifest digest.

        The tag naming our write right after it is not enough: a writer that checked the tag
        just before our write still writes its copy (without our entries) just after it. So once
        the tag names our write, we wait a little longer than our own check-to-write took and
        read the ledger again: our entries must be in it (ours, or a later writer's that merged
        them); if they are not, they are merged into what is there and written again."""
        for _attempt in range(WRITE_ATTEMPTS):
            started = time.monotonic()
            now = self.client.head_manifest(self.repository, self.tag)
            if (now.digest if now else None) != self._read:
                self._merge()
            data = self.path.read_bytes()
            art.put_empty_config(self.client, self.repository)
            digest = art.put_blob(self.client, self.repository, data)
            layer = {"mediaType": ARTIFACT_TYPE, "digest": digest, "size": len(data),
                     "annotations": {"org.opencontainers.image.title": "releases.toml"}}  # fmt: skip
            body = art.manifest(ARTIFACT_TYPE, [layer])
            put = self.client.put_manifest(self.repository, self.tag, body, art.OCI_MANIFEST)
            written = put or art.sha256(body)
            after = self.client.head_manifest(self.repository, self.tag)
            if after is not None and after.digest == written:
                time.sleep(min(SETTLE_MAX, max(SETTLE_MIN, 2 * (time.monotonic() - started))))
                later = self.client.head_manifest(self.repository, self.tag)
                if later is not None and later.digest == written:
                    self._read, self._new = written, []
                    return written
                if later is not None and self._holds_mine(later.digest):
                    self._read, self._new = later.digest, []
                    return later.digest
                after = later
            self._read = after.digest if after else None  # another writer won: merge again
            self._merge()
        raise RegistryError(
            f"the ledger {self.where} kept changing while this promotion was recorded ({WRITE_ATTEMPTS} tries)",
            hint="the promotion itself is done; run it again to record it (a re-run records what it finds)",
        )

    def _holds_mine(self, manifest_digest: str) -> bool:
        """Whether the ledger the tag names now (another writer's) holds every entry we wrote."""
        mine = self._new
        self.pull()
        if self._read != manifest_digest:  # it moved again while we read it: look once more
            return False
        have = self.raw_entries()

        return all({k: v for k, v in e.items() if v is not None} in have or self._finding_recorded(e) for e in mine)

    def _finding_recorded(self, entry: dict[str, Any]) -> bool:
        """A ``found`` entry whose finding the ledger already records (another writer's re-run)."""
        tags = tuple(entry.get("tags") or ())
        return bool(entry.get("found")) and (
            self.recorded(str(entry.get("destination")), str(entry.get("digest")), tags) is not None
        )

    def _merge(self) -> None:
        """Another writer moved the ledger: take theirs, then our entries after it."""
        mine = self._new
        self.pull()
        for e in mine:
            if not self._finding_recorded(e):  # else they recorded the same finding
                TomlLog.append_raw(self, e)
        self._new = mine

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)


def _ledger_layer(body: bytes, where: str) -> str:
    """The digest of the TOML layer of a ledger artifact; anything else is a LogError."""
    doc = art.single_layer(body, ARTIFACT_TYPE, MAX_LOG_BYTES)
    if doc is None:
        raise LogError(
            f"not an ml-env ledger (an OCI artifact of type {ARTIFACT_TYPE} with one layer of at most "
            f"{MAX_LOG_BYTES} bytes)",
            file=where,
        )
    return str(doc["layers"][0]["digest"])


@contextlib.contextmanager
def open_ledger(location: str | Path, *, insecure: bool = False, destination: str | None = None) -> Iterator[Ledger]:
    """The ledger at ``location``: a file, or ``oci://`` (written back when the block ends
    without an error and something was appended)."""
    text = ledger_location(location, destination)
    if not is_remote(text):
        yield Ledger(Path(text))
        return
    ledger = RemoteLedger(text, insecure=insecure)
    try:
        yield ledger
        if ledger.dirty:
            ledger.push()
    finally:
        ledger.close()
