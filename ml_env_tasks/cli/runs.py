"""``train`` and ``runs list|show|gc``."""

from __future__ import annotations

import argparse
import sys

from ..options import BUILD_HOW, BUILD_WHERE, DEFAULT_TRAIN_ENV, RUN, TRAIN_ENV, VERSIONS, Option
from .common import build_options, command, output

TRAIN = (
    TRAIN_ENV,
    Option("source", ("--source",), kind="path", help="source directory, snapshotted (honours .amlignore, else .dockerignore/.gitignore)"),
    Option("script", ("--script",), help="script path inside --source"),
    Option("args", ("--args",), gha="args", help="arguments for the script, in one string (actions; on the CLI put them after --)"),
    VERSIONS,
    Option("register_model", ("--register-model",), metavar="NAME=outputs/PATH", gha=None,
           help="after a completed run, register that folder of its outputs as the next version of model NAME "
                "(needs --registry)"),
)  # fmt: skip
# a Job written out instead of a local run (``ml_env_tasks.runs.kubernetes``); not action inputs
KUBE = (
    Option("runner", ("--runner",), kind="choice", choices=("local", "kubernetes"), default="local", gha=None,
           help="local: a container on the engine; kubernetes: write a batch/v1 Job (--emit), run nothing"),
    Option("emit", ("--emit",), kind="path", metavar="FILE", gha=None,
           help="with --runner kubernetes: where the Job's YAML goes (a ConfigMap with the code, then the Job)"),
    Option("output_pvc", ("--output-pvc",), metavar="CLAIM[/SUBPATH]", gha=None,
           help="with --runner kubernetes: the claim outputs go to, in a folder named after the run id"),
    Option("namespace", ("--namespace",), gha=None, help="with --runner kubernetes: the Job's namespace"),
    Option("backoff_limit", ("--backoff-limit",), kind="int", default=0, gha=None,
           help="with --runner kubernetes: retries of a failed pod (default 0: a failed run is failed)"),
    Option("ttl_after_finished", ("--ttl-after-finished",), kind="int", default=7 * 86400, gha=None,
           help="with --runner kubernetes: seconds a finished Job (and its logs) is kept (default 7 days)"),
)  # fmt: skip
RUNS_DIR = [o for o in RUN if o.name == "runs_dir"]


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "train":
        p.usage = "ml-env train [--env ENV] --source DIR --script FILE [options] [-- SCRIPT ARGS...]"
        command(p, cmd_train, TRAIN, RUN, KUBE, BUILD_WHERE, BUILD_HOW)
        return
    sub = p.add_subparsers(dest="runs_command", metavar="{list,show,gc}", parser_class=type(p))
    ls = sub.add_parser("list", help="list runs")
    command(ls, cmd_list, RUNS_DIR, (Option("experiment", ("--experiment",), help="only this experiment"),))
    sh = sub.add_parser("show", help="show one run")
    command(sh, cmd_show, (Option("run_id", ("run_id",), help="a run id or a unique prefix"),), RUNS_DIR)
    gc = sub.add_parser("gc", help="mark runs whose ml-env process died as lost; remove their containers")
    command(gc, cmd_gc, RUNS_DIR)
    p.set_defaults(func=lambda args: _usage(p))


