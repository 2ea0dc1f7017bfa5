"""install.sh's checks of the shared tool cache, run by the runner's own interpreter with ``-I``
(nothing of the cache, the working directory or the environment is imported): a cache entry is
trusted only when this user made it, nobody else can write to it, and it still hashes to what
its ``.complete`` marker recorded when it was installed.

    cache_tree.py safe DIR    exit 0 when DIR is a real folder of this user, not group/world-writable
    cache_tree.py seal DIR    write DIR/.complete: the hash of everything under DIR
    cache_tree.py verify DIR  exit 0 when every entry under DIR is this user's, not group/world-
                              writable, and the tree hashes to what DIR/.complete says

The hash covers every entry's relative path, type, permission bits and content (a symbolic
link's target, never followed), so a planted ``bin/python``, a ``.pth`` file or a changed
module makes a cache entry untrusted. Exit 1: not trusted (the reason on stderr); 2: usage.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys

MARKER = ".complete"
PREFIX = "ml-env-tasks-tree sha256:"


def owned(path: str, st: os.stat_result) -> str | None:
    """Why ``path`` is not to be trusted, or None."""
    if st.st_uid != os.getuid():
        return f"{path} belongs to uid {st.st_uid}, not {os.getuid()}"
    if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o022:
        return f"{path} can be written by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def safe(folder: str) -> str | None:
    try:
        st = os.lstat(folder)
    except OSError as e:
        return f"{folder}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a folder"
    return owned(folder, st)


def tree_hash(root: str, *, check: bool) -> tuple[str, str | None]:
    """The tree's hash, and (``check``) why an entry under it is not to be trusted."""
    h = hashlib.sha256()
    problem = None
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs) + sorted(files):
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            if rel == MARKER:
                continue
            st = os.lstat(path)
            if check and problem is None:
                problem = owned(path, st)
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            h.update(b"%o\0" % st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode("utf-8", "surrogateescape") + b"\0")
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                h.update(b"\0")
            elif not stat.S_ISDIR(st.st_mode):
                problem = problem or f"{path} is neither a file, a folder nor a link"
    return h.hexdigest(), problem


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("safe", "seal", "verify"):
        print(__doc__, file=sys.stderr)
        return 2
    verb, folder = argv
    problem = safe(folder)
    if verb == "seal" and problem is None:
        digest, problem = tree_hash(folder, check=True)
        if problem is None:
            with open(os.path.join(folder, MARKER), "w", encoding="ascii") as f:
                f.write(PREFIX + digest + "\n")
    elif verb == "verify" and problem is None:
        marker = os.path.join(folder, MARKER)
        try:
            st = os.lstat(marker)
            with open(marker, encoding="ascii") as f:
                recorded = f.read(200).strip() if stat.S_ISREG(st.st_mode) else ""
        except (OSError, UnicodeDecodeError):
            st, recorded = None, ""
        problem = owned(marker, st) if st is not None else f"{marker} is missing"
        if problem is None and not recorded.startswith(PREFIX):
            problem = f"{marker} records no hash (made by an older install.sh, or not by install.sh)"
        if problem is None:
            digest, problem = tree_hash(folder, check=True)
            if problem is None and recorded != PREFIX + digest:
                problem = f"{folder} does not hash to what {marker} recorded"
    if problem is not None:
        print(f"ml-env-tasks: not trusted: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
