"""What a parsed environment file amounts to, remembered: a no-op build, a ``hash`` or a run of an
unchanged environment need not parse it (or load the parsers) again.

An entry, in the user cache, is keyed by the file's real path and ``--locked``; it holds the
environment's name, hash and the few facts the fast paths need, and the identity (size,
modification time, inode, device) of every file the parse read — the spec, requirements,
conda file, Dockerfile, wheels, lock — and of the modules that decide the hash. Any difference,
any doubt (a file modified in the last seconds), means parsing again. ``--pin-base`` always
parses (the base tag may have moved).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..safe.digests import cache_dir

__all__ = ["Summary", "lookup", "store"]

RACY_SECONDS = 2.0
# the modules whose code decides an environment's hash or its fast-path facts
_CODE = ("spec/hashing.py", "spec/validate.py", "spec/environment.py", "build/stack.py", "build/dockerfile.py",
         "spec/conda.py", "spec/dockerlint.py", "build/speccache.py", "serve/server.py", "build/split.py")  # fmt: skip


@dataclass(frozen=True)
class Summary:
    name: str
    hash: str
    python: str | None  # the interpreter the packages are installed for
    interpreter: str
    inference: bool
    inference_server: str
    shm_size: str | None
    unpinned: tuple[str, ...]
    warnings: tuple[str, ...]
    base: str | None = None  # base.image when it is a tag (not pinned): a reuse checks whether it moved


def _ident(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _code_stamp() -> list[Any]:
    here = Path(__file__).resolve().parents[1]  # ml_env_tasks/
    return [_ident(str(here / name)) for name in _CODE]


def _entry_path(spec: Path, locked: bool) -> Path:
    key = hashlib.sha256(f"{os.path.realpath(spec)}\0{int(locked)}".encode()).hexdigest()
    return cache_dir() / "specs" / f"{key[:40]}.json"


def lookup(spec: str | Path, *, locked: bool) -> Summary | None:
    """The remembered summary of an environment file, if every file it was made from is unchanged."""
    try:
        entry = json.loads(_entry_path(Path(spec), locked).read_bytes())
        if entry.get("code") != _code_stamp():
            return None
        for path, ident in entry["files"]:
            if _ident(path) != ident:
                return None
        s = entry["summary"]
        return Summary(
            str(s["name"]), str(s["hash"]), s.get("python"), str(s["interpreter"]), bool(s["inference"]),
            str(s["inference_server"]), s.get("shm_size"), tuple(s["unpinned"]), tuple(s["warnings"]), s.get("base"),
        )  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(env: Any, h: str, python: str | None, *, locked: bool) -> None:
    """Remember an environment just parsed (``env``: an Environment), unless a file it was read
    from changed too recently to trust its timestamp."""
    files = [str(env.path.resolve())]
    refs = [*env.requirements, *env.wheels]
    refs += [r for r in (env.conda_file, env.base.dockerfile, env.lock) if r is not None]
    files += [str(r.real) for r in refs]
    idents = [_ident(f) for f in files]
    now = time.time()
    if any(i is None or now - i[1] / 1e9 < RACY_SECONDS for i in idents):
        return
    summary = {
        "name": env.name,
        "hash": h,
        "python": python,
        "interpreter": env.interpreter,
        "inference": env.inference,
        "inference_server": env.inference_server,
        "shm_size": env.shm_size,
        "unpinned": list(env.unpinned),
        "warnings": list(env.warnings),
        "base": env.base.image if env.base.image and env.base.digest is None and "@" not in env.base.image else None,
    }
    path = _entry_path(env.path, locked)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"code": _code_stamp(), "files": [[f, i] for f, i in zip(files, idents, strict=True)],
                                   "summary": summary}))  # fmt: skip
        os.replace(tmp, path)
