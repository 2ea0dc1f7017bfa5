"""``build``, ``plan``, ``hash``, ``explain``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..options import BUILD_HOW, BUILD_ONLY, BUILD_WHERE, Option
from .common import build_options, command, output, reporter

SPEC = (Option("spec", ("spec",), help="environment file (envs/NAME.toml) or curated/NAME", gha="spec"),)


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "build":
        command(p, cmd_build, SPEC, BUILD_WHERE, BUILD_HOW, BUILD_ONLY)
        p.add_argument("--quiet", "-q", action="store_true", help="do not stream the build log (it is still saved)")
    elif name == "plan":
        command(p, cmd_plan, SPEC, BUILD_WHERE)
        p.add_argument(
            "--write-context", dest="context_dir", metavar="DIR",
            help="also write the build context (Dockerfile and files) to DIR, new or empty, for another builder",
        )  # fmt: skip
    elif name == "hash":
        command(p, cmd_hash, SPEC, [o for o in BUILD_WHERE if o.name in ("pin_base", "locked", "insecure")])
        p.add_argument("--canonical", action="store_true", help="also print the canonical JSON that is hashed")
    elif name == "explain":
        command(p, cmd_explain, (Option("a", ("a",), help="an environment file"), Option("b", ("b",), help="another")))


def _spec(args: argparse.Namespace) -> str:
    if not args.spec.startswith("curated/"):
        return str(args.spec)
    from ..catalog import resolve_curated

    return str(resolve_curated(args.spec))


def cmd_build(args: argparse.Namespace) -> int:
    from ..build import build

    out = output(args)
    result = build(_spec(args), build_options(args), reporter(out, stream_logs=not args.quiet))
    state = "built" if result.built else "up to date (not rebuilt)"
    also = "".join(f"\n  also {t}" for t in result.tags)
    repro = result.reproducible
    if repro is not None:
        also += "\n  reproducible" if repro["same"] else "".join(f"\n  differs: {f}" for f in repro["files"])
    out.result(result.to_json(), f"{result.image}@{result.digest}  {state}{also}")
    return 1 if repro is not None and not repro["same"] else 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ..build import plan
    from ..build.flow import source_date_epoch
    from ..dockerfile import describe, plan_json

    opts = build_options(args)
    env, p, ref = plan(_spec(args), opts)
    cache = None
    if opts.registry or opts.cache_ref:
        from ..build import cache_refs

        exact, moving = cache_refs(env, opts)
        cache = {"exact": exact, "moving": moving}
    if args.context_dir:
        _write_context(p, Path(args.context_dir))
    out = output(args)
    build_args = {"SOURCE_DATE_EPOCH": source_date_epoch()} if "ARG SOURCE_DATE_EPOCH" in p.dockerfile else {}
    if out.json_mode:
        print(plan_json(p, ref, cache, build_args))
    else:
        lines = (
            [f"# image: {ref}"]
            + ([f"# registry cache: {cache['exact']} (moving: {cache['moving']})"] if cache else [])
            + [f"# build argument: {k}={v}" for k, v in build_args.items()]
        )
        out.result(None, "\n".join(lines) + "\n" + describe(p))
    return 0


def _write_context(p: Any, d: Path) -> None:
    from ..dockerfile import write_context
    from ..errors import UsageError

    if d.is_symlink() or (d.exists() and (not d.is_dir() or any(d.iterdir()))):
        raise UsageError(f"--write-context {d}: must be a new or empty directory")
    d.mkdir(parents=True, exist_ok=True)
    write_context(p, d)


def cmd_hash(args: argparse.Namespace) -> int:
    from ..build import load_env
    from ..hashing import canonical, canonical_json, env_hash

    env = load_env(_spec(args), build_options(args))
    h = env_hash(env)
    data: dict[str, Any] = {"name": env.name, "hash": h}
    if args.canonical:
        data["canonical"] = canonical(env)
    output(args).result(data, h + (f"\n{canonical_json(env)}" if args.canonical else ""))
    return 0


def _jsonable(v: Any) -> Any:
    from ..hashing import MISSING

    return None if v is MISSING else v


def cmd_explain(args: argparse.Namespace) -> int:
    from .. import spec
    from ..hashing import env_hash, explain

    a, b = spec.load(args.a), spec.load(args.b)
    diffs = explain(a, b)
    data = {
        "a": {"path": args.a, "hash": env_hash(a)},
        "b": {"path": args.b, "hash": env_hash(b)},
        "same": not diffs,
        "differences": [{"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b)} for d in diffs],
    }
    output(args).result(data, lambda: "\n".join(str(d) for d in diffs) if diffs else f"same hash {env_hash(a)}")
    return 0
