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
from typing import Any, NoReturn

from .errors import EXIT_INTERNAL, MlEnvError, UsageError

__all__ = ["main", "build_parser"]


def _env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


class _Parser(argparse.ArgumentParser):
    """argparse with its usage error bounded: it echoes the offending arguments."""

    def error(self, message: str) -> NoReturn:
        from .grammar import bounded, printable

        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {bounded(printable(message, 10_000), 500)}\n")


def _path(text: str) -> Path:
    """A path argument: text without NUL, CR, LF or other control characters."""
    from .grammar import has_control

    if has_control(text):
        raise argparse.ArgumentTypeError("a path must not contain control characters (NUL, newline, ...)")
    return Path(text)


def _text(text: str) -> str:
    """A file or image argument kept as text (as given): no control characters either."""
    _path(text)
    return text


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535")
    return int(text)


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise argparse.ArgumentTypeError("must be a positive whole number")
    return int(text)


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
    p.add_argument("--cache-dir", type=_path, help="directory for --cache local")
    p.add_argument(
        "--ca-bundle",
        type=_path,
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
    p.add_argument("--log-dir", type=_path, default=Path(".ml-env/logs"), help="where build logs are saved")


_VERSIONS = Path(os.environ.get("ML_ENV_VERSIONS", "envs/versions.toml"))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ml-env", description="Content-addressed ML environment images.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("build", help="build an environment (or reuse it when its hash is already in the registry)")
    b.add_argument("spec", type=_text, help="environment file (envs/NAME.toml)")
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
    p.add_argument("spec", type=_text)
    _add_build_options(p, building=False)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    h = sub.add_parser("hash", help="print the environment's content hash")
    h.add_argument("spec", type=_text)
    h.add_argument("--pin-base", action="store_true")
    h.add_argument("--locked", action="store_true")
    h.add_argument("--canonical", action="store_true", help="also print the canonical JSON that is hashed")
    h.add_argument("--insecure", action="store_true")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_hash)

    e = sub.add_parser("explain", help="list the fields that make two specs' hashes differ")
    e.add_argument("a", type=_text)
    e.add_argument("b", type=_text)
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_explain)

    t = sub.add_parser(
        "train",
        help="run a training script inside an environment (built or reused by hash)",
        usage="ml-env train --env ENV --source DIR --script FILE [options] [-- SCRIPT ARGS...]",
    )
    t.add_argument(
        "--env", required=True, type=_text, help="environment file (built or reused) or an image reference/digest"
    )
    t.add_argument(
        "--source",
        type=_path,
        required=True,
        help="source directory, snapshotted (honours .amlignore, else .dockerignore/.gitignore)",
    )
    t.add_argument("--script", required=True, type=_text, help="script path inside --source")
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
    t.add_argument("--runs-dir", type=_path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
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
    sv.add_argument(
        "--port", type=_port, default=5001, help="host port on 127.0.0.1 (default 5001; 0 picks a free one)"
    )
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
        type=_path,
        required=True,
        help="JSON lines: request/request_text, expect_status, expect_json|expect_subset|expect_schema",
    )
    st.add_argument("--repeat", type=int, default=1, help="send each case N times (latency p50/p95/max)")
    st.add_argument("--ready-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    st.add_argument(
        "--report-dir", type=_path, default=Path(".ml-env/smoke"), help="where the JSON and JUnit XML reports go"
    )
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_smoke_test)

    pr = sub.add_parser(
        "promote",
        help="copy an image by digest to another registry/repository and record it in the ledger",
        usage="ml-env promote SOURCE DEST[:TAG] --tag T [--tag T2] [--allow-overwrite] [--dry-run]",
    )
    pr.add_argument("source", type=_text, help="image by tag or digest (the digest is resolved once)")
    pr.add_argument("destination", type=_text, help="host[:port]/repository, optionally :tag")
    pr.add_argument("--tag", action="append", default=[], help="destination tag (several allowed)")
    pr.add_argument("--allow-overwrite", action="store_true", help="move a tag that points at another digest")
    pr.add_argument("--dry-run", action="store_true", help="print what would happen; write nothing")
    pr.add_argument("--insecure", action="store_true", help="allow plain HTTP to a non-loopback registry")
    pr.add_argument(
        "--ledger", type=_path, default=Path(_env_default("ML_ENV_LEDGER", "releases.toml") or "releases.toml")
    )
    pr.add_argument("--no-ledger", action="store_true", help="do not record the promotion")
    pr.add_argument("--no-referrers", action="store_true", help="do not copy signatures/attestations")
    pr.add_argument("--jobs", type=_positive_int, default=4, help="blobs copied at once (default 4)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_promote)

    lg = sub.add_parser("ledger", help="the release ledger")
    lsub = lg.add_subparsers(dest="ledger_command", metavar="{show}")
    ls = lsub.add_parser("show", help="print promotions; with --tag, which digest the tag is now and since when")
    ls.add_argument("--env", help="only this environment")
    ls.add_argument("--tag", help="answer: which digest is this tag now, since when")
    ls.add_argument(
        "--ledger", type=_path, default=Path(_env_default("ML_ENV_LEDGER", "releases.toml") or "releases.toml")
    )
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_ledger_show)

    im = sub.add_parser(
        "import", help="import an Azure ML environment (v1 directory, v2 YAML, conda file, requirements)"
    )
    im.add_argument("source", type=_path)
    im.add_argument("-o", "--output", type=_path, help="write the environment file here (default: stdout)")
    im.add_argument("--json", action="store_true", help="print {output, name, warnings} as JSON")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="export an environment file to Azure ML v1 (directory) or v2 (YAML)")
    ex.add_argument("spec", type=_text)
    ex.add_argument("--format", choices=("v1", "v2"), required=True)
    ex.add_argument("-o", "--output", type=_path, required=True, help="v1: a directory; v2: a .yml file")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    rg = sub.add_parser("register", help="build (or reuse) and record a new version when the hash changed")
    rg.add_argument("spec", type=_text)
    _add_build_options(rg)
    rg.add_argument("--versions", type=_path, default=_VERSIONS, help="versions file (default envs/versions.toml)")
    rg.add_argument("--json", action="store_true")
    rg.set_defaults(func=cmd_register)

    li = sub.add_parser("list", help="registered environments (latest versions) and curated ones")
    li.add_argument("--versions", type=_path, default=_VERSIONS)
    li.add_argument("--json", action="store_true")
    li.set_defaults(func=cmd_list)

    ge = sub.add_parser("get", help="print a registered version's environment file, or write it (-o)")
    ge.add_argument("ref", metavar="NAME[:VERSION]")
    ge.add_argument("-o", "--output", type=_path, help="write the environment file (and its text files) here")
    ge.add_argument("--versions", type=_path, default=_VERSIONS)
    ge.add_argument("--json", action="store_true")
    ge.set_defaults(func=cmd_get)

    df = sub.add_parser("diff", help="field-level differences between two registered versions")
    df.add_argument("a", metavar="NAME:VERSION")
    df.add_argument("b", metavar="NAME:VERSION")
    df.add_argument("--versions", type=_path, default=_VERSIONS)
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_diff)

    cl = sub.add_parser("clone", help="copy a curated (or any) environment under your own name")
    cl.add_argument("source", metavar="curated/NAME")
    cl.add_argument("name")
    cl.add_argument("-d", "--directory", type=_path, default=Path("envs"))
    cl.add_argument("--json", action="store_true")
    cl.set_defaults(func=cmd_clone)

    sc = sub.add_parser("scaffold", help="write a starter environment, requirements file and train script")
    sc.add_argument("name")
    sc.add_argument("-d", "--directory", type=_path, default=Path("."))
    sc.add_argument("--json", action="store_true")
    sc.set_defaults(func=cmd_scaffold)

    r = sub.add_parser("runs", help="run history")
    rsub = r.add_subparsers(dest="runs_command", metavar="{list,show,gc}")
    rl = rsub.add_parser("list", help="list runs")
    rl.add_argument("--runs-dir", type=_path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    rl.add_argument("--experiment")
    rl.add_argument("--json", action="store_true")
    rl.set_defaults(func=cmd_runs_list)
    rs = rsub.add_parser("show", help="show one run")
    rs.add_argument("run_id")
    rs.add_argument("--runs-dir", type=_path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(func=cmd_runs_show)
    rg_ = rsub.add_parser("gc", help="mark runs whose ml-env process died as lost; remove their containers")
    rg_.add_argument("--runs-dir", type=_path, default=Path(_env_default("ML_ENV_RUNS_DIR", "runs") or "runs"))
    rg_.add_argument("--json", action="store_true")
    rg_.set_defaults(func=cmd_runs_gc)
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

    opts = BuildOptions(**{f: getattr(args, f) for f in _BUILD_FIELDS if hasattr(args, f)})
    if opts.registry:
        from .registry import check_registry_host

        check_registry_host(opts.registry)
    return opts


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
    from .resources import Resources
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
        resources=Resources.parse(cpus=args.cpus, memory=args.memory, shm_size=args.shm_size, gpus=args.gpus),
        timeout=args.timeout,
        runs_dir=args.runs_dir,
        user=args.user,
        snapshot_max_mb=args.max_snapshot_mb,
        build=_opts(args),
    )
    out = sys.stderr if args.json else sys.stdout
    result = train(opts, on_line=lambda line: print(line, file=out, flush=True))
    if args.json:
        print(json.dumps(result.record.to_dict(), indent=2))
    else:
        print(f"run {result.run_id}: {result.status}; outputs in {result.outputs}")
    return result.cli_exit_code


def _add_serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--env", required=True, type=_text, help="inference environment file (inference = true) or an image reference"
    )
    p.add_argument("--entry", type=_path, required=True, help="entry script (init() and run(raw_data))")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="[NAME=]DIR",
        help="model directory, mounted read-only at AZUREML_MODEL_DIR (several: NAME=DIR each)",
    )
    p.add_argument("--scoring-timeout-ms", type=_positive_int, help="SCORING_TIMEOUT_MS for run()")
    p.add_argument("--workers", type=_positive_int, help="WORKER_COUNT")
    p.add_argument("--cpus", help="CPU limit of the scoring container")
    p.add_argument("--memory", help="memory limit of the scoring container, e.g. 2g")
    p.add_argument(
        "--max-body", help="largest request body the server accepts, e.g. 16m (413 beyond it; default 16 MiB)"
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        help="seconds a client has to send a request's head, and again its body (default 10 and 30)",
    )
    _add_build_options(p)


