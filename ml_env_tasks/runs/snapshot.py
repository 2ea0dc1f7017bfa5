"""Source snapshots: the files of a folder a run gets, hashed, and streamed as a tar.

Ignore rules: ``.amlignore``, else ``.dockerignore`` and ``.gitignore`` (gitignore syntax), plus
folders no run needs (``.git``, caches, ``runs/``). Containment: a symlink whose target stays
inside the folder is kept *as a link* (an absolute target is made relative); one that points
outside is skipped with a warning and its target is never read. Files are read again when the
tar is made, one path component at a time with ``O_NOFOLLOW`` (a directory swapped for a
symlink in between cannot redirect the read), and each must still hash as it did in the snapshot.
The tar is produced in fixed memory, whatever the snapshot's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.digests import stream_sha256
from ..safe.fsutil import read_bounded
from ..safe.grammar import printable

__all__ = [
    "Entry",
    "Snapshot",
    "TarPart",
    "snapshot",
    "folder_snapshot",
    "tar_chunks",
    "tar_parts",
    "content_hash",
    "ALWAYS_IGNORED",
]

SNAPSHOT_WARN_MB = 300  # Azure ML's limit for a snapshot
SNAPSHOT_MAX_MB = 2000
ALWAYS_IGNORED = [".git/", "__pycache__/", ".nox/", ".ml-env/", ".pytest_cache/", ".amlignore", "runs/"]
IGNORE_FILE_LIMIT = 1 * 2**20
CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    rel: str  # posix path inside the snapshot
    size: int
    sha256: str  # of the content; for a link, of its target text
    link: str | None = None  # a symlink's (relative, in-tree) target


@dataclass(frozen=True)
class Snapshot:
    root: Path
    files: tuple[Entry, ...]
    ignore_file: str | None
    skipped: tuple[str, ...] = ()  # symlinks pointing outside the folder

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for e in self.files:
            h.update(f"{e.rel}\0{'L' + e.link if e.link is not None else e.sha256}\n".encode())
        return h.hexdigest()

    def has(self, rel: str) -> bool:
        return any(e.rel == rel and e.link is None for e in self.files)


def _patterns(source: Path, real_root: Path, warn: Callable[[str], None]) -> tuple[list[str], str | None]:
    patterns = list(ALWAYS_IGNORED)
    names = [".amlignore"] if (source / ".amlignore").exists() else [".dockerignore", ".gitignore"]
    used = []
    for n in names:
        p = source / n
        if not (p.exists() or p.is_symlink()):
            continue
        real = Path(os.path.realpath(p))
        try:
            if not real.is_relative_to(real_root):
                raise UsageError("outside the source")
            data = read_bounded(real, IGNORE_FILE_LIMIT, error=UsageError)
        except (OSError, UsageError):
            warn(f"{n} is not a regular file inside {source} (or is over 1 MiB): not used")
            continue
        patterns += data.decode("utf-8", errors="replace").splitlines()
        used.append(n)
    return patterns, "+".join(used) or None


class _FixedNames:
    """The always-ignored names alone (no ignore file): a name match, as gitignore has it for a
    pattern without a slash inside — a file or folder of that name at any depth. pathspec (and
    its pattern engine) is loaded only when an ignore file brings real patterns."""

    def __init__(self, patterns: list[str]) -> None:
        self.dirs = {p.rstrip("/") for p in patterns if p.endswith("/")}
        self.names = {p for p in patterns if not p.endswith("/")}

    def match_file(self, rel: str) -> bool:
        parts = rel.rstrip("/").split("/")
        folders = parts if rel.endswith("/") else parts[:-1]
        # "name/" matches a folder of that name (and all below it); "name" a file or a folder
        return any(x in self.dirs for x in folders) or any(x in self.names for x in parts)


def _matcher(patterns: list[str]) -> Any:
    if patterns == ALWAYS_IGNORED:
        return _FixedNames(patterns)
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


def _link_entry(p: Path, rel: str, real_root: Path) -> Entry | None:
    """An in-tree symlink as an entry with a relative target; None for one pointing outside (or
    one that cannot be read, as some in /proc cannot: left out like one pointing outside)."""
    try:
        target = os.readlink(p)
        real = Path(os.path.realpath(p))
    except OSError:
        return None
    if not real.is_relative_to(real_root):
        return None
    if os.path.isabs(target):
        target = os.path.relpath(real, Path(os.path.realpath(p.parent)))
    return Entry(rel, 0, hashlib.sha256(target.encode()).hexdigest(), target)


def _walked(p: Path, rel: str, real_root: Path) -> tuple[str, int, Entry | None]:
    """What a walked name is for a snapshot: ``file`` (its size), ``link`` (in-tree, its entry),
    ``outside`` (a link that leaves), or ``none``: sockets, FIFOs and devices are never part of
    one, nor a file gone while walked (a process's in ``/proc``)."""
    try:
        st = p.lstat()
    except OSError:
        return "none", 0, None
    if stat.S_ISLNK(st.st_mode):
        link = _link_entry(p, rel, real_root)
        return ("outside", 0, None) if link is None else ("link", 0, link)
    return ("file", st.st_size, None) if stat.S_ISREG(st.st_mode) else ("none", 0, None)


def snapshot(
    source: Path,
    *,
    warn_mb: float = SNAPSHOT_WARN_MB,
    max_mb: float = SNAPSHOT_MAX_MB,
    warn: Callable[[str], None] = print,
) -> Snapshot:
    """The files of ``source`` a run gets, with their sizes and digests."""
    if not source.is_dir():
        raise UsageError(f"source directory {source} not found", hint="--source takes a directory")
    real_root = source.resolve()
    patterns, used = _patterns(source, real_root, warn)
    spec = _matcher(patterns)
    found: list[tuple[str, int, Path | None, Entry | None]] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(source):  # never follows symlinked folders
        rel_dir = Path(dirpath).relative_to(source)
        keep = []
        for d in sorted(dirnames):
            rel = (rel_dir / d).as_posix()
            if spec.match_file(f"{rel}/"):
                continue
            if (Path(dirpath) / d).is_symlink():
                filenames.append(d)  # a link to a folder is recorded as a link, never walked
                continue
            keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            p = Path(dirpath) / name
            if spec.match_file(rel):
                continue
            kind, size, link = _walked(p, rel, real_root)
            if kind == "outside":
                skipped.append(rel)
            elif kind == "link":
                found.append((rel, 0, None, link))
            elif kind == "file":
                found.append((rel, size, p, None))
    if skipped:
        warn(
            f"{len(skipped)} symlink(s) in {source} point outside it and are left out: "
            + ", ".join(printable(x, 120) for x in skipped[:5])
            + (" ..." if len(skipped) > 5 else "")
        )
    total = sum(f[1] for f in found)
    biggest = ", ".join(f"{r} ({s / 2**20:.1f} MiB)" for r, s, _, _ in sorted(found, key=lambda f: -f[1])[:5])
    if total > max_mb * 2**20:
        raise UsageError(
            f"source snapshot of {source} is {total / 2**20:.0f} MiB, over the {max_mb:.0f} MiB limit; biggest files: {biggest}",
            hint="add them to .amlignore (or .dockerignore/.gitignore) and pass data with --input",
        )
    if total > warn_mb * 2**20:
        warn(f"source snapshot is {total / 2**20:.0f} MiB (over {warn_mb:.0f} MiB); biggest files: {biggest}")
    entries = []
    root_fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel, size, _p, link in found:
            if link is not None:
                entries.append(link)
                continue
            with _open_in(root_fd, rel) as f:
                entries.append(Entry(rel, size, stream_sha256(f)))
    finally:
        os.close(root_fd)
    return Snapshot(source, tuple(sorted(entries, key=lambda e: e.rel)), used, tuple(skipped))


def folder_snapshot(path: Path, *, warn: Callable[[str], None] = print) -> Snapshot:
    """Every regular file and in-tree symlink of a data folder (or one file), without ignore rules
    and without reading the files: a run's input or a model sent to an engine that cannot see
    this machine. Entries carry no digest; the tar checks each file's size as it reads it."""
    if path.is_file():
        return Snapshot(path.parent, (Entry(path.name, path.stat().st_size, ""),), None)
    real_root = path.resolve()
    found: list[Entry] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(path):
        rel_dir = Path(dirpath).relative_to(path)
        for d in list(dirnames):
            if (Path(dirpath) / d).is_symlink():
                dirnames.remove(d)
                filenames.append(d)
        dirnames.sort()
        for name in sorted(filenames):
            rel, p = (rel_dir / name).as_posix(), Path(dirpath) / name
            kind, size, link = _walked(p, rel, real_root)
            if kind == "outside":
                skipped.append(rel)
            elif kind == "link" and link is not None:
                found.append(link)
            elif kind == "file":
                found.append(Entry(rel, size, ""))
    if skipped:
        shown = ", ".join(printable(x, 120) for x in skipped[:5])
        warn(f"{len(skipped)} symlink(s) in {path} point outside it and are left out: {shown}")
    return Snapshot(path, tuple(sorted(found, key=lambda e: e.rel)), None, tuple(skipped))


@contextlib.contextmanager
def _open_in(root_fd: int, rel: str) -> Iterator[io.BufferedReader]:
    """Open ``rel`` below an open folder, one component at a time, following no symlink."""
    parts = rel.split("/")
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    except OSError as e:
        raise UsageError(f"source file {rel} changed while the snapshot was taken ({e.strerror})") from None
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(ffd).st_mode):
        os.close(ffd)
        raise UsageError(f"source file {rel} is no longer a regular file")
    with os.fdopen(ffd, "rb") as f:
        yield f


