"""The batch script of a Slurm run: what ``sbatch`` is given, rendered from a ``Job``.

One task per node (``srun``), each running the environment's image **by digest** through the
node's launcher (its Docker engine, or podman) with the same confinement as a local run
(``no-new-privileges``, no capability, the submitting user's uid:gid) and the rendezvous
variables torchrun and Azure ML's PyTorch distribution read: ``MASTER_ADDR`` (the first node's
address, from Slurm), ``MASTER_PORT``, ``WORLD_SIZE`` (nodes), ``RANK``/``NODE_RANK`` (the
node's index), ``LOCAL_RANK`` (0: one process per node). The code is the run folder's copy on the
target's shared folder, ``./outputs`` and ``$ML_ENV_OUTPUT_DIR`` its outputs folder, as locally.

Every value that reaches the script is quoted (``shlex.quote``); the ``#SBATCH`` lines hold only
numbers and names checked by their grammars. A launcher killed by ``--timeout`` exits 124; the
container is removed on every way out (the trap), including ``scancel``.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from ..registry.reference import is_loopback
from .runner import CODE_DIR, INPUTS_DIR, OUTPUT_DIR, WORKDIR_OUTPUTS, Job

__all__ = ["Layout", "render", "MASTER_PORT_BASE"]

MASTER_PORT_BASE = 29500  # torchrun's default, plus the job id's last three digits: jobs on one node differ
GRACE_S = 60  # Slurm's own limit is the run's timeout plus this: ml-env's `timeout` goes first (exit 124)


@dataclass(frozen=True)
class Layout:
    """The run's folder on the shared file system, as every node sees it."""

    root: Path

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    @property
    def log(self) -> Path:
        return self.root / "slurm.log"

    @property
    def script(self) -> Path:
        return self.root / "job.sh"

    @property
    def launch(self) -> Path:
        return self.root / "launch.sh"


def sbatch_lines(job: Job, settings: dict[str, object], nodes: int, layout: Layout) -> list[str]:
    r = job.resources
    lines = [
        f"--job-name=ml-env-{job.run_id[:48]}",
        f"--output={layout.log}",
        f"--chdir={layout.root}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
    ]
    for key in ("partition", "account", "qos"):
        if settings.get(key):
            lines.append(f"--{key}={settings[key]}")
    if r.cpus:
        lines.append(f"--cpus-per-task={max(1, math.ceil(r.cpus))}")
    if r.memory:
        lines.append(f"--mem={max(1, math.ceil(r.memory / 2**20))}M")
    if r.gpus:
        count = "" if r.gpus == "all" else f":{len(r.gpus.split('=', 1)[1].split(',')) if '=' in r.gpus else r.gpus}"
        lines.append(f"--gres=gpu{count}")
    if job.timeout:
        lines.append(f"--time={math.ceil((job.timeout + GRACE_S) / 60)}")
    return [f"#SBATCH {x}" for x in lines]


def render(job: Job, settings: dict[str, object], nodes: int, layout: Layout) -> tuple[str, str]:
    """(the batch script, the per-node launch script)."""
    q = shlex.quote
    if nodes == 1:  # one node: no step to launch, no one to meet (torchrun's single-node values)
        head = ["export MASTER_ADDR=127.0.0.1", "export WORLD_SIZE=1", f"exec bash {q(str(layout.launch))}"]
    else:
        head = [
            'first="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
            'MASTER_ADDR="$(scontrol show node "$first" | sed -n \'s/.*NodeAddr=\\([^ ]*\\).*/\\1/p\')"',
            'export MASTER_ADDR="${MASTER_ADDR:-$first}"',
            'export WORLD_SIZE="$SLURM_JOB_NUM_NODES"',
            f"exec srun --kill-on-bad-exit=1 --export=ALL bash {q(str(layout.launch))}",
        ]
    batch = "\n".join(
        [
            "#!/bin/bash",
            *sbatch_lines(job, settings, nodes, layout),
            "# written by ml-env: one task per node runs launch.sh",
            "set -u",
            f"export MASTER_PORT=$(( {MASTER_PORT_BASE} + SLURM_JOB_ID % 1000 ))",
            *head,
        ]
    )
    return batch + "\n", launch_script(job, settings, layout)


def launch_script(job: Job, settings: dict[str, object], layout: Layout) -> str:
    q = shlex.quote
    launcher = str(settings.get("launcher") or "docker")
    r = job.resources
    envs = {
        **job.env_vars,
        "ML_ENV_RUN_ID": job.run_id,
        "ML_ENV_OUTPUT_DIR": OUTPUT_DIR,
        "HOME": "/tmp",
        **{f"ML_ENV_INPUT_{n.upper()}": f"{INPUTS_DIR}/{n}" for n in job.inputs},
    }
    flags = ["--rm", '--name "$name"', "--network host", "--security-opt no-new-privileges", "--cap-drop ALL",
             f"--workdir {CODE_DIR}", f"-v {q(f'{layout.code}:{CODE_DIR}')}",
             f"-v {q(f'{layout.outputs}:{OUTPUT_DIR}')}", f"-v {q(f'{layout.outputs}:{WORKDIR_OUTPUTS}')}",
             '-e RANK -e NODE_RANK -e LOCAL_RANK -e WORLD_SIZE -e MASTER_ADDR -e MASTER_PORT']  # fmt: skip
    flags += [f"-v {q(f'{layout.inputs / n}:{INPUTS_DIR}/{n}:ro')}" for n in job.inputs]
    flags += [f"-e {q(f'{k}={v}')}" for k, v in envs.items()]
    if job.user:
        flags.append(f"--user {q(job.user)}")
    if r.cpus:
        flags.append(f"--cpus {r.cpus:g}")
    if r.memory:
        flags.append(f"--memory {r.memory}")
    if r.shm_size:
        flags.append(f"--shm-size {r.shm_size}")
    if r.gpus:
        flags.append(f"--gpus {q(r.gpus)}")
    if launcher == "podman" and is_loopback(job.image.split("/", 1)[0]):
        flags.append("--tls-verify=false")  # a loopback registry speaks plain HTTP, as everywhere here
    run = f"{launcher} run {' '.join(flags)} {q(job.image)} {' '.join(q(a) for a in job.command)}"
    lines = [
        "#!/bin/bash",
        "# written by ml-env: this node's part of the run",
        "set -u",
        'export RANK="${SLURM_NODEID:-0}" NODE_RANK="${SLURM_NODEID:-0}" LOCAL_RANK=0',
        f'name="ml-env-run-{job.run_id[:80]}-$RANK"',
        f'cleanup() {{ {launcher} rm -f "$name" >/dev/null 2>&1 || true; }}',
        "trap cleanup EXIT",
        "trap 'cleanup; exit 143' TERM INT",
        f"{run} &",
        "pid=$!",
    ]
    if job.timeout:
        # the limit is ml-env's own: the container is stopped (TERM, then KILL 10 s later) and the
        # node's part ends with 124, whatever the script's PID 1 does with TERM
        marker = q(str(layout.root / "timed-out"))
        lines += [
            f"( sleep {math.ceil(job.timeout)}; touch {marker}; "
            f'echo "ml-env: the run reached its time limit ({math.ceil(job.timeout)} s): stopping it"; '
            f'{launcher} stop -t 10 "$name" >/dev/null 2>&1 ) &',
            "watch=$!",
            'wait "$pid"; code=$?',
            'kill "$watch" 2>/dev/null',
            f"if [ -e {marker} ]; then exit 124; fi",
            'exit "$code"',
        ]
    else:
        lines.append('wait "$pid"')
    return "\n".join(lines) + "\n"
