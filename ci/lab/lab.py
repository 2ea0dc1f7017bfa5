#!/usr/bin/env python3
"""The lab: a real Docker engine with BuildKit, two local registries and base images.

One lab per machine. Usage (as root, on Debian bookworm), from any checkout:
    python3 ci/lab/lab.py up      # idempotent; checks what tests need and heals what it can
    python3 ci/lab/lab.py status  # the same health check, no changes; exit 1 when unhealthy
    python3 ci/lab/lab.py down    # stops what the lab started, by PID
    python3 ci/lab/lab.py pristine-image  # a local image of a pristine bookworm (quick start test)
    python3 ci/lab/lab.py remote-up   # the second, remote engine alone (``up`` starts it too)
    python3 ci/lab/lab.py remote-down # stops the second engine alone, by PID

A buildx builder of the ``remote`` driver (``ml-env-lab-remote-builder``) is registered too: its
BuildKit is the engine's own, reached through a relay process on a unix socket (the socket
upgrades each connection to the engine's BuildKit API, as buildx's docker driver does). No
standalone buildkitd can be fetched here (its image lives on Docker Hub), and to buildx this is
a remote builder like any other: nothing it builds lands in the engine unless it is loaded.

Only the standard library is used: this runs before the project's dependencies exist.
What it does and why is written up in the README ("The lab"). Facts behind each step:
an engine from Debian trixie's packages on bookworm (bookworm's BuildKit only exports
the inline cache), the containerd image store (so the docker driver exports registry and
local caches), Debian's docker-registry as plain processes on 127.0.0.1, and base images
built locally (no Docker Hub is reachable).

All state is machine-wide, under /var/lib/ml-env-lab/ (``ML_ENV_LAB_STATE``): registry
storage, the auth registry's password, cached root file systems, and in ``run/`` the PID
files, daemon config, logs and ``env.json``. The auth registry's storage is 0700, its password
files 0600 (``secure_state``, applied to a state found too, on each ``up``). Any checkout sees,
checks, heals and stops the same engine and registries; deleting the checkout that started them
loses nothing.

The Debian mirror (for debootstrap and the extra trixie source) is read from this machine's
own apt configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

STATE = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab"))
RUN = STATE / "run"
ENV_JSON = RUN / "env.json"
PLAIN_PORT = 5000
AUTH_PORT = 5001
BASE_PYTHON = f"127.0.0.1:{PLAIN_PORT}/base/debian-python:bookworm"
BASE_TINY = f"127.0.0.1:{PLAIN_PORT}/base/busybox:1"
# the public name the shipped environments use; the engine pulls Docker Hub names through
# the plain registry (its mirror), where the lab keeps BASE_PYTHON under this name too
PUBLIC_PYTHON = "python:3.11-slim-bookworm"
PUBLIC_PYTHON_MIRRORED = f"127.0.0.1:{PLAIN_PORT}/library/{PUBLIC_PYTHON}"
# the machine's ml-env config (platformdirs' site_config_dir): what builds on this machine need
SITE_CONFIG = Path(os.environ.get("ML_ENV_SITE_CONFIG") or "/etc/xdg/ml-env/config.toml")
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
APT_PACKAGES_TRIXIE = ["docker.io/trixie", "docker-cli/trixie", "containerd/trixie", "docker-buildx/trixie"]
APT_PACKAGES = ["docker-registry", "skopeo", "debootstrap", "apache2-utils", "busybox-static", "iproute2"]
# what the lab's dockerd runs with: the containerd image store, and the plain registry as a
# mirror of Docker Hub names (so `FROM python:3.11-slim-bookworm` resolves to the lab's stand-in)
DAEMON_CONFIG = {
    "features": {"containerd-snapshotter": True},
    "registry-mirrors": [f"http://127.0.0.1:{PLAIN_PORT}"],
}
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


# --- the machine's Debian mirror ----------------------------------------------------------


def codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return "bookworm"


def apt_sources(root: Path = Path("/etc/apt")) -> list[tuple[str, list[str], list[str]]]:
    """(URI, suites, components) of every `deb` source this machine's apt uses (one-line and deb822)."""
    out: list[tuple[str, list[str], list[str]]] = []
    files = [root / "sources.list"] + sorted((root / "sources.list.d").glob("*"))
    for f in files:
        if not f.is_file() or f.name.startswith("ml-env-lab"):
            continue
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".list" or f.name == "sources.list":
            for raw in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", raw.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    out.append((words[1], [words[2]], words[3:]))
        elif f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    k, v = line.split(":", 1)
                    fields[k.strip().lower()] = v.strip()
                if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
                    continue
                for uri in fields.get("uris", "").split():
                    out.append((uri, fields.get("suites", "").split(), fields.get("components", "").split()))
    return out


def debian_mirror(root: Path = Path("/etc/apt")) -> str:
    """The mirror this machine's apt gets its release's `main` from (not the security archive)."""
    if os.environ.get("ML_ENV_LAB_MIRROR"):
        return os.environ["ML_ENV_LAB_MIRROR"].rstrip("/")
    name = codename()
    for uri, suites, components in apt_sources(root):
        if name in suites and "main" in components and uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
    raise SystemExit(
        f"[lab] no apt source for {name} main found in /etc/apt (sources.list, sources.list.d); "
        "set ML_ENV_LAB_MIRROR to a Debian mirror URL"
    )


# --- engine -------------------------------------------------------------------------------


def engine_up() -> bool:
    return ok(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)


