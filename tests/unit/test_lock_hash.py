"""The hash line of a lock file: which environment hash a lock was written for (a reuse of
another hash's image rewrites it). Read as any lock is read: a regular file, bounded."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ml_env_tasks.build.lockfile import lock_hash
from ml_env_tasks.spec.pins import LOCK_HEADER, lock_packages

H = "ab" * 32


def test_the_hash_line_is_read_and_checked(tmp_path: Path) -> None:
    f = tmp_path / "env.lock"
    f.write_text(f"{LOCK_HEADER}# environment: x\n# hash: {H}\nsix==1.16.0\n")
    assert lock_hash(f) == H
    assert lock_packages(f.read_text()) == {"six": "1.16.0"}  # a comment: --locked hashes no more than before
    f.write_text(f"{LOCK_HEADER}# environment: x\nsix==1.16.0\n")
    assert lock_hash(f) is None  # an older lock names no hash: left as it is
    f.write_text(f"{LOCK_HEADER}# environment: x\n# hash: {H[:-1]}Z\n")
    assert lock_hash(f) is None
    assert lock_hash(tmp_path / "missing.lock") is None


def test_a_fifo_where_the_lock_goes_is_no_lock_and_never_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "env.lock"
    os.mkfifo(fifo)
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(lock_hash(fifo)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive() and got == [None]


def test_a_folder_where_the_lock_goes_is_said_before_any_build(tmp_path: Path) -> None:
    """Not an internal error (exit 70) at the end of a build: one line naming it, exit 2."""
    import subprocess
    import sys

    (tmp_path / "env.toml").write_text('name = "x"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    (tmp_path / "env.lock").mkdir()
    assert lock_hash(tmp_path / "env.lock") is None
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "build", str(tmp_path / "env.toml")],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "ML_ENV_REGISTRY": ""})  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"ml-env: error: {tmp_path / 'env.lock'}: is a folder where the build writes the lock (remove or rename it)"
    ]
