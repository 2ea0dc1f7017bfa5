"""GitHub Actions: the one place that turns library results into outputs, job summaries,
log groups and annotations. The composite actions under ``ci/github/`` call
``python -m ml_env_tasks.gha <command>``, which reads its inputs from ``INPUT_*`` environment
variables (never interpolated into a shell line).

Escaping follows actions/toolkit ``command.ts``: data escapes ``%``, CR, LF; properties also
escape ``:`` and ``,``. Multi-line outputs use ``name<<DELIM`` with a random delimiter.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from .errors import MlEnvError
from .grammar import bounded
from .redact import redact_userinfo

__all__ = [
    "escape_data",
    "escape_property",
    "command",
    "set_output",
    "append_summary",
    "group",
    "mask",
    "annotate_error",
    "locate_key",
    "main",
]


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", out: TextIO | None = None, **props: Any) -> None:
    """Print ``::name k=v,...::message`` with toolkit escaping; None properties are left out."""
    p = ",".join(f"{k}={escape_property(str(v))}" for k, v in props.items() if v is not None)
    print(f"::{name}{' ' + p if p else ''}::{escape_data(message)}", file=out or sys.stdout, flush=True)


def set_output(name: str, value: str) -> None:
    path = os.environ.get("GITHUB_OUTPUT")
    if not path:
        raise MlEnvError("GITHUB_OUTPUT is not set: not running as a GitHub Actions step")
    with open(path, "a", encoding="utf-8") as f:
        if "\n" in value or "\r" in value:
            delim = f"ghadelimiter_{uuid.uuid4()}"
            f.write(f"{name}<<{delim}\n{value}\n{delim}\n")
        else:
            f.write(f"{name}={value}\n")


def append_summary(markdown: str) -> None:
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(markdown.rstrip("\n") + "\n\n")


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    print(f"::group::{escape_data(title)}", flush=True)
    try:
        yield
    finally:
        print("::endgroup::", flush=True)


def mask(value: str | None) -> None:
    if value:
        for line in value.splitlines():
            if line.strip():
                command("add-mask", line)


def locate_key(path: str | Path, key: str | None) -> int | None:
    """The line of a dotted TOML key (``python.packages[2]``) in a file, for annotations."""
    if not key:
        return None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    parts = [re.sub(r"\[\d+\]$", "", p) for p in key.split(":")[0].split(".")]
    leaf = parts[-1]
    table = ".".join(parts[:-1])
    current = ""
    fallback = None
    for i, raw in enumerate(lines, 1):
        s = raw.strip()
        m = re.match(r"^\[+\s*([^\]]+?)\s*\]+", s)
        if m:
            current = m.group(1).strip().strip('"')
            if current in (".".join(parts), table):
                fallback = fallback or i
            continue
        km = re.match(r'^"?([A-Za-z0-9_.\- ]+?)"?\s*=', s)
        if km:
            k = km.group(1)
            full = f"{current}.{k}" if current else k
            if full == ".".join(parts) or (current == table and k == leaf):
                return i
            if table and full == table:
                fallback = fallback or i
    return fallback


def annotate_error(e: MlEnvError) -> None:
    line = e.line or (locate_key(e.file, e.key) if e.file else None)
    msg = bounded(redact_userinfo(str(e)))
    if e.details:
        msg += "\n" + "\n".join(bounded(x, 500) for x in redact_userinfo(e.details).splitlines()[-15:])
    command("error", msg, file=e.file, line=line, title=f"ml-env: {type(e).__name__}")


# --- entry points for the composite actions ----------------------------------------------


def _input(name: str, default: str = "") -> str:
    return os.environ.get(f"INPUT_{name.upper().replace('-', '_')}", default).strip()


def _flag(name: str) -> bool:
    return _input(name, "false").lower() in ("true", "1", "yes")


def _lines(name: str) -> list[str]:
    return [x.strip() for x in _input(name).splitlines() if x.strip() and not x.strip().startswith("#")]


def _build_options() -> Any:
    """BuildOptions from the inputs every action that builds shares."""
    from .build import BuildOptions

    return BuildOptions(
        registry=_input("registry") or None,
        repository=_input("repository") or None,
        cache=_input("cache", "auto") or "auto",
        cache_ref=_input("cache-ref") or None,
        ca_bundle=Path(_input("ca-bundle")) if _input("ca-bundle") else None,
        network=_input("network") or None,
        force=_flag("force"),
        pin_base=_flag("pin-base"),
        locked=_flag("locked"),
        upgrade=_flag("upgrade"),
        log_dir=Path(_input("log-dir", ".ml-env/logs") or ".ml-env/logs"),
    )


def build_action() -> int:
    from .build import Reporter, build

    spec_path = _input("spec")
    if not spec_path:
        raise MlEnvError("input 'spec' is required")
    opts = _build_options()
    with group(f"ml-env build {spec_path}"):
        result = build(spec_path, opts, Reporter(stream_logs=True, out=sys.stdout))
    for k in ("image", "digest", "hash"):
        set_output(k, str(getattr(result, k) or ""))
    set_output("built", "true" if result.built else "false")
    set_output("cache-hit", "true" if result.cache_hit else "false")
    set_output("ref", f"{result.image}@{result.digest}")
    state = "built" if result.built else "reused (hash already in the registry)"
    append_summary(
        f"### ml-env build: `{result.name}`\n\n"
        "| field | value |\n|---|---|\n"
        f"| environment | `{spec_path}` |\n"
        f"| image | `{result.image}` |\n"
        f"| digest | `{result.digest}` |\n"
        f"| hash | `{result.hash}` |\n"
        f"| result | {state} |\n"
        f"| cache | {result.cache_backend or '-'}{' (all steps cached)' if result.built and result.cache_hit else ''} |\n"
        f"| time | {result.seconds:.1f}s |\n"
        + (f"| unpinned | {', '.join(result.unpinned)} |\n" if result.unpinned else "")
    )
    if result.unpinned:
        command(
            "warning",
            f"unpinned packages: {', '.join(result.unpinned)}; the lock records their versions",
            file=spec_path,
        )
    return 0


def train_action() -> int:
    import shlex

    from .resources import Resources
    from .runs import RunOptions, parse_pairs, train

    for required in ("env", "source", "script"):
        if not _input(required):
            raise MlEnvError(f"input '{required}' is required")
    secrets = _lines("secrets")
    for name in secrets:
        mask(os.environ.get(name))
    timeout = _input("timeout")
    opts = RunOptions(
        env=_input("env"),
        source=Path(_input("source")),
        script=_input("script"),
        args=tuple(shlex.split(_input("args"))),
        experiment=_input("experiment") or None,
        inputs={k: Path(v) for k, v in parse_pairs(_lines("inputs"), "input").items()},
        env_vars=parse_pairs(_lines("env-vars"), "env-var"),
        secrets=tuple(secrets),
        timeout=float(timeout) if timeout else None,
        resources=Resources.parse(shm_size=_input("shm-size") or None, prefix="input "),
        runs_dir=Path(_input("runs-dir", "runs") or "runs"),
        build=_build_options(),
    )
    with group(f"ml-env train {opts.script}"):
        result = train(opts, on_line=lambda line: print(line, flush=True))
    set_output("run-id", result.run_id)
    set_output("status", result.status)
    set_output("exit-code", "" if result.exit_code is None else str(result.exit_code))
    set_output("outputs", str(result.outputs))
    rec = result.record
    rows = "".join(f"| {_cell(str(k))} | {_cell(str(v))} |\n" for k, v in rec.metrics.items()) or "| (none) | |\n"
    append_summary(
        f"### ml-env train: `{result.run_id}`\n\n"
        f"**{result.status}**" + (f" (exit {result.exit_code})" if result.exit_code is not None else "") + "\n\n"
        f"| field | value |\n|---|---|\n| environment | `{rec.environment.image}` |\n"
        f"| source snapshot | `{rec.source.snapshot_hash[:16]}` ({rec.source.files} files) |\n"
        f"| command | `{_cell(' '.join(rec.command))}` |\n| outputs | `{result.outputs}` |\n\n"
        f"| metric | value |\n|---|---|\n{rows}"
    )
    if result.status != "completed":
        command("error", f"run {result.run_id} {result.status}: {rec.reason or ''}", title="ml-env train")
    return result.cli_exit_code


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def smoke_test_action() -> int:
    from .serve.local import ServeOptions, parse_models
    from .serve.smoke import run_smoke_test, write_reports

    for required in ("env", "entry", "cases"):
        if not _input(required):
            raise MlEnvError(f"input '{required}' is required")
    cases = Path(_input("cases"))
    opts = ServeOptions(
        env=_input("env"),
        entry=Path(_input("entry")),
        models=parse_models(_lines("model")),
        scoring_timeout_ms=int(_input("scoring-timeout-ms")) if _input("scoring-timeout-ms") else None,
        build=_build_options(),
    )
    repeat = int(_input("repeat", "1") or "1")
    with group(f"ml-env smoke-test {cases}"):
        report = run_smoke_test(opts, cases, repeat=repeat, info=lambda m: print(f"ml-env: {m}", flush=True))
    js, xml = write_reports(report, Path(_input("report-dir", ".ml-env/smoke") or ".ml-env/smoke"), cases)
    set_output("passed", str(report.passed))
    set_output("failed", str(report.failed))
    set_output("p50-ms", f"{report.p50_ms:.1f}")
    set_output("p95-ms", f"{report.p95_ms:.1f}")
    set_output("report", str(js))
    set_output("junit", str(xml))
    rows = "".join(
        f"| {'✅' if c.passed else '❌'} | {_cell(c.name)} | {c.status} | "
        f"{(c.latencies_ms[0] if c.latencies_ms else 0):.1f} | {'' if c.passed else _cell(c.message[:200])} |\n"
        for c in report.cases
    )
    append_summary(
        f"### ml-env smoke-test: {report.passed} passed, {report.failed} failed\n\n"
        f"`{report.image}` ready in {report.ready_s:.2f}s; latency p50 {report.p50_ms:.1f} ms, "
        f"p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms\n\n"
        f"| | case | status | ms | failure |\n|---|---|---|---|---|\n{rows}"
    )
    for c in report.cases:
        if not c.passed:
            command("error", f"{c.name}: {c.message}", file=str(cases), line=c.line, title="ml-env smoke-test")
    if report.failed and report.logs_tail:
        with group("scoring container log (last lines)"):
            print(report.logs_tail)
    return 1 if report.failed else 0


def promote_action() -> int:
    from .promote import PromoteOptions, promote

    for required in ("source", "destination"):
        if not _input(required):
            raise MlEnvError(f"input '{required}' is required")
    tags = [t for line in _lines("tags") for t in line.replace(",", " ").split()]
    ledger = _input("ledger", "releases.toml")
    opts = PromoteOptions(
        source=_input("source"),
        destination=_input("destination"),
        tags=tuple(tags),
        allow_overwrite=_flag("allow-overwrite"),
        dry_run=_flag("dry-run"),
        insecure=_flag("insecure"),
        ledger=None if (not ledger or _flag("dry-run")) else Path(ledger),
    )
    with group(f"ml-env promote {opts.source}"):
        r = promote(opts, info=lambda m: print(f"ml-env: {m}", flush=True))
    set_output("digest", r.digest)
    set_output("refs", "\n".join(r.refs))
    set_output("ref", f"{r.destination}@{r.digest}")
    set_output("no-op", "true" if r.no_op else "false")
    state = "dry run" if r.dry_run else ("already promoted (no change)" if r.no_op else "promoted")
    tags_md = ", ".join(f"`{ref.rsplit(':', 1)[1]}`" for ref in r.refs)
    append_summary(
        f"### ml-env promote: {state}\n\n| field | value |\n|---|---|\n"
        f"| environment | {r.environment.get('name') or '-'} |\n| digest | `{r.digest}` |\n"
        f"| source | `{r.source}` |\n| destination | `{r.destination}` |\n| tags | {tags_md} |\n"
        f"| blobs | {r.copied_blobs} copied ({r.copied_bytes / 2**20:.1f} MiB), {r.mounted_blobs} mounted, {r.skipped_blobs} present |\n"
        + (f"| moved tags | {', '.join(r.moved_tags)} |\n" if r.moved_tags else "")
        + (f"| referrers | {', '.join(r.referrers)} |\n" if r.referrers else "")
        + (f"| ledger | `{ledger}` |\n" if r.ledger_entry else "")
    )
    return 0


def login_action() -> int:
    """docker/login-action style: mask the password first, then log in through the engine."""
    from .engine import Engine

    registry, username, password = _input("registry"), _input("username"), os.environ.get("INPUT_PASSWORD", "")
    mask(password)
    if not (registry and username and password):
        raise MlEnvError(
            "inputs 'registry', 'username' and 'password' are required (or keep an existing docker config)"
        )
    Engine().login(registry, username, password)
    print(f"ml-env: logged in to {registry} as {username}")
    return 0


ACTIONS = {
    "login": login_action,
    "build": build_action,
    "train": train_action,
    "smoke-test": smoke_test_action,
    "promote": promote_action,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ACTIONS:
        print(f"usage: python -m ml_env_tasks.gha {{{','.join(ACTIONS)}}}", file=sys.stderr)
        return 2
    try:
        return ACTIONS[argv[0]]()
    except MlEnvError as e:
        annotate_error(e)
        print(f"ml-env: error: {bounded(redact_userinfo(str(e)))}", file=sys.stderr)
        return e.exit_code
    except Exception as e:  # a bug: one line and an annotation, like the CLI
        from .cli import report_internal
        from .errors import EXIT_INTERNAL

        report_internal(e)
        command("error", f"internal error: {type(e).__name__} (see the step log)", title="ml-env")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
