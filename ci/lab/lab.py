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

# Here: the health check and the commands. The rest is in the modules beside this script, plain
# names found through this folder on sys.path (standard library only): lab_proc (state, running
# commands, the processes the lab owns), lab_apt (the Debian mirror, packages), lab_registries,
# lab_engine, lab_images (base images), lab_remote (the second engine), lab_builder (the
# remote-driver builder).

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

# run as a script, this folder is on sys.path already; loaded from its file (a test), not yet
HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import lab_slurm  # noqa: E402
from lab_apt import install_packages  # noqa: E402
from lab_builder import (  # noqa: E402
    RELAY_BUILDER,
    ensure_relay_builder,
    relay_builder_down,
    relay_builder_health,
    relay_main,
)
from lab_engine import config_current, daemon_config_path, engine_up, restart_engine, start_engine  # noqa: E402
from lab_images import (  # noqa: E402
    BASE_PYTHON,
    BASE_TINY,
    HOST_CA,
    PUBLIC_PYTHON,
    SITE_CONFIG,
    base_python,
    base_tiny,
    in_registry,
    pristine_image,
    public_python,
    write_site_config,
)
from lab_proc import (  # noqa: E402
    ENV_JSON,
    RUN,
    STATE,
    _error_line,
    log,
    machine_lock,
    ok,
    output,
    read_pid,
    run,
    stop,
)
from lab_registries import (  # noqa: E402
    AUTH_PORT,
    PLAIN_PORT,
    _write_private,
    auth_credentials,
    docker_login,
    registry_answers,
    start_registry,
)
from lab_remote import (  # noqa: E402
    REMOTE_CONTEXT,
    REMOTE_FORWARDED,
    _remote_down,
    ensure_remote,
    forward_main,
    remote_env,
    remote_health,
)
from lab_signing import cosign_keys  # noqa: E402

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
    return checks + remote_health() + lab_slurm.health()


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
        **cosign_keys(),
        **lab_slurm.env(),
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
        if not all(shutil.which(t) for t in ("docker-registry", "htpasswd", "debootstrap", "busybox", "cosign")):
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
        lab_slurm.up()
        checks = heal_engine_side(health())
        if not all(p for n, p, _ in checks if n.startswith("remote ")):
            # the second engine is the lab's own: restarted, never the first
            stop("remote-dockerd")
            ensure_remote()
            checks = health()
        if not all(p for n, p, _ in checks if n.startswith("slurm")):
            lab_slurm.down()  # the cluster's daemons are the lab's own: started again, by PID
            lab_slurm.up()
            checks = health()
        if not report(checks):
            raise SystemExit("[lab] not healthy after `up`: see the FAIL lines above")
        env = write_env(user, password)
    shown = {k: ("***" if k in ("auth_password", "cosign_password") else v) for k, v in env.items()}
    log(f"ready in {time.monotonic() - t0:.1f}s ({ENV_JSON}): {json.dumps(shown)}")
    if not env["containerd_store"]:
        log("note: this engine uses the classic image store; only the inline build cache is available")


def down() -> None:
    with machine_lock():
        lab_slurm.down()
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
        lab_slurm.down()  # node2 lives in the second engine's namespace
        _remote_down()
        with contextlib.suppress(OSError, ValueError):
            env = json.loads(ENV_JSON.read_text())
            _write_env_file({k: v for k, v in env.items() if not k.startswith("remote_")})
    log("remote engine down")


def _update_env(extra: dict) -> None:
    try:
        env = json.loads(ENV_JSON.read_text())
    except (OSError, ValueError):
        raise SystemExit(f"[lab] {ENV_JSON} is missing: run `lab.py up`") from None
    env.update(extra)
    _write_env_file(env)


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
