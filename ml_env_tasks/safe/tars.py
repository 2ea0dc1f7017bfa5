"""Untrusted tar archives into a folder, and what an untrusted writer leaves in one.

One extraction for every tar this project does not trust: a model version's layer from a
registry (``models``) and a run's outputs from a remote engine (``engine.archive``). tarfile's
extraction (and its ``data`` filter) is not used. Before the fix of CVE-2025-4517 (the Python
3.11.7 CI runs on predates it) the filter's ``os.path.realpath`` gives up past PATH_MAX and a
chain of links walks out of the folder; later fixes (empty link names, the hard-link fallback)
show the filter is still moving; and even a sound filter checks a link against the folder it
extracts into, not the folder the tree ends up in after a move. So this module writes the
members itself and depends on no stdlib fix: ``requires-python`` keeps no patch floor for it
(one above 3.11.7 would also refuse the project's own CI):

- a member's name is a relative path of plain parts: absolute names, ``..``, ``.`` and empty
  parts are refused;
- only folders, regular files (a sparse one stays sparse), symlinks and, where the caller allows,
  hard links to a file this extraction wrote; devices, FIFOs and anything else are refused;
- every parent is opened part by part from the destination's own descriptor with
  ``O_NOFOLLOW``, and made as a real folder when missing: a part that is a link or a file is
  refused, so nothing is ever written through a link, whatever the order of the stream;
- files are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` (a name written twice is refused); modes
  lose setuid, setgid, sticky and group/other write; owners are never set;
- the total size (a sparse file counts its full length, its map checked against it) and the
  number of members are bounded;
- a symlink stays only if its target, resolved here part by part against the tree on disk
  (relative only, at most 40 links deep, no ``os.path.realpath`` and no PATH_MAX), never leaves
  the folder, and ``os.path.realpath`` agrees; ``check_links`` runs after all members are
  written, and again by a caller on the FINAL folder after it moved the tree there. A link that
  leaves is removed and the extraction refused.

``strip_privileges`` is for a folder a container wrote through a bind mount (a local run's
outputs): setuid and setgid bits are cleared, devices, FIFOs and sockets removed, one warning
line naming each.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..errors import MlEnvError
from .grammar import printable

__all__ = ["Extracted", "Refuse", "extract", "check_links", "strip_privileges", "size_text", "MAX_LINK_HOPS"]

# (member name or None for the archive as a whole, why) -> the caller's error
Refuse = Callable[[str | None, str], MlEnvError]
MAX_LINK_HOPS = 40  # the kernel's own limit on links followed in one lookup
CHUNK = 1 << 20
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Extracted:
    files: int
    bytes: int  # the files' full lengths (a sparse file's too)
    links: tuple[str, ...]  # the symlinks written, relative to the destination


class _Refused(Exception):
    def __init__(self, name: str | None, why: str) -> None:
        super().__init__(why)
        self.name, self.why = name, why


def size_text(n: int) -> str:
    """A byte count for a message: ``64 GiB``, ``1.5 MiB``, ``1500 bytes``."""
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"


def _parts(rel: str) -> tuple[str, ...] | None:
    """A member's path as plain parts; None for a name that is not one (absolute, ``..``...)."""
    if rel.startswith("/") or "\0" in rel:
        return None
    parts = tuple(rel.rstrip("/").split("/"))
    if any(p in ("", ".", "..") for p in parts):
        return None
    return parts


