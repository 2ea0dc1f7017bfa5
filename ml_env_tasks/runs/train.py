"""Training runs inside environment containers: the ScriptRunConfig / Experiment.submit analogue.

A run: resolve the environment (build or reuse it by hash, or take an image reference),
snapshot the source directory (ignore files honoured, content hashed, symlinks contained),
create a container with read-only inputs and a writable outputs directory, stream the snapshot
in, start it, stream its log, and record everything in ``runs/<run-id>/run.json`` (written
atomically, at the start and at the end, so a killed run still leaves a valid record).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..engine.resources import Resources
from ..errors import MlEnvError, RecordError, UsageError
from ..release.provenance import git_info
from ..safe.digests import file_sha256
from ..safe.fsutil import read_bounded
from ..safe.grammar import ENV_NAME, INPUT_NAME, matches, printable
from ..safe.paths import no_link_out
from ..safe.redact import Redactor
from ..safe.tars import strip_privileges
from ..safe.untrusted import json_loads
from .history import reap_lost
from .placeholders import expand
from .record import CliProcess, RunEnvironment, RunRecord, RunStatus, SourceInfo, now
from .runner import INPUTS_DIR, Job, LocalDockerRunner, Outcome, Runner
from .snapshot import SNAPSHOT_MAX_MB, SNAPSHOT_WARN_MB, Snapshot, content_hash, snapshot

__all__ = [
    "RunOptions",
    "RunResult",
    "train",
    "parse_pairs",
    "split_inputs",
    "finish_run",
    "METRIC_LINE",
    "metric_value",
    "check_script",
    "without_outputs",
]

METRIC_LINE = re.compile(r"ML_ENV_METRIC\s+([A-Za-z0-9_.\-/]+)\s*=\s*(\S+)\s*", re.ASCII)


@dataclass(frozen=True)
class RunOptions:
    environment: str  # an environment file, curated/NAME, NAME:VERSION, or an image reference
    source: Path
    script: str
    args: tuple[str, ...] = ()
    experiment: str | None = None
    inputs: dict[str, Path] = field(default_factory=dict)
    input_volumes: dict[str, str] = field(default_factory=dict)  # NAME -> a volume the engine has
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    timeout: float | None = None
    runs_dir: Path = field(default_factory=lambda: Path(os.environ.get("ML_ENV_RUNS_DIR", "runs")))
    user: str | None = None  # default: the invoking uid:gid, so outputs are the user's
    build: Any = None  # BuildOptions for a spec environment
    versions: Path | None = None  # the versions file, for NAME:VERSION environments
    snapshot_warn_mb: float = SNAPSHOT_WARN_MB
    snapshot_max_mb: float = SNAPSHOT_MAX_MB


@dataclass
class RunResult:
    record: RunRecord
    run_dir: Path

    @property
    def run_id(self) -> str:
        return self.record.run_id

    @property
    def status(self) -> RunStatus:
        return self.record.status

    @property
    def exit_code(self) -> int | None:
        return self.record.exit_code

    @property
    def outputs(self) -> Path:
        return self.run_dir / "outputs"

    @property
    def cli_exit_code(self) -> int:
        if self.status is RunStatus.TIMED_OUT:
            return 124
        if self.status is RunStatus.CANCELED:
            return 130
        if self.exit_code is None:
            return 1
        return self.exit_code


def _new_run_id(experiment: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{experiment}_{stamp}_{os.urandom(4).hex()}"


def _parse_metrics(outputs: Path, stdout_metrics: dict[str, Any]) -> dict[str, Any]:

    metrics: dict[str, Any] = {}
    f = outputs / "metrics.json"
    if f.is_file() and not f.is_symlink():
        try:
            data = json_loads(read_bounded(f, 4 * 2**20, error=RecordError), error=RecordError, file=str(f))
            if isinstance(data, dict):
                metrics.update(data)
        except (OSError, ValueError, RecursionError, RecordError):
            metrics["_error"] = "metrics.json is not valid JSON (or over 4 MiB)"
    metrics.update(stdout_metrics)
    return metrics


def metric_value(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


def train(
    opts: RunOptions,
    *,
    on_line: Callable[[str], None] | None = None,
    info: Callable[[str], None] | None = None,
    runner: Runner | None = None,
    detach: bool = False,
) -> RunResult:
    """Run ``opts`` and wait for its end; ``detach``: submit it to ``runner`` (a cluster's, which
    has ``submit``) and return at once, the run ``running`` (``runs wait`` follows it)."""
    say = info or (lambda m: print(f"ml-env: {m}", file=sys.stderr, flush=True))
    emit = on_line or (lambda line: print(line, flush=True))
    _validate(opts)
    precheck = getattr(runner, "precheck", None)
    if precheck is not None:
        precheck(opts)  # a cluster's refusals come before the snapshot and the build
    args, output_names = expand(opts.args, [*opts.inputs, *opts.input_volumes])
    for lost in reap_lost(opts.runs_dir, warn=lambda m: say("warning: " + m)):
        say(f"warning: run {lost} had lost its ml-env process: marked lost, its container removed")
    experiment = opts.experiment or Path(opts.script).stem
    run_id = _new_run_id(re.sub(r"[^A-Za-z0-9_.-]", "-", experiment))
    run_dir = opts.runs_dir / run_id
    outputs = run_dir / "outputs"
    snap = without_outputs(
        snapshot(
            opts.source, warn_mb=opts.snapshot_warn_mb, max_mb=opts.snapshot_max_mb, warn=lambda m: say("warning: " + m)
        ),
        warn=lambda m: say("warning: " + m),
    )
    if not snap.has(Path(opts.script).as_posix()):
        raise UsageError(
            f"script {opts.script} is not in the source snapshot of {opts.source}", hint="is it ignored, or misspelt?"
        )
    # what would stop the run once the image is there stops it before anything is built
    user = opts.user if opts.user is not None else f"{os.getuid()}:{os.getgid()}"
    _check_runs_dir(opts.runs_dir, user)
    if detach and getattr(runner, "submit", None) is None:
        raise UsageError("--detach leaves a run to a cluster: give --compute NAME of a Slurm target")
    if runner is None:
        runner = LocalDockerRunner()
        runner.check(opts.resources, dict(opts.input_volumes))
    from ..build import Reporter
    from ..build.resolve import resolve_environment

    class _Say(Reporter):
        def info(self, msg: str) -> None:
            say(msg)

        def warn(self, msg: str) -> None:
            say("warning: " + msg)

    resolved = resolve_environment(
        opts.environment, opts.build, reporter=_Say(stream_logs=False), versions=opts.versions
    )
    environment = RunEnvironment(
        resolved.spec, resolved.name, resolved.hash, resolved.pinned, resolved.digest, resolved.registered
    )
    python, shm = resolved.python, resolved.shm_size
    try:
        outputs.mkdir(parents=True)
    except OSError as e:
        raise UsageError(f"--runs-dir {opts.runs_dir}: cannot make a run folder there ({e.strerror})") from None
    _give_outputs_to(outputs, user)
    for name in output_names:  # ${{outputs.NAME}} is a folder that exists, as Azure ML mounts it
        (outputs / name).mkdir()
        _give_outputs_to(outputs / name, user)
    git = git_info(opts.source, [e.rel for e in snap.files])  # an untracked file it ships makes it dirty
    redactor = Redactor([os.environ[n] for n in opts.secrets])
    resources = opts.resources.with_default_shm(shm)
    record = RunRecord(
        run_id=run_id,
        experiment=experiment,
        status=RunStatus.RUNNING,
        environment=environment,
        source=SourceInfo(
            str(opts.source),
            snap.hash,
            len(snap.files),
            snap.size,
            snap.ignore_file,
            git.commit,
            git.dirty,
            list(snap.skipped),
        ),  # fmt: skip
        command=[python, opts.script, *args],  # as run: placeholders replaced
        arguments=list(opts.args),  # as given
        inputs={
            **{
                name: {"path": str(p.resolve()), "mount": f"{INPUTS_DIR}/{name}", "sha256": content_hash(p)}
                for name, p in opts.inputs.items()
            },
            **{name: {"volume": v, "mount": f"{INPUTS_DIR}/{name}"} for name, v in opts.input_volumes.items()},
        },
        env_vars=dict(opts.env_vars),
        secrets=list(opts.secrets),
        resources=resources,
        timeout_s=opts.timeout,
        started=now(),
        cli=CliProcess.this(),
    )
    record.save(run_dir)
    say(f"run {run_id}: {' '.join(record.command)} in {environment.image}")
    stdout_metrics: dict[str, Any] = {}
    with open(run_dir / "log.txt", "w", encoding="utf-8") as log:

        def line_out(raw: str) -> None:
            line = redactor(raw)
            log.write(line + "\n")
            log.flush()
            m = METRIC_LINE.fullmatch(line)
            if m:
                stdout_metrics[m.group(1)] = metric_value(m.group(2))
            emit(line)

        job = Job(
            run_id=run_id,
            image=environment.image,
            command=record.command,
            snapshot=snap,
            inputs=opts.inputs,
            outputs=outputs,
            env_vars=dict(opts.env_vars),
            secret_names=tuple(opts.secrets),
            user=user,
            resources=resources,
            timeout=opts.timeout,
            volumes=dict(opts.input_volumes),
        )
        if detach:
            job_id, layout = runner.submit(job)  # type: ignore[attr-defined]
            record.engine = runner.where(job_id, layout)  # type: ignore[attr-defined]
            record.save(run_dir)
            say(f"run {run_id}: job {job_id}, detached; `ml-env runs wait {run_id}` follows it to its end")
            return RunResult(record, run_dir)
        if isinstance(runner, LocalDockerRunner) and runner.remote:
            say(f"on {runner.endpoint.describe()}: code and inputs go in, outputs come back, through its API")
        try:
            outcome = runner.run(job, line_out)
        except MlEnvError as e:
            finish_run(run_dir, record, Outcome(RunStatus.FAILED, None, str(e)), outputs, stdout_metrics, say)
            raise
        except BaseException as e:
            finish_run(
                run_dir,
                record,
                Outcome(RunStatus.FAILED, None, f"{type(e).__name__}: {e}"),
                outputs,
                stdout_metrics,
                say,
            )
            raise
    finish_run(run_dir, record, outcome, outputs, stdout_metrics, say)
    say(
        f"run {run_id}: {record.status}"
        + (f" (exit {record.exit_code})" if record.exit_code is not None else "")
        + (f": {record.reason}" if record.reason and record.status is not RunStatus.COMPLETED else "")
    )
    return RunResult(record, run_dir)


def without_outputs(snap: Snapshot, warn: Callable[[str], None]) -> Snapshot:
    """The snapshot less its top-level ``outputs``: in the container ``./outputs`` is the run's
    outputs directory (as Azure ML collects it), so files left there by an earlier local run are
    neither shipped as code nor reported as this run's outputs."""
    kept = tuple(e for e in snap.files if e.rel != "outputs" and not e.rel.startswith("outputs/"))
    dropped = len(snap.files) - len(kept)
    if not dropped:
        return snap
    warn(
        f"{dropped} file(s) under outputs/ in {snap.root} are left out of the snapshot: "
        "./outputs in the run is the run's outputs directory"
    )
    return replace(snap, files=kept)


