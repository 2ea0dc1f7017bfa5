"""``ml-env``: the command line front. Thin: parse, call the core, print, exit.

Every command takes ``--json`` (machine-readable result on stdout; progress on stderr).
User errors print one line ``ml-env: error: <file>: <key>: <message>`` and exit non-zero
without a traceback; the exit code is the error's (2 for a bad spec or usage).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .errors import MlEnvError

__all__ = ["main", "build_parser"]


def _env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _add_build_options(p: argparse.ArgumentParser, *, building: bool = True) -> None:
    """The options that say where an environment's image lives and, with ``building``, how to build it."""
    from .engine import CACHE_BACKENDS

    p.add_argument(
        "--registry",
        default=_env_default("ML_ENV_REGISTRY"),
        help="registry host[:port] to push to (env ML_ENV_REGISTRY); without it the image stays in the local engine",
    )
    p.add_argument("--repository", help="repository in the registry (default ml-envs/<name>)")
    p.add_argument("--pin-base", action="store_true", help="hash the base tag's digest (a moved tag means a new hash)")
    p.add_argument("--locked", action="store_true", help="install exactly the lock file beside the spec")
    p.add_argument("--insecure", action="store_true", help="allow plain HTTP to a non-loopback registry")
    if not building:
        return
    p.add_argument(
        "--cache",
        choices=CACHE_BACKENDS,
        default=_env_default("ML_ENV_CACHE", "auto"),
        help="BuildKit cache backend (default auto: registry, else local, else inline)",
    )
    p.add_argument("--cache-ref", help="registry cache reference (default <repo>:buildcache)")
    p.add_argument("--cache-dir", type=Path, help="directory for --cache local")
    p.add_argument(
        "--ca-bundle",
        type=Path,
        default=_env_default("ML_ENV_CA_BUNDLE"),
        help="extra CA bundle for pip during the build, a build secret (env ML_ENV_CA_BUNDLE); never stored in the image",
    )
    p.add_argument(
        "--network",
        default=_env_default("ML_ENV_BUILD_NETWORK"),
        help="build network, e.g. host (env ML_ENV_BUILD_NETWORK)",
    )
    p.add_argument(
        "--build-on-check-error",
        action="store_true",
        help="build when the 'already built?' check fails instead of stopping",
    )
    p.add_argument("--log-dir", type=Path, default=Path(".ml-env/logs"), help="where build logs are saved")


