"""A run on a Slurm cluster: a ``Runner`` that submits a batch job and follows it.

The run's code (its snapshot, hashes checked), inputs and an outputs folder go to the compute
target's shared folder (``shared``: every node sees it at the same path), the batch script
(``runs.batch``) is given to ``sbatch``, and the job is followed through ``scontrol`` (state,
exit code, nodes, times) while its log (the shared ``slurm.log``) is read as it grows. When it
ends, its outputs come back into ``runs/<id>/outputs`` as a local run's do, and the shared folder
goes. Ctrl-C (or SIGTERM) cancels the job (``scancel``) and says so; a job that vanishes from the
controller is recorded ``lost``, never "running" for ever.

Slurm finds its cluster the usual way (``SLURM_CONF``, else ``/etc/slurm/slurm.conf``), from the
invoking user's environment; the commands run with a timeout and their output is bounded.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import EngineError, UsageError
from ..safe.grammar import printable
from ..settings.compute import Target
from .batch import Layout, render
from .record import RunStatus
from .runner import Job, Outcome, on_stop_signals
from .snapshot import tar_chunks

__all__ = ["SlurmRunner", "JobState", "job_state", "cancel", "follow_job", "conclude"]

POLL_S = 0.1
TIMEOUT_S = 60.0  # one Slurm command
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "SPECIAL_EXIT", "REVOKED"}  # fmt: skip
JOB_ID = re.compile(r"[0-9]{1,12}", re.ASCII)


@dataclass(frozen=True)
class JobState:
    job_id: str
    state: str  # Slurm's JobState, or "VANISHED" when the controller no longer knows it
    exit_code: int | None
    signal: int | None
    nodes: str
    reason: str
    times: dict[str, str]

    @property
    def ended(self) -> bool:
        return self.state in ENDED or self.state == "VANISHED"


def _slurm(args: list[str], what: str) -> str:
    exe = shutil.which(args[0])
    if exe is None:
        raise EngineError(f"{args[0]} is not installed: a Slurm target needs the Slurm client (slurm-client)")
    try:
        p = subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=TIMEOUT_S,
                           stdin=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise EngineError(f"{what}: {args[0]} did not answer in {TIMEOUT_S:.0f}s") from None
    if p.returncode != 0:
        line = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise EngineError(f"{what}: {args[0]} failed: {printable(line, 300)}")
    return p.stdout[: 1 << 20]


def job_state(job_id: str) -> JobState:
    """What the controller says of a job now (``VANISHED`` when it no longer knows it)."""
    try:
        text = _slurm(["scontrol", "show", "job", "-o", job_id], f"asking Slurm about job {job_id}")
    except EngineError as e:
        if "Invalid job id" in e.message:
            return JobState(job_id, "VANISHED", None, None, "", "the controller no longer knows the job", {})
        raise
    fields = dict(re.findall(r"(\w+)=(\S*)", text))
    code, _, sig = fields.get("ExitCode", "").partition(":")
    times = {k: fields[k] for k in ("SubmitTime", "StartTime", "EndTime") if fields.get(k) not in (None, "Unknown")}
    return JobState(
        job_id,
        fields.get("JobState", "UNKNOWN"),
        int(code) if code.isdigit() else None,
        int(sig) if sig.isdigit() else None,
        fields.get("NodeList", "") if fields.get("NodeList") != "(null)" else "",
        fields.get("Reason", "") if fields.get("Reason") != "None" else "",
        times,
    )


def cancel(job_id: str) -> None:
    _slurm(["scancel", job_id], f"cancelling job {job_id}")


class SlurmRunner:
    """Runs a job on the Slurm cluster a compute target names; ``nodes`` at once."""

    def __init__(self, target: Target, *, nodes: int | None = None, say: Callable[[str], None] = lambda _m: None):
        if target.type != "slurm":
            raise UsageError(f"compute target {target.name} is a {target.type} target, not slurm")
        shared = target.get("shared")
        if not shared:
            raise UsageError(
                f"compute target {target.name} names no shared folder: a run's code, inputs and outputs travel there",
                hint=f"set [compute.{target.name}] shared = \"/a/folder/every/node/sees\" in your user or machine config",
            )  # fmt: skip
        self.target, self.shared, self.say = target, Path(shared), say
        self.nodes = int(nodes if nodes is not None else target.get("nodes", 1))
        if not 1 <= self.nodes <= 64:
            raise UsageError("--nodes must be between 1 and 64")

    def precheck(self, opts: Any) -> None:
        """What a run's options alone say will fail: refused before anything is built or made."""
        if opts.secrets:
            raise UsageError("--secret is not passed to Slurm jobs: the controller keeps a job's environment",
                             hint="give the job its secrets the cluster's own way (a file only its user reads)")  # fmt: skip
        if opts.input_volumes:
            raise UsageError("--input NAME=volume:... names one engine's volume: not on a Slurm target")
        registry = getattr(opts.build, "registry", None)
        if not registry and "@sha256:" not in opts.environment:
            raise UsageError(
                "a Slurm run pulls the environment by digest on its nodes: the image must be in a registry",
                hint="give --registry (the nodes must reach it)",
            )
        if not self.shared.is_dir():
            raise UsageError(f"compute target {self.target.name}: its shared folder {self.shared} does not exist here")

    def check(self, job: Job) -> None:
        """What can fail before anything is submitted."""
        if "@" not in job.image or "/" not in job.image.split("@")[0]:
            raise UsageError(
                f"a Slurm run pulls the environment by digest on its nodes: {printable(job.image, 120)} is not in a "
                "registry", hint="give --registry (the nodes must reach it)",
            )  # fmt: skip
        if job.secret_names:
            raise UsageError("--secret is not passed to Slurm jobs: the controller keeps a job's environment",
                             hint="give the job its secrets the cluster's own way (a file only its user reads)")  # fmt: skip
        if job.volumes:
            raise UsageError("--input NAME=volume:... names one engine's volume: not on a Slurm target")
        if not self.shared.is_dir():
            raise UsageError(f"compute target {self.target.name}: its shared folder {self.shared} does not exist here")

    def run(self, job: Job, on_line: Callable[[str], None]) -> Outcome:
        job_id, layout = self.submit(job)
        return self.follow(job_id, layout, job.outputs, on_line)

    def submit(self, job: Job) -> tuple[str, Layout]:
        self.check(job)
        layout = Layout(self.shared / "ml-env-runs" / job.run_id)
        self._stage(job, layout)
        batch, launch = render(job, self.target.settings, self.nodes, layout)
        layout.script.write_text(batch)
        layout.launch.write_text(launch)
        out = _slurm(["sbatch", "--parsable", str(layout.script)], f"submitting run {job.run_id}").strip()
        job_id = out.split(";", 1)[0]
        if not JOB_ID.fullmatch(job_id):
            raise EngineError(f"sbatch answered {printable(out, 80)!r}, not a job id")
        self.say(f"submitted job {job_id} to {self.target.name} ({self.nodes} node(s)); log {layout.log}")
        return job_id, layout

    def follow(self, job_id: str, layout: Layout, outputs: Path, on_line: Callable[[str], None]) -> Outcome:
        state, canceled = follow_job(job_id, layout, on_line, self.say)
        return self.finish(state, layout, outputs, canceled=canceled)

    def where(self, job_id: str, layout: Layout) -> dict[str, Any]:
        """What the run record keeps of where it runs: enough to follow it from another process."""
        return {
            "compute": self.target.name, "type": "slurm", "job_id": job_id, "shared_dir": str(layout.root),
            "node_count": self.nodes, "launcher": self.target.get("launcher", "docker"),
            **({"partition": self.target.get("partition")} if self.target.get("partition") else {}),
            "files": "shared folder",
        }  # fmt: skip

    def finish(self, state: JobState, layout: Layout, outputs: Path, *, canceled: bool = False) -> Outcome:
        return conclude(state, layout, outputs, self.where(state.job_id, layout), canceled=canceled)

    def _stage(self, job: Job, layout: Layout) -> None:
        """The code (its snapshot, hashes checked as it is read), the inputs and the outputs
        folder (with the named outputs ``train`` made) in the run's shared folder."""
        from ..safe.tars import extract

        uid, gid = _ids(job.user)
        layout.root.mkdir(parents=True, mode=0o755)
        for d in (layout.code, layout.inputs, layout.outputs):
            d.mkdir()
        with tarfile.open(fileobj=_Chunks(tar_chunks(job.snapshot)), mode="r|") as tar:  # type: ignore[call-overload]
            extract(tar, layout.code, name=lambda n: n, refuse=_refuse, max_bytes=1 << 40, max_members=10**7)
        for name, path in job.inputs.items():
            if path.is_dir():
                shutil.copytree(path, layout.inputs / name, symlinks=True)
            else:
                (layout.inputs / name).mkdir()
                shutil.copy2(path, layout.inputs / name / path.name)
        for named in job.outputs.iterdir():
            if named.is_dir() and not named.is_symlink():
                (layout.outputs / named.name).mkdir()
        if (uid, gid) != (os.getuid(), os.getgid()):
            for p in [layout.root, *layout.root.rglob("*")]:
                os.chown(p, uid, gid, follow_symlinks=False)