def finish_run(
    run_dir: Path,
    record: RunRecord,
    outcome: Outcome,
    outputs: Path,
    stdout_metrics: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    # the container wrote the outputs (a bind mount, locally) as whatever uid it ran as, root
    # included, and is gone now: no setuid/setgid file, device, FIFO or socket stays there
    strip_privileges(outputs, lambda m: say("warning: " + m), label="outputs/")
    record.status, record.exit_code, record.reason = outcome.status, outcome.exit_code, outcome.reason
    record.engine = outcome.engine
    record.ended = now()
    record.metrics = _parse_metrics(outputs, stdout_metrics)
    files = []
    for p in sorted(outputs.rglob("*")):
        if p.is_file() and not p.is_symlink():
            files.append(
                {
                    "path": p.relative_to(outputs).as_posix(),
                    "bytes": p.stat().st_size,
                    "sha256": file_sha256(p, use_cache=False),
                }
            )
    record.outputs = files
    record.save(run_dir)


def _check_runs_dir(runs_dir: Path, user: str) -> None:
    """A run folder can be made in ``runs_dir`` and handed to the run's user: a probe folder,
    made and removed, through the same steps the run's own takes."""
    import shutil
    import tempfile

    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
        probe = Path(tempfile.mkdtemp(prefix=".probe-", dir=runs_dir))
    except OSError as e:
        raise UsageError(f"--runs-dir {runs_dir}: cannot make a run folder there ({e.strerror})") from None
    try:
        _give_outputs_to(probe, user)
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def _give_outputs_to(outputs: Path, user: str) -> None:
    """The container's user must be able to write the outputs: hand the directory to that uid."""
    m = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    if not m:
        return  # a user name: resolved inside the image, nothing to hand over here
    uid, gid = int(m.group(1)), int(m.group(2) or m.group(1))
    if (uid, gid) == (os.getuid(), os.getgid()):
        return
    try:
        os.chown(outputs, uid, gid)
    except PermissionError:
        raise UsageError(
            f"--user {user}: cannot give the outputs directory {outputs} to that uid (not root)",
            hint="leave --user unset to run as yourself",
        ) from None


VOLUME_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}", re.A)