class _Tree:
    """Folders under a destination, opened part by part without following links. The chain of
    the last folder opened is kept open (bounded by the depth), so a stream of members in the
    same folder costs one open each."""

    def __init__(self, root: Path) -> None:
        self.root = os.open(root, _DIR)
        self.chain: list[tuple[str, int]] = []

    def close(self) -> None:
        for _, fd in self.chain:
            os.close(fd)
        self.chain = []
        os.close(self.root)

    def folder(self, parts: tuple[str, ...], *, make: bool) -> int:
        """The descriptor of the folder ``parts`` (made as a real folder when missing and
        ``make``); a part that is a link or not a folder is refused."""
        keep = 0
        while keep < min(len(parts), len(self.chain)) and self.chain[keep][0] == parts[keep]:
            keep += 1
        for _, fd in self.chain[keep:]:
            os.close(fd)
        del self.chain[keep:]
        for i in range(keep, len(parts)):
            at = self.chain[-1][1] if self.chain else self.root
            self.chain.append((parts[i], _open_folder(at, parts[i], "/".join(parts[: i + 1]), make=make)))
        return self.chain[-1][1] if self.chain else self.root

    def fresh(self, parts: tuple[str, ...]) -> int:
        """A new descriptor of an existing folder (the caller closes it)."""
        fd = os.dup(self.root)
        try:
            for i, p in enumerate(parts):
                nxt = _open_folder(fd, p, "/".join(parts[: i + 1]), make=False)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        return fd


def _open_folder(at: int, part: str, where: str, *, make: bool) -> int:
    try:
        return os.open(part, _DIR, dir_fd=at)
    except FileNotFoundError:
        if not make:
            raise _Refused(where, "a folder that is not there") from None
    except OSError:  # ELOOP: a symlink; ENOTDIR: a file
        raise _Refused(where, "goes through a link or a file") from None
    os.mkdir(part, 0o700, dir_fd=at)
    try:
        return os.open(part, _DIR, dir_fd=at)
    except OSError:
        raise _Refused(where, "changed while it was written") from None


def _file_mode(mode: int) -> int:
    mode = (mode & 0o755) | 0o600  # no setuid/setgid/sticky, no group/other write; the owner reads and writes
    if not mode & 0o100:
        mode &= ~0o011  # others do not execute what the owner does not
    return mode


def extract(
    tar: tarfile.TarFile,
    dest: Path,
    *,
    name: Callable[[str], str | None],
    refuse: Refuse,
    max_bytes: int,
    max_members: int,
    hard_links: bool = False,
) -> Extracted:
    """Write the members of ``tar`` (read in order: a stream works) under ``dest``, an existing
    folder. ``name`` maps a member's name to its path under ``dest`` (None: skip it; it raises
    the caller's error for a name it does not accept). Refusals are ``refuse(name, why)``."""
    try:
        tree = _Tree(dest)
    except OSError as e:
        raise refuse(None, f"cannot be written to {dest} ({e.strerror or type(e).__name__})") from None
    files = total = members = 0
    written: set[tuple[str, ...]] = set()  # regular files (the targets hard links may name)
    links: list[str] = []
    folders: dict[tuple[str, ...], tarfile.TarInfo] = {}
    current = ""
    try:
        for m in tar:
            current = m.name
            members += 1
            if members > max_members:
                raise _Refused(None, f"has over {max_members} entries")
            rel = name(m.name)
            if rel is None:
                continue
            parts = _parts(rel)
            if parts is None:
                raise _Refused(m.name, "not a relative path inside the folder")
            if m.isdir():
                tree.folder(parts, make=True)
                folders[parts] = m
                continue
            if not (m.isreg() or m.issym() or (m.islnk() and hard_links)):
                raise _Refused(m.name, "not a file, folder or symlink")
            at = tree.folder(parts[:-1], make=True)
            if m.issym():
                if not m.linkname or m.linkname.startswith("/") or "\0" in m.linkname:
                    raise _Refused(m.name, "a symlink that is absolute or empty")
                try:
                    os.symlink(m.linkname, parts[-1], dir_fd=at)
                except FileExistsError:
                    raise _Refused(m.name, "written twice") from None
                links.append("/".join(parts))
                continue
            if m.islnk():
                target_rel = name(m.linkname)
                target = _parts(target_rel) if target_rel else None
                if target is None or target not in written:
                    raise _Refused(m.name, "a hard link to something this archive did not write as a file")
                src = tree.fresh(target[:-1])
                try:
                    os.link(target[-1], parts[-1], src_dir_fd=src, dst_dir_fd=at, follow_symlinks=False)
                except FileExistsError:
                    raise _Refused(m.name, "written twice") from None
                finally:
                    os.close(src)
                continue
            total += m.size
            if total > max_bytes:
                raise _Refused(None, f"is over {size_text(max_bytes)}")
            try:
                fd = os.open(parts[-1], _NEW_FILE, 0o600, dir_fd=at)
            except FileExistsError:
                raise _Refused(m.name, "written twice") from None
            except OSError:
                raise _Refused(m.name, "not a name a file can be written at") from None
            try:
                _write(tar, m, fd)
                os.fchmod(fd, _file_mode(m.mode))
                with contextlib.suppress(OverflowError, OSError, ValueError):
                    os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)
            written.add(parts)
            files += 1
        current = ""
        for parts, m in sorted(folders.items(), key=lambda kv: -len(kv[0])):  # deepest first
            fd = tree.fresh(parts)
            try:
                os.fchmod(fd, (m.mode & 0o755) | 0o700)
                with contextlib.suppress(OverflowError, OSError, ValueError):
                    os.utime(fd, (m.mtime, m.mtime))
            finally:
                os.close(fd)
    except _Refused as e:
        raise refuse(e.name, e.why) from None
    except tarfile.TarError as e:
        raise refuse(None, f"is not a valid tar ({printable(str(e), 120)})") from None
    except OSError as e:
        raise refuse(current or None, f"could not be read or written ({e.strerror or type(e).__name__})") from None
    finally:
        tree.close()
    check_links(dest, links, refuse)
    return Extracted(files, total, tuple(links))


