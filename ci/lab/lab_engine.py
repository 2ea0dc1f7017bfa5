"""The lab's own Docker engine: the dockerd it starts with its own daemon config (the containerd
image store, the plain registry as Docker Hub's mirror), and its restart."""

from __future__ import annotations

import json
from pathlib import Path

from lab_apt import install_packages
from lab_proc import RUN, log, ok, start, stop, wait_for
from lab_registries import PLAIN_PORT

# what the lab's dockerd runs with: the containerd image store, and the plain registry as a
# mirror of Docker Hub names (so `FROM python:3.11-slim-bookworm` resolves to the lab's stand-in)
DAEMON_CONFIG = {
    "features": {"containerd-snapshotter": True},
    "registry-mirrors": [f"http://127.0.0.1:{PLAIN_PORT}"],
}


# --- engine -------------------------------------------------------------------------------


def engine_up() -> bool:
    return ok(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20)


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