def _validate(opts: RunOptions) -> None:
    for name, vol in opts.input_volumes.items():
        if not matches(INPUT_NAME, name):
            raise UsageError(
                f"input name {printable(name, 60)!r} must be a letter then letters, digits or _",
                hint="--input NAME=volume:VOLUME",
            )
        if name in opts.inputs:
            raise UsageError(f"input {name} given twice")
        if not VOLUME_NAME.fullmatch(vol):
            raise UsageError(
                f"input {name}: {printable(vol, 60)!r} is not a volume name", hint="--input NAME=volume:VOLUME"
            )
    for name, p in opts.inputs.items():
        if not matches(INPUT_NAME, name):
            raise UsageError(
                f"input name {printable(name, 60)!r} must be a letter then letters, digits or _",
                hint="--input NAME=PATH",
            )
        if "\0" in str(p) or not p.exists():
            raise UsageError(f"input {name}: {printable(p)} not found")
    for n in opts.secrets:
        if not matches(ENV_NAME, n):
            raise UsageError(f"secret name {printable(n, 60)!r} is not an environment variable name")
        if n not in os.environ:
            raise UsageError(
                f"secret {n} is not set in this environment", hint="--secret NAME passes the value of $NAME"
            )
    for k in opts.env_vars:
        if not matches(ENV_NAME, k):
            raise UsageError(f"--env-var {printable(k, 60)!r} is not a variable name")
    for k, v in opts.env_vars.items():
        if "\0" in v:
            raise UsageError(f"--env-var {k}: the value contains a NUL character")
    if opts.timeout is not None and not 0 < opts.timeout < 10**8:
        raise UsageError("--timeout must be positive (seconds)")
    if opts.user is not None and not re.fullmatch(
        r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?", opts.user
    ):
        raise UsageError("--user must be NAME, UID or UID:GID")
    if opts.user is not None and any(p.isdigit() and int(p) > 2**31 - 1 for p in opts.user.split(":")):
        raise UsageError("--user: a uid or gid is at most 2147483647")
    check_script(opts.script)


def check_script(script: str) -> None:
    """A script inside the source and not under ``outputs/`` (the run's outputs folder there),
    for every runner."""
    path = Path(script)
    if "\0" in script or path.is_absolute() or ".." in path.parts:
        raise UsageError(f"--script {printable(script)} must be a path inside --source")
    if path.parts and path.parts[0] == "outputs":
        raise UsageError(
            f"--script {printable(script)} is under outputs/, which in the run is the outputs directory",
            hint="move the script out of outputs/",
        )


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise UsageError(f"{what} {printable(item, 80)!r} must be NAME=VALUE")
        out[k] = v
    return out


def split_inputs(pairs: dict[str, str]) -> tuple[dict[str, Path], dict[str, str]]:
    """``--input NAME=PATH`` and ``--input NAME=volume:VOLUME`` apart (a local path that starts
    with ``volume:`` is written ``./volume:...``)."""
    paths = {k: no_link_out(Path(v), f"--input {k}=") for k, v in pairs.items() if not v.startswith("volume:")}
    volumes = {k: v.removeprefix("volume:") for k, v in pairs.items() if v.startswith("volume:")}
    return paths, volumes
