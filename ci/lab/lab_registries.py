"""The lab's two registries (``docker-registry`` processes on 127.0.0.1: :5000 plain, :5001 with
htpasswd auth), the private parts of the state folder and the auth registry's credentials."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from lab_proc import RUN, STATE, run, start, wait_for

PLAIN_PORT = 5000
AUTH_PORT = 5001


# --- registries ---------------------------------------------------------------------------


def registry_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2)
        return True
    except urllib.error.HTTPError as e:  # 401 from the auth registry is an answer
        return e.code == 401
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# what only root may read: the auth registry's storage (its images are what the password
# guards), its password file and the credentials; made so, and made so again on each `up`
# (state written by an older lab was world-readable)
PRIVATE_DIRS = ("registry-auth",)
PRIVATE_FILES = ("auth.json", "htpasswd")


def _write_private(path: Path, text: str) -> None:
    """A file only its owner can read, from its first byte (never a world-readable moment)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    tmp.chmod(0o600)  # one left by an interrupted write keeps its mode through O_CREAT
    tmp.replace(path)


def secure_state(state: Path | None = None) -> None:
    """The state folder's private parts: folders 0700, files 0600, whether new or found."""
    state = state or STATE
    state.mkdir(parents=True, exist_ok=True)
    for name in PRIVATE_DIRS:
        d = state / name
        d.mkdir(mode=0o700, exist_ok=True)
        d.chmod(0o700)
    for name in PRIVATE_FILES:
        f = state / name
        if f.is_symlink():
            raise SystemExit(f"[lab] {f} is a symbolic link: remove it and run `lab.py up` again")
        if f.exists():
            f.chmod(0o600)


def auth_credentials() -> tuple[str, str]:
    secure_state()
    path = STATE / "auth.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["user"], data["password"]
    user, password = "mlenv", secrets.token_urlsafe(18)
    _write_private(path, json.dumps({"user": user, "password": password}))
    return user, password


def start_registry(name: str, port: int, htpasswd: Path | None) -> None:
    if registry_answers(port):
        return
    if port_in_use(port):
        raise SystemExit(f"[lab] port 127.0.0.1:{port} is taken by something that is not a registry")
    storage = STATE / f"registry-{name}"
    storage.mkdir(parents=True, exist_ok=True)
    if storage.name in PRIVATE_DIRS:
        storage.chmod(0o700)
    lines = [
        "version: 0.1",
        "log: {level: warn}",
        "storage:",
        f"  filesystem: {{rootdirectory: {storage}}}",
        "  delete: {enabled: true}",
        f"http: {{addr: '127.0.0.1:{port}'}}",
    ]
    if htpasswd is not None:
        lines.append(f"auth: {{htpasswd: {{realm: ml-env-lab, path: {htpasswd}}}}}")
    cfg = RUN / f"registry-{name}.yml"
    cfg.write_text("\n".join(lines) + "\n")
    start(f"registry-{name}", ["docker-registry", "serve", str(cfg)])
    wait_for(f"registry {name} on :{port}", lambda: registry_answers(port), 30)


def docker_login(user: str, password: str) -> None:
    for host in (f"127.0.0.1:{AUTH_PORT}", f"localhost:{AUTH_PORT}"):
        run(
            ["docker", "login", host, "--username", user, "--password-stdin"],
            input=password,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            quiet=True,
        )