class _Checked:
    """Reads a file for the tar, hashing as it goes when the snapshot knows its digest (inputs and
    models are not hashed: only their size is checked); the last read fails on a changed file."""

    def __init__(self, f: io.BufferedReader, entry: Entry) -> None:
        self.f = f
        self.entry = entry
        self.h = hashlib.sha256() if entry.sha256 else None
        self.left = entry.size

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        if self.h is not None:
            self.h.update(data)
        self.left -= len(data)
        if self.left <= 0 and (self.left < 0 or (self.h is not None and self.h.hexdigest() != self.entry.sha256)):
            raise UsageError(f"source file {self.entry.rel} changed after the snapshot; run again")
        return data


class _Stopped(Exception):
    pass


class _QueueWriter:
    """The tar's file object: fills ~1 MiB chunks into a bounded queue, gives up once told to stop."""

    def __init__(self, q: queue.Queue[bytes | BaseException | None], stop: threading.Event) -> None:
        self.q = q
        self.stop = stop
        self.buf = bytearray()

    def put(self, item: bytes | BaseException | None) -> None:
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue
        raise _Stopped

    def write(self, data: bytes) -> int:
        if not self.buf and len(data) >= CHUNK:  # a whole chunk of a file: no copy
            self.put(bytes(data))
            return len(data)
        self.buf += data
        if len(self.buf) >= CHUNK:
            self.put(bytes(self.buf))
            self.buf.clear()
        return len(data)

    def flush_all(self) -> None:
        if self.buf:
            self.put(bytes(self.buf))
            self.buf.clear()


