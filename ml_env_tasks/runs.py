"""Training runs inside environment containers: the ScriptRunConfig / Experiment.submit analogue.

A run: resolve the environment (build or reuse it by hash, or take an image reference),
snapshot the source directory (ignore files honoured, content hashed), create a container
with read-only inputs and a writable outputs directory, copy the snapshot in, start it,
stream its log, and record everything in ``runs/<run-id>/run.json`` (written atomically, at
the start and at the end, so a killed run still leaves a valid record).

Runner: :class:`LocalDockerRunner` is the one implementation; it talks to whatever engine
``DOCKER_HOST`` names. A Kubernetes Job or an Azure ML job would be another ``Runner`` (see
the README); none is faked here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .errors import EngineError, MlEnvError, SpecError
from .provenance import git_info
from .redact import Redactor

__all__ = [
    "RunOptions",
    "RunResult",
    "Snapshot",
    "snapshot",
    "train",
    "list_runs",
    "load_run",
    "Runner",
    "LocalDockerRunner",
]

CODE_DIR = "/mnt/code"
INPUTS_DIR = "/mnt/inputs"
OUTPUT_DIR = "/mnt/outputs"
SNAPSHOT_WARN_MB = 300  # Azure ML's limit for a snapshot
SNAPSHOT_MAX_MB = 2000
ALWAYS_IGNORED = [".git/", "__pycache__/", ".nox/", ".ml-env/", ".pytest_cache/", ".amlignore", "runs/"]
METRIC_LINE = re.compile(r"^ML_ENV_METRIC\s+([A-Za-z0-9_.\-/]+)\s*=\s*(\S+)\s*$")
INPUT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")


# --- source snapshot ----------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    root: Path
    files: tuple[tuple[str, int, str], ...]  # (relative path, size, sha256)
    ignore_file: str | None

    @property
    def size(self) -> int:
        return sum(f[1] for f in self.files)

    @property
    def hash(self) -> str:
        h = hashlib.sha256()
        for rel, _size, digest in self.files:
            h.update(f"{rel}\0{digest}\n".encode())
        return h.hexdigest()


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(
    source: Path,
    *,
    warn_mb: float = SNAPSHOT_WARN_MB,
    max_mb: float = SNAPSHOT_MAX_MB,
    warn: Callable[[str], None] = print,
) -> Snapshot:
    """The files of ``source`` a run gets: .amlignore, else .dockerignore and .gitignore, honoured."""
    import pathspec

    if not source.is_dir():
        raise MlEnvError(f"source directory {source} not found", hint="--source takes a directory")
    patterns = list(ALWAYS_IGNORED)
    used = None
    aml = source / ".amlignore"
    if aml.exists():
        patterns += aml.read_text().splitlines()
        used = ".amlignore"
    else:
        found = [n for n in (".dockerignore", ".gitignore") if (source / n).exists()]
        for n in found:
            patterns += (source / n).read_text().splitlines()
        used = "+".join(found) or None
    spec = pathspec.GitIgnoreSpec.from_lines(patterns)
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        rel_dir = Path(dirpath).relative_to(source)
        dirnames[:] = sorted(d for d in dirnames if not spec.match_file(f"{(rel_dir / d).as_posix()}/"))
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if spec.match_file(rel):
                continue
            p = Path(dirpath) / name
            if p.is_symlink() and not p.exists():
                continue
            files.append((rel, p.stat().st_size, p))
    total = sum(f[1] for f in files)
    biggest = ", ".join(f"{r} ({s / 2**20:.1f} MB)" for r, s, _ in sorted(files, key=lambda f: -f[1])[:5])
    if total > max_mb * 2**20:
        raise MlEnvError(
            f"source snapshot of {source} is {total / 2**20:.0f} MB, over the {max_mb:.0f} MB limit; biggest files: {biggest}",
            hint="add them to .amlignore (or .dockerignore/.gitignore) and pass data with --input",
        )
    if total > warn_mb * 2**20:
        warn(f"source snapshot is {total / 2**20:.0f} MB (over {warn_mb:.0f} MB); biggest files: {biggest}")
    return Snapshot(source, tuple((r, s, _file_sha(p)) for r, s, p in files), used)


def _copy_snapshot(snap: Snapshot, dest: Path) -> None:
    for rel, _size, _digest in snap.files:
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(snap.root / rel, target)


def _content_hash(path: Path) -> str:
    if path.is_file():
        return _file_sha(path)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            h.update(f"{p.relative_to(path).as_posix()}\0{_file_sha(p)}\n".encode())
    return h.hexdigest()


# --- options, record ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    env: str  # an environment file, or an image reference
    source: Path
    script: str
    args: tuple[str, ...] = ()
    experiment: str | None = None
    inputs: dict[str, Path] = field(default_factory=dict)
    env_vars: dict[str, str] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()
    cpus: float | None = None
    memory: str | None = None
    shm_size: str | None = None
    gpus: str | None = None
    timeout: float | None = None
    runs_dir: Path = field(default_factory=lambda: Path(os.environ.get("ML_ENV_RUNS_DIR", "runs")))
    user: str | None = None  # default: the invoking uid:gid, so outputs are the user's
    build: Any = None  # BuildOptions for a spec environment
    snapshot_warn_mb: float = SNAPSHOT_WARN_MB
    snapshot_max_mb: float = SNAPSHOT_MAX_MB


@dataclass
class RunResult:
    run_id: str
    status: str  # running | completed | failed | canceled | timed_out
    exit_code: int | None
    run_dir: Path
    record: dict[str, Any]

    @property
    def outputs(self) -> Path:
        return self.run_dir / "outputs"

    @property
    def cli_exit_code(self) -> int:
        if self.status == "timed_out":
            return 124
        if self.status == "canceled":
            return 130
        if self.exit_code is None:
            return 1
        return self.exit_code


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _new_run_id(experiment: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{experiment}_{stamp}_{uuid.uuid4().hex[:8]}"


def _parse_metrics(outputs: Path, stdout_metrics: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    f = outputs / "metrics.json"
    if f.is_file():
        try:
            data = json.loads(f.read_text())
            if isinstance(data, dict):
                metrics.update(data)
        except ValueError:
            metrics["_error"] = "metrics.json is not valid JSON"
    metrics.update(stdout_metrics)
    return metrics


def _metric_value(v: str) -> Any:
    for conv in (int, float):
        try:
            return conv(v)
        except ValueError:
            pass
    return v


# --- runner -------------------------------------------------------------------------------


class Runner(Protocol):
    """Runs a prepared job somewhere and reports its exit code. One implementation here."""

    def run(self, job: Job, on_line: Callable[[str], None]) -> tuple[str, int | None, str | None]: ...


@dataclass
class Job:
    run_id: str
    image: str
    command: list[str]
    code_dir: Path  # the snapshot copy on the host, copied into the container
    inputs: dict[str, Path]
    outputs: Path
    env_vars: dict[str, str]
    secret_names: tuple[str, ...]
    user: str | None
    cpus: float | None
    memory: str | None
    shm_size: str | None
    gpus: str | None
    timeout: float | None


class LocalDockerRunner:
    """A container on the engine DOCKER_HOST names (local socket, ssh:// or tcp://).

    Inputs and outputs are bind mounts, so they need the engine's host to see these paths.
    """

    def __init__(self) -> None:
        from .engine import Containers

        self.containers = Containers()

    def run(self, job: Job, on_line: Callable[[str], None]) -> tuple[str, int | None, str | None]:
        c = self.containers
        if job.gpus and not c.gpus_available():
            raise EngineError(f"--gpus {job.gpus} asked for, but this engine has no GPU runtime or device")
        volumes = [(str(p.resolve()), f"{INPUTS_DIR}/{name}", "ro") for name, p in job.inputs.items()]
        volumes.append((str(job.outputs.resolve()), OUTPUT_DIR, "rw"))
        envs = {
            **job.env_vars,
            "ML_ENV_RUN_ID": job.run_id,
            "ML_ENV_OUTPUT_DIR": OUTPUT_DIR,
            "HOME": "/tmp",
            **{f"ML_ENV_INPUT_{name.upper()}": f"{INPUTS_DIR}/{name}" for name in job.inputs},
        }
        # secret values go in the API request body only (no command line, no file); the
        # container that holds them is removed at the end of the run, whatever happens
        envs.update({n: os.environ[n] for n in job.secret_names})
        cid = c.create(
            job.image,
            job.command,
            name=f"ml-env-run-{job.run_id}"[:128],
            envs=envs,
            volumes=volumes,
            labels={"ml-env.run": job.run_id},
            workdir=CODE_DIR,
            user=job.user,
            cpus=job.cpus,
            memory=job.memory,
            shm_size=job.shm_size,
            gpus=job.gpus,
        )
        stop_reason: list[str] = []

        def stop(reason: str) -> None:
            if not stop_reason:
                stop_reason.append(reason)
                threading.Thread(target=c.stop, args=(cid, 5), daemon=True).start()

        timer = threading.Timer(job.timeout, stop, args=("timed_out",)) if job.timeout else None
        try:
            with on_stop_signals(lambda signum: stop("canceled")):
                c.copy_in(cid, job.code_dir, CODE_DIR)
                c.start(cid)
                if timer:
                    timer.start()
                try:
                    for line in c.logs(cid):
                        on_line(line)
                    code = c.wait(cid)
                except Exception as e:  # the engine went away mid-run
                    return "failed", None, f"lost the container: {_short(e)}"
            if stop_reason:
                return stop_reason[0], code, None
            st = c.state(cid)
            if st.get("oom_killed"):
                return "failed", code, "the container ran out of memory (OOM-killed)"
            return (
                ("completed" if code == 0 else "failed"),
                code,
                None if code == 0 else f"the script exited with {code}",
            )
        finally:
            if timer:
                timer.cancel()
            c.remove(cid)


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


# --- the run ------------------------------------------------------------------------------


def _resolve_env(opts: RunOptions, info: Callable[[str], None]) -> dict[str, Any]:
    p = Path(opts.env)
    if p.suffix == ".toml" or p.exists():
        from . import spec
        from .build import BuildOptions, Reporter, build

        bopts = opts.build or BuildOptions()
        result = build(p, bopts, Reporter(stream_logs=False))
        info(f"environment {result.name}: {'built' if result.built else 'reused'} {result.image}")
        env = spec.load(p)
        image = f"{result.image}@{result.digest}" if bopts.registry and result.digest else result.image
        python = "/opt/ml-env/bin/python" if (env.has_python_deps and not env.user_managed) else env.interpreter
        return {
            "spec": str(p),
            "name": result.name,
            "hash": result.hash,
            "image": image,
            "digest": result.digest,
            "python": python,
            "shm_size": env.shm_size,
        }
    from .engine import Containers
    from .spec import check_image_ref

    check_image_ref(opts.env, None, "--env")
    c = Containers()
    digest = c.image_digest(opts.env)
    if digest is None:
        from .registry import RegistryClient, parse_ref

        r = parse_ref(opts.env)
        found = RegistryClient(r.host).head_manifest(r.repository, r.reference)
        if found is None:
            raise MlEnvError(f"image {opts.env} is neither in the local engine nor in its registry")
        digest = found.digest
    return {
        "spec": None,
        "name": None,
        "hash": None,
        "image": opts.env,
        "digest": digest,
        "python": "python3",
        "shm_size": None,
    }


def train(
    opts: RunOptions,
    *,
    on_line: Callable[[str], None] | None = None,
    info: Callable[[str], None] | None = None,
    runner: Runner | None = None,
) -> RunResult:
    say = info or (lambda m: print(f"ml-env: {m}", file=sys.stderr, flush=True))
    emit = on_line or (lambda line: print(line, flush=True))
    _validate(opts)
    experiment = opts.experiment or Path(opts.script).stem
    run_id = _new_run_id(re.sub(r"[^A-Za-z0-9_.-]", "-", experiment))
    run_dir = opts.runs_dir / run_id
    outputs = run_dir / "outputs"
    snap = snapshot(
        opts.source, warn_mb=opts.snapshot_warn_mb, max_mb=opts.snapshot_max_mb, warn=lambda m: say("warning: " + m)
    )
    if not any(f[0] == Path(opts.script).as_posix() for f in snap.files):
        raise MlEnvError(
            f"script {opts.script} is not in the source snapshot of {opts.source}", hint="is it ignored, or misspelt?"
        )
    env = _resolve_env(opts, say)
    outputs.mkdir(parents=True)
    user = opts.user if opts.user is not None else f"{os.getuid()}:{os.getgid()}"
    _give_outputs_to(outputs, user)
    git = git_info(opts.source)
    redactor = Redactor([os.environ[n] for n in opts.secrets])
    record: dict[str, Any] = {
        "run_id": run_id,
        "experiment": experiment,
        "status": "running",
        "environment": {k: env[k] for k in ("spec", "name", "hash", "image", "digest")},
        "source": {
            "path": str(opts.source),
            "snapshot_hash": snap.hash,
            "files": len(snap.files),
            "bytes": snap.size,
            "ignore_file": snap.ignore_file,
            "git_commit": git.commit,
            "git_dirty": git.dirty,
        },
        "command": [env["python"], opts.script, *opts.args],
        "arguments": list(opts.args),
        "inputs": {
            name: {"path": str(p.resolve()), "mount": f"{INPUTS_DIR}/{name}", "sha256": _content_hash(p)}
            for name, p in opts.inputs.items()
        },
        "env_vars": dict(opts.env_vars),
        "secrets": list(opts.secrets),  # names only: values are never recorded
        "resources": {
            "cpus": opts.cpus,
            "memory": opts.memory,
            "shm_size": opts.shm_size or env["shm_size"],
            "gpus": opts.gpus,
            "timeout_s": opts.timeout,
        },
        "started": _now(),
        "ended": None,
        "exit_code": None,
        "reason": None,
        "metrics": {},
        "outputs": [],
        "log": "log.txt",
    }
    write_json_atomic(run_dir / "run.json", record)
    say(f"run {run_id}: {' '.join(record['command'])} in {env['image']}")
    stdout_metrics: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="ml-env-snapshot-") as td,
        open(run_dir / "log.txt", "w", encoding="utf-8") as log,
    ):
        code_dir = Path(td)
        _copy_snapshot(snap, code_dir)

        def line_out(raw: str) -> None:
            line = redactor(raw)
            log.write(line + "\n")
            log.flush()
            m = METRIC_LINE.match(line)
            if m:
                stdout_metrics[m.group(1)] = _metric_value(m.group(2))
            emit(line)

        job = Job(
            run_id=run_id,
            image=env["image"],
            command=record["command"],
            code_dir=code_dir,
            inputs=opts.inputs,
            outputs=outputs,
            env_vars=dict(opts.env_vars),
            secret_names=tuple(opts.secrets),
            user=user,
            cpus=opts.cpus,
            memory=opts.memory,
            shm_size=record["resources"]["shm_size"],
            gpus=opts.gpus,
            timeout=opts.timeout,
        )
        try:
            status, code, reason = (runner or LocalDockerRunner()).run(job, line_out)
        except MlEnvError as e:
            status, code, reason = "failed", None, str(e)
            _finish(run_dir, record, status, code, reason, outputs, stdout_metrics)
            raise
        except BaseException as e:
            status, code, reason = "failed", None, f"{type(e).__name__}: {e}"
            _finish(run_dir, record, status, code, reason, outputs, stdout_metrics)
            raise
    _finish(run_dir, record, status, code, reason, outputs, stdout_metrics)
    say(
        f"run {run_id}: {status}"
        + (f" (exit {code})" if code is not None else "")
        + (f": {reason}" if reason and status != "completed" else "")
    )
    return RunResult(run_id, status, code, run_dir, record)


def _finish(
    run_dir: Path,
    record: dict[str, Any],
    status: str,
    code: int | None,
    reason: str | None,
    outputs: Path,
    stdout_metrics: dict[str, Any],
) -> None:
    record.update(status=status, exit_code=code, reason=reason, ended=_now())
    record["metrics"] = _parse_metrics(outputs, stdout_metrics)
    files = []
    for p in sorted(outputs.rglob("*")):
        if p.is_file():
            files.append({"path": p.relative_to(outputs).as_posix(), "bytes": p.stat().st_size, "sha256": _file_sha(p)})
    record["outputs"] = files
    write_json_atomic(run_dir / "run.json", record)


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
        raise MlEnvError(
            f"--user {user}: cannot give the outputs directory {outputs} to that uid (not root)",
            hint="leave --user unset to run as yourself",
        ) from None


def _validate(opts: RunOptions) -> None:
    for name, p in opts.inputs.items():
        if not INPUT_NAME.match(name):
            raise MlEnvError(
                f"input name {name!r} must be a letter then letters, digits or _", hint="--input NAME=PATH"
            )
        if not p.exists():
            raise MlEnvError(f"input {name}: {p} not found")
    for n in opts.secrets:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", n):
            raise MlEnvError(f"secret name {n!r} is not an environment variable name")
        if n not in os.environ:
            raise MlEnvError(
                f"secret {n} is not set in this environment", hint="--secret NAME passes the value of $NAME"
            )
    for k in opts.env_vars:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
            raise MlEnvError(f"--env-var {k!r} is not a variable name")
    if opts.timeout is not None and opts.timeout <= 0:
        raise MlEnvError("--timeout must be positive (seconds)")
    if Path(opts.script).is_absolute() or ".." in Path(opts.script).parts:
        raise MlEnvError(f"--script {opts.script} must be a path inside --source")


# --- history ------------------------------------------------------------------------------


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    out = []
    if runs_dir.is_dir():
        for d in runs_dir.iterdir():
            f = d / "run.json"
            if f.is_file():
                with contextlib.suppress(ValueError, OSError):
                    out.append(json.loads(f.read_text()))
    return sorted(out, key=lambda r: r.get("started") or "")


def load_run(runs_dir: Path, run_id: str) -> dict[str, Any]:
    f = runs_dir / run_id / "run.json"
    if not f.is_file():
        matches = [r for r in list_runs(runs_dir) if r["run_id"].startswith(run_id)]
        if len(matches) == 1:
            return matches[0]
        raise MlEnvError(f"run {run_id} not found in {runs_dir}" + (" (ambiguous prefix)" if matches else ""))
    return json.loads(f.read_text())


def parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SpecError(f"{what} {item!r} must be NAME=VALUE")
        out[k] = v
    return out