def _serve_options(args: argparse.Namespace, **extra: Any) -> Any:
    from .grammar import parse_size
    from .resources import Resources
    from .serve.local import ServeOptions, parse_models

    max_body = None
    if args.max_body:
        max_body = parse_size(args.max_body)
        if not max_body:
            raise UsageError("--max-body is not a size", hint='e.g. "16m"')
    return ServeOptions(
        env=args.env,
        entry=args.entry,
        models=parse_models(args.model),
        scoring_timeout_ms=args.scoring_timeout_ms,
        workers=args.workers,
        build=_opts(args),
        resources=Resources.parse(cpus=args.cpus, memory=args.memory),
        max_body=max_body,
        read_timeout=args.read_timeout,
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
            jobs=args.jobs,
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
        if result.recorded_found:
            state += " (recorded in the ledger as found)"
        print(f"{result.digest}  {state}: {', '.join(result.refs)}")
    return 0


def cmd_ledger_show(args: argparse.Namespace) -> int:
    from .grammar import printable as pr
    from .ledger import Ledger

    ledger = Ledger(args.ledger)
    if args.tag:
        cur = ledger.current(args.env, args.tag)
        if cur is None:
            raise UsageError(
                f"no promotion to tag {pr(args.tag, 130)}" + (f" for {pr(args.env, 70)}" if args.env else ""),
                file=str(args.ledger),
            )
        print(
            json.dumps(cur.to_dict(), indent=2)
            if args.json
            else f"{pr(cur.environment or '-')} {pr(args.tag)}: {pr(cur.digest)} since {pr(cur.since)} ({pr(cur.destination)})"
        )
        return 0
    entries = ledger.entries(args.env)
    if args.json:
        print(json.dumps([e.to_dict() for e in entries], indent=2))
        return 0
    for e in entries:
        found = "  (found)" if e.found else ""
        print(
            f"{pr(e.time, 30)}  {pr(e.environment or '-', 20):20} {pr(e.digest[:19])}  "
            f"{pr(e.destination)}:{pr(','.join(e.tags))}  by {pr(e.actor or '-', 60)}{found}"
        )
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from .formats.azure import import_source

    result = import_source(args.source, stem=args.output.stem if args.output else None)
    for w in result.warnings:
        _info(f"warning: {w}")
    written: list[Path] = []
    if args.output:
        written = result.write(args.output)
    elif result.files:
        _info(
            f"warning: this environment names {', '.join(sorted(result.files))}, which stdout cannot carry: "
            "use -o FILE to write them beside the environment file"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "output": str(args.output) if args.output else None,
                    "files": [str(p) for p in written],
                    "name": result.name,
                    "warnings": result.warnings,
                },
                indent=2,
            )
        )
    elif not args.output:
        print(result.text(), end="")
    else:
        print(f"wrote {', '.join(str(p) for p in written)} ({len(result.warnings)} warnings)")
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
        print(json.dumps(entry.summary() | {"created": created}, indent=2))
    else:
        state = "registered" if created else "unchanged, still"
        print(f"{entry.ref} {state} ({entry.hash[:12]}, {entry.image}@{entry.digest})")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .catalog import curated
    from .versions import Versions

    registered = Versions(args.versions).latest()
    cur = [f"curated/{p.stem}" for p in curated()]
    if args.json:
        print(json.dumps({"registered": [e.summary() for e in registered], "curated": cur}, indent=2))
        return 0
    for e in registered:
        print(f"{e.name}:{e.version:<4} {e.hash[:12]}  {e.image}@{e.digest or '-'}  {e.registered}")
    print("curated: " + ", ".join(cur))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from .versions import Versions

    v = Versions(args.versions)
    entry = v.get(args.ref)
    if args.output:
        if args.output.exists():
            raise UsageError(f"{args.output} exists; not overwriting it")
        v.write_back(entry, args.output)
        print(
            json.dumps({"output": str(args.output), "version": entry.version})
            if args.json
            else f"wrote {args.output} ({entry.ref})"
        )
        if entry.wheels:
            _info(f"warning: wheels are not kept in the versions file; put them back: {', '.join(entry.wheels)}")
    else:
        print(json.dumps(entry.to_dict(), indent=2) if args.json else entry.spec, end="" if not args.json else "\n")
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
    from .grammar import printable
    from .runs import list_runs, reap_lost

    reap_lost(args.runs_dir, warn=lambda m: _info(f"warning: {m}"))
    runs = [
        r
        for r in list_runs(args.runs_dir, warn=lambda m: _info(f"warning: {m}"))
        if not args.experiment or r.experiment == args.experiment
    ]
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return 0
    print(f"{'RUN':52} {'STATUS':10} {'EXIT':>4}  {'STARTED':24} METRICS")
    for r in runs:
        metrics = ", ".join(f"{printable(k, 30)}={printable(v, 30)}" for k, v in list(r.metrics.items())[:3])
        code = "" if r.exit_code is None else str(r.exit_code)
        print(f"{r.run_id:52} {r.status:10} {code:>4}  {printable(r.started, 24):24} {metrics}")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from .grammar import printable as pr
    from .runs import load_run, reap_lost

    reap_lost(args.runs_dir, warn=lambda m: _info(f"warning: {m}"))
    r = load_run(args.runs_dir, args.run_id)
    if args.json:
        print(json.dumps(r.to_dict(), indent=2))
        return 0
    env, src = r.environment, r.source
    print(f"run:         {r.run_id}  ({pr(r.experiment)})")
    print(f"status:      {r.status}  exit {r.exit_code}" + (f"  ({pr(r.reason, 300)})" if r.reason else ""))
    print(f"environment: {pr(env.name or '-')}  {pr(env.image)}  {pr(env.digest or '')}")
    dirty = " (dirty)" if src.git_dirty else ""
    print(f"source:      {pr(src.path)}  snapshot {src.snapshot_hash[:16]}  git {pr(src.git_commit or '-')}{dirty}")
    print(f"command:     {pr(' '.join(r.command), 500)}")
    print(f"time:        {pr(r.started)} -> {pr(r.ended or '(running)')}")
    for k, v in r.metrics.items():
        print(f"metric:      {pr(k, 60)} = {pr(v, 60)}")
    for o in r.outputs:
        print(f"output:      {pr(o.get('path'))}  {pr(o.get('bytes'))} bytes")
    return 0


