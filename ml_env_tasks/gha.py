"""GitHub Actions: the one place that turns library results into outputs, job summaries,
log groups and annotations. The composite actions under ``ci/github/`` (rendered from
``ml_env_tasks.actions``) call ``python -m ml_env_tasks.gha <action>``, which reads its inputs
from ``INPUT_*`` environment variables (never interpolated into a shell line) through the same
option declarations as the CLI, so config files and environment variables apply alike.

Escaping follows actions/toolkit ``command.ts``: data escapes ``%``, CR, LF; properties also
escape ``:`` and ``,``; other control characters are shown as ``\\xNN`` (an escape sequence
cannot rewrite the log). Multi-line outputs use ``name<<DELIM`` with a random delimiter.

Job summaries are markdown that GitHub renders: nothing in them comes from outside as markup.
Text from a run, a spec, a cases file or a server's answer (a metric's name, a case's failure
message) goes in through ``_cell`` (control and line-breaking characters shown escaped, HTML
characters as entities, every other ASCII punctuation backslash-escaped, bounded) or ``_code``
(a code span no backtick in the text can close); a table has at most ``MAX_ROWS`` rows.
"""

from __future__ import annotations

import contextlib
import json
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


# what is never written as it is: C0 and C1 controls but CR/LF/TAB, DEL, line and paragraph
# separators, bidirectional overrides (text that reads differently from what it is)
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
MAX_ROWS = 200


def _visible(s: str, pattern: re.Pattern[str] = _UNSAFE) -> str:
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", s)


def escape_data(s: str) -> str:
    return s.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(s: str) -> str:
    return escape_data(s).replace(":", "%3A").replace(",", "%2C")


def command(name: str, message: str = "", out: TextIO | None = None, **props: Any) -> None:
    """Print ``::name k=v,...::message`` with toolkit escaping; None properties are left out.
    Other control characters are shown escaped, but in ``add-mask``: a secret is masked as it is."""
    shown = (lambda s: s) if name == "add-mask" else _visible
    p = ",".join(f"{k}={escape_property(shown(str(v)))}" for k, v in props.items() if v is not None)
    print(f"::{name}{' ' + p if p else ''}::{escape_data(shown(message))}", file=out or sys.stdout, flush=True)


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
    print(f"::group::{escape_data(_visible(title))}", flush=True)
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


def _values(action: str) -> Any:
    """The action's inputs, resolved like the CLI's options (input > env > config > default)."""
    return _resolved(action).values


def _resolved(action: str) -> Any:
    from .actions import ACTIONS
    from .config import load_layers
    from .errors import UsageError
    from .options import from_inputs

    a = ACTIONS[action]
    resolved = from_inputs(a.options, layers=load_layers())
    for name in a.required:
        if resolved.values.get(name) in (None, "", []):
            opt = next(o for o in a.options if o.name == name)
            also = f" (or {opt.config} in [tool.ml-env])" if opt.config else ""
            raise UsageError(f"input '{opt.input_name}' is required{also}")
    return resolved


def _build_options(values: dict[str, Any]) -> Any:
    from .build import BuildOptions
    from .registry import check_registry_host

    opts = BuildOptions.from_values(values)
    if opts.registry:
        check_registry_host(opts.registry, "input 'registry'")
    return opts


def _log(line: str) -> None:
    print(line, flush=True)


def _say(msg: str) -> None:
    print(f"ml-env: {msg}", flush=True)


def build_action() -> int:
    from .build import Reporter, build
    from .catalog import resolve_curated

    v = _values("build")
    spec_path = str(resolve_curated(v["spec"])) if v["spec"].startswith("curated/") else v["spec"]
    with group(f"ml-env build {v['spec']}"), stop_commands():
        result = build(spec_path, _build_options(v), Reporter(stream_logs=True, out=sys.stdout))
    for k in ("image", "digest", "hash"):
        set_output(k, str(getattr(result, k) or ""))
    set_output("built", "true" if result.built else "false")
    set_output("cache-hit", "true" if result.cache_hit else "false")
    set_output("ref", result.pinned)
    set_output("tags", "\n".join([result.image, *result.tags]))
    image_id = result.image_id or _image_id(result, v)
    set_output("imageid", image_id or "")
    set_output("metadata", json.dumps(build_metadata(result, image_id), sort_keys=True))
    state = "built" if result.built else "reused (hash already in the registry)"
    append_summary(
        f"### ml-env build: {_code(result.name)}\n\n"
        "| field | value |\n|---|---|\n"
        f"| environment | {_code(v['spec'])} |\n"
        f"| image | {_code(result.image)} |\n"
        f"| digest | {_code(str(result.digest))} |\n"
        f"| hash | {_code(result.hash)} |\n"
        f"| result | {state} |\n"
        f"| cache | {_cell(result.cache_backend or '-')}{' (all steps cached)' if result.built and result.cache_hit else ''} |\n"
        f"| time | {result.seconds:.1f}s |\n"
        + (f"| tags | {_cell(', '.join(result.tags), 2000)} |\n" if result.tags else "")
        + (f"| unpinned | {_cell(', '.join(result.unpinned), 2000)} |\n" if result.unpinned else "")
    )
    if result.unpinned:
        command(
            "warning",
            f"unpinned packages: {', '.join(result.unpinned)}; the lock records their versions",
            file=spec_path,
        )
    return 0


