"""``train`` and ``runs list|show|gc``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..settings.groups import (
    BUILD_HOW,
    BUILD_WHERE,
    COMPUTE,
    DEFAULT_TRAIN_ENV,
    MODEL_SOURCE_REPOSITORY,
    REBUILD,
    RUN,
    TRAIN_ENV,
    VERSIONS,
)
from ..settings.options import Option, Source
from . import Action, Annotation, Command, Console, Outcome, Session, Values

if TYPE_CHECKING:
    from ..runs.runner import Runner
from .common import build_options, cell, code, rows


def _input(name: str) -> str:
    return f"input '{name}'"


def _flag(name: str) -> str:
    return f"--{name}"


__all__ = ["COMMANDS"]

TRAIN = (
    TRAIN_ENV,
    Option("source", ("--source",), kind="path", help="source directory, snapshotted (honours .amlignore, else .dockerignore/.gitignore)"),
    Option("script", ("--script",), help="script path inside --source"),
    Option("args", ("--args",), gha="args", help="arguments for the script, in one string (actions; on the CLI put them after --)"),
    VERSIONS,
    Option("detach", ("--detach",), kind="flag", default=False, gha=None,
           help="with a Slurm --compute target: submit, print the run id and return (runs show|logs|wait|cancel)"),
    REBUILD,
    Option("register_model", ("--register-model",), metavar="NAME=outputs/PATH",
           help="after a completed run, register that folder of its outputs as the next version of model NAME "
                "(needs --registry)"),
)  # fmt: skip
# a Job written out instead of a local run (``ml_env_tasks.runs.kubernetes``); not action inputs
KUBE = (
    Option("runner", ("--runner",), kind="choice", choices=("local", "kubernetes"), default="local", gha=None,
           help="local: a container on the engine; kubernetes: write a batch/v1 Job (--emit), run nothing"),
    Option("emit", ("--emit",), kind="path", metavar="FILE", gha=None,
           help="with --runner kubernetes: where the Job's YAML goes (ConfigMaps with the code, then the Job)"),
    Option("output_pvc", ("--output-pvc",), metavar="CLAIM[/SUBPATH]", gha=None,
           help="with --runner kubernetes: the claim outputs go to, in a folder named after the run id"),
    Option("namespace", ("--namespace",), gha=None, help="with --runner kubernetes: the Job's namespace"),
    Option("backoff_limit", ("--backoff-limit",), kind="int", default=0, gha=None,
           help="with --runner kubernetes: retries of a failed pod (default 0: a failed run is failed)"),
    Option("ttl_after_finished", ("--ttl-after-finished",), kind="int", default=7 * 86400, gha=None,
           help="with --runner kubernetes: seconds a finished Job (and its logs) is kept (default 7 days)"),
)  # fmt: skip
RUNS_DIR = tuple(o for o in RUN if o.name == "runs_dir")
RUN_REF = (Option("run_id", ("run_id",), help="a run id or a unique prefix"),)
OUTPUTS = {
    "run-id": "The run's id (runs/<run-id>/run.json holds its record)",
    "status": "completed, failed, canceled, timed_out or lost",
    "exit-code": "The script's exit code",
    "outputs": "Path of the run's outputs directory",
    "model": "The registered model version, NAME:VERSION (with register-model)",
    "model-ref": "Its artifact, registry/repository:VERSION (with register-model)",
}


def run_train(v: Values, io: Console) -> Outcome:
    import shlex

    from ..engine.resources import Resources
    from ..errors import UsageError
    from ..models import parse_register_model
    from ..runs import RunOptions, parse_pairs, train
    from ..runs.train import split_inputs

    flag = _input if io.actions else _flag
    script_args = tuple(v.values.get("script_args") or ())
    if v.args and script_args:
        raise UsageError("give the script's arguments after -- or in --args, not both")
    v = _kubernetes_target(v)
    if v.emit is not None and v.runner != "kubernetes":
        raise UsageError("--emit writes a Kubernetes Job: add --runner kubernetes")
    if v.runner == "kubernetes" and v.emit is None:
        raise UsageError("--runner kubernetes writes a Job and runs nothing: give --emit FILE")
    if v.runner == "kubernetes" and v.register_model:
        raise UsageError("--register-model needs the run's outputs here: not with --runner kubernetes")
    model = parse_register_model(v.register_model, v.registry, flag("register-model"))
    runner = _runner(v, io)
    if v.detach and (runner is None or not hasattr(runner, "submit")):
        raise UsageError("--detach leaves a run to a cluster: give --compute NAME of a Slurm target")
    if v.detach and model:
        raise UsageError("--register-model needs the run's end: with --detach, register after `ml-env runs wait`")
    if model:
        from ..models import check_access

        check_access(v.registry, model[0], v.model_repository)  # before the build and the run, not after them
    kube = v.runner == "kubernetes"
    pairs = parse_pairs(v.inputs, flag("input"))
    paths, volumes = split_inputs(pairs)
    opts = RunOptions(
        environment=v.env,
        source=v.source,
        script=v.script,
        args=script_args or tuple(shlex.split(v.args or "")),
        experiment=v.experiment,
        inputs={} if kube else paths,
        input_volumes={} if kube else volumes,
        env_vars=parse_pairs(v.env_vars, flag("env-var")),
        secrets=tuple(v.secrets),
        resources=Resources.parse(cpus=v.cpus, memory=v.memory, shm_size=v.shm_size, gpus=v.gpus,
                                  prefix="input " if io.actions else ""),
        timeout=v.timeout,
        runs_dir=v.runs_dir,
        user=v.user,
        snapshot_max_mb=v.max_snapshot_mb,
        build=build_options(v, where=flag("registry")),
        versions=v.versions,
    )  # fmt: skip
    origin = v.origin("env")
    if origin.source is Source.DEFAULT:
        io.info(f"no --env: the run uses {DEFAULT_TRAIN_ENV} (set train_env in [tool.ml-env] to choose another)")
    elif not origin.given:
        from ..safe.grammar import printable

        io.info(f"no --env: the run uses {printable(v.env, 200)} (train_env, from {origin})")
    if kube:
        from ..runs.kubernetes import KubeOptions, emit_job

        kopts = KubeOptions(
            emit=v.emit, inputs=pairs, output_pvc=v.output_pvc, namespace=v.namespace,
            backoff_limit=v.backoff_limit, ttl_after_finished=v.ttl_after_finished,
        )  # fmt: skip
        emitted = emit_job(opts, kopts, info=io.info)
        return Outcome(emitted.to_json(), f"Job {emitted.job} (run {emitted.run_id}) written to {emitted.file}")
    with io.section(f"ml-env train {opts.script}"):
        result = train(opts, on_line=io.log, info=io.info, runner=runner, detach=v.detach)
    record = result.record.to_dict()
    if v.detach:
        job = (result.record.engine or {}).get("job_id")
        return Outcome(record, f"{result.run_id}  submitted (job {job}); ml-env runs wait {result.run_id}", 0,
                       {"run-id": result.run_id, "status": "running", "exit-code": "", "outputs": str(result.outputs)})  # fmt: skip
    text = f"run {result.run_id}: {result.status}; outputs in {result.outputs}"
    outputs = {
        "run-id": result.run_id,
        "status": str(result.status),
        "exit-code": "" if result.exit_code is None else str(result.exit_code),
        "outputs": str(result.outputs),
    }
    registered = ""
    if model and result.cli_exit_code == 0:
        from ..models import register_run_output

        mv = register_run_output(v.registry, model, result.outputs, result.run_id, io.info,
                                 repository=v.model_repository)  # fmt: skip
        record["registered_model"] = mv.to_json()
        text += f"\nmodel {mv.ref}@{mv.digest} {'(same bytes as before)' if mv.reused else 'registered'}"
        outputs |= {"model": f"{mv.name}:{mv.version}", "model-ref": mv.ref}
        registered = (
            f"| model | {code(f'{mv.name}:{mv.version}')} {'(same bytes as before)' if mv.reused else 'registered'} |\n"
        )
    rec = result.record
    # metrics.json is the run's: its names and values are text, never markup
    table = rows([f"| {cell(str(k))} | {cell(str(x))} |\n" for k, x in rec.metrics.items()]) or "| (none) | |\n"
    summary = (
        f"### ml-env train: {code(result.run_id)}\n\n"
        f"**{cell(str(result.status))}**"
        + (f" (exit {result.exit_code})" if result.exit_code is not None else "")
        + "\n\n"
        f"| field | value |\n|---|---|\n| environment | {code(rec.environment.image)} |\n"
        f"| source snapshot | {code(rec.source.snapshot_hash[:16])} ({rec.source.files} files) |\n"
        f"| command | {code(' '.join(rec.command), 1000)} |\n| outputs | {code(str(result.outputs))} |\n{registered}\n"
        f"| metric | value |\n|---|---|\n{table}"
    )
    notes: tuple[Annotation, ...] = ()
    if str(result.status) != "completed":
        notes = (Annotation(f"run {result.run_id} {result.status}: {rec.reason or ''}", title="ml-env train"),)
    return Outcome(record, text, result.cli_exit_code, outputs, summary, notes)


def _kubernetes_target(v: Values) -> Values:
    """A Kubernetes compute target is ``--runner kubernetes`` with its settings as defaults."""
    if not v.compute or v.runner == "kubernetes":
        return v
    from pathlib import Path

    from ..settings.compute import target
    from ..settings.files import load_layers

    t = target(load_layers(), v.compute)
    if t.type != "kubernetes":
        return v
    return v.with_values(
        runner="kubernetes", compute=None,
        emit=v.emit or (Path(t.get("emit")) if t.get("emit") else None),
        namespace=v.namespace or t.get("namespace"), output_pvc=v.output_pvc or t.get("output_claim"),
    )  # fmt: skip


def _runner(v: Values, io: Console) -> Runner | None:
    """The runner the compute target names (None: the command's engine, as without one)."""
    from ..errors import UsageError

    if not v.compute:
        if v.nodes is not None:
            raise UsageError("--nodes runs one container per node of a Slurm target: give --compute NAME")
        return None
    from ..settings.compute import target
    from ..settings.files import load_layers

    t = target(load_layers(), v.compute)
    if t.type == "slurm":
        from ..runs.slurm import SlurmRunner

        return SlurmRunner(t, nodes=v.nodes, say=io.info)
    if v.nodes is not None:
        raise UsageError(f"--nodes: compute target {t.name} is a {t.type} target; several nodes need a Slurm one")
    if t.type == "docker":
        if t.get("context"):
            from ..engine import select_context

            select_context(t.get("context"))
        return None
    raise UsageError(f"compute target {t.name} is a {t.type} target: ml-env cannot run on it")  # pragma: no cover


def run_compute_list(v: Values, io: Console) -> Outcome:
    import argparse

    from ..settings.compute import targets
    from ..settings.files import load_layers
    from ..settings.options import resolve_options

    layers = load_layers()
    found = targets(layers)
    chosen = [c for c in COMPUTE if c.name == "compute"]
    default = resolve_options(chosen, argparse.Namespace(), layers=layers).values.get("compute")
    rows = [f"{'NAME':20} {'TYPE':11} SETTINGS"] + [
        f"{t.name + (' (default)' if t.name == default else ''):20} {t.type:11} "
        + ", ".join(f"{k}={x}" for k, x in sorted(t.settings.items()))
        for t in found.values()
    ]
    return Outcome({"default": default, "targets": [t.to_json() for t in found.values()]}, "\n".join(rows))


def run_list(v: Values, io: Console) -> Outcome:
    from ..runs import list_runs, reap_lost
    from ..safe.grammar import printable

    reap_lost(v.runs_dir, warn=io.warn)
    runs = [r for r in list_runs(v.runs_dir, warn=io.warn) if not v.experiment or r.experiment == v.experiment]

    def text() -> str:
        rows = [f"{'RUN':52} {'STATUS':10} {'EXIT':>4}  {'STARTED':24} {'WHERE':22} METRICS"]
        for r in runs:
            metrics = ", ".join(f"{printable(k, 30)}={printable(x, 30)}" for k, x in list(r.metrics.items())[:3])
            code = "" if r.exit_code is None else str(r.exit_code)
            rows.append(
                f"{r.run_id:52} {r.status:10} {code:>4}  {printable(r.started, 24):24} {_where(r):22} {metrics}"
            )
        return "\n".join(rows)

    return Outcome([r.to_dict() for r in runs], text)


def _where(r: Any) -> str:
    """Where a run ran, in a few words: the compute target and job, or the engine."""
    from ..safe.grammar import printable

    e = r.engine or {}
    if e.get("type") == "slurm":
        return printable(f"{e.get('compute')} job {e.get('job_id')}", 22)
    return printable(str(e.get("endpoint") or "-"), 22)


def _cluster_run(v: Values, io: Console) -> tuple[Any, Any]:
    """(run folder, record) of ``v.run_id``, a cluster run asked of Slurm now."""
    from ..runs import load_run
    from ..runs.detached import refresh

    r = load_run(v.runs_dir, v.run_id)
    return v.runs_dir / r.run_id, refresh(v.runs_dir / r.run_id, r, io.info)


def run_logs(v: Values, io: Console) -> Outcome:
    from ..runs.detached import log_text

    run_dir, r = _cluster_run(v, io)
    text = log_text(run_dir, r)
    return Outcome({"run_id": r.run_id, "status": str(r.status), "log": text}, text.rstrip("\n"))


def run_wait(v: Values, io: Console) -> Outcome:
    from ..runs.detached import wait
    from ..runs.train import RunResult

    run_dir, r = _cluster_run(v, io)
    r = wait(run_dir, r, io.log, io.info)
    result = RunResult(r, run_dir)
    return Outcome(r.to_dict(), f"run {r.run_id}: {r.status}" + (f" (exit {r.exit_code})" if r.exit_code is not None
                                                                   else ""), result.cli_exit_code)  # fmt: skip


def run_cancel(v: Values, io: Console) -> Outcome:
    from ..runs.detached import cancel_run

    run_dir, r = _cluster_run(v, io)
    r = cancel_run(run_dir, r, io.info)
    return Outcome(r.to_dict(), f"run {r.run_id}: {r.status}")


def run_show(v: Values, io: Console) -> Outcome:
    from ..runs import reap_lost
    from ..safe.grammar import printable as pr

    reap_lost(v.runs_dir, warn=io.warn)
    _, r = _cluster_run(v, io)

    def text() -> str:
        env, src = r.environment, r.source
        dirty = " (dirty)" if src.git_dirty else ""
        rows = [
            f"run:         {r.run_id}  ({pr(r.experiment)})",
            f"status:      {r.status}  exit {r.exit_code}" + (f"  ({pr(r.reason, 300)})" if r.reason else ""),
            f"environment: {pr(env.name or '-')}  {pr(env.image)}  {pr(env.digest or '')}",
            f"source:      {pr(src.path)}  snapshot {src.snapshot_hash[:16]}  git {pr(src.git_commit or '-')}{dirty}",
            f"command:     {pr(' '.join(r.command), 500)}",
            f"where:       {pr(_where(r), 200)}"
            + (
                f"  nodes {pr((r.engine or {}).get('nodes') or '-')}" if (r.engine or {}).get("type") == "slurm" else ""
            ),
            f"time:        {pr(r.started)} -> {pr(r.ended or '(running)')}",
        ]
        rows += [f"metric:      {pr(k, 60)} = {pr(x, 60)}" for k, x in r.metrics.items()]
        rows += [f"output:      {pr(o.get('path'))}  {pr(o.get('bytes'))} bytes" for o in r.outputs]
        return "\n".join(rows)

    return Outcome(r.to_dict(), text)


def run_gc(v: Values, io: Console) -> Outcome:
    from ..runs import gc

    done = gc(v.runs_dir, warn=io.warn)
    return Outcome(
        done, f"{len(done['lost'])} run(s) marked lost, {len(done['removed_containers'])} container(s) removed"
    )


COMMANDS = {
    "train": Command(
        "train", "run a training script inside an environment (built or reused by hash)",
        TRAIN + RUN + COMPUTE + KUBE + BUILD_WHERE + BUILD_HOW + (MODEL_SOURCE_REPOSITORY,), run_train,
        usage="ml-env train [--env ENV] --source DIR --script FILE [options] [-- SCRIPT ARGS...]",
        required=("source", "script"), script_args=True,
        action=Action(
            "ml-env train",
            "Run a training script inside an environment container (built or reused by hash): source snapshot, "
            "read-only inputs, outputs, metrics and a run record. Fails with the script's exit code.",
            OUTPUTS, required=("source", "script"),
        ),
        session=Session("train", "Run a training script in an environment: -- --env E --source D --script S [-- ARGS]."),
    ),
    "runs list": Command(
        "runs list", "list runs", RUNS_DIR + (Option("experiment", ("--experiment",), help="only this experiment"),),
        run_list, session=Session("runs", "Show run history: -- list | show RUN."),
    ),
    "runs show": Command(
        "runs show", "show one run", (Option("run_id", ("run_id",), help="a run id or a unique prefix"),) + RUNS_DIR,
        run_show,
    ),
    "compute list": Command("compute list", "the compute targets the config files declare ([compute.NAME])", (),
                            run_compute_list),
    "runs logs": Command("runs logs", "a run's log (a cluster run's, so far)", RUN_REF + RUNS_DIR, run_logs),
    "runs wait": Command("runs wait", "follow a cluster run to its end; exit with its exit code", RUN_REF + RUNS_DIR,
                         run_wait),
    "runs cancel": Command("runs cancel", "cancel a cluster run (scancel) and record it cancelled", RUN_REF + RUNS_DIR,
                           run_cancel),
    "runs gc": Command("runs gc", "mark runs whose ml-env process died as lost; remove their containers", RUNS_DIR,
                       run_gc),
}  # fmt: skip