def _write(tar: tarfile.TarFile, m: tarfile.TarInfo, fd: int) -> None:
    """A member's bytes into ``fd``: a sparse file's data at its offsets, its holes left holes."""
    got = tar.extractfile(m)
    if got is None:
        raise _Refused(m.name, "has no data")
    # the unbuffered reader under it: it moves to an offset without asking the stream to seek
    # (a stream only goes forward, and a sparse file's regions come in order)
    src = getattr(got, "raw", got)
    sparse = getattr(m, "sparse", None)
    regions = [(int(o), int(n)) for o, n in sparse if n] if sparse is not None else [(0, m.size)]
    end = 0
    for offset, n in regions:
        if offset < end or n < 0 or offset + n > m.size:
            raise _Refused(m.name, "a sparse map that does not fit the file")
        end = offset + n
        if sparse is not None:
            src.seek(offset)
        os.lseek(fd, offset, os.SEEK_SET)
        left = n
        while left:
            chunk = src.read(min(CHUNK, left))
            if not chunk:
                raise _Refused(m.name, "shorter than it says")
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view) :]
            left -= len(chunk)
    os.ftruncate(fd, m.size)


def _stays_inside(tree: _Tree, link: tuple[str, ...]) -> bool:
    """Does the symlink at ``link`` (its parents real folders) resolve inside the tree's root?
    Resolved as the kernel would, part by part on disk, each link met followed (relative only,
    at most MAX_LINK_HOPS); a part that is not there ends the walk and the rest is taken as
    written. Stepping above the root at any point is leaving it."""
    at = list(link[:-1])
    hops = 0
    pending = [link]  # links still to expand, innermost last
    todo: list[str] = []
    while True:
        if pending:
            here = pending.pop()
            hops += 1
            if hops > MAX_LINK_HOPS:
                return False
            fd = tree.fresh(tuple(here[:-1]))
            try:
                target = os.readlink(here[-1], dir_fd=fd)
            finally:
                os.close(fd)
            if target.startswith("/"):
                return False
            todo = target.split("/") + todo
        if not todo:
            return True
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not at:
                return False
            at.pop()
            continue
        try:
            fd = tree.fresh(tuple(at))
        except _Refused:  # a folder passed is not one any more: the tree changed under us
            return False
        try:
            st = os.lstat(part, dir_fd=fd)
        except OSError:
            st = None
        finally:
            os.close(fd)
        if st is not None and stat.S_ISLNK(st.st_mode):
            pending.append((*at, part))
            continue
        at.append(part)
        if st is None or not stat.S_ISDIR(st.st_mode):  # not there, or a file: the rest as written
            return _lexical(at, todo)