def _image_id(result: Any, values: dict[str, Any]) -> str | None:
    """The ID the engine gives a reused image, as buildx reports it for a built one: with the
    containerd image store the manifest (index) digest, with the classic store the config digest."""
    from . import engine

    eng = engine.current()
    local = eng.local_image_id(result.image)
    if local or not (result.registry and result.digest):
        return local
    if eng.capabilities(values.get("builder")).containerd_store:
        return str(result.digest)
    from .registry import RegistryClient, parse_ref

    r = parse_ref(result.image)
    return RegistryClient(r.host, insecure=bool(values.get("insecure"))).config_digest(r.repository, result.digest)


def build_metadata(result: Any, image_id: str | None) -> dict[str, Any]:
    """build-push-action's ``metadata`` output: buildx's metadata of the build, or the same keys
    for a reused image."""
    meta = dict(result.metadata)
    meta.setdefault("containerimage.digest", result.digest or "")
    if image_id:
        meta.setdefault("containerimage.config.digest", image_id)
    meta["image.name"] = ",".join([result.image, *result.tags])
    meta["ml-env.hash"] = result.hash
    meta["ml-env.built"] = result.built
    return meta


def train_action() -> int:
    import shlex

    from .models import parse_register_model, register_run_output
    from .resources import Resources
    from .runs import RunOptions, parse_pairs, train
    from .runs.train import split_inputs

    v = _values("train")
    for name in v["secrets"] or []:
        mask(os.environ.get(name))
    model = parse_register_model(v["register_model"], v["registry"], "input 'register-model'")
    opts = RunOptions(
        environment=v["env"],
        source=Path(v["source"]),
        script=v["script"],
        args=tuple(shlex.split(v["args"] or "")),
        experiment=v["experiment"],
        inputs=split_inputs(parse_pairs(v["inputs"] or [], "input"))[0],
        input_volumes=split_inputs(parse_pairs(v["inputs"] or [], "input"))[1],
        env_vars=parse_pairs(v["env_vars"] or [], "env-var"),
        secrets=tuple(v["secrets"] or ()),
        resources=Resources.parse(
            cpus=v["cpus"], memory=v["memory"], shm_size=v["shm_size"], gpus=v["gpus"], prefix="input "
        ),
        timeout=v["timeout"],
        runs_dir=v["runs_dir"],
        user=v["user"],
        snapshot_max_mb=v["max_snapshot_mb"],
        build=_build_options(v),
    )
    with group(f"ml-env train {opts.script}"), stop_commands():
        result = train(opts, on_line=_log, info=_say)
    set_output("run-id", result.run_id)
    set_output("status", str(result.status))
    set_output("exit-code", "" if result.exit_code is None else str(result.exit_code))
    set_output("outputs", str(result.outputs))
    registered = ""
    if model and result.cli_exit_code == 0:
        mv = register_run_output(v["registry"], model, result.outputs, result.run_id, _say)
        set_output("model", f"{mv.name}:{mv.version}")
        set_output("model-ref", mv.ref)
        registered = f"| model | {_code(f'{mv.name}:{mv.version}')} {'(same bytes as before)' if mv.reused else 'registered'} |\n"
    rec = result.record
    # metrics.json is the run's: its names and values are text, never markup
    rows = _rows([f"| {_cell(str(k))} | {_cell(str(x))} |\n" for k, x in rec.metrics.items()]) or "| (none) | |\n"
    append_summary(
        f"### ml-env train: {_code(result.run_id)}\n\n"
        f"**{_cell(str(result.status))}**"
        + (f" (exit {result.exit_code})" if result.exit_code is not None else "")
        + "\n\n"
        f"| field | value |\n|---|---|\n| environment | {_code(rec.environment.image)} |\n"
        f"| source snapshot | {_code(rec.source.snapshot_hash[:16])} ({rec.source.files} files) |\n"
        f"| command | {_code(' '.join(rec.command), 1000)} |\n| outputs | {_code(str(result.outputs))} |\n{registered}\n"
        f"| metric | value |\n|---|---|\n{rows}"
    )
    if str(result.status) != "completed":
        command("error", f"run {result.run_id} {result.status}: {rec.reason or ''}", title="ml-env train")
    return result.cli_exit_code


_LINES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")