@dataclass(frozen=True)
class TarPart:
    """One piece of a tar stream: a snapshot's files under ``prefix``, owned by ``uid:gid``; or,
    with no snapshot, just the folder ``prefix`` (with ``mode``). ``name`` renames a one-file
    snapshot: the file itself is ``prefix/name`` (an input that is a file)."""

    prefix: str
    snap: Snapshot | None = None
    uid: int = 0
    gid: int = 0
    mode: int = 0o755
    name: str | None = None


def tar_chunks(snap: Snapshot, prefix: str = "", *, uid: int = 0, gid: int = 0) -> Iterator[bytes]:
    """The snapshot as an uncompressed tar stream, in chunks of about 1 MiB, made in a thread
    with a bounded queue: memory stays fixed whatever the snapshot's size. Entries sit under
    ``prefix`` (e.g. ``mnt/code``), every folder gets its own entry, owned by ``uid:gid``."""
    return tar_parts([TarPart(prefix, snap, uid, gid)])


def tar_parts(parts: list[TarPart]) -> Iterator[bytes]:
    """Several snapshots (and empty folders) in one tar stream, as ``tar_chunks`` makes it:
    one upload for a run's code, inputs and outputs folder. Folders above a part stay root's."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=4)
    stop = threading.Event()
    out = _QueueWriter(q, stop)

    def info(name: str, kind: bytes, mode: int, uid: int, gid: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.mtime, ti.uid, ti.gid = kind, mode, 0, uid, gid
        return ti

    def add_part(tar: tarfile.TarFile, part: TarPart, made: set[str]) -> None:
        parts = [p for p in part.prefix.strip("/").split("/") if p]
        own = len(parts) if part.name is None else len(parts) + 1  # the folder that is the part's own
        for i in range(len(parts)):
            d = "/".join(parts[: i + 1])
            if d in made:
                continue
            mine = i == own - 1
            uid, gid = (part.uid, part.gid) if mine else (0, 0)
            tar.addfile(info(d, tarfile.DIRTYPE, part.mode if mine else 0o755, uid, gid))
            made.add(d)
        snap = part.snap
        if snap is None:
            return
        base = "/".join(parts)
        root_fd = os.open(snap.root.resolve(), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for e in snap.files:
                rel = part.name if part.name is not None else e.rel
                name = f"{base}/{rel}" if base else rel
                folders = name.split("/")[:-1]
                for i in range(len(folders)):
                    d = "/".join(folders[: i + 1])
                    if d not in made:
                        tar.addfile(info(d, tarfile.DIRTYPE, 0o755, part.uid, part.gid))
                        made.add(d)
                if e.link is not None:
                    ti = info(name, tarfile.SYMTYPE, 0o777, part.uid, part.gid)
                    ti.linkname = e.link
                    tar.addfile(ti)
                    continue
                with _open_in(root_fd, e.rel) as f:
                    executable = os.fstat(f.fileno()).st_mode & 0o111
                    ti = info(name, tarfile.REGTYPE, 0o755 if executable else 0o644, part.uid, part.gid)
                    ti.size = e.size
                    tar.addfile(ti, _Checked(f, e))
        finally:
            os.close(root_fd)

    def produce() -> None:
        try:
            # a write-only stream object is all "w|" needs (typeshed wants a full IO[bytes])
            with tarfile.open(
                fileobj=out,
                mode="w|",
                format=tarfile.PAX_FORMAT,
                bufsize=CHUNK,  # type: ignore[call-overload]
                copybufsize=CHUNK,
            ) as tar:
                made: set[str] = set()
                for part in parts:
                    add_part(tar, part, made)
            out.flush_all()
            out.put(None)
        except _Stopped:
            return
        except BaseException as exc:  # handed to the consumer, raised there
            with contextlib.suppress(_Stopped):
                out.put(exc)

    t = threading.Thread(target=produce, daemon=True, name="ml-env-snapshot-tar")
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's relative paths and file digests (inputs of a run)."""
    from ..safe.digests import file_sha256

    if path.is_file():
        return file_sha256(path, use_cache=False)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                h.update(f"{p.relative_to(path).as_posix()}\0{file_sha256(p, use_cache=False)}\n".encode())
    return h.hexdigest()