def cmd_train(args: argparse.Namespace) -> int:
    import shlex

    from ..errors import UsageError
    from ..resources import Resources
    from ..runs import RunOptions, parse_pairs, train
    from ..runs.train import split_inputs

    for required in ("source", "script"):
        if not getattr(args, required):
            raise UsageError(f"--{required} is required")
    if args.args and args.script_args:
        raise UsageError("give the script's arguments after -- or in --args, not both")
    if args.emit is not None and args.runner != "kubernetes":
        raise UsageError("--emit writes a Kubernetes Job: add --runner kubernetes")
    if args.runner == "kubernetes" and args.emit is None:
        raise UsageError("--runner kubernetes writes a Job and runs nothing: give --emit FILE")
    if args.runner == "kubernetes" and args.register_model:
        raise UsageError("--register-model needs the run's outputs here: not with --runner kubernetes")
    from ..models import parse_register_model

    model = parse_register_model(args.register_model, args.registry)
    script_args = tuple(args.script_args) or tuple(shlex.split(args.args or ""))
    kube = args.runner == "kubernetes"
    paths, volumes = split_inputs(parse_pairs(args.inputs, "--input"))
    opts = RunOptions(
        environment=args.env,
        source=args.source,
        script=args.script,
        args=script_args,
        experiment=args.experiment,
        inputs={} if kube else paths,
        input_volumes={} if kube else volumes,
        env_vars=parse_pairs(args.env_vars, "--env-var"),
        secrets=tuple(args.secrets),
        resources=Resources.parse(cpus=args.cpus, memory=args.memory, shm_size=args.shm_size, gpus=args.gpus),
        timeout=args.timeout,
        runs_dir=args.runs_dir,
        user=args.user,
        snapshot_max_mb=args.max_snapshot_mb,
        build=build_options(args),
        versions=args.versions,
    )
    out = output(args)
    if args.o.sources.get("env") == "default":
        out.info(f"no --env: the run uses {DEFAULT_TRAIN_ENV} (set train_env in [tool.ml-env] to choose another)")
    elif args.o.sources.get("env") != "flag":
        from ..grammar import printable

        out.info(f"no --env: the run uses {printable(args.env, 200)} (train_env, from {args.o.sources['env']})")
    if kube:
        from ..runs.kubernetes import KubeOptions, emit_job

        kopts = KubeOptions(
            emit=args.emit,
            inputs=parse_pairs(args.inputs, "--input"),
            output_pvc=args.output_pvc,
            namespace=args.namespace,
            backoff_limit=args.backoff_limit,
            ttl_after_finished=args.ttl_after_finished,
        )
        emitted = emit_job(opts, kopts, info=out.info)
        out.result(emitted.to_json(), f"Job {emitted.job} (run {emitted.run_id}) written to {emitted.file}")
        return 0
    result = train(opts, on_line=out.log, info=out.info)
    record = result.record.to_dict()
    text = f"run {result.run_id}: {result.status}; outputs in {result.outputs}"
    if model and result.cli_exit_code == 0:
        from ..models import register_run_output

        mv = register_run_output(args.registry, model, result.outputs, result.run_id, out.info)
        record["registered_model"] = mv.to_json()
        text += f"\nmodel {mv.ref}@{mv.digest} {'(same bytes as before)' if mv.reused else 'registered'}"
    out.result(record, text)
    return result.cli_exit_code


def cmd_list(args: argparse.Namespace) -> int:
    from ..grammar import printable
    from ..runs import list_runs, reap_lost

    out = output(args)
    reap_lost(args.runs_dir, warn=out.warn)
    runs = [
        r for r in list_runs(args.runs_dir, warn=out.warn) if not args.experiment or r.experiment == args.experiment
    ]

    def text() -> str:
        rows = [f"{'RUN':52} {'STATUS':10} {'EXIT':>4}  {'STARTED':24} METRICS"]
        for r in runs:
            metrics = ", ".join(f"{printable(k, 30)}={printable(v, 30)}" for k, v in list(r.metrics.items())[:3])
            code = "" if r.exit_code is None else str(r.exit_code)
            rows.append(f"{r.run_id:52} {r.status:10} {code:>4}  {printable(r.started, 24):24} {metrics}")
        return "\n".join(rows)

    out.result([r.to_dict() for r in runs], text)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from ..grammar import printable as pr
    from ..runs import load_run, reap_lost

    out = output(args)
    reap_lost(args.runs_dir, warn=out.warn)
    r = load_run(args.runs_dir, args.run_id)

    def text() -> str:
        env, src = r.environment, r.source
        dirty = " (dirty)" if src.git_dirty else ""
        rows = [
            f"run:         {r.run_id}  ({pr(r.experiment)})",
            f"status:      {r.status}  exit {r.exit_code}" + (f"  ({pr(r.reason, 300)})" if r.reason else ""),
            f"environment: {pr(env.name or '-')}  {pr(env.image)}  {pr(env.digest or '')}",
            f"source:      {pr(src.path)}  snapshot {src.snapshot_hash[:16]}  git {pr(src.git_commit or '-')}{dirty}",
            f"command:     {pr(' '.join(r.command), 500)}",
            f"time:        {pr(r.started)} -> {pr(r.ended or '(running)')}",
        ]
        rows += [f"metric:      {pr(k, 60)} = {pr(v, 60)}" for k, v in r.metrics.items()]
        rows += [f"output:      {pr(o.get('path'))}  {pr(o.get('bytes'))} bytes" for o in r.outputs]
        return "\n".join(rows)

    out.result(r.to_dict(), text)
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from ..runs import gc

    out = output(args)
    done = gc(args.runs_dir, warn=out.warn)
    out.result(done, f"{len(done['lost'])} run(s) marked lost, {len(done['removed_containers'])} container(s) removed")
    return 0


def _usage(p: argparse.ArgumentParser) -> int:
    """A group without its subcommand: the group's own help, exit 2."""
    p.print_help(sys.stderr)
    return 2