def _lexical(at: list[str], todo: list[str]) -> bool:
    depth = len(at)
    for part in todo:
        if part == "..":
            depth -= 1
            if depth < 0:
                return False
        elif part not in ("", "."):
            depth += 1
    return True


def check_links(root: Path, links: Iterable[str], refuse: Refuse) -> None:
    """Every symlink named (relative to ``root``) resolves inside ``root`` as the tree is now on
    disk; those that do not are removed, then the first is refused. Run it on the final folder."""
    links = list(links)
    if not links:
        return
    real_root = os.path.realpath(root)
    tree = _Tree(root)
    bad: list[str] = []
    try:
        for rel in links:
            parts = _parts(rel)
            if parts is None:
                bad.append(rel)
                continue
            try:
                ok = _stays_inside(tree, parts)
            except (_Refused, OSError):
                ok = False
            if ok:  # and the standard library agrees (never the only check: see the docstring)
                real = os.path.realpath(os.path.join(real_root, rel))
                ok = real == real_root or real.startswith(real_root.rstrip("/") + "/")
            if not ok:
                bad.append(rel)
        for rel in bad:
            parts = _parts(rel)
            if parts is None:
                continue
            with contextlib.suppress(_Refused, OSError):
                fd = tree.fresh(parts[:-1])
                try:
                    if stat.S_ISLNK(os.lstat(parts[-1], dir_fd=fd).st_mode):
                        os.unlink(parts[-1], dir_fd=fd)
                finally:
                    os.close(fd)
    finally:
        tree.close()
    if bad:
        more = f" (and {len(bad) - 1} more, all removed)" if len(bad) > 1 else " (removed)"
        raise refuse(bad[0], "a symlink that resolves outside the folder" + more)


def strip_privileges(root: Path, warn: Callable[[str], None], *, label: str = "", limit: int = 20) -> list[str]:
    """After an untrusted writer (a container, through a bind mount) is gone: clear setuid and
    setgid bits under ``root`` and remove devices, FIFOs and sockets, links never followed. One
    warning line per file (``label`` + its path), at most ``limit`` of them. The paths touched."""
    touched: list[str] = []

    def said(rel: str, what: str) -> None:
        touched.append(rel)
        if len(touched) <= limit:
            warn(f"{label}{rel}: {what}")

    if not root.is_dir() or root.is_symlink():
        return touched
    for top, dirs, names, dfd in os.fwalk(root, follow_symlinks=False):
        for n in sorted(dirs) + sorted(names):
            rel = os.path.relpath(os.path.join(top, n), root)
            try:
                st = os.lstat(n, dir_fd=dfd)
            except OSError:
                continue
            mode = st.st_mode
            if stat.S_ISLNK(mode):
                continue
            try:
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                    os.unlink(n, dir_fd=dfd)
                    said(rel, f"a {_kind(mode)} left by the run: removed")
                elif mode & (stat.S_ISUID | stat.S_ISGID):
                    # fchmodat on a name just seen not to be a link; the writer is gone by now
                    os.chmod(n, stat.S_IMODE(mode) & ~(stat.S_ISUID | stat.S_ISGID), dir_fd=dfd)
                    said(rel, "setuid/setgid bit left by the run: cleared")
            except OSError as e:
                said(rel, f"a {_kind(mode)} with privileges that could not be removed ({e.strerror})")
    if len(touched) > limit:
        warn(f"{label}... and {len(touched) - limit} more")
    return touched


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device file"
    return "file" if stat.S_ISREG(mode) else "folder"
