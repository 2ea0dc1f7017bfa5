"""Files read bounded, written whole or not at all, and locks between processes on one machine.

``read_bounded`` is the one way a file a user or a repository names is read: opened without
blocking (a FIFO cannot hang it), refused unless it is a regular file (checked with ``fstat`` on
the opened descriptor, so a symlink to ``/dev/zero`` is caught), and read at most ``limit + 1``
bytes whatever ``st_size`` says (0 for a device), refused above ``limit``.

``write_atomic`` writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the folder: a reader sees the old file or the new one, never half of one,
even after a crash. ``locked`` is an exclusive ``flock`` on a lock file; ``on_wait`` is told
once when the lock is held by someone else, so a front can say what it is waiting for.
(``fcntl`` rather than the filelock package: its import alone costs ~50 ms, which the no-op
paths cannot afford.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import MlEnvError

__all__ = ["write_atomic", "locked", "read_bounded", "read_text_bounded"]


def read_bounded(
    path: str | os.PathLike[str], limit: int, *, error: type[MlEnvError], what: str = "file", shown: str | None = None
) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    A device, FIFO, socket or folder, or a file over ``limit`` bytes, is ``error`` naming the file
    (``shown``, else ``path``). OSError from opening or reading (not found, permission) is the
    caller's, which knows what a missing file means there."""
    where = shown if shown is not None else str(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a device, FIFO or socket"
            raise error(f"is {kind}, not a regular {what}: refused", file=where)
        chunks: list[bytes] = []
        got = 0
        while got <= limit:
            chunk = os.read(fd, min(limit + 1 - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > limit:
            raise error(f"over {limit} bytes (the {what} limit): refused", file=where)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text_bounded(
    path: str | os.PathLike[str], limit: int, *, error: type[MlEnvError], what: str = "file", shown: str | None = None
) -> str:
    """``read_bounded`` decoded as UTF-8; text that is not is ``error`` naming the file."""
    data = read_bounded(path, limit, error=error, what=what, shown=shown)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error("not UTF-8 text", file=shown if shown is not None else str(path)) from None


def write_atomic(path: Path, data: str | bytes, *, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


@contextlib.contextmanager
def locked(lock_file: Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing) for the ``with`` block."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
