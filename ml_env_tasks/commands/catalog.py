"""Environments as a catalog: ``import``, ``export``, ``register``, ``list``, ``get``, ``diff``,
``clone``, ``scaffold``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..settings.groups import BUILD_HOW, BUILD_WHERE
from ..settings.groups import VERSIONS as VERSIONS_OPTION
from ..settings.options import Option
from . import Command, Console, Outcome, Values
from .common import build_options, reporter

__all__ = ["COMMANDS"]

VERSIONS = (VERSIONS_OPTION,)
# a deployment's printed commands name it: where its model is registered, where the package goes
REGISTRY = next(o for o in BUILD_WHERE if o.name == "registry")


def _jsonable(v: Any) -> Any:
    from ..spec.hashing import MISSING

    return None if v is MISSING else v


def run_import(args: Values, io: Console) -> Outcome:
    from ..formats.azure import ImportedDeployment, ImportedJob, import_source

    out = io
    result = import_source(args.source, stem=args.output.stem if args.output else None, endpoint=args.endpoint)
    if isinstance(result, ImportedJob):
        return _import_job(args, out, result)
    if isinstance(result, ImportedDeployment):
        return _import_deployment(args, out, result)
    if args.request:
        out.warn(f"--request goes with an online deployment or inference config: {args.source} is neither, "
                 "it is not used")  # fmt: skip
    for w in result.warnings:
        out.warn(w)
    written: list[Path] = []
    if args.output:
        written = result.write(args.output)
    elif result.files:
        out.warn(
            f"this environment names {', '.join(sorted(result.files))}, which stdout cannot carry: "
            "use -o FILE to write them beside the environment file"
        )
    data = {
        "output": str(args.output) if args.output else None,
        "files": [str(p) for p in written],
        "name": result.name,
        "warnings": result.warnings,
    }
    text = (
        f"wrote {', '.join(str(p) for p in written)} ({len(result.warnings)} warnings)"
        if args.output
        else result.text()
    )
    return Outcome(data, text)


def _import_job(args: Values, out: Console, job: Any) -> Outcome:
    """A command job: the ``ml-env train`` command that runs it (its inline environment written
    with -o first, and only when the command can name it)."""
    from ..settings.options import Source

    if args.origin("versions").source is Source.FLAG:
        job.versions = args.versions  # the command reads the default file otherwise
    job.check_registered(args.versions)
    argv = job.argv(args.output)  # an inline environment without -o is a usage error, nothing written
    for w in job.warnings:
        out.warn(w)
    written: list[Path] = []
    if job.environment is not None:
        written = job.environment.write(args.output)
    elif args.output:
        out.warn(f"the job's environment is registered ({job.env_ref}): nothing written to {args.output}")
    return Outcome(
        {"argv": ["ml-env", *argv], "command": job.command(args.output), "files": [str(p) for p in written],
         "warnings": job.warnings},
        job.command(args.output),
    )  # fmt: skip


def _import_deployment(args: Values, out: Console, dep: Any) -> Outcome:
    """An online deployment or inference config: its environment written with -o (with a
    smoke-test case from --request beside it), and the commands that serve, smoke-test and
    package it, printed as they run."""
    import shlex

    from ..errors import UsageError
    from ..formats.azure_deploy import cases_from_request

    if args.request and not args.output:
        raise UsageError("--request writes a smoke-test case beside the environment file: give -o FILE.toml")
    cases = args.output.with_name(f"{args.output.stem}.cases.jsonl") if args.request else None
    commands = dep.commands(args.output, registry=args.registry, cases=cases)  # a usage error writes nothing
    for w in dep.warnings:
        out.warn(w)
    written: list[Path] = []
    if dep.environment is not None:
        if cases is not None:
            dep.environment.files[cases.name] = cases_from_request(args.request)
        written = dep.environment.write(args.output)
    else:
        if args.output and cases is None:
            out.warn(f"the deployment's environment is registered ({dep.env_ref}): nothing written to {args.output}")
        if cases is not None:
            if cases.exists() or cases.is_symlink():
                raise UsageError(f"not overwriting {cases}", hint="choose another -o, or move it away")
            cases.parent.mkdir(parents=True, exist_ok=True)
            cases.write_bytes(cases_from_request(args.request))
            written = [cases]
    if not args.registry:
        out.info("no package command: a packaged image lives in a registry (give --registry to get one)")
    argv = [["ml-env", *c] for c in commands]
    return Outcome({"commands": argv, "files": [str(p) for p in written], "warnings": dep.warnings},
                   "\n".join(shlex.join(a) for a in argv))  # fmt: skip


def run_export(args: Values, io: Console) -> Outcome:
    from .. import spec
    from ..formats.azure import export_v1, export_v2

    out = io
    env = spec.load(args.spec)
    warnings = export_v1(env, args.output) if args.format == "v1" else export_v2(env, args.output)
    for w in warnings:
        out.warn(w)
    return Outcome({"output": str(args.output), "warnings": warnings}, f"wrote {args.output}")


def run_register(args: Values, io: Console) -> Outcome:
    from ..build.resolve import resolve_environment
    from ..catalog.versions import Versions

    out = io
    versions = Versions(args.versions)
    versions.entries()  # a versions file that does not read is refused now, not after the build
    resolved = resolve_environment(
        args.spec,
        build_options(args),
        reporter=reporter(out, stream_logs=False),
        need_env=True,
        before_build=versions.recordable,  # a file or wheel a version could not restore: before the build
    )
    assert resolved.env is not None
    if resolved.env.wheels:  # their bytes first: a version is recorded once it can be restored
        assert resolved.hash is not None
        if args.registry:
            from ..catalog.wheelstore import push, tag_for

            push(resolved.env, resolved.image, resolved.hash, insecure=args.insecure)
            out.info(
                f"kept {len(resolved.env.wheels)} wheel(s) in the registry beside the image ({tag_for(resolved.hash)[:19]}…)"
            )
        else:
            out.warn("without --registry the private wheels are recorded by digest only: this version restores "
                     "elsewhere only where its wheels are")  # fmt: skip
    # the environment the image was built from (pinned with --pin-base) is the one recorded
    entry, created = versions.register(
        resolved.env, image=resolved.image, digest=resolved.digest, registry=args.registry
    )
    state = "registered" if created else "unchanged, still"
    return Outcome(
        entry.summary() | {"created": created}, f"{entry.ref} {state} ({entry.hash[:12]}, {entry.image}@{entry.digest})"
    )


def run_list(args: Values, io: Console) -> Outcome:
    from ..catalog import curated, describe_curated
    from ..catalog.versions import Versions

    v = Versions(args.versions)
    registered = v.entries() if args.all else v.latest()
    described = [describe_curated(p) for p in curated()]
    rows = [f"{e.name}:{e.version:<4} {e.hash[:12]}  {e.image}@{e.digest or '-'}  {e.registered}" for e in registered]
    for d in described:
        rows.append(f"{d['name']}  ({d['environment']}:{d['version']}) {d['description'] or ''}".rstrip())
        rows.append(f"  base      {d['base']}" + ("  (+ scoring server)" if d["inference"] else ""))
        if d["apt"]:
            rows.append(f"  apt       {', '.join(d['apt'])}")
        rows.append(f"  packages  {', '.join(d['packages']) or '(none)'}")
        if d["locked"]:
            rows.append(f"  installed {', '.join(f'{k}=={v}' for k, v in d['locked'].items())}")
    data = {
        "registered": [e.summary() for e in registered],
        "curated": [d["name"] for d in described],
        "curated_environments": described,
    }
    return Outcome(data, "\n".join(rows))


def run_get(args: Values, io: Console) -> Outcome:
    from ..catalog.versions import Versions

    out = io
    v = Versions(args.versions)
    entry = v.get(args.ref)
    if args.output:
        written, missing = v.restore(entry, args.output, force=args.force)
        if missing:
            out.warn(f"{missing}; put {', '.join(sorted(entry.wheels))} where the environment file names them to build")
        return Outcome({"output": str(args.output), "version": entry.version, "files": [str(p) for p in written]},
                   f"wrote {', '.join(str(p) for p in written)} ({entry.ref})")  # fmt: skip
    else:
        return Outcome(entry.to_dict(), entry.spec)


def run_diff(args: Values, io: Console) -> Outcome:
    from ..catalog.versions import Versions

    diffs = Versions(args.versions).diff(args.a, args.b)
    data = [{"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b)} for d in diffs]
    return Outcome(data, "\n".join(str(d) for d in diffs) if diffs else "same environment")


def run_clone(args: Values, io: Console) -> Outcome:
    from ..catalog import clone

    path = clone(args.source, args.name, args.directory)
    return Outcome({"output": str(path)}, f"wrote {path}")


def run_scaffold(args: Values, io: Console) -> Outcome:
    from ..catalog import scaffold

    files = scaffold(args.name, args.directory)
    return Outcome({"files": [str(f) for f in files]}, "\n".join(f"wrote {f}" for f in files))


COMMANDS = {
    "import": Command("import", "import an Azure ML environment (v1 directory, v2 YAML, conda file, requirements), job or deployment", (
        Option("source", ("source",), kind="path", help="v1 directory, v2 YAML, conda file, requirements file, a v2 command job or online deployment YAML, or inferenceconfig.json"),
        Option("output", ("-o", "--output"), kind="path", help="write the environment file here (default: stdout); for a job or a deployment, its inline environment"),
        Option("endpoint", ("--endpoint",), kind="path", help="with an online deployment YAML: its endpoint's YAML"),
        Option("request", ("--request",), kind="path", help="with a deployment: a request file (as for az ml online-endpoint invoke), written as a smoke-test case beside -o"),
        REGISTRY,
    ) + VERSIONS, run_import),
    "export": Command("export", "export an environment file to Azure ML v1 (directory) or v2 (YAML)", (
        Option("spec", ("spec",), help="environment file"),
        Option("format", ("--format",), kind="choice", choices=("v1", "v2"), required=True, help="Azure ML format"),
        Option("output", ("-o", "--output"), kind="path", required=True, help="v1: a directory; v2: a .yml file"),
    ), run_export),
    "register": Command("register", "build (or reuse) and record a new version when the hash changed",
                        (Option("spec", ("spec",), help="environment file"),) + BUILD_WHERE + BUILD_HOW + VERSIONS,
                        run_register),
    "list": Command("list", "registered environments and curated ones", VERSIONS + (
        Option("all", ("--all",), kind="flag", default=False, help="every version, not only the latest"),), run_list),
    "get": Command("get", "print a registered version's environment file, or write it (-o DIR)", (
        Option("ref", ("ref",), metavar="NAME[:VERSION]", help="a registered environment"),
        Option("output", ("-o", "--output"), kind="path", help="a folder to write the environment file and its files into"),
        Option("force", ("--force",), kind="flag", default=False, help="overwrite files that exist"),
    ) + VERSIONS, run_get),
    "diff": Command("diff", "field-level differences between two registered versions", (
        Option("a", ("a",), metavar="NAME:VERSION", help="one version"),
        Option("b", ("b",), metavar="NAME:VERSION", help="the other"),
    ) + VERSIONS, run_diff),
    "clone": Command("clone", "copy a curated (or any) environment under your own name", (
        Option("source", ("source",), metavar="curated/NAME", help="a curated (or any) environment"),
        Option("name", ("name",), help="the new environment's name"),
        Option("directory", ("-d", "--directory"), kind="path", default=lambda: Path("envs"), help="where to write it"),
    ), run_clone),
    "scaffold": Command("scaffold", "write a starter environment, requirements file and train script", (
        Option("name", ("name",), help="the environment's name"),
        Option("directory", ("-d", "--directory"), kind="path", default=lambda: Path("."), help="the project folder"),
    ), run_scaffold),
}  # fmt: skip