def _cell(text: str, limit: int = 300) -> str:
    """Text from outside as plain text in markdown (a table cell, a heading): no line break,
    no HTML, no markup (links, images, emphasis, headings), at most ``limit`` characters."""
    text = _visible(bounded(text, limit), _LINES)
    return _PUNCT.sub(lambda m: _HTML.get(m.group(), "\\" + m.group()), text)


def _code(text: str, limit: int = 300) -> str:
    """Text from outside as a markdown code span (inside a table: ``|`` escaped, as GitHub's
    tables need even there): fenced by more backticks than any run in it."""
    text = _visible(bounded(text, limit), _LINES).replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _rows(cells: list[str]) -> str:
    """Table rows, at most MAX_ROWS of them (a row that says how many were left out)."""
    out = "".join(cells[:MAX_ROWS])
    if len(cells) > MAX_ROWS:
        out += f"| … {len(cells) - MAX_ROWS} more | |\n"
    return out


def smoke_test_action() -> int:
    from .grammar import parse_size
    from .resources import Resources
    from .serve.local import ServeOptions, parse_models
    from .serve.smoke import record_result, run_smoke_test, write_reports

    v = _values("smoke-test")
    cases = Path(v["cases"])
    opts = ServeOptions(
        environment=v["env"],
        entry=Path(v["entry"]) if v["entry"] else None,
        models=parse_models(v["model"] or []),
        scoring_timeout_ms=v["scoring_timeout_ms"],
        workers=v["workers"],
        build=_build_options(v),
        resources=Resources.parse(cpus=v["cpus"], memory=v["memory"], prefix="input "),
        max_body=parse_size(v["max_body"]) if v["max_body"] else None,
        read_timeout=v["read_timeout"],
    )
    with group(f"ml-env smoke-test {cases}"), stop_commands():
        report = run_smoke_test(opts, cases, repeat=v["repeat"], ready_timeout=v["ready_timeout"], info=_say)
    js, xml = write_reports(report, Path(v["report_dir"]), cases)
    recorded = None if v["no_record"] else record_result(report, cases, insecure=v["insecure"], info=_say)
    set_output("record", recorded or "")
    set_output("passed", str(report.passed))
    set_output("failed", str(report.failed))
    set_output("p50-ms", f"{report.p50_ms:.1f}")
    set_output("p95-ms", f"{report.p95_ms:.1f}")
    set_output("report", str(js))
    set_output("junit", str(xml))
    rows = _rows([
        f"| {'✅' if c.passed else '❌'} | {_cell(c.name)} | {_cell(str(c.status))} | "
        f"{(c.latencies_ms[0] if c.latencies_ms else 0):.1f} | {'' if c.passed else _cell(c.message, 200)} |\n"
        for c in report.cases
    ])  # fmt: skip
    append_summary(
        f"### ml-env smoke-test: {report.passed} passed, {report.failed} failed\n\n"
        f"{_code(report.image)} ready in {report.ready_s:.2f}s; latency p50 {report.p50_ms:.1f} ms, "
        f"p95 {report.p95_ms:.1f} ms, max {report.max_ms:.1f} ms\n\n"
        f"| | case | status | ms | failure |\n|---|---|---|---|---|\n{rows}"
    )
    for c in report.cases:
        if not c.passed:
            command("error", f"{c.name}: {c.message}", file=str(cases), line=c.line, title="ml-env smoke-test")
    if report.failed and report.logs_tail:
        with group("scoring container log (last lines)"), stop_commands():
            print(report.logs_tail)
    return 1 if report.failed else 0


def promote_action() -> int:
    from .ledger_oci import ledger_location
    from .promote import PromoteOptions, promote

    resolved = _resolved("promote")
    v = dict(resolved.values)
    if resolved.sources["ledger"] == "default":
        # a CI job starts from a fresh clone: by default the ledger lives next to the images
        v["ledger"] = "registry"
    opts = PromoteOptions(
        source=v["source"],
        destination=v["destination"],
        tags=tuple(v["tags"] or ()),
        allow_overwrite=v["allow_overwrite"],
        dry_run=v["dry_run"],
        insecure=v["insecure"],
        ledger=None if v["no_ledger"] else v["ledger"],
        copy_referrers=not v["no_referrers"],
        jobs=v["jobs"],
        require=tuple(v["require"] or ()),
        spec=Path(v["spec"]) if v["spec"] else None,
    )
    with group(f"ml-env promote {opts.source}"):
        r = promote(opts, info=_say)
    set_output("digest", r.digest)
    set_output("refs", "\n".join(r.refs))
    set_output("ref", f"{r.destination}@{r.digest}")
    set_output("no-op", "true" if r.no_op else "false")
    where = "" if opts.ledger is None or r.dry_run else ledger_location(opts.ledger, r.destination)
    set_output("ledger", where)
    state = "dry run" if r.dry_run else ("already promoted (no change)" if r.no_op else "promoted")
    if r.recorded_found:
        state += "; recorded in the ledger as found"
    tags_md = ", ".join(_code(ref.rsplit(":", 1)[1]) for ref in r.refs)
    append_summary(
        f"### ml-env promote: {state}\n\n| field | value |\n|---|---|\n"
        f"| environment | {_cell(str(r.environment.get('name') or '-'))} |\n| digest | {_code(r.digest)} |\n"
        f"| source | {_code(r.source)} |\n| destination | {_code(r.destination)} |\n| tags | {tags_md} |\n"
        f"| blobs | {r.copied_blobs} copied ({r.copied_bytes / 2**20:.1f} MiB), {r.mounted_blobs} mounted, {r.skipped_blobs} present |\n"
        + (f"| moved tags | {_cell(', '.join(r.moved_tags), 2000)} |\n" if r.moved_tags else "")
        + (f"| referrers | {_cell(', '.join(r.referrers), 2000)} |\n" if r.referrers else "")
        + (
            f"| ledger | {_code(where)}{' (recorded)' if r.ledger_entry else ' (already recorded)'} |\n"
            if where
            else ""
        )
    )
    return 0


