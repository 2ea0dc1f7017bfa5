"""``serve`` (and ``serve list|stop|logs``) and ``smoke-test``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..settings.groups import (
    BUILD_HOW,
    BUILD_WHERE,
    INFERENCE_ENV,
    MODEL_SOURCE_REPOSITORY,
    REBUILD,
    SERVE,
    SIGN,
    SMOKE,
    VERSIONS,
)
from ..settings.options import Option
from . import Action, Annotation, Command, Console, Outcome, Session, Values
from .common import build_options, cell, code, rows, sign_pushed, signing_key, visible


def _input(name: str) -> str:
    return f"input '{name}'"


def _flag(name: str) -> str:
    return f"--{name}"


__all__ = ["COMMANDS", "serve_options"]

ENV = (INFERENCE_ENV, VERSIONS, REBUILD, MODEL_SOURCE_REPOSITORY)
START = (
    Option("port", ("--port",), kind="port", default=5001, help="host port on 127.0.0.1, or on a remote engine's host (0 picks a free one)"),
    Option("name", ("--name",), help="service name (default: the environment's name)"),
    Option("detach", ("--detach", "-d"), kind="flag", default=False, help="start it and return (stop: ml-env serve stop NAME)"),
    Option("replace", ("--replace",), metavar="NAME", default=None,
           help="swap the running service NAME for this image/entry/model with no failed request (same port; returns once done)"),
)  # fmt: skip
NAMED = (Option("name", ("name",), help="the service's name"),)
OUTPUTS = {
    "passed": "Cases that passed",
    "failed": "Cases that failed",
    "p50-ms": "Median latency (ms)",
    "p95-ms": "95th percentile latency (ms)",
    "report": "Path of the JSON report",
    "junit": "Path of the JUnit XML report",
    "record": "Digest of the result attached to the tested image (empty when it is not in a registry)",
}


def model_folders(v: Values, io: Console) -> dict[str, Path]:
    """``--model`` as folders to mount, by mount name ("": AZUREML_MODEL_DIR itself): a folder as
    it is, a registered model fetched (once, into the user cache) from its registry."""
    from ..models import fetch, parse_model_args

    flag = _input if io.actions else _flag
    out: dict[str, Path] = {}
    for m in parse_model_args(v.model, what=flag("model")):
        if m.folder is not None:
            out[m.mount] = m.folder
        else:
            assert m.ref is not None
            out[m.mount] = fetch(v.registry, m.ref, repository=v.model_repository, info=io.info)
    return out


def serve_options(v: Values, io: Console, **extra: Any) -> Any:
    from ..engine.resources import Resources
    from ..safe.grammar import parse_size
    from ..serve.local import ServeOptions

    flag = _input if io.actions else _flag
    if not v.env:
        raise UsageError(f"{flag('env')} is required (or inference_env in [tool.ml-env])")
    max_body = None
    if v.max_body:
        max_body = parse_size(v.max_body)
        if not max_body:
            raise UsageError(f"{flag('max-body')} is not a size", hint='e.g. "16m"')
    return ServeOptions(
        environment=v.env,
        entry=Path(v.entry) if v.entry else None,
        models=model_folders(v, io),
        scoring_timeout_ms=v.scoring_timeout_ms,
        workers=v.workers,
        build=build_options(v, where=flag("registry")),
        resources=Resources.parse(cpus=v.cpus, memory=v.memory, prefix="input " if io.actions else ""),
        max_body=max_body,
        read_timeout=v.read_timeout,
        versions=v.versions,
        **extra,
    )


def run_serve(v: Values, io: Console) -> Outcome:
    from ..serve import local

    if v.replace:
        if v.name and v.name != v.replace:
            raise UsageError("--name and --replace name different services")
        service, ready, swap = local.replace(serve_options(v, io, name=v.replace), v.replace, info=io.info)
        return Outcome({**service.to_json(), "container": service.container_id, "ready_s": ready, "swap_s": swap},
                       f"{service.name}: {service.url}/score now served by {service.image} "
                       f"(ready in {ready:.1f}s, switched in {swap:.2f}s)")  # fmt: skip
    service = local.start(serve_options(v, io, port=v.port, name=v.name), info=io.info, front=True)
    try:
        ready = local.wait_ready(service)
    except BaseException:
        local.remove(service)
        raise
    started = Outcome({**service.to_json(), "container": service.container_id, "ready_s": ready},
                      f"{service.name}: {service.url}/score ready in {ready:.1f}s")  # fmt: skip
    if v.detach:
        return started
    io.emit(started)
    try:
        while True:
            for line in local.follow(service):
                io.log(line)
            replaced = local.current(service)  # serve --replace swapped it: follow the new one
            if replaced is None:
                break
            service = replaced
    except KeyboardInterrupt:
        pass
    finally:
        local.remove(service)
        io.info(f"{service.name} stopped")
    return Outcome(started.data, shown=True)


def run_list(v: Values, io: Console) -> Outcome:
    from ..serve import local

    services = local.list_services(everyone=bool(v.all))
    text = "\n".join(f"{s.name:24} {s.state:10} {s.url or '-':28} {s.image}" + (f"  (uid {s.owner or '?'})" if v.all else "")
                     for s in services)  # fmt: skip
    return Outcome([s.to_json() for s in services], text)


def run_stop(v: Values, io: Console) -> Outcome:
    from ..serve import local

    local.stop(v.name)
    return Outcome({"name": v.name, "stopped": True}, f"{v.name} stopped")


def run_logs(v: Values, io: Console) -> Outcome:
    from ..serve import local

    text = local.logs(v.name, tail=v.tail)
    return Outcome({"name": v.name, "log": text}, text)


def run_smoke_test(v: Values, io: Console) -> Outcome:
    from ..serve.smoke import record_result, run_smoke_test, write_reports

    if v.repeat < 1:
        raise UsageError("--repeat must be at least 1")
    cases = Path(v.cases)
    opts = serve_options(v, io)
    key = signing_key(v)
    if key is not None and v.no_record:
        raise UsageError("--sign-key signs the smoke test's record: it cannot go with --no-record")
    try:  # the reports are written at the end: where they go is asked for now
        Path(v.report_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--report-dir {v.report_dir}: cannot make it ({e.strerror or type(e).__name__})") from None
    with io.section(f"ml-env smoke-test {cases}"):
        report = run_smoke_test(opts, cases, repeat=v.repeat, ready_timeout=v.ready_timeout, info=io.info,
                                name_tested=not v.no_record)  # fmt: skip
    js, xml = write_reports(report, Path(v.report_dir), cases)
    att = None if v.no_record else record_result(report, cases, insecure=v.insecure, info=io.info)
    recorded = att.digest if att else None
    # the record this test wrote, not whichever is newest when signing runs (another job's, maybe)
    signed = sign_pushed(report.image, key, ("smoke-test",), v, io, smoke_record=att.record) if att else None
    if key is not None and not recorded:
        io.info("warning: nothing signed: the result is recorded only for an image in a registry, by digest")

    def text() -> str:
        rows = [
            f"{'PASS' if c.passed else 'FAIL'}  {visible(c.name)}" + ("" if c.passed else f": {visible(c.message)}")
            for c in report.cases
        ]
        rows.append(
            f"{report.passed} passed, {report.failed} failed; ready in {report.ready_s:.2f}s; "
            f"latency p50 {report.p50_ms:.1f} ms, p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms; reports: {js}, {xml}"
        )
        return "\n".join(rows)

    table = rows([
        f"| {'✅' if c.passed else '❌'} | {cell(c.name)} | {cell(str(c.status))} | "
        f"{(c.latencies_ms[0] if c.latencies_ms else 0):.1f} | {'' if c.passed else cell(c.message, 200)} |\n"
        for c in report.cases
    ])  # fmt: skip
    summary = (
        f"### ml-env smoke-test: {report.passed} passed, {report.failed} failed\n\n"
        f"{code(report.image)} ready in {report.ready_s:.2f}s; latency p50 {report.p50_ms:.1f} ms, "
        f"p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms\n\n"
        f"| | case | status | ms | failure |\n|---|---|---|---|---|\n{table}"
    )
    outputs = {
        "record": recorded or "", "passed": str(report.passed), "failed": str(report.failed),
        "p50-ms": f"{report.p50_ms:.1f}", "p95-ms": f"{report.p95_ms:.1f}", "report": str(js), "junit": str(xml),
    }  # fmt: skip
    notes = tuple(
        Annotation(f"{c.name}: {c.message}", file=str(cases), line=c.line, title="ml-env smoke-test")
        for c in report.cases
        if not c.passed
    )
    tail = (
        ("last lines of the scoring container's log", report.logs_tail) if report.failed and report.logs_tail else None
    )
    return Outcome(
        {
            **report.to_json(),
            "report": str(js),
            "junit": str(xml),
            "record": recorded,
            "signed": signed.to_json() if signed else None,
        },
        text,
        1 if report.failed else 0,
        outputs,
        summary,
        notes,
        tail,
    )


COMMANDS = {
    "serve": Command(
        "serve", "run a scoring server locally; serve list|stop|logs", ENV + SERVE + START + BUILD_WHERE + BUILD_HOW,
        run_serve,
        usage="ml-env serve [--env ENV] --entry score.py --model DIR [--port N] [--detach] [--replace NAME]"
              " | serve {list,stop,logs} ...",
        session=Session("serve", "Run a scoring server locally: -- --env E --entry score.py --model DIR [--detach] "
                                 "[--replace NAME]."),
    ),
    "serve list": Command(
        "serve list", "your services on the engine (--all: everyone's)",
        (Option("all", ("--all",), kind="flag", default=False,
                help="every user's services on this engine, with the uid that started each"),),
        run_list,
    ),
    "serve stop": Command("serve stop", "stop and remove a service", NAMED, run_stop),
    "serve logs": Command(
        "serve logs", "a service's log", NAMED + (Option("tail", ("--tail",), default="all", help="only the last N lines"),),
        run_logs,
    ),
    "smoke-test": Command(
        "smoke-test", "build or reuse an inference image, start it, send sample requests, check the answers",
        ENV + SERVE + SMOKE + BUILD_WHERE + BUILD_HOW + SIGN, run_smoke_test, required=("cases",),
        action=Action(
            "ml-env smoke-test",
            "Build or reuse an inference image (an environment with inference = true, or inference.server = "
            '"azureml" for Microsoft\'s azmlinfsrv), start the scoring server with your entry script and model, '
            "send sample requests, check the answers, report latency, and remove the container. Fails when any case "
            "fails.",
            OUTPUTS, required=("env", "cases"),
        ),
        session=Session("smoke_test", "Smoke-test an inference image: -- --env E --entry score.py --model DIR --cases C."),
    ),
}  # fmt: skip