_VERSIONS = Path(os.environ.get("ML_ENV_VERSIONS", "envs/versions.toml"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ml-env", description="Content-addressed ML environment images.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("build", help="build an environment (or reuse it when its hash is already in the registry)")
    b.add_argument("spec", help="environment file (envs/NAME.toml)")
    _add_build_options(b)
    b.add_argument("--force", action="store_true", help="rebuild even if the image exists")
    b.add_argument(
        "--upgrade",
        action="store_true",
        help="re-resolve unpinned packages (no cache for the build) and rewrite the lock",
    )
    b.add_argument("--quiet", "-q", action="store_true", help="do not stream the build log (it is still saved)")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_build)

    p = sub.add_parser("plan", help="print the Dockerfile, hash and image tag without building")
    p.add_argument("spec")
    _add_build_options(p, building=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    h = sub.add_parser("hash", help="print the environment's content hash")
    h.add_argument("spec")
    h.add_argument("--pin-base", action="store_true")
    h.add_argument("--locked", action="store_true")
    h.add_argument("--canonical", action="store_true", help="also print the canonical JSON that is hashed")
    h.add_argument("--insecure", action="store_true")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hash)

    e = sub.add_parser("explain", help="list the fields that make two specs' hashes differ")
    e.add_argument("a")
    e.add_argument("b")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explain)

    t = sub.add_parser(
        "train",
        help="run a training script inside an environment (built or reused by hash)",
        usage="ml-env train --env ENV --source DIR --script FILE [options] [-- SCRIPT ARGS...]",
    )
    t.add_argument("--env", required=True, help="environment file (built or reused) or an image reference/digest")
    t.add_argument(
        "--source",
        type=Path,
        required=True,
        help="source directory, snapshotted (honours .amlignore, else .dockerignore/.gitignore)",
    )
    t.add_argument("--script", required=True, help="script path inside --source")
    t.add_argument("--experiment", help="experiment name (default: the script's name)")
    t.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="read-only input at /mnt/inputs/NAME ($ML_ENV_INPUT_NAME)",
    )
    t.add_argument(
        "--env-var", action="append", default=[], metavar="NAME=VALUE", help="environment variable (recorded)"
    )
    t.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME",
        help="pass $NAME from this environment (never recorded or printed)",
    )
    t.add_argument("--cpus", type=float)
    t.add_argument("--memory", help="memory limit, e.g. 4g")
    t.add_argument("--shm-size", help="shared memory (default: the environment's docker.shm_size)")
    t.add_argument("--gpus", help="e.g. all; an error when the engine has no GPUs")
    t.add_argument("--timeout", type=float, help="wall-clock limit in seconds")
    t.add_argument("--runs-dir", type=Path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    t.add_argument("--user", help="uid:gid in the container (default: yours, so outputs are yours)")
    t.add_argument("--max-snapshot-mb", type=float, default=2000)
    _add_build_options(t)
    t.add_argument("--json", action="store_true", help="print the run record as JSON at the end")
    t.set_defaults(func=cmd_train, script_args=[])

    sv = sub.add_parser(
        "serve",
        help="run an inference environment's scoring server locally (also: serve list|stop NAME|logs NAME)",
        usage="ml-env serve --env ENV --entry score.py --model DIR [--port N] [--detach] | serve {list,stop,logs} ...",
    )
    _add_serve_options(sv)
    sv.add_argument("--port", type=int, default=5001, help="host port on 127.0.0.1 (default 5001; 0 picks a free one)")
    sv.add_argument("--name", help="service name (default: the environment's name)")
    sv.add_argument(
        "--detach", "-d", action="store_true", help="start it and return (stop with `ml-env serve stop NAME`)"
    )
    sv.add_argument("--json", action="store_true")
    sv.set_defaults(func=cmd_serve)
    for verb in ("list", "stop", "logs"):
        x = sub.add_parser(f"serve-{verb}", help=argparse.SUPPRESS)
        if verb != "list":
            x.add_argument("name")
        if verb == "logs":
            x.add_argument("--tail", default="all")
        x.add_argument("--json", action="store_true")
        x.set_defaults(func=cmd_serve_admin, verb=verb)

    st = sub.add_parser(
        "smoke-test", help="build or reuse an inference image, start it, send sample requests, check the answers"
    )
    _add_serve_options(st)
    st.add_argument(
        "--cases",
        type=Path,
        required=True,
        help="JSON lines: request/request_text, expect_status, expect_json|expect_subset|expect_schema",
    )
    st.add_argument("--repeat", type=int, default=1, help="send each case N times (latency p50/p95/max)")
    st.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    st.add_argument(
        "--report-dir", type=Path, default=Path(".ml-env/smoke"), help="where the JSON and JUnit XML reports go"
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_smoke_test)

    pr = sub.add_parser(
        "promote",
        help="copy an image by digest to another registry/repository and record it in the ledger",
        usage="ml-env promote SOURCE DEST[:TAG] --tag T [--tag T2] [--allow-overwrite] [--dry-run]",
    )
    pr.add_argument("source", help="image by tag or digest (the digest is resolved once)")
    pr.add_argument("destination", help="host[:port]/repository, optionally :tag")
    pr.add_argument("--tag", action="append", default=[], help="destination tag (several allowed)")
    pr.add_argument("--allow-overwrite", action="store_true", help="move a tag that points at another digest")
    pr.add_argument("--dry-run", action="store_true", help="print what would happen; write nothing")
    pr.add_argument("--insecure", action="store_true", help="allow plain HTTP to a non-loopback registry")
    pr.add_argument(
        "--ledger", type=Path, default=Path(_env_default("ML_ENV_LEDGER", "releases.toml") or "releases.toml")
    )
    pr.add_argument("--no-ledger", action="store_true", help="do not record the promotion")
    pr.add_argument("--no-referrers", action="store_true", help="do not copy signatures/attestations")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_promote)

    lg = sub.add_parser("ledger", help="the release ledger")
    lsub = lg.add_subparsers(dest="ledger_command", metavar="{show}")
    ls = lsub.add_parser("show", help="print promotions; with --tag, which digest the tag is now and since when")
    ls.add_argument("--env", help="only this environment")
    ls.add_argument("--tag", help="answer: which digest is this tag now, since when")
    ls.add_argument(
        "--ledger", type=Path, default=Path(_env_default("ML_ENV_LEDGER", "releases.toml") or "releases.toml")
    )
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ledger_show)

    im = sub.add_parser(
        "import", help="import an Azure ML environment (v1 directory, v2 YAML, conda file, requirements)"
    )
    im.add_argument("source", type=Path)
    im.add_argument("-o", "--output", type=Path, help="write the environment file here (default: stdout)")
    im.add_argument("--json", action="store_true", help="print {output, name, warnings} as JSON")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="export an environment file to Azure ML v1 (directory) or v2 (YAML)")
    ex.add_argument("spec")
    ex.add_argument("--format", choices=("v1", "v2"), required=True)
    ex.add_argument("-o", "--output", type=Path, required=True, help="v1: a directory; v2: a .yml file")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    rg = sub.add_parser("register", help="build (or reuse) and record a new version when the hash changed")
    rg.add_argument("spec")
    _add_build_options(rg)
    rg.add_argument("--versions", type=Path, default=_VERSIONS, help="versions file (default envs/versions.toml)")
    rg.add_argument("--json", action="store_true")
    rg.set_defaults(func=cmd_register)

    li = sub.add_parser("list", help="registered environments (latest versions) and curated ones")
    li.add_argument("--versions", type=Path, default=_VERSIONS)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)

    ge = sub.add_parser("get", help="print a registered version's environment file, or write it (-o)")
    ge.add_argument("ref", metavar="NAME[:VERSION]")
    ge.add_argument("-o", "--output", type=Path, help="write the environment file (and its text files) here")
    ge.add_argument("--versions", type=Path, default=_VERSIONS)
    ge.add_argument("--json", action="store_true")
    ge.set_defaults(func=cmd_get)

    df = sub.add_parser("diff", help="field-level differences between two registered versions")
    df.add_argument("a", metavar="NAME:VERSION")
    df.add_argument("b", metavar="NAME:VERSION")
    df.add_argument("--versions", type=Path, default=_VERSIONS)
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_diff)

    cl = sub.add_parser("clone", help="copy a curated (or any) environment under your own name")
    cl.add_argument("source", metavar="curated/NAME")
    cl.add_argument("name")
    cl.add_argument("-d", "--directory", type=Path, default=Path("envs"))
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_clone)

    sc = sub.add_parser("scaffold", help="write a starter environment, requirements file and train script")
    sc.add_argument("name")
    sc.add_argument("-d", "--directory", type=Path, default=Path("."))
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_scaffold)

    r = sub.add_parser("runs", help="run history")
    rsub = r.add_subparsers(dest="runs_command", metavar="{list,show}")
    rl = rsub.add_parser("list", help="list runs")
    rl.add_argument("--runs-dir", type=Path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    rl.add_argument("--experiment")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_runs_list)
    rs = rsub.add_parser("show", help="show one run")
    rs.add_argument("run_id")
    rs.add_argument("--runs-dir", type=Path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_runs_show)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"ml-env {version('ml-env-tasks')}"
    except PackageNotFoundError:  # pragma: no cover
        return "ml-env (source)"