def cmd_runs_gc(args: argparse.Namespace) -> int:
    from .runs import gc

    done = gc(args.runs_dir, warn=lambda m: _info(f"warning: {m}"))
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        print(f"{len(done['lost'])} run(s) marked lost, {len(done['removed_containers'])} container(s) removed")
    return 0


def _jsonable(v: Any) -> Any:
    from .hashing import _MISSING

    return None if v is _MISSING else v


def run(argv: Sequence[str] | None, *, parser_factory: Callable[[], argparse.ArgumentParser] = build_parser) -> int:
    """The one boundary: user errors are one line and their exit code; anything unexpected is one
    line naming where it happened, exit 70; a traceback only with ML_ENV_DEBUG=1."""
    parser = parser_factory()
    argv = list(sys.argv[1:] if argv is None else argv)
    script_args: list[str] = []
    if len(argv) > 1 and argv[0] == "serve" and argv[1] in ("list", "stop", "logs"):
        argv = [f"serve-{argv[1]}", *argv[2:]]
    if argv and argv[0] == "train" and "--" in argv:
        i = argv.index("--")
        argv, script_args = argv[:i], argv[i + 1 :]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2), already printed
        return int(e.code or 0) if isinstance(e.code, int) else 2
    if script_args:
        args.script_args = script_args
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    json_mode = getattr(args, "json", False)
    try:
        return int(args.func(args))
    except MlEnvError as e:
        report_error(e, json_mode=json_mode)
        return e.exit_code
    except KeyboardInterrupt:
        print("ml-env: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 141
    except Exception as e:  # a bug: never a raw traceback unless asked for
        report_internal(e, json_mode=json_mode)
        return EXIT_INTERNAL


def report_error(e: MlEnvError, *, json_mode: bool = False) -> None:
    from .grammar import bounded
    from .redact import redact_userinfo

    if e.details:
        lines = redact_userinfo(e.details).splitlines()[-40:]
        print("\n".join(bounded(x, 500) for x in lines), file=sys.stderr)
    line = bounded(redact_userinfo(str(e)).replace("\n", " "))
    print(f"ml-env: error: {line}", file=sys.stderr)
    if json_mode:
        print(json.dumps({"error": line, "file": e.file, "key": e.key, "line": e.line, "exit_code": e.exit_code}))


def report_internal(e: BaseException, *, json_mode: bool = False) -> None:
    """Where the bug is (the innermost frame of this package), not what the exception says: its
    text could hold anything (a file's content, a secret)."""
    import traceback

    if os.environ.get("ML_ENV_DEBUG"):
        traceback.print_exc()
    where = "?"
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        if "ml_env_tasks" in frame.filename:
            where = f"{frame.filename.rsplit('ml_env_tasks', 1)[1].lstrip('/')}:{frame.lineno}"
            break
    line = f"internal error: {type(e).__name__} in {where} (run with ML_ENV_DEBUG=1 for the traceback)"
    print(f"ml-env: {line}", file=sys.stderr)
    if json_mode:
        print(json.dumps({"error": line, "file": None, "key": None, "line": None, "exit_code": EXIT_INTERNAL}))


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":  # pragma: no cover
    main()
