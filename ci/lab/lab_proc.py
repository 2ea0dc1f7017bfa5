"""The lab's plumbing: where its state lives, running commands, the machine-wide lock, and the
processes the lab owns (started, found again and stopped by PID, checked against /proc so a
reused PID is never taken for the lab's), and the byte relay its own relay processes run."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

STATE = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab"))
RUN = STATE / "run"
ENV_JSON = RUN / "env.json"
# the lab's script (``lab.py``, beside this module): its relays run it, and no client path of
# the checkout it is in may be seen by the second engine
SCRIPT = Path(__file__).resolve().with_name("lab.py")
# each process the lab starts: the program it must be (checked in /proc, so a reused PID is
# never taken for ours)
PROGRAMS = {
    "dockerd": "dockerd",
    "registry-plain": "docker-registry",
    "registry-auth": "docker-registry",
    "remote-dockerd": "dockerd",
}
# the lab's own relays run this script under a Python (whichever interpreter ran `up`: a
# checkout's venv or the system's): ours when the command line names the relay
MARKERS = {"remote-forward": b"remote-forward", "buildkit-relay": b"buildkit-relay"}


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def run(cmd: list[str], *, check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    if not quiet:
        log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=check, text=True, **kw)


def ok(cmd: list[str], timeout: float = 60) -> bool:
    try:
        return (
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def output(cmd: list[str], timeout: float = 60) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd[:3])}: no answer in {timeout:.0f}s"
    return p.returncode, (p.stdout + p.stderr).strip()


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """`up` and `down` from two checkouts at once take turns."""
    RUN.mkdir(parents=True, exist_ok=True)
    with open(RUN / "lab.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _error_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for x in lines:
        if "error" in x.lower():
            return x[:300]
    return lines[-1][:300] if lines else "failed"


# --- processes the lab owns ---------------------------------------------------------------


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(name: str) -> int | None:
    """The PID of a process the lab started, if it still runs and is still that program."""
    try:
        pid = int((RUN / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    if not pid_alive(pid):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    argv0 = cmdline.split(b"\0")[0].decode(errors="replace")
    if name in MARKERS:
        ours = MARKERS[name] in cmdline.split(b"\0") and Path(argv0).name.startswith("python")
        return pid if ours else None
    return pid if Path(argv0).name == PROGRAMS[name] else None


def start(name: str, cmd: list[str]) -> int:
    RUN.mkdir(parents=True, exist_ok=True)
    logf = open(RUN / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    (RUN / f"{name}.pid").write_text(str(proc.pid))
    log(f"started {name} (pid {proc.pid}): {' '.join(cmd)}")
    return proc.pid


def stop(name: str) -> None:
    pid = read_pid(name)
    if pid is None:
        (RUN / f"{name}.pid").unlink(missing_ok=True)
        return
    log(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    (RUN / f"{name}.pid").unlink(missing_ok=True)


def wait_for(what: str, probe, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise SystemExit(f"[lab] {what} did not come up within {timeout:.0f}s; see {RUN}")


def _pipe(a: socket.socket, b: socket.socket) -> None:
    """Bytes from ``a`` to ``b`` until ``a`` ends; then ``b`` is told no more is coming."""
    try:
        while data := a.recv(1 << 16):
            b.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            b.shutdown(socket.SHUT_WR)
