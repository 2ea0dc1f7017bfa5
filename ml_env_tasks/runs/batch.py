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
    if str(settings.get("launcher")) == "enroot":  # pyxis: srun runs the image itself, on every node
        head = [*_master(nodes), *_pyxis(job, layout)]
    elif nodes == 1:  # one node: no step to launch, no one to meet (torchrun's single-node values)
        head = [*_master(1), f"exec bash {q(str(layout.launch))}"]
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


def _envs(job: Job) -> dict[str, str]:
    return {
        **job.env_vars,
        "ML_ENV_RUN_ID": job.run_id,
        "ML_ENV_OUTPUT_DIR": OUTPUT_DIR,
        "HOME": "/tmp",
        **{f"ML_ENV_INPUT_{n.upper()}": f"{INPUTS_DIR}/{n}" for n in job.inputs},
    }


def _mounts(job: Job, layout: Layout) -> list[tuple[str, str, str]]:
    """(source, destination, "ro"|"rw") of a node's part: code, outputs (twice), inputs."""
    out = [(str(layout.code), CODE_DIR, "rw"), (str(layout.outputs), OUTPUT_DIR, "rw"),
           (str(layout.outputs), WORKDIR_OUTPUTS, "rw")]  # fmt: skip
    return out + [(str(layout.inputs / n), f"{INPUTS_DIR}/{n}", "ro") for n in job.inputs]


def _master(nodes: int) -> list[str]:
    if nodes == 1:
        return ["export MASTER_ADDR=127.0.0.1", "export WORLD_SIZE=1"]
    return [
        'first="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'MASTER_ADDR="$(scontrol show node "$first" | sed -n \'s/.*NodeAddr=\\([^ ]*\\).*/\\1/p\')"',
        'export MASTER_ADDR="${MASTER_ADDR:-$first}"',
        'export WORLD_SIZE="$SLURM_JOB_NUM_NODES"',
    ]


def _pyxis(job: Job, layout: Layout) -> list[str]:
    """enroot through pyxis (rendered, not run here): srun pulls and starts the image on each node.
    enroot names an image ``REGISTRY#REPOSITORY@DIGEST``; the node's credentials are enroot's."""
    q = shlex.quote
    host, _, path = job.image.partition("/")
    mounts = ",".join(f"{src}:{dst}" + (":ro" if mode == "ro" else "") for src, dst, mode in _mounts(job, layout))
    rank = 'export RANK="$SLURM_NODEID" NODE_RANK="$SLURM_NODEID" LOCAL_RANK=0; exec "$@"'
    srun = (f"srun --kill-on-bad-exit=1 --export=ALL --container-image={q(f'{host}#{path}')} "
            f"--container-mounts={q(mounts)} --container-workdir={CODE_DIR} --no-container-mount-home "
            f"bash -c {q(rank)} bash {' '.join(q(a) for a in job.command)}")  # fmt: skip
    if job.timeout:
        srun = f"timeout --kill-after=10 {math.ceil(job.timeout)} {srun}"
    return [*(f"export {k}={q(v)}" for k, v in _envs(job).items()), f"exec {srun}"]


def launch_script(job: Job, settings: dict[str, object], layout: Layout) -> str:
    q = shlex.quote
    launcher = str(settings.get("launcher") or "docker")
    if launcher == "enroot":
        return "#!/bin/bash\n# enroot: pyxis runs the image from the batch script's srun (job.sh)\n"
    if launcher == "apptainer":
        return _apptainer(job, layout)
    r = job.resources
    envs = _envs(job)
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
    return "\n".join(lines + _wait(job, layout, f'{launcher} stop -t 10 "$name" >/dev/null 2>&1')) + "\n"


def _wait(job: Job, layout: Layout, stop: str) -> list[str]:
    """The end of a launch script: wait for the container; with a timeout, ``stop`` it when the
    time is up (the node's part then ends with 124, whatever its PID 1 does with TERM)."""
    if not job.timeout:
        return ['wait "$pid"']
    marker = shlex.quote(str(layout.root / "timed-out"))
    t = math.ceil(job.timeout)
    return [
        f'( sleep {t}; touch {marker}; echo "ml-env: the run reached its time limit ({t} s): stopping it"; {stop} ) &',
        "watch=$!",
        'wait "$pid"; code=$?',
        'kill "$watch" 2>/dev/null',
        f"if [ -e {marker} ]; then exit 124; fi",
        'exit "$code"',
    ]


def _apptainer(job: Job, layout: Layout) -> str:
    """Apptainer (rendered, not run here): ``apptainer exec`` of the image by digest, the job's own
    user, a clean environment with the run's variables, the same folders bound."""
    q = shlex.quote
    flags = ["--containall", "--cleanenv", "--no-home", f"--pwd {CODE_DIR}"]
    flags += [f"--bind {q(f'{src}:{dst}:{mode}')}" for src, dst, mode in _mounts(job, layout)]
    flags += [f"--env {q(f'{k}={v}')}" for k, v in _envs(job).items()]
    flags += ['--env "RANK=$RANK,NODE_RANK=$NODE_RANK,LOCAL_RANK=0,WORLD_SIZE=$WORLD_SIZE"',
              '--env "MASTER_ADDR=$MASTER_ADDR,MASTER_PORT=$MASTER_PORT"']  # fmt: skip
    if job.resources.gpus:
        flags.append("--nv")
    if is_loopback(job.image.split("/", 1)[0]):
        flags.append("--nohttps")
    run = f"apptainer exec {' '.join(flags)} {q('docker://' + job.image)} {' '.join(q(a) for a in job.command)}"
    lines = [
        "#!/bin/bash",
        "# written by ml-env: this node's part of the run (apptainer)",
        "set -u",
        'export RANK="${SLURM_NODEID:-0}" NODE_RANK="${SLURM_NODEID:-0}" LOCAL_RANK=0',
        "trap 'kill \"$pid\" 2>/dev/null; exit 143' TERM INT",
        f"{run} &",
        "pid=$!",
    ]
    return "\n".join(lines + _wait(job, layout, 'kill "$pid"; sleep 10; kill -9 "$pid" 2>/dev/null')) + "\n"