def install_packages() -> None:
    need_engine = not (shutil.which("dockerd") and Path("/usr/libexec/docker/cli-plugins/docker-buildx").exists())
    need_tools = [p for p in ["docker-registry", "skopeo", "debootstrap", "htpasswd", "busybox"] if not shutil.which(p)]
    if not need_engine and not need_tools:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    trixie = Path("/etc/apt/sources.list.d/ml-env-lab-trixie.list")
    if need_engine and not trixie.exists():
        trixie.write_text(
            f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {debian_mirror()} trixie main\n"
        )
        Path("/etc/apt/preferences.d/ml-env-lab-trixie-low").write_text(
            "Package: *\nPin: release n=trixie\nPin-Priority: 100\n"
        )
    run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
    pkgs = (APT_PACKAGES_TRIXIE if need_engine else []) + APT_PACKAGES
    # policy-rc.d keeps the packages' init scripts from starting a dockerd we did not start
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs], env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            policy.unlink()


def daemon_config_path() -> Path:
    return RUN / "daemon.json"


def config_current() -> bool:
    """The running lab dockerd was started with the config this version of the lab wants."""
    try:
        return json.loads(daemon_config_path().read_text()) == DAEMON_CONFIG
    except (OSError, ValueError):
        return False


def start_engine() -> None:
    install_packages()
    # our own daemon config, so we never depend on (or change) /etc/docker/daemon.json
    cfg = daemon_config_path()
    cfg.write_text(json.dumps(DAEMON_CONFIG, indent=2))
    start("dockerd", ["dockerd", "--config-file", str(cfg), "--pidfile", str(RUN / "dockerd.self.pid")])
    wait_for("dockerd", engine_up, 90)


def restart_engine(why: str) -> None:
    log(f"restarting the lab's dockerd: {why}")
    stop("dockerd")
    start_engine()


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


# --- base images --------------------------------------------------------------------------


def in_registry(ref: str) -> bool:
    host, rest = ref.split("/", 1)
    repo, tag = rest.rsplit(":", 1)
    req = urllib.request.Request(
        f"http://{host}/v2/{repo}/manifests/{tag}",
        method="HEAD",
        headers={
            "Accept": "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json"
        },
    )
    try:
        urllib.request.urlopen(req, timeout=5)
        return True
    except OSError:
        return False


def import_and_push(rootfs_tar: Path, ref: str, changes: list[str]) -> None:
    cmd = ["docker", "import"]
    for c in changes:
        cmd += ["--change", c]
    run(cmd + [str(rootfs_tar), ref], stdout=subprocess.DEVNULL)
    run(["docker", "push", "-q", ref], stdout=subprocess.DEVNULL)


def debootstrap_tar(cache: Path, include: str, what: str) -> None:
    """A minbase bookworm root file system with ``include``, as a tar cached at ``cache``; apt
    inside it talks plain http to this machine's mirror, and its package caches are emptied."""
    if cache.exists():
        return
    mirror = debian_mirror()
    rootfs = cache.with_suffix(".rootfs")
    shutil.rmtree(rootfs, ignore_errors=True)
    log(f"debootstrap {what} (about a minute)")
    run(["debootstrap", "--variant=minbase", f"--include={include}", "bookworm", str(rootfs), mirror],
        stdout=subprocess.DEVNULL)  # fmt: skip
    (rootfs / "etc/apt/sources.list").write_text(f"deb {mirror} bookworm main\n")
    for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for f in (rootfs / sub).glob("*"):
            if f.is_file():
                f.unlink()
    tmp = cache.with_suffix(".tmp")
    run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."], quiet=True)
    tmp.rename(cache)
    shutil.rmtree(rootfs, ignore_errors=True)


def base_python() -> None:
    if in_registry(BASE_PYTHON):
        return
    cache = STATE / "debian-python-bookworm.tar"
    debootstrap_tar(cache, "python3,python3-venv,python3-pip,ca-certificates", "bookworm with python3")
    import_and_push(
        cache,
        BASE_PYTHON,
        [
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["python3"]',
        ],
    )


def public_python() -> None:
    """BASE_PYTHON under the official image's name, byte for byte (the same digest)."""
    if in_registry(PUBLIC_PYTHON_MIRRORED):
        return
    run(
        ["skopeo", "copy", "-q", "--src-tls-verify=false", "--dest-tls-verify=false",
         f"docker://{BASE_PYTHON}", f"docker://{PUBLIC_PYTHON_MIRRORED}"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip


def write_site_config() -> None:
    """The machine's ml-env config: builds here use the host network (the package proxy is on
    it) and the host's CA bundle. Keys someone else wrote are kept; ours are replaced."""
    ours = {"network": "host"}
    if Path(HOST_CA).exists():
        ours["ca_bundle"] = HOST_CA
    kept = []
    if SITE_CONFIG.exists():
        for line in SITE_CONFIG.read_text().splitlines():
            key = line.split("=", 1)[0].strip()
            if line.startswith("#") or key not in ours:
                kept.append(line)
    body = "\n".join(x for x in kept if x.strip() and not x.startswith("# written by"))
    text = "# written by the ml-env lab (ci/lab/lab.py): what builds on this machine need\n"
    text += "".join(f'{k} = "{v}"\n' for k, v in ours.items()) + (body + "\n" if body else "")
    SITE_CONFIG.parent.mkdir(parents=True, exist_ok=True)
    tmp = SITE_CONFIG.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(SITE_CONFIG)


def base_tiny() -> None:
    if in_registry(BASE_TINY):
        return
    busybox = shutil.which("busybox")
    if busybox is None:
        raise SystemExit("[lab] busybox (package busybox-static) is missing")
    rootfs = STATE / "rootfs-busybox"
    shutil.rmtree(rootfs, ignore_errors=True)
    (rootfs / "bin").mkdir(parents=True)
    for d in ("tmp", "etc", "root"):
        (rootfs / d).mkdir()
    (rootfs / "tmp").chmod(0o1777)
    shutil.copy2(busybox, rootfs / "bin/busybox")
    out = run([busybox, "--list"], capture_output=True, quiet=True).stdout.split()
    for applet in out:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    tar = STATE / "busybox.tar"
    run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], quiet=True)
    import_and_push(tar, BASE_TINY, ["ENV PATH=/bin", 'CMD ["sh"]'])
    shutil.rmtree(rootfs, ignore_errors=True)
    tar.unlink()


