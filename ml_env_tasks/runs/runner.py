"""Runners: where a prepared job runs. One implementation here, a container on a Docker engine.

On the local engine (a unix socket) inputs and outputs are bind mounts of this machine's paths.
On any other engine (``tcp://``, ``ssh://``, a context naming one) nothing the engine does may
depend on this machine's files: the code, the inputs and an outputs folder go in as one tar
streamed through the Engine API (``PUT /containers/{id}/archive``), and the outputs come back
the same way (``GET``), contained (``engine.archive``), before the container is removed.
``--input NAME=volume:VOLUME`` mounts a volume the engine already has, on either kind.

The container is ``CONFINED`` (``engine.containers``): ``no-new-privileges`` and no capability,
whether it runs as root or not, so it cannot make device nodes or chown; what it leaves in the
outputs (setuid/setgid bits, FIFOs, sockets) is cleared by ``train`` once it is gone.

A Kubernetes Job or an Azure ML job would be another ``Runner``; the Kubernetes one is written
out as a manifest (``ml_env_tasks.runs.kubernetes``), never faked as run.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..engine.resources import Resources
from ..errors import EngineError
from ..safe.digests import counted
from ..safe.grammar import digits
from .record import CliProcess, RunStatus
from .snapshot import Entry, Snapshot, TarPart, folder_snapshot, tar_chunks, tar_parts

__all__ = [
    "Job",
    "Outcome",
    "Runner",
    "LocalDockerRunner",
    "on_stop_signals",
    "CODE_DIR",
    "INPUTS_DIR",
    "OUTPUT_DIR",
    "WORKDIR_OUTPUTS",
    "RUN_LABEL",
    "CLI_LABEL",
]

CODE_DIR = "/mnt/code"
INPUTS_DIR = "/mnt/inputs"
OUTPUT_DIR = "/mnt/outputs"
# Azure ML collects whatever a script writes to ./outputs: the same host folder is mounted there
# too, so a script written for Azure keeps its files (and a crash loses nothing already written).
# The snapshot never holds an ``outputs`` entry (``train`` leaves it out), so the tar streamed
# into CODE_DIR cannot write through this mount.
WORKDIR_OUTPUTS = f"{CODE_DIR}/outputs"
RUN_LABEL = "ml-env.run"
CLI_LABEL = "ml-env.cli"  # host/pid/start ticks of the ml-env process that runs the container


@dataclass(frozen=True)
class Job:
    run_id: str
    image: str
    command: list[str]
    snapshot: Snapshot  # copied into the container at CODE_DIR
    inputs: dict[str, Path]
    outputs: Path
    env_vars: dict[str, str]
    secret_names: tuple[str, ...]
    user: str | None
    resources: Resources
    timeout: float | None
    volumes: dict[str, str] = field(default_factory=dict)  # input NAME -> a volume on the engine


@dataclass(frozen=True)
class Outcome:
    status: RunStatus
    exit_code: int | None
    reason: str | None
    engine: dict[str, Any] | None = None  # where it ran and how the files travelled (the record's)


class Runner(Protocol):
    """Runs a prepared job somewhere and reports how it ended."""

    def run(self, job: Job, on_line: Callable[[str], None]) -> Outcome: ...


class LocalDockerRunner:
    """A container on the engine of the command's endpoint (local socket, ssh://, tcp://).

    Local: inputs and outputs are bind mounts. Otherwise: copied in and out through the Engine
    API (see the module's docstring); ``remote`` forces either way.
    """

    def __init__(self, *, remote: bool | None = None) -> None:
        from .. import engine

        eng = engine.current()
        self.containers = eng.containers
        self.endpoint = eng.endpoint
        self.remote = (not eng.endpoint.local) if remote is None else remote

    def check(self, resources: Resources, volumes: dict[str, str]) -> None:
        """What the engine must have for a job (GPUs, the input volumes): ``train`` asks before it
        builds anything, ``run`` again before it creates the container."""
        c = self.containers
        if resources.gpus and not c.gpus_available():
            raise EngineError(f"--gpus {resources.gpus} asked for, but this engine has no GPU runtime or device")
        for name, vol in volumes.items():
            if not c.volume_exists(vol):
                raise EngineError(
                    f"input {name}: the engine ({self.endpoint.describe()}) has no volume {vol}",
                    hint="docker volume ls on that engine",
                )

    def run(self, job: Job, on_line: Callable[[str], None]) -> Outcome:
        c = self.containers
        self.check(job.resources, job.volumes)
        volumes = [(vol, f"{INPUTS_DIR}/{name}", "ro") for name, vol in job.volumes.items()]
        if not self.remote:
            volumes += [(str(p.resolve()), f"{INPUTS_DIR}/{name}", "ro") for name, p in job.inputs.items()]
            volumes.append((str(job.outputs.resolve()), OUTPUT_DIR, "rw"))
            volumes.append((str(job.outputs.resolve()), WORKDIR_OUTPUTS, "rw"))
        envs = {
            **job.env_vars,
            "ML_ENV_RUN_ID": job.run_id,
            "ML_ENV_OUTPUT_DIR": OUTPUT_DIR,
            "HOME": "/tmp",
            **{f"ML_ENV_INPUT_{name.upper()}": f"{INPUTS_DIR}/{name}" for name in [*job.inputs, *job.volumes]},
        }
        # secret values go in the API request body only (no command line, no file); the
        # container that holds them is removed at the end of the run, whatever happens
        envs.update({n: os.environ[n] for n in job.secret_names})
        box = c.create(
            job.image,
            job.command,
            name=f"ml-env-run-{job.run_id}"[:128],
            envs=envs,
            volumes=volumes,
            labels={RUN_LABEL: job.run_id, CLI_LABEL: CliProcess.this().label()},
            workdir=CODE_DIR,
            user=job.user,
            resources=job.resources,
        )
        stop_reason: list[RunStatus] = []

        def stop(reason: RunStatus) -> None:
            if not stop_reason:
                stop_reason.append(reason)
                threading.Thread(target=box.stop, args=(5,), daemon=True).start()

        timer = threading.Timer(job.timeout, stop, args=(RunStatus.TIMED_OUT,)) if job.timeout else None
        where: dict[str, Any] = {
            "endpoint": self.endpoint.describe(),
            "files": "engine-api" if self.remote else "bind-mounts",
        }
        try:
            where["mounts"] = [
                {"type": m.get("Type"), "source": m.get("Source") or m.get("Name"), "destination": m.get("Destination")}
                for m in box.mounts()
            ]
            with on_stop_signals(lambda signum: stop(RunStatus.CANCELED)):
                uid, gid = _numeric_user(job.user)
                if self.remote:
                    t0, sent = time.monotonic(), [0]
                    parts = _remote_parts(job, uid, gid)
                    box.put_tar(
                        counted(tar_parts(parts), sent),
                        "copying the code and inputs into the container",
                    )
                    files = sum(len(p.snap.files) for p in parts if p.snap is not None)
                    where["inputs_sent"] = {
                        "files": files,
                        "bytes": sent[0],
                        "seconds": round(time.monotonic() - t0, 3),
                    }
                else:
                    box.put_tar(tar_chunks(job.snapshot, CODE_DIR.strip("/"), uid=uid, gid=gid))
                box.start()
                if timer:
                    timer.start()
                try:
                    for line in box.logs():
                        on_line(line)
                    code = box.wait()
                except Exception as e:  # the engine went away mid-run
                    return Outcome(RunStatus.FAILED, None, f"lost the container: {_short(e)}", where)
            if self.remote:  # whatever the script's end, what it wrote comes back
                t0 = time.monotonic()
                files, size = box.get_tar(OUTPUT_DIR, job.outputs, what="bringing the outputs back")
                where["outputs_received"] = {"files": files, "bytes": size, "seconds": round(time.monotonic() - t0, 3)}
            if stop_reason:
                return Outcome(stop_reason[0], code, None, where)
            if box.state().oom_killed:
                return Outcome(RunStatus.FAILED, code, "the container ran out of memory (OOM-killed)", where)
            if code == 0:
                return Outcome(RunStatus.COMPLETED, 0, None, where)
            return Outcome(RunStatus.FAILED, code, f"the script exited with {code}", where)
        finally:
            if timer:
                timer.cancel()
            box.remove()


def _remote_parts(job: Job, uid: int, gid: int) -> list[TarPart]:
    """The one tar a run on a remote engine gets: the code (its ``outputs`` a link to the outputs
    folder, as the bind mount makes it locally), each input (read-only by ownership: root's),
    and the outputs folder with the named outputs ``train`` made, owned by the run's user."""
    link = Entry("outputs", 0, hashlib.sha256(b"../outputs").hexdigest(), "../outputs")
    code = replace(job.snapshot, files=tuple(sorted((*job.snapshot.files, link), key=lambda e: e.rel)))
    parts = [TarPart(CODE_DIR.strip("/"), code, uid, gid)]
    for name, path in job.inputs.items():
        snap = folder_snapshot(path)
        as_file = path.is_file()
        parts.append(TarPart(f"{INPUTS_DIR}/{name}".strip("/") if not as_file else INPUTS_DIR.strip("/"),
                             snap, name=name if as_file else None))  # fmt: skip
    # a user given by name is resolved in the image: its uid is not known here
    mode = 0o755 if (uid, gid) != (0, 0) or job.user in (None, "0", "0:0", "root") else 0o777
    parts.append(TarPart(OUTPUT_DIR.strip("/"), None, uid, gid, mode))
    named = sorted(p.name for p in job.outputs.iterdir() if p.is_dir() and not p.is_symlink())
    parts += [TarPart(f"{OUTPUT_DIR}/{n}".strip("/"), None, uid, gid, mode) for n in named]
    return parts


def _numeric_user(user: str | None) -> tuple[int, int]:
    """The uid:gid that owns the code folder in the container (root for a user given by name)."""
    if user and ":" in user and all(digits(p) for p in user.split(":", 1)):
        u, g = user.split(":", 1)
        return int(u), int(g)
    if user and digits(user):
        return int(user), int(user)
    return 0, 0


@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int], None]) -> Iterator[None]:
    """SIGINT/SIGTERM stop the run (and the container) instead of killing the CLI midway."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: handler(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _short(e: Exception) -> str:
    return str(e).strip().splitlines()[-1][:300] if str(e).strip() else type(e).__name__