_BUILD_FIELDS = (
    "registry",
    "repository",
    "pin_base",
    "locked",
    "insecure",
    "cache",
    "cache_ref",
    "cache_dir",
    "ca_bundle",
    "network",
    "build_on_check_error",
    "log_dir",
    "force",
    "upgrade",
)


def _opts(args: argparse.Namespace) -> Any:
    """BuildOptions from whichever build options this command took."""
    from .build import BuildOptions

    return BuildOptions(**{f: getattr(args, f) for f in _BUILD_FIELDS if hasattr(args, f)})


def cmd_build(args: argparse.Namespace) -> int:
    from .build import Reporter, build

    result = build(args.spec, _opts(args), Reporter(stream_logs=not args.quiet))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        state = "built" if result.built else "up to date (not rebuilt)"
        print(f"{result.image}@{result.digest}  {state}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .build import plan
    from .dockerfile import describe, plan_json

    _env, p, ref = plan(args.spec, _opts(args))
    print(plan_json(p, ref) if args.json else f"# image: {ref}\n" + describe(p), end="" if not args.json else "\n")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    from .build import load_env
    from .hashing import canonical, canonical_json, env_hash

    env = load_env(args.spec, _opts(args))
    h = env_hash(env)
    if args.json:
        out: dict[str, Any] = {"name": env.name, "hash": h}
        if args.canonical:
            out["canonical"] = canonical(env)
        print(json.dumps(out, indent=2))
    else:
        print(h)
        if args.canonical:
            print(canonical_json(env))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from . import spec
    from .hashing import env_hash, explain

    a, b = spec.load(args.a), spec.load(args.b)
    diffs = explain(a, b)
    if args.json:
        print(
            json.dumps(
                {
                    "a": {"path": args.a, "hash": env_hash(a)},
                    "b": {"path": args.b, "hash": env_hash(b)},
                    "same": not diffs,
                    "differences": [{"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b)} for d in diffs],
                },
                indent=2,
            )
        )
    elif not diffs:
        print(f"same hash {env_hash(a)}")
    else:
        for d in diffs:
            print(d)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .runs import RunOptions, parse_pairs, train

    inputs = {k: Path(v) for k, v in parse_pairs(args.input, "--input").items()}
    opts = RunOptions(
        env=args.env,
        source=args.source,
        script=args.script,
        args=tuple(args.script_args),
        experiment=args.experiment,
        inputs=inputs,
        env_vars=parse_pairs(args.env_var, "--env-var"),
        secrets=tuple(args.secret),
        cpus=args.cpus,
        memory=args.memory,
        shm_size=args.shm_size,
        gpus=args.gpus,
        timeout=args.timeout,
        runs_dir=args.runs_dir,
        user=args.user,
        snapshot_max_mb=args.max_snapshot_mb,
        build=_opts(args),
    )
    out = sys.stderr if args.json else sys.stdout
    result = train(opts, on_line=lambda line: print(line, file=out, flush=True))
    if args.json:
        print(json.dumps(result.record, indent=2))
    else:
        print(f"run {result.run_id}: {result.status}; outputs in {result.outputs}")
    return result.cli_exit_code


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", required=True, help="inference environment file (inference = true) or an image reference")
    p.add_argument("--entry", type=Path, required=True, help="entry script (init() and run(raw_data))")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="model directory, mounted read-only at AZUREML_MODEL_DIR (several: NAME=DIR each)",
    )
    p.add_argument("--scoring-timeout-ms", type=int, help="SCORING_TIMEOUT_MS for run()")
    p.add_argument("--workers", type=int, help="WORKER_COUNT")
    _add_build_options(p)


def _serve_options(args: argparse.Namespace, **extra: Any) -> Any:
    from .serve.local import ServeOptions, parse_models

    return ServeOptions(
        env=args.env,
        entry=args.entry,
        models=parse_models(args.model),
        scoring_timeout_ms=args.scoring_timeout_ms,
        workers=args.workers,
        build=_opts(args),
        **extra,
    )


def _info(msg: str) -> None:
    print(f"ml-env: {msg}", file=sys.stderr, flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import local

    service = local.start(_serve_options(args, port=args.port, name=args.name), info=_info)
    try:
        ready = local.wait_ready(service)
    except BaseException:
        local.remove(service)
        raise
    if args.json:
        print(
            json.dumps(
                {
                    "name": service.name,
                    "url": service.url,
                    "container": service.container_id,
                    "image": service.image,
                    "ready_s": ready,
                }
            )
        )
    else:
        print(f"{service.name}: {service.url}/score ready in {ready:.1f}s")
    if args.detach:
        return 0
    from .engine import Containers

    try:
        for line in Containers().logs(service.container_id):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        local.remove(service)
        _info(f"{service.name} stopped")
    return 0


def cmd_serve_admin(args: argparse.Namespace) -> int:
    from .serve import local

    if args.verb == "list":
        services = local.list_services()
        if args.json:
            print(json.dumps(services, indent=2))
        for s in [] if args.json else services:
            print(f"{s['name']:24} {s['state']:10} {s['url'] or '-':28} {s['image']}")
    elif args.verb == "stop":
        local.stop(args.name)
        print(f"{args.name} stopped")
    else:
        print(local.logs(args.name, tail=args.tail), end="")
    return 0


def cmd_smoke_test(args: argparse.Namespace) -> int:
    from .serve.smoke import run_smoke_test, write_reports

    report = run_smoke_test(
        _serve_options(args), args.cases, repeat=args.repeat, ready_timeout=args.ready_timeout, info=_info
    )
    js, xml = write_reports(report, args.report_dir, args.cases)
    if args.json:
        print(json.dumps({**report.to_json(), "report": str(js), "junit": str(xml)}, indent=2))
    else:
        for c in report.cases:
            print(f"{'PASS' if c.passed else 'FAIL'}  {c.name}" + ("" if c.passed else f": {c.message}"))
        print(
            f"{report.passed} passed, {report.failed} failed; ready in {report.ready_s:.2f}s; "
            f"latency p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms; reports: {js}, {xml}"
        )
    if report.failed and report.logs_tail:
        print("--- last lines of the scoring container's log ---", file=sys.stderr)
        print(report.logs_tail, file=sys.stderr)
    return 1 if report.failed else 0


def cmd_promote(args: argparse.Namespace) -> int:
    from .promote import PromoteOptions, promote

    result = promote(
        PromoteOptions(
            source=args.source,
            destination=args.destination,
            tags=tuple(args.tag),
            allow_overwrite=args.allow_overwrite,
            dry_run=args.dry_run,
            insecure=args.insecure,
            ledger=None if (args.no_ledger or args.dry_run) else args.ledger,
            copy_referrers=not args.no_referrers,
        ),
        info=_info,
    )
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    elif result.dry_run:
        print(f"dry run: {result.source} -> {', '.join(result.refs)}")
        for line in result.plan:
            print(f"  {line}")
    else:
        state = "already there, nothing changed" if result.no_op else "promoted"
        print(f"{result.digest}  {state}: {', '.join(result.refs)}")
    return 0


def cmd_ledger_show(args: argparse.Namespace) -> int:
    from .promote import Ledger

    ledger = Ledger(args.ledger)
    if args.tag:
        cur = ledger.current(args.env, args.tag)
        if cur is None:
            raise MlEnvError(
                f"no promotion to tag {args.tag}" + (f" for {args.env}" if args.env else ""), file=str(args.ledger)
            )
        print(
            json.dumps(cur, indent=2)
            if args.json
            else f"{cur['environment'] or '-'} {args.tag}: {cur['digest']} since {cur['since']} ({cur['destination']})"
        )
        return 0
    entries = ledger.entries(args.env)
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    for e in entries:
        print(
            f"{e['time']}  {e.get('environment') or '-':20} {e['digest'][:19]}  {e['destination']}:{','.join(e['tags'])}  by {e.get('actor', '-')}"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .formats.azure import import_source

    out_dir = args.output.parent if args.output else Path.cwd()
    result = import_source(args.source, out_dir)
    for w in result.warnings:
        _info(f"warning: {w}")
    if args.output:
        if args.output.exists():
            raise MlEnvError(f"{args.output} exists; not overwriting it")
        out_dir.mkdir(parents=True, exist_ok=True)
        for name, data in result.files.items():
            (out_dir / name).write_bytes(data)
        args.output.write_text(result.text())
        from . import spec

        spec.load(args.output)  # what we wrote must load
    if args.json:
        print(
            json.dumps(
                {"output": str(args.output) if args.output else None, "name": result.name, "warnings": result.warnings},
                indent=2,
            )
        )
    elif not args.output:
        print(result.text(), end="")
    else:
        print(f"wrote {args.output} ({len(result.warnings)} warnings)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from . import spec
    from .formats.azure import export_v1, export_v2

    env = spec.load(args.spec)
    warnings = export_v1(env, args.output) if args.format == "v1" else export_v2(env, args.output)
    for w in warnings:
        _info(f"warning: {w}")
    print(json.dumps({"output": str(args.output), "warnings": warnings}) if args.json else f"wrote {args.output}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from . import spec
    from .build import Reporter, build
    from .versions import Versions

    result = build(args.spec, _opts(args), Reporter(stream_logs=False))
    env = spec.load(args.spec, locked=args.locked)
    entry, created = Versions(args.versions).register(
        env, image=result.image, digest=result.digest, registry=args.registry
    )
    if args.json:
        print(
            json.dumps({k: v for k, v in entry.items() if k not in ("spec", "files")} | {"created": created}, indent=2)
        )
    else:
        state = "registered" if created else "unchanged, still"
        print(f"{entry['name']}:{entry['version']} {state} ({entry['hash'][:12]}, {entry['image']}@{entry['digest']})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import curated
    from .versions import Versions

    registered = [{k: v for k, v in e.items() if k not in ("spec", "files")} for e in Versions(args.versions).latest()]
    cur = [f"curated/{p.stem}" for p in curated()]
    if args.json:
        print(json.dumps({"registered": registered, "curated": cur}, indent=2))
        return 0
    for e in registered:
        print(f"{e['name']}:{e['version']:<4} {e['hash'][:12]}  {e['image']}@{e['digest'] or '-'}  {e['registered']}")
    print("curated: " + ", ".join(cur))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from .versions import Versions

    v = Versions(args.versions)
    entry = v.get(args.ref)
    if args.output:
        if args.output.exists():
            raise MlEnvError(f"{args.output} exists; not overwriting it")
        v.write_back(entry, args.output)
        print(
            json.dumps({"output": str(args.output), "version": entry["version"]})
            if args.json
            else f"wrote {args.output} ({entry['name']}:{entry['version']})"
        )
        if entry.get("wheels"):
            _info(f"warning: wheels are not kept in the versions file; put them back: {', '.join(entry['wheels'])}")
    else:
        print(
            json.dumps({k: v for k, v in entry.items()}, indent=2) if args.json else entry["spec"],
            end="" if not args.json else "\n",
        )
    return 0


def cmd_diff(args: argparse.Namespace) -> int:
    from .versions import Versions

    diffs = Versions(args.versions).diff(args.a, args.b)
    if args.json:
        print(json.dumps([{"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b)} for d in diffs], indent=2))
    else:
        for d in diffs:
            print(d)
        if not diffs:
            print("same environment")
    return 0


def cmd_clone(args: argparse.Namespace) -> int:
    from .catalog import clone

    out = clone(args.source, args.name, args.directory)
    print(json.dumps({"output": str(out)}) if args.json else f"wrote {out}")
    return 0


def cmd_scaffold(args: argparse.Namespace) -> int:
    from .catalog import scaffold

    files = scaffold(args.name, args.directory)
    print(json.dumps({"files": [str(f) for f in files]}) if args.json else "\n".join(f"wrote {f}" for f in files))
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    from .runs import list_runs

    runs = [r for r in list_runs(args.runs_dir) if not args.experiment or r.get("experiment") == args.experiment]
    if args.json:
        print(json.dumps(runs, indent=2))
        return 0
    print(f"{'RUN':52} {'STATUS':10} {'EXIT':>4}  {'STARTED':24} METRICS")
    for r in runs:
        metrics = ", ".join(f"{k}={v}" for k, v in list((r.get("metrics") or {}).items())[:3])
        code = "" if r.get("exit_code") is None else str(r["exit_code"])
        print(f"{r['run_id']:52} {r['status']:10} {code:>4}  {r.get('started', ''):24} {metrics}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from .runs import load_run

    r = load_run(args.runs_dir, args.run_id)
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    env = r["environment"]
    print(f"run:         {r['run_id']}  ({r['experiment']})")
    print(f"status:      {r['status']}  exit {r.get('exit_code')}" + (f"  ({r['reason']})" if r.get("reason") else ""))
    print(f"environment: {env.get('name') or '-'}  {env['image']}  {env.get('digest') or ''}")
    print(
        f"source:      {r['source']['path']}  snapshot {r['source']['snapshot_hash'][:16]}  git {r['source'].get('git_commit') or '-'}{' (dirty)' if r['source'].get('git_dirty') else ''}"
    )
    print(f"command:     {' '.join(r['command'])}")
    print(f"time:        {r['started']} -> {r.get('ended') or '(running)'}")
    for k, v in (r.get("metrics") or {}).items():
        print(f"metric:      {k} = {v}")
    for o in r.get("outputs") or []:
        print(f"output:      {o['path']}  {o['bytes']} bytes")
    return 0


def _jsonable(v: Any) -> Any:
    from .hashing import _MISSING

    return None if v is _MISSING else v


def run(argv: Sequence[str] | None, *, parser_factory: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    parser = parser_factory()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if len(argv) > 1 and argv[0] == "serve" and argv[1] in ("list", "stop", "logs"):
        argv = [f"serve-{argv[1]}", *argv[2:]]
    if argv and argv[0] == "train" and "--" in argv:
        i = argv.index("--")
        argv, script_args = argv[:i], argv[i + 1 :]
    args = parser.parse_args(argv)
    if script_args:
        args.script_args = script_args
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except MlEnvError as e:
        report_error(e, json_mode=getattr(args, "json", False))
        return e.exit_code
    except KeyboardInterrupt:
        print("ml-env: interrupted", file=sys.stderr)
        return 130


def report_error(e: MlEnvError, *, json_mode: bool = False) -> None:
    if e.details:
        print(e.details, file=sys.stderr)
    print(f"ml-env: error: {e}", file=sys.stderr)
    if json_mode:
        print(json.dumps({"error": str(e), "file": e.file, "key": e.key, "line": e.line, "exit_code": e.exit_code}))


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