def pristine_image() -> str:
    """A local image of a pristine Debian bookworm as a server has it: python3 and nothing for
    Python packaging (no pip, no venv module). For the test of the README's quick start; built
    on demand (debootstrap, about a minute, cached under STATE), never pushed."""
    ref = "ml-env-lab/pristine-bookworm:python3"
    if ok(["docker", "image", "inspect", ref]):
        return ref
    cache = STATE / "debian-bookworm-pristine.tar"
    debootstrap_tar(cache, "python3", "a pristine bookworm with python3")
    run(["docker", "import", "--change", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "--change", "ENV LANG=C.UTF-8", str(cache), ref], stdout=subprocess.DEVNULL)  # fmt: skip
    return ref


# --- the second, remote engine -------------------------------------------------------------
#
# A dockerd that is "another machine" as far as the client can tell: it runs in its own network
# namespace (a veth pair, REMOTE_NS_IP on its side, REMOTE_HOST_IP on the host's) and its own
# mount namespace (tmpfs over /tmp, /root, /home, /work, /run/containerd and the lab's state, its
# data root bound back in), so no client path exists there. It listens only on
# tcp://REMOTE_NS_IP:2376 with TLS and client certificates (a CA, server and client certs made
# here with openssl) and is registered as the docker context REMOTE_CONTEXT.
#
# The registries stay as they are (127.0.0.1 on the host). Inside the namespace 127.0.0.1:5000
# and :5001 are answered by a small relay the lab runs (``remote-forward``: its listening
# sockets are made inside the namespace, its outgoing connections in the host's), so image names
# are the same on both engines and the same daemon config (mirror, containerd store) resolves
# the same base images. Other traffic leaves the namespace through NAT (a lab-owned iptables
# chain), so builds there reach PyPI and the Debian mirror as builds on the first engine do.

REMOTE = STATE / "remote"
REMOTE_TLS = REMOTE / "tls"
REMOTE_CERTS = REMOTE_TLS / "client"  # DOCKER_CERT_PATH layout: ca.pem, cert.pem, key.pem
REMOTE_NETNS = "ml-env-lab-remote"
REMOTE_CONTEXT = "ml-env-lab-remote"
REMOTE_HOST_IF, REMOTE_NS_IF = "mlenv-r0", "mlenv-r1"
REMOTE_SUBNET = "10.87.213.0/30"
REMOTE_HOST_IP, REMOTE_NS_IP = "10.87.213.1", "10.87.213.2"
REMOTE_PORT = 2376
REMOTE_URL = f"tcp://{REMOTE_NS_IP}:{REMOTE_PORT}"
REMOTE_EXEC_ROOT = "/run/ml-env-lab-remote"
REMOTE_CHAIN = "ML-ENV-LAB-REMOTE"
REMOTE_FORWARDED = (PLAIN_PORT, AUTH_PORT)
REMOTE_DAEMON_CONFIG = {**DAEMON_CONFIG, "cgroup-parent": "ml-env-lab-remote"}
# what the second engine must not see: client working trees and the lab's own secrets
REMOTE_HIDDEN = ("/tmp", "/root", "/home", "/work", "/run/containerd")
# system trees the engine needs; a checkout under one of them is hidden by itself, elsewhere by
# its top-level folder (a CI checkout in /check/work/x hides /check: its sibling clones too)
_SYSTEM_TOPS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "opt", "proc", "run", "sbin",
                "srv", "sys", "usr", "var", "mnt", "media"}  # fmt: skip


def remote_hidden() -> list[str]:
    checkout = Path(__file__).resolve().parents[2]
    top = Path("/", *checkout.parts[1:2])
    extra = str(checkout) if top.name in _SYSTEM_TOPS or top == Path("/") else str(top)
    return sorted({*REMOTE_HIDDEN, extra})


