#!/usr/bin/env python3
"""The lab: a real Docker engine with BuildKit, two local registries and base images.

One lab per machine. Usage (as root, on Debian bookworm), from any checkout:
    python3 ci/lab/lab.py up      # idempotent; checks what tests need and heals what it can
    python3 ci/lab/lab.py status  # the same health check, no changes; exit 1 when unhealthy
    python3 ci/lab/lab.py down    # stops what the lab started, by PID
    python3 ci/lab/lab.py pristine-image  # a local image of a pristine bookworm (quick start test)

Only the standard library is used: this runs before the project's dependencies exist.
What it does and why is written up in the README ("The lab"). Facts behind each step:
an engine from Debian trixie's packages on bookworm (bookworm's BuildKit only exports
the inline cache), the containerd image store (so the docker driver exports registry and
local caches), Debian's docker-registry as plain processes on 127.0.0.1, and base images
built locally (no Docker Hub is reachable).

All state is machine-wide, under /var/lib/ml-env-lab/ (``ML_ENV_LAB_STATE``): registry
storage, the auth registry's password, cached root file systems, and in ``run/`` the PID
files, daemon config, logs and ``env.json``. Any checkout sees, checks, heals and stops the
same engine and registries; deleting the checkout that started them loses nothing.

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
PROGRAMS = {"dockerd": "dockerd", "registry-plain": "docker-registry", "registry-auth": "docker-registry"}


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
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return None
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
    return checks


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
    }
    tmp = ENV_JSON.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(env, f, indent=2)
    tmp.replace(ENV_JSON)
    return env


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
        public_python()
        write_site_config()
        checks = heal_engine_side(health())
        if not report(checks):
            raise SystemExit("[lab] not healthy after `up`: see the FAIL lines above")
        env = write_env(user, password)
    shown = {k: ("***" if k == "auth_password" else v) for k, v in env.items()}
    log(f"ready in {time.monotonic() - t0:.1f}s ({ENV_JSON}): {json.dumps(shown)}")
    if not env["containerd_store"]:
        log("note: this engine uses the classic image store; only the inline build cache is available")


def down() -> None:
    with machine_lock():
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
    elif cmd == "pristine-image":
        with machine_lock():
            print(pristine_image())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