def package_action() -> int:
    from .package import package

    v = _values("package")
    with group(f"ml-env package {v['env']}"):
        r = package(
            v["env"], Path(v["entry"]), v["model"], build=_build_options(v), repository=v["package_repository"],
            info=_say,
        )  # fmt: skip
    for name, value in (("image", r.image), ("digest", r.digest), ("ref", r.ref)):
        set_output(name, value)
    set_output("reused", "true" if r.reused else "false")
    append_summary(
        f"### ml-env package: {'reused' if r.reused else 'packaged'}\n\n| part | value |\n|---|---|\n"
        f"| image | {_code(r.ref)} |\n| environment | {_code(r.environment)} |\n| entry | {_code(r.entry)} "
        f"({_code(r.entry_hash[:16])}) |\n| model | {_code(r.model)} ({_code(r.model_digest[:19])}) |\n"
    )
    return 0


def environments(envs: str | Path) -> list[str]:
    """The environment names of a folder (its ``*.toml`` files, not sub-folders). The versions
    file ``ml-env register`` writes there (``envs/versions.toml``) is a log, not an environment."""
    from .tomllog import is_log_file

    d = Path(envs)
    return sorted(p.stem for p in d.glob("*.toml") if not is_log_file(p)) if d.is_dir() else []


def env_matrix(envs: Path) -> str:
    """The environments of a folder as a GitHub Actions matrix (``{"include": [...]}``): each
    file is parsed, so a broken one fails here, before any job starts."""
    from . import spec

    include = []
    for n in environments(envs):
        env = spec.load(envs / f"{n}.toml")
        include.append({"env": n, "spec": str(envs / f"{n}.toml"), "name": env.name, "inference": env.inference})
    return json.dumps({"include": include})


def matrix_action() -> int:
    """The reusable workflow's first job: the matrix of environments to build."""
    from .errors import UsageError
    from .grammar import printable

    envs = os.environ.get("INPUT_ENVS", "").strip() or "envs"
    if not environments(envs):  # an empty matrix would skip every job without a word
        raise UsageError(f"input 'envs': no environment files (*.toml) in {printable(envs, 200)!r}")
    matrix = env_matrix(Path(envs))
    print(matrix)
    set_output("matrix", matrix)
    return 0


def login_action() -> int:
    """docker/login-action style: mask the password first, then log in through the engine. A
    registry that needs no login (no username and no password given) is a no-op."""
    from . import engine

    registry, username = os.environ.get("INPUT_REGISTRY", "").strip(), os.environ.get("INPUT_USERNAME", "").strip()
    password = os.environ.get("INPUT_PASSWORD", "")
    mask(password)
    if not username and not password:
        print(f"ml-env: no credentials given for {registry or 'the registry'}: nothing to log in with")
        return 0
    if not (registry and username and password):
        raise MlEnvError("inputs 'registry', 'username' and 'password' go together")
    engine.current().login(registry, username, password)
    print(f"ml-env: logged in to {registry} as {username}")
    return 0


@contextlib.contextmanager
def stop_commands() -> Iterator[None]:
    """Lines a build or a script prints can look like workflow commands (``::set-output``,
    ``::add-mask::``...): between these markers the runner does not process them."""
    token = f"ml-env-{uuid.uuid4().hex}"
    print(f"::stop-commands::{token}", flush=True)
    try:
        yield
    finally:
        print(f"::{token}::", flush=True)


ACTIONS = {
    "matrix": matrix_action,
    "login": login_action,
    "build": build_action,
    "train": train_action,
    "smoke-test": smoke_test_action,
    "package": package_action,
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