def remote_tls() -> None:
    """The CA, the server's certificate (for REMOTE_NS_IP) and the client's, kept while valid."""
    server, client = REMOTE_TLS / "server", REMOTE_CERTS
    wanted = [REMOTE_TLS / "ca-key.pem", *(d / f for d in (server, client) for f in ("ca.pem", "cert.pem", "key.pem"))]
    if all(f.exists() for f in wanted) and all(
        ok(["openssl", "x509", "-checkend", "86400", "-noout", "-in", str(d / "cert.pem")]) for d in (server, client)
    ):
        return
    log(f"making the remote engine's CA and certificates in {REMOTE_TLS}")
    shutil.rmtree(REMOTE_TLS, ignore_errors=True)
    for d in (REMOTE_TLS, server, client):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o700)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_key, ca = REMOTE_TLS / "ca-key.pem", REMOTE_TLS / "ca.pem"
    run(["openssl", "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "3650",
         "-subj", "/CN=ml-env lab remote CA"], quiet=True, capture_output=True)  # fmt: skip
    for d, cn, ext in (
        (server, "ml-env-lab-remote", f"subjectAltName=IP:{REMOTE_NS_IP},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        (client, "ml-env-lab-client", "extendedKeyUsage=clientAuth\n"),
    ):
        (d / "ext.cnf").write_text(ext)
        run(["openssl", "req", *ec, "-keyout", str(d / "key.pem"), "-out", str(d / "req.csr"), "-subj", f"/CN={cn}"],
            quiet=True, capture_output=True)  # fmt: skip
        run(["openssl", "x509", "-req", "-in", str(d / "req.csr"), "-CA", str(ca), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(d / "cert.pem"), "-days", "825", "-extfile", str(d / "ext.cnf")],
            quiet=True, capture_output=True)  # fmt: skip
        shutil.copy(ca, d / "ca.pem")
        for f in ("req.csr", "ext.cnf"):
            (d / f).unlink()
        (d / "key.pem").chmod(0o600)
    ca_key.chmod(0o600)


def _netns_ip(*args: str) -> list[str]:
    return ["ip", "netns", "exec", REMOTE_NETNS, *args]


def remote_network() -> None:
    """The namespace, the veth pair and its addresses, a default route out, NAT; each step only
    when missing."""
    if REMOTE_NETNS not in output(["ip", "netns", "list"])[1].split():
        run(["ip", "netns", "add", REMOTE_NETNS])
    if not Path(f"/sys/class/net/{REMOTE_HOST_IF}").exists():
        # a route to the lab's subnet through anything else is someone else's network
        code, routes = output(["ip", "-4", "route", "show", "to", "match", REMOTE_HOST_IP])
        if any(REMOTE_SUBNET in line for line in routes.splitlines()):
            raise SystemExit(f"[lab] {REMOTE_SUBNET} is already routed on this machine: {routes}")
        ok(_netns_ip("ip", "link", "del", REMOTE_NS_IF))
        run(["ip", "link", "add", REMOTE_HOST_IF, "type", "veth", "peer", "name", REMOTE_NS_IF, "netns", REMOTE_NETNS])
    prefix = REMOTE_SUBNET.split("/")[1]
    if f"{REMOTE_HOST_IP}/" not in output(["ip", "-4", "-br", "addr", "show", REMOTE_HOST_IF])[1]:
        run(["ip", "addr", "add", f"{REMOTE_HOST_IP}/{prefix}", "dev", REMOTE_HOST_IF])
    run(["ip", "link", "set", REMOTE_HOST_IF, "up"], quiet=True)
    if f"{REMOTE_NS_IP}/" not in output(_netns_ip("ip", "-4", "-br", "addr", "show", REMOTE_NS_IF))[1]:
        run(_netns_ip("ip", "addr", "add", f"{REMOTE_NS_IP}/{prefix}", "dev", REMOTE_NS_IF))
    run(_netns_ip("ip", "link", "set", REMOTE_NS_IF, "up"), quiet=True)
    run(_netns_ip("ip", "link", "set", "lo", "up"), quiet=True)
    if "default" not in output(_netns_ip("ip", "-4", "route", "show", "default"))[1]:
        run(_netns_ip("ip", "route", "add", "default", "via", REMOTE_HOST_IP))
    # forwarding out of the namespace: the first engine leaves FORWARD's policy at DROP, so the
    # subnet gets its own chain (jumped to first) and a MASQUERADE rule; nothing else is touched
    if not ok(["iptables", "-w", "-n", "-L", REMOTE_CHAIN]):
        run(["iptables", "-w", "-N", REMOTE_CHAIN])
    for rule in (["-s", REMOTE_SUBNET, "-j", "ACCEPT"], ["-d", REMOTE_SUBNET, "-m", "conntrack", "--ctstate",
                                                         "RELATED,ESTABLISHED", "-j", "ACCEPT"]):  # fmt: skip
        if not ok(["iptables", "-w", "-C", REMOTE_CHAIN, *rule]):
            run(["iptables", "-w", "-A", REMOTE_CHAIN, *rule])
    if not ok(["iptables", "-w", "-C", "FORWARD", "-j", REMOTE_CHAIN]):
        run(["iptables", "-w", "-I", "FORWARD", "1", "-j", REMOTE_CHAIN])
    masq = ["POSTROUTING", "-s", REMOTE_SUBNET, "!", "-o", REMOTE_HOST_IF, "-j", "MASQUERADE"]
    if not ok(["iptables", "-w", "-t", "nat", "-C", *masq]):
        run(["iptables", "-w", "-t", "nat", "-A", *masq])


def remote_network_down() -> None:
    ok(["ip", "link", "del", REMOTE_HOST_IF])
    ok(["ip", "netns", "del", REMOTE_NETNS])
    ok(["iptables", "-w", "-t", "nat", "-D", "POSTROUTING", "-s", REMOTE_SUBNET, "!", "-o", REMOTE_HOST_IF,
        "-j", "MASQUERADE"])  # fmt: skip
    while ok(["iptables", "-w", "-D", "FORWARD", "-j", REMOTE_CHAIN]):
        pass
    ok(["iptables", "-w", "-F", REMOTE_CHAIN])
    ok(["iptables", "-w", "-X", REMOTE_CHAIN])


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


def forward_main() -> int:
    """``remote-forward``: the lab's registries inside the remote engine's namespace. Listening
    sockets are made there (setns), then this process goes back to the host's namespace, where
    each accepted connection is relayed to 127.0.0.1 on the same port."""
    import ctypes
    import threading

    clone_newnet = 0x40000000
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{REMOTE_NETNS}", os.O_RDONLY)
    if libc.setns(there, clone_newnet) != 0:
        raise SystemExit(f"[lab] setns into {REMOTE_NETNS}: {os.strerror(ctypes.get_errno())}")
    listeners = []
    for port in REMOTE_FORWARDED:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        listeners.append((s, port))
    if libc.setns(home, clone_newnet) != 0:
        raise SystemExit(f"[lab] setns back: {os.strerror(ctypes.get_errno())}")

    def serve(listener: socket.socket, port: int) -> None:
        while True:
            conn, _ = listener.accept()
            try:
                up_ = socket.create_connection(("127.0.0.1", port), timeout=10)
                up_.settimeout(None)
            except OSError:
                conn.close()
                continue
            for a, b in ((conn, up_), (up_, conn)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    threads = [threading.Thread(target=serve, args=lp, daemon=True) for lp in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return 0


# --- a remote-driver builder ---------------------------------------------------------------

RELAY_BUILDER = "ml-env-lab-remote-builder"
RELAY_SOCKET = RUN / "buildkit.sock"
ENGINE_SOCKET = "/var/run/docker.sock"


def relay_main() -> int:
    """``buildkit-relay``: each connection to RELAY_SOCKET becomes one to the engine's BuildKit
    API (``POST /grpc`` upgraded to h2c, as buildx's docker driver dials it), bytes relayed both ways."""
    import threading

    def handle(conn: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        try:
            engine.connect(ENGINE_SOCKET)
            engine.sendall(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                           b"Content-Length: 0\r\n\r\n")  # fmt: skip
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                got = engine.recv(1)
                if not got:
                    break
                head += got
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise OSError(f"the engine did not upgrade: {head[:80]!r}")
        except OSError as e:
            print(f"[lab] buildkit relay: {e}", file=sys.stderr, flush=True)
            conn.close()
            engine.close()
            return
        threading.Thread(target=_pipe, args=(conn, engine), daemon=True).start()
        _pipe(engine, conn)

    RELAY_SOCKET.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(RELAY_SOCKET))
    RELAY_SOCKET.chmod(0o600)
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def relay_builder_health() -> tuple[bool, str]:
    code, text = output(["docker", "buildx", "inspect", RELAY_BUILDER, "--bootstrap"], timeout=60)
    driver = re.search(r"Driver:\s*(\S+)", text)
    status = re.search(r"Status:\s*(\S+)", text)
    good = code == 0 and bool(driver and driver.group(1) == "remote" and status and status.group(1) == "running")
    return good, (f"{RELAY_BUILDER}: driver remote, {RELAY_SOCKET}" if good else _error_line(text))


def ensure_relay_builder() -> None:
    """The relay process and the builder, each started or made again only when missing or wrong."""
    if read_pid("buildkit-relay") is None or not RELAY_SOCKET.exists():
        stop("buildkit-relay")
        start("buildkit-relay", [sys.executable, str(Path(__file__).resolve()), "buildkit-relay"])
        wait_for("the BuildKit relay's socket", RELAY_SOCKET.exists, 15)
    code, text = output(["docker", "buildx", "inspect", RELAY_BUILDER])
    if code == 0 and f"unix://{RELAY_SOCKET}" in text:
        return
    if code == 0:
        ok(["docker", "buildx", "rm", RELAY_BUILDER])
    run(["docker", "buildx", "create", "--name", RELAY_BUILDER, "--driver", "remote", f"unix://{RELAY_SOCKET}"],
        stdout=subprocess.DEVNULL)  # fmt: skip


def relay_builder_down() -> None:
    ok(["docker", "buildx", "rm", RELAY_BUILDER])
    stop("buildkit-relay")
    RELAY_SOCKET.unlink(missing_ok=True)


def remote_forward_answers() -> bool:
    probe = f"import urllib.request as u, urllib.error as e\ntry: u.urlopen('http://127.0.0.1:{PLAIN_PORT}/v2/', timeout=3)\nexcept e.HTTPError: pass"  # fmt: skip
    return ok(_netns_ip(sys.executable, "-c", probe), timeout=15)


def remote_docker(*args: str) -> list[str]:
    """A docker CLI command on the remote engine through its TLS material (no context needed)."""
    return ["docker", "-H", REMOTE_URL, "--tlsverify", "--tlscacert", str(REMOTE_CERTS / "ca.pem"),
            "--tlscert", str(REMOTE_CERTS / "cert.pem"), "--tlskey", str(REMOTE_CERTS / "key.pem"), *args]  # fmt: skip


def remote_engine_up() -> bool:
    return ok(remote_docker("info", "--format", "{{.ServerVersion}}"), timeout=20)


def remote_config_current() -> bool:
    try:
        return json.loads((REMOTE / "daemon.json").read_text()) == REMOTE_DAEMON_CONFIG
    except (OSError, ValueError):
        return False


def start_remote_engine() -> None:
    cfg = REMOTE / "daemon.json"
    cfg.write_text(json.dumps(REMOTE_DAEMON_CONFIG, indent=2))
    (REMOTE / "data").mkdir(parents=True, exist_ok=True)
    keep, cgroup = f"{REMOTE_EXEC_ROOT}.keep", f"{REMOTE_EXEC_ROOT}.cgroup"
    # in the new mount namespace (private: nothing mounted there reaches the host): a sysfs of
    # its network namespace with the host's cgroup tree kept; the engine's own folder kept
    # aside, what it must not see hidden, its folder put back in place
    hide = " ".join(shlex.quote(d) for d in remote_hidden())
    script = (
        "set -e\n"
        f"mkdir -p {cgroup} && mount --rbind /sys/fs/cgroup {cgroup}\n"
        f"mount -t sysfs sysfs /sys && mount --move {cgroup} /sys/fs/cgroup\n"
        f"mkdir -p {keep} && mount --bind {REMOTE} {keep}\n"
        f'for d in {hide} {STATE}; do if [ -d "$d" ]; then mount -t tmpfs -o mode=0755,size=1g tmpfs "$d"; fi; done\n'
        f"mkdir -p {REMOTE} && mount --move {keep} {REMOTE}\n"
        "chmod 1777 /tmp\n"
        'exec "$@"\n'
    )
    server = REMOTE_TLS / "server"
    dockerd = [
        "dockerd", "--config-file", str(cfg), "--data-root", str(REMOTE / "data"), "--exec-root", REMOTE_EXEC_ROOT,
        "--pidfile", f"{REMOTE_EXEC_ROOT}.pid", "-H", f"tcp://{REMOTE_NS_IP}:{REMOTE_PORT}", "--tlsverify",
        "--tlscacert", str(server / "ca.pem"), "--tlscert", str(server / "cert.pem"),
        "--tlskey", str(server / "key.pem"),
    ]  # fmt: skip
    # nsenter, not `ip netns exec`: that one mounts a fresh /sys over the cgroup tree
    cmd = ["nsenter", f"--net=/var/run/netns/{REMOTE_NETNS}", "unshare", "--mount", "--propagation", "private",
           "sh", "-c", script, "sh", *dockerd]  # fmt: skip
    start("remote-dockerd", cmd)
    wait_for("the remote dockerd", remote_engine_up, 90)


def remote_context() -> None:
    """The docker context REMOTE_CONTEXT, made again when it is missing or points elsewhere."""
    code, text = output(["docker", "context", "inspect", REMOTE_CONTEXT, "--format", "{{.Endpoints.docker.Host}}"])
    if code == 0 and text.strip() == REMOTE_URL:
        return
    if code == 0:
        run(["docker", "context", "rm", "-f", REMOTE_CONTEXT], stdout=subprocess.DEVNULL)
    tls = ",".join(f"{k}={REMOTE_CERTS / f}" for k, f in (("ca", "ca.pem"), ("cert", "cert.pem"), ("key", "key.pem")))
    run(["docker", "context", "create", REMOTE_CONTEXT, "--description", "the ml-env lab's second engine (TLS)",
         "--docker", f"host={REMOTE_URL},{tls}"], stdout=subprocess.DEVNULL)  # fmt: skip


def _sees_checkout(pid: int) -> bool:
    """Whether the engine (started from another checkout) sees this one: it must not."""
    return os.path.lexists(f"/proc/{pid}/root{Path(__file__).resolve()}")


def ensure_remote() -> None:
    """The second engine and what it needs, each started or healed only when missing or wrong;
    the first engine and the registries are never touched."""
    REMOTE.mkdir(parents=True, exist_ok=True)
    REMOTE.chmod(0o700)
    remote_tls()
    remote_network()
    if read_pid("remote-forward") is None or not remote_forward_answers():
        stop("remote-forward")
        start("remote-forward", [sys.executable, str(Path(__file__).resolve()), "remote-forward"])
        wait_for("the registry relay in the remote namespace", remote_forward_answers, 30)
    pid = read_pid("remote-dockerd")
    if pid is not None and not (remote_engine_up() and remote_config_current() and not _sees_checkout(pid)):
        log(
            "restarting the remote dockerd: it does not answer, its config is not the one this lab wants,"
            " or it sees this checkout"
        )
        stop("remote-dockerd")
    if read_pid("remote-dockerd") is None:
        if remote_engine_up():
            raise SystemExit(f"[lab] something the lab did not start answers on {REMOTE_URL}")
        start_remote_engine()
    remote_context()


def remote_health() -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []
    pid = read_pid("remote-dockerd")
    code, text = output(remote_docker("info", "--format", "{{.ServerVersion}}"), timeout=20)
    up_ = code == 0 and pid is not None
    checks.append(("remote engine", up_, f"{text.split()[0] if code == 0 else ''} at {REMOTE_URL} (pid {pid})"
                   if up_ else (_error_line(text) if pid else "not started (lab.py remote-up)")))  # fmt: skip
    if not up_:
        return checks
    # without a client certificate the engine refuses the connection
    import ssl

    ctx = ssl.create_default_context(cafile=str(REMOTE_CERTS / "ca.pem"))
    try:
        with (
            socket.create_connection((REMOTE_NS_IP, REMOTE_PORT), timeout=5) as s,
            ctx.wrap_socket(s, server_hostname=REMOTE_NS_IP) as t,
        ):
            t.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            refused = not t.recv(64)
    except (ssl.SSLError, OSError):
        refused = True
    checks.append(("remote tls", refused, "client certificate required" if refused
                   else "answers without a client certificate"))  # fmt: skip
    # a file made now in this machine's /tmp, this script and the lab's secrets: none is there
    import tempfile

    with tempfile.NamedTemporaryFile(prefix="ml-env-lab-probe-") as probe:
        seen = [p for p in (probe.name, str(Path(__file__).resolve()), str(STATE / "auth.json"))
                if os.path.lexists(f"/proc/{pid}/root{p}")]  # fmt: skip
    checks.append(("remote isolation", not seen, "its own /tmp, /root, /work (no client paths)" if not seen
                   else f"it sees {', '.join(seen)}"))  # fmt: skip
    code, text = output(remote_docker("run", "--rm", "--pull", "always", BASE_TINY, "true"), timeout=60)
    checks.append(("remote container", code == 0, "pulled from :5000 through its namespace and ran"
                   if code == 0 else _error_line(text)))  # fmt: skip
    code, text = output(["docker", "context", "inspect", REMOTE_CONTEXT, "--format", "{{.Endpoints.docker.Host}}"])
    checks.append(("remote context", code == 0 and text.strip() == REMOTE_URL, f"{REMOTE_CONTEXT} -> {text.strip()}"))
    return checks


def remote_env() -> dict:
    return {
        "remote_context": REMOTE_CONTEXT,
        "remote_host": REMOTE_URL,
        "remote_cert_path": str(REMOTE_CERTS),
        "remote_address": REMOTE_NS_IP,
        "remote_dockerd_pid": read_pid("remote-dockerd"),
    }


def remote_up() -> None:
    if os.geteuid() != 0:
        raise SystemExit("[lab] run as root: it makes a network namespace and starts dockerd")
    with machine_lock():
        for port in REMOTE_FORWARDED:
            if not registry_answers(port):
                raise SystemExit(f"[lab] the registry on :{port} does not answer: run `lab.py up` first")
        ensure_remote()
        if not report(remote_health()):
            raise SystemExit("[lab] the remote engine is not healthy: see the FAIL lines above")
        _update_env(remote_env())
    log(f"remote engine ready: docker --context {REMOTE_CONTEXT} (stop it alone with `lab.py remote-down`)")


def remote_down() -> None:
    with machine_lock():
        _remote_down()
        with contextlib.suppress(OSError, ValueError):
            env = json.loads(ENV_JSON.read_text())
            _write_env_file({k: v for k, v in env.items() if not k.startswith("remote_")})
    log("remote engine down")


def _remote_down() -> None:
    stop("remote-dockerd")
    stop("remote-forward")
    remote_network_down()
    ok(["docker", "context", "rm", "-f", REMOTE_CONTEXT])


def _update_env(extra: dict) -> None:
    try:
        env = json.loads(ENV_JSON.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"[lab] {ENV_JSON} is missing: run `lab.py up`") from None
    env.update(extra)
    _write_env_file(env)


# --- health -------------------------------------------------------------------------------

# problems that a restart of the lab's own dockerd can cure
ENGINE_SIDE = ("engine", "docker0", "container", "config", "buildx")


def health() -> list[tuple[str, bool, str]]:
    """What the tests need, each (check, passed, detail). Never changes anything."""
    checks: list[tuple[str, bool, str]] = []
    code, text = output(["docker", "info", "--format", "{{.ServerVersion}} {{json .DriverStatus}}"], timeout=20)
    engine = code == 0
    owned = read_pid("dockerd")
    who = f"the lab's dockerd, pid {owned}" if owned else "not started by the lab"
    checks.append(("engine", engine, f"{text.split()[0]} ({who})" if engine else _error_line(text)))
    if owned:
        checks.append(("config", config_current(), f"{daemon_config_path()}"))
    has_bridge = Path("/sys/class/net/docker0").exists()
    checks.append(("docker0", has_bridge, "bridge present" if has_bridge else "the docker0 bridge is missing"))
    if engine:
        code, text = output(["docker", "buildx", "inspect"], timeout=20)
        driver = re.search(r"Driver:\s*(\S+)", text)
        checks.append(("buildx", code == 0, f"driver {driver.group(1)}" if code == 0 and driver else text[-200:]))
    for name, port in (("registry :5000", PLAIN_PORT), ("registry :5001", AUTH_PORT)):
        up_ = registry_answers(port)
        checks.append((name, up_, "answers /v2/" if up_ else f"nothing answers on 127.0.0.1:{port}"))
    if engine and registry_answers(PLAIN_PORT) and in_registry(BASE_TINY):
        # the engine pulls from the registry and starts a container on the default bridge
        code, text = output(
            ["docker", "run", "--rm", "--pull", "always", "--network", "bridge", BASE_TINY, "true"], timeout=60
        )
        detail = "pulled from :5000 and ran on the default bridge" if code == 0 else _error_line(text)
        checks.append(("container", code == 0, detail))
    for ref in (BASE_TINY, BASE_PYTHON):
        present = registry_answers(PLAIN_PORT) and in_registry(ref)
        checks.append((f"base {ref.split('/', 1)[1]}", present, "in the registry" if present else "missing"))
    if engine:
        # the engine resolves the public name through its mirror, as a build's FROM does
        resolved = _engine_resolves(PUBLIC_PYTHON)
        checks.append((f"base {PUBLIC_PYTHON}", resolved, "the engine resolves it through the lab's mirror"
                       if resolved else "the engine cannot resolve it (mirror or stand-in missing)"))  # fmt: skip
    site = SITE_CONFIG.exists() and 'network = "host"' in SITE_CONFIG.read_text()
    checks.append(("site config", site, str(SITE_CONFIG) if site else f"{SITE_CONFIG} is missing or has no network"))
    if engine:
        good, detail = relay_builder_health()
        checks.append(("remote-driver builder", good, detail))
    return checks + remote_health()


def _engine_resolves(name: str) -> bool:
    """The engine's own answer (GET /distribution/NAME/json): the name resolves through its mirrors."""
    import http.client

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(20)
            self.sock.connect("/var/run/docker.sock")

    try:
        conn = Conn("localhost", timeout=20)
        conn.request("GET", f"/distribution/{name}/json")
        resp = conn.getresponse()
        return resp.status == 200 and '"digest"' in resp.read(65536).decode(errors="replace")
    except OSError:
        return False


def _error_line(text: str) -> str:
    lines = [x.strip() for x in text.splitlines() if x.strip()]
    for x in lines:
        if "error" in x.lower():
            return x[:300]
    return lines[-1][:300] if lines else "failed"


def report(checks: list[tuple[str, bool, str]]) -> bool:
    for name, passed, detail in checks:
        log(f"{'ok  ' if passed else 'FAIL'} {name:28} {detail}")
    return all(p for _, p, _ in checks)


# --- commands -----------------------------------------------------------------------------


def write_env(user: str, password: str) -> dict:
    info = subprocess.run(
        ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, check=True
    ).stdout
    d = json.loads(info)
    driver_status = json.dumps(d.get("DriverStatus") or [])
    env = {
        "registry": f"127.0.0.1:{PLAIN_PORT}",
        "auth_registry": f"127.0.0.1:{AUTH_PORT}",
        "auth_user": user,
        "auth_password": password,
        "base_image_python": BASE_PYTHON,
        "base_image_tiny": BASE_TINY,
        "base_image_public": PUBLIC_PYTHON,
        "site_config": str(SITE_CONFIG),
        "build_network": "host",
        "ca_bundle": HOST_CA if Path(HOST_CA).exists() else "",
        "server_version": d.get("ServerVersion"),
        "containerd_store": "io.containerd.snapshotter" in driver_status,
        "dockerd_pid": read_pid("dockerd"),
        "owns_engine": read_pid("dockerd") is not None,
        "state": str(STATE),
        "remote_builder": RELAY_BUILDER,
        **remote_env(),
    }
    _write_env_file(env)
    return env


def _write_env_file(env: dict) -> None:
    tmp = ENV_JSON.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f, indent=2)
    tmp.replace(ENV_JSON)


def ensure_engine() -> None:
    """An engine that answers and passes the engine-side checks; ours is restarted, not theirs."""
    if not engine_up():
        if read_pid("dockerd") is None:
            start_engine()
        else:
            restart_engine("it does not answer")
        return
    if read_pid("dockerd") is None:
        log("a Docker engine the lab did not start is running: using it as it is")
        return
    if not config_current():
        restart_engine("its config is not the one this lab wants")
    elif not Path("/sys/class/net/docker0").exists():
        restart_engine("the docker0 bridge is missing")


def heal_engine_side(checks: list[tuple[str, bool, str]]) -> list[tuple[str, bool, str]]:
    bad = [(n, d) for n, p, d in checks if not p and n in ENGINE_SIDE]
    if not bad:
        return checks
    why = "; ".join(f"{n}: {d}" for n, d in bad)
    if read_pid("dockerd") is None:
        report(checks)
        raise SystemExit(
            f"[lab] the Docker engine is unhealthy ({why}) and the lab did not start it, so it cannot restart it; "
            "restart that engine, or stop it and run `lab.py up` to start the lab's own"
        )
    restart_engine(why)
    return health()


def up() -> None:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise SystemExit("[lab] run as root: it installs packages and starts dockerd")
    with machine_lock():
        STATE.mkdir(parents=True, exist_ok=True)
        RUN.mkdir(parents=True, exist_ok=True)
        ensure_engine()
        if not ok(["docker", "buildx", "version"]):
            install_packages()
            if not ok(["docker", "buildx", "version"]):
                raise SystemExit("[lab] the engine runs but `docker buildx` is missing (package docker-buildx)")
        if not all(shutil.which(t) for t in ("docker-registry", "htpasswd", "debootstrap", "busybox")):
            install_packages()
        user, password = auth_credentials()  # and the state's private parts made private (secure_state)
        htpasswd = STATE / "htpasswd"
        if not htpasswd.exists() or not ok(["htpasswd", "-vb", str(htpasswd), user, password]):
            line = run(["htpasswd", "-Bbn", user, password], capture_output=True, quiet=True).stdout.strip()
            _write_private(htpasswd, line + "\n")
        start_registry("plain", PLAIN_PORT, None)
        start_registry("auth", AUTH_PORT, htpasswd)
        docker_login(user, password)
        base_tiny()
        base_python()
        public_python()
        write_site_config()
        ensure_relay_builder()
        ensure_remote()
        checks = heal_engine_side(health())
        if not all(p for n, p, _ in checks if n.startswith("remote ")):
            # the second engine is the lab's own: restarted, never the first
            stop("remote-dockerd")
            ensure_remote()
            checks = health()
        if not report(checks):
            raise SystemExit("[lab] not healthy after `up`: see the FAIL lines above")
        env = write_env(user, password)
    shown = {k: ("***" if k == "auth_password" else v) for k, v in env.items()}
    log(f"ready in {time.monotonic() - t0:.1f}s ({ENV_JSON}): {json.dumps(shown)}")
    if not env["containerd_store"]:
        log("note: this engine uses the classic image store; only the inline build cache is available")


def down() -> None:
    with machine_lock():
        _remote_down()
        relay_builder_down()
        for name in ("registry-auth", "registry-plain", "dockerd"):
            stop(name)
        ENV_JSON.unlink(missing_ok=True)
    log("down")


def status() -> int:
    healthy = report(health())
    log(
        f"{'healthy' if healthy else 'UNHEALTHY'}; state in {STATE}"
        + ("" if healthy else "; `lab.py up` heals what the lab owns")
    )
    return 0 if healthy else 1


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "up"
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "status":
        return status()
    elif cmd == "env-path":
        print(ENV_JSON)
    elif cmd == "remote-up":
        remote_up()
    elif cmd == "remote-down":
        remote_down()
    elif cmd == "remote-forward":  # the relay process `up` starts (not for people)
        return forward_main()
    elif cmd == "buildkit-relay":  # the remote-driver builder's relay `up` starts (not for people)
        return relay_main()
    elif cmd == "pristine-image":
        with machine_lock():
            print(pristine_image())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
