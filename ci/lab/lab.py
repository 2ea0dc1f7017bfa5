#!/usr/bin/env python3
"""The lab: a real Docker engine with BuildKit, two local registries and base images.

Usage (as root, on Debian bookworm):
    python3 ci/lab/lab.py up      # idempotent; a second run on a running lab takes seconds
    python3 ci/lab/lab.py down    # stops what `up` started, by PID
    python3 ci/lab/lab.py status

Only the standard library is used: this runs before the project's dependencies exist.
What it does and why is written up in the README ("The lab"). Facts behind each step:
an engine from Debian trixie's packages on bookworm (bookworm's BuildKit only exports
the inline cache), the containerd image store (so the docker driver exports registry and
local caches), Debian's docker-registry as plain processes on 127.0.0.1, and base images
built locally (no Docker Hub is reachable).

Run-time state (PID files, logs, env.json) lives in `<project>/.lab/`. Registry storage,
the auth registry's password and the cached base root file systems live in
/var/lib/ml-env-lab/, so a fresh checkout on the same machine finds its base images.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2]
LAB = Path(os.environ.get("ML_ENV_LAB_DIR", PROJECT / ".lab"))
STATE = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab"))
PLAIN_PORT = 5000
AUTH_PORT = 5001
BASE_PYTHON = f"127.0.0.1:{PLAIN_PORT}/base/debian-python:bookworm"
BASE_TINY = f"127.0.0.1:{PLAIN_PORT}/base/busybox:1"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
APT_PACKAGES_TRIXIE = ["docker.io/trixie", "docker-cli/trixie", "containerd/trixie", "docker-buildx/trixie"]
APT_PACKAGES = ["docker-registry", "skopeo", "debootstrap", "apache2-utils", "busybox-static", "iproute2"]


def log(msg: str) -> None:
    print(f"[lab] {msg}", flush=True)


def run(cmd: list[str], *, check: bool = True, quiet: bool = False, **kw) -> subprocess.CompletedProcess:
    if not quiet:
        log("$ " + " ".join(cmd))
    return subprocess.run(cmd, check=check, text=True, **kw)


def ok(cmd: list[str]) -> bool:
    return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not alive
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(name: str) -> int | None:
    path = LAB / f"{name}.pid"
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def start(name: str, cmd: list[str]) -> int:
    LAB.mkdir(parents=True, exist_ok=True)
    logf = open(LAB / f"{name}.log", "ab")
    proc = subprocess.Popen(
        cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
    )
    (LAB / f"{name}.pid").write_text(str(proc.pid))
    log(f"started {name} (pid {proc.pid}): {' '.join(cmd)}")
    return proc.pid


def stop(name: str) -> None:
    pid = read_pid(name)
    if pid is None:
        (LAB / f"{name}.pid").unlink(missing_ok=True)
        return
    log(f"stopping {name} (pid {pid})")
    os.kill(pid, signal.SIGTERM)
    for _ in range(150):
        if not pid_alive(pid):
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    (LAB / f"{name}.pid").unlink(missing_ok=True)


def wait_for(what: str, probe, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise SystemExit(f"[lab] {what} did not come up within {timeout:.0f}s; see {LAB}")


# --- engine -------------------------------------------------------------------------------


def engine_up() -> bool:
    return ok(["docker", "info", "--format", "{{.ServerVersion}}"])


def install_packages() -> None:
    need_engine = not (shutil.which("dockerd") and Path("/usr/libexec/docker/cli-plugins/docker-buildx").exists())
    need_tools = [p for p in ["docker-registry", "skopeo", "debootstrap", "htpasswd", "busybox"] if not shutil.which(p)]
    if not need_engine and not need_tools:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    trixie = Path("/etc/apt/sources.list.d/ml-env-lab-trixie.list")
    if need_engine and not trixie.exists():
        trixie.write_text(
            f"deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] {DEBIAN_MIRROR} trixie main\n"
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


def start_engine() -> None:
    if engine_up():
        if read_pid("dockerd") is None:
            log("a Docker engine is already running: using it")
        return
    install_packages()
    # our own daemon config, so we never depend on (or change) /etc/docker/daemon.json
    cfg = LAB / "daemon.json"
    LAB.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"features": {"containerd-snapshotter": True}}, indent=2))
    start("dockerd", ["dockerd", "--config-file", str(cfg), "--pidfile", str(LAB / "dockerd.self.pid")])
    wait_for("dockerd", engine_up, 60)


def docker0_missing() -> bool:
    return not Path("/sys/class/net/docker0").exists()


def check_bridge() -> None:
    """A long network-heavy build once removed docker0 (LAB.md); a restart of our dockerd brings it back."""
    if docker0_missing() and read_pid("dockerd") is not None:
        log("docker0 bridge is missing: restarting the lab's dockerd")
        stop("dockerd")
        start_engine()


# --- registries ---------------------------------------------------------------------------


def registry_answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
        return True
    except urllib.error.HTTPError as e:  # 401 from the auth registry is an answer
        return e.code == 401
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def auth_credentials() -> tuple[str, str]:
    STATE.mkdir(parents=True, exist_ok=True)
    path = STATE / "auth.json"
    if path.exists():
        data = json.loads(path.read_text())
        return data["user"], data["password"]
    user, password = "mlenv", secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"user": user, "password": password}, f)
    return user, password


def start_registry(name: str, port: int, htpasswd: Path | None) -> None:
    if registry_answers(port):
        return
    if port_in_use(port):
        raise SystemExit(f"[lab] port 127.0.0.1:{port} is taken by something that is not a registry")
    storage = STATE / f"registry-{name}"
    storage.mkdir(parents=True, exist_ok=True)
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
    cfg = LAB / f"registry-{name}.yml"
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


def base_python() -> None:
    if in_registry(BASE_PYTHON):
        return
    cache = STATE / "debian-python-bookworm.tar"
    if not cache.exists():
        rootfs = STATE / "rootfs-debian-python"
        shutil.rmtree(rootfs, ignore_errors=True)
        log("debootstrap bookworm with python3 (about a minute)")
        run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            stdout=subprocess.DEVNULL,
        )
        # apt inside images talks plain http to the Debian mirror
        (rootfs / "etc/apt/sources.list").write_text(f"deb {DEBIAN_MIRROR} bookworm main\n")
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for p in (rootfs / sub).glob("*"):
                if p.is_file():
                    p.unlink()
        tmp = cache.with_suffix(".tmp")
        run(["tar", "-C", str(rootfs), "-cf", str(tmp), "."])
        tmp.rename(cache)
        shutil.rmtree(rootfs, ignore_errors=True)
    import_and_push(
        cache,
        BASE_PYTHON,
        [
            "ENV LANG=C.UTF-8",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            'CMD ["python3"]',
        ],
    )


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
        "build_network": "host",
        "ca_bundle": HOST_CA if Path(HOST_CA).exists() else "",
        "server_version": d.get("ServerVersion"),
        "containerd_store": "io.containerd.snapshotter" in driver_status,
        "dockerd_pid": read_pid("dockerd"),
        "owns_engine": read_pid("dockerd") is not None,
    }
    path = LAB / "env.json"
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f, indent=2)
    tmp.replace(path)
    return env


def up() -> None:
    t0 = time.monotonic()
    if os.geteuid() != 0:
        raise SystemExit("[lab] run as root: it installs packages and starts dockerd")
    LAB.mkdir(parents=True, exist_ok=True)
    start_engine()
    check_bridge()
    if not ok(["docker", "buildx", "version"]):
        install_packages()
        if not ok(["docker", "buildx", "version"]):
            raise SystemExit("[lab] the engine runs but `docker buildx` is missing (package docker-buildx)")
    if not all(shutil.which(t) for t in ("docker-registry", "htpasswd", "debootstrap", "busybox")):
        install_packages()
    user, password = auth_credentials()
    htpasswd = STATE / "htpasswd"
    if not htpasswd.exists() or not ok(["htpasswd", "-vb", str(htpasswd), user, password]):
        line = run(["htpasswd", "-Bbn", user, password], capture_output=True, quiet=True).stdout.strip()
        htpasswd.write_text(line + "\n")
        htpasswd.chmod(0o600)
    start_registry("plain", PLAIN_PORT, None)
    start_registry("auth", AUTH_PORT, htpasswd)
    docker_login(user, password)
    base_tiny()
    base_python()
    env = write_env(user, password)
    shown = {k: ("***" if k == "auth_password" else v) for k, v in env.items()}
    log(f"ready in {time.monotonic() - t0:.1f}s: {json.dumps(shown)}")
    if not env["containerd_store"]:
        log("note: this engine uses the classic image store; only the inline build cache is available")


def down() -> None:
    for name in ("registry-auth", "registry-plain", "dockerd"):
        stop(name)
    (LAB / "env.json").unlink(missing_ok=True)
    log("down")


def status() -> None:
    for name in ("dockerd", "registry-plain", "registry-auth"):
        pid = read_pid(name)
        log(f"{name}: {'pid ' + str(pid) if pid else 'not started by the lab'}")
    log(
        f"engine: {'up' if engine_up() else 'down'}; :5000 {registry_answers(PLAIN_PORT)}; :5001 {registry_answers(AUTH_PORT)}"
    )


def main(argv: list[str]) -> int:
    cmd = argv[0] if argv else "up"
    if cmd == "up":
        up()
    elif cmd == "down":
        down()
    elif cmd == "status":
        status()
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