def follow_job(
    job_id: str, layout: Layout, on_line: Callable[[str], None], say: Callable[[str], None]
) -> tuple[JobState, bool]:
    """Follow a submitted job until it ends: its log lines as they come; Ctrl-C cancels it."""
    canceled: list[bool] = []

    def stop(_signum: int) -> None:
        if not canceled:
            canceled.append(True)
            say(f"cancelling job {job_id} (scancel)")
            cancel(job_id)

    with on_stop_signals(stop), _tail(layout.log) as lines:
        while True:
            for line in lines():
                on_line(line)
            state = job_state(job_id)
            if state.ended:
                time.sleep(POLL_S)  # the last lines reach the shared log after the state changes
                for line in lines():
                    on_line(line)
                return state, bool(canceled)
            time.sleep(POLL_S)


def conclude(
    state: JobState, layout: Layout, outputs: Path, where: dict[str, Any], *, canceled: bool = False
) -> Outcome:
    """How an ended job ends the run: its outputs brought back, its shared folder removed."""
    if layout.outputs.is_dir():
        shutil.copytree(layout.outputs, outputs, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(layout.root, ignore_errors=True)
    where = {k: v for k, v in where.items() if k != "shared_dir"}
    where.update(state=state.state, nodes=state.nodes, times=state.times)
    code = state.exit_code
    if state.state == "COMPLETED":
        return Outcome(RunStatus.COMPLETED, 0, None, where)
    if state.state == "CANCELLED" or canceled:
        return Outcome(RunStatus.CANCELED, code, "the Slurm job was cancelled", where)
    if state.state in ("TIMEOUT", "DEADLINE") or code == 124:
        return Outcome(RunStatus.TIMED_OUT, 124, "the run reached its time limit", where)
    if state.state == "VANISHED":
        return Outcome(RunStatus.LOST, None, f"job {state.job_id} vanished from the Slurm controller", where)
    why = {"NODE_FAIL": "a node failed", "OUT_OF_MEMORY": "out of memory", "BOOT_FAIL": "a node did not boot",
           "PREEMPTED": "the job was preempted"}.get(state.state, f"the script exited with {code}")  # fmt: skip
    return Outcome(RunStatus.FAILED, code, why, where)


def _ids(user: str | None) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user or "")
    return (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (os.getuid(), os.getgid())


def _refuse(name: str | None, why: str) -> UsageError:
    return UsageError(f"the source snapshot{f' ({name})' if name else ''} {why}")


class _Chunks:
    """A file object over an iterator of byte chunks (a tar stream read once, in order)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf = chunks, b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        out, self.buf = (self.buf, b"") if n < 0 else (self.buf[:n], self.buf[n:])
        return out


class _tail:  # noqa: N801 - a context manager used as a function
    """The lines a growing file gets, from its start, as they come (a partial last line waits)."""

    def __init__(self, path: Path) -> None:
        self.path, self.rest = path, b""
        self.fh: IO[bytes] | None = None

    def __enter__(self) -> Callable[[], list[str]]:
        return self.lines

    def __exit__(self, *exc: object) -> None:
        if self.fh is not None:
            self.fh.close()

    def lines(self) -> list[str]:
        if self.fh is None:
            try:
                self.fh = open(self.path, "rb")  # noqa: SIM115 - closed on exit
            except FileNotFoundError:
                return []
        data = self.rest + self.fh.read(1 << 20)
        *done, self.rest = data.split(b"\n")
        return [d.decode(errors="replace") for d in done]
