"""``serve`` (and ``serve list|stop|logs``) and ``smoke-test``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..options import BUILD_HOW, BUILD_WHERE, INFERENCE_ENV, SERVE, SMOKE, Option
from .common import build_options, command, output

ENV = (
    INFERENCE_ENV,
    Option("versions", ("--versions",), kind="path", default=None, env="ML_ENV_VERSIONS", config="versions", gha=None,
           help="versions file, for NAME:VERSION environments (default envs/versions.toml)"),
)  # fmt: skip
START = (
    Option("port", ("--port",), kind="port", default=5001, help="host port on 127.0.0.1, or on a remote engine's host (0 picks a free one)"),
    Option("name", ("--name",), help="service name (default: the environment's name)"),
    Option("detach", ("--detach", "-d"), kind="flag", default=False, help="start it and return (stop: ml-env serve stop NAME)"),
    Option("replace", ("--replace",), metavar="NAME", default=None,
           help="swap the running service NAME for this image/entry/model with no failed request (same port; returns once done)"),
)  # fmt: skip


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "smoke-test":
        command(p, cmd_smoke_test, ENV, SERVE, SMOKE, BUILD_WHERE, BUILD_HOW)
        return
    p.usage = (
        "ml-env serve [--env ENV] --entry score.py --model DIR [--port N] [--detach] [--replace NAME]"
        " | serve {list,stop,logs} ..."
    )
    command(p, cmd_serve, ENV, SERVE, START, BUILD_WHERE, BUILD_HOW)
    sub = p.add_subparsers(dest="serve_command", metavar="{list,stop,logs}", parser_class=type(p))
    command(sub.add_parser("list", help="services on the engine"), cmd_list)
    named = (Option("name", ("name",), help="the service's name"),)
    command(sub.add_parser("stop", help="stop and remove a service"), cmd_stop, named)
    tail = (Option("tail", ("--tail",), default="all", help="only the last N lines"),)
    command(sub.add_parser("logs", help="a service's log"), cmd_logs, named, tail)


def serve_options(args: argparse.Namespace, **extra: Any) -> Any:
    from pathlib import Path

    from ..errors import UsageError
    from ..grammar import parse_size
    from ..resources import Resources
    from ..serve.local import ServeOptions, parse_models

    if not args.env:
        raise UsageError(
            "--env is required (or inference_env in [tool.ml-env])"
        )  # --entry too, unless the image is a packaged one
    max_body = None
    if args.max_body:
        max_body = parse_size(args.max_body)
        if not max_body:
            raise UsageError("--max-body is not a size", hint='e.g. "16m"')
    return ServeOptions(
        environment=args.env,
        entry=args.entry,
        models=parse_models(args.model),
        scoring_timeout_ms=args.scoring_timeout_ms,
        workers=args.workers,
        build=build_options(args),
        resources=Resources.parse(cpus=args.cpus, memory=args.memory),
        max_body=max_body,
        read_timeout=args.read_timeout,
        versions=args.versions or Path("envs/versions.toml"),
        **extra,
    )


def cmd_serve(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..serve import local

    out = output(args)
    if args.replace:
        if args.name and args.name != args.replace:
            raise UsageError("--name and --replace name different services")
        service, ready, swap = local.replace(serve_options(args, name=args.replace), args.replace, info=out.info)
        out.result({**service.to_json(), "container": service.container_id, "ready_s": ready, "swap_s": swap},
                   f"{service.name}: {service.url}/score now served by {service.image} "
                   f"(ready in {ready:.1f}s, switched in {swap:.2f}s)")  # fmt: skip
        return 0
    service = local.start(serve_options(args, port=args.port, name=args.name), info=out.info, front=True)
    try:
        ready = local.wait_ready(service)
    except BaseException:
        local.remove(service)
        raise
    out.result({**service.to_json(), "container": service.container_id, "ready_s": ready},
               f"{service.name}: {service.url}/score ready in {ready:.1f}s")  # fmt: skip
    if args.detach:
        return 0
    try:
        while True:
            for line in local.follow(service):
                print(line, flush=True)
            replaced = local.current(service)  # serve --replace swapped it: follow the new one
            if replaced is None:
                break
            service = replaced
    except KeyboardInterrupt:
        pass
    finally:
        local.remove(service)
        out.info(f"{service.name} stopped")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..serve import local

    services = local.list_services()
    text = "\n".join(f"{s.name:24} {s.state:10} {s.url or '-':28} {s.image}" for s in services)
    output(args).result([s.to_json() for s in services], text)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from ..serve import local

    local.stop(args.name)
    output(args).result({"name": args.name, "stopped": True}, f"{args.name} stopped")
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from ..serve import local

    text = local.logs(args.name, tail=args.tail)
    output(args).result({"name": args.name, "log": text}, text)
    return 0


def cmd_smoke_test(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..serve.smoke import record_result, run_smoke_test, write_reports

    if not args.cases:
        raise UsageError("--cases is required")
    if args.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    out = output(args)
    report = run_smoke_test(
        serve_options(args), args.cases, repeat=args.repeat, ready_timeout=args.ready_timeout, info=out.info
    )
    js, xml = write_reports(report, args.report_dir, args.cases)
    recorded = None if args.no_record else record_result(report, args.cases, insecure=args.insecure, info=out.info)

    def text() -> str:
        rows = [
            f"{'PASS' if c.passed else 'FAIL'}  {c.name}" + ("" if c.passed else f": {c.message}") for c in report.cases
        ]
        rows.append(
            f"{report.passed} passed, {report.failed} failed; ready in {report.ready_s:.2f}s; "
            f"latency p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms; reports: {js}, {xml}"
        )
        return "\n".join(rows)

    out.result({**report.to_json(), "report": str(js), "junit": str(xml), "record": recorded}, text)
    if report.failed and report.logs_tail:
        print("--- last lines of the scoring container's log ---", file=sys.stderr)
        print(report.logs_tail, file=sys.stderr)
    return 1 if report.failed else 0
