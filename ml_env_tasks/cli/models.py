"""``model register|list|get|download`` and ``package``."""

from __future__ import annotations

import argparse
import sys

from ..options import BUILD_HOW, BUILD_WHERE, INFERENCE_ENV, SERVE, VERSIONS, Option
from .common import build_options, command, output

REGISTRY = [o for o in BUILD_WHERE if o.name in ("registry", "insecure")]
REPO = (Option("repository", ("--repository",), help="repository of the model (default models/<name>)"),)
PACKAGE = (
    INFERENCE_ENV,
    Option("model", ("--model",), help="a registered model NAME:VERSION (NAME: its latest; REPOSITORY:VERSION for --repository), or a folder"),
    Option("package_repository", ("--package-repository",), help="repository of the image (default ml-packages/<env>)"),
    VERSIONS,
)  # fmt: skip


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "package":
        p.usage = "ml-env package [--env ENV] --entry score.py --model NAME:V|DIR --registry HOST [--json]"
        entry = [o for o in SERVE if o.name == "entry"]
        command(p, cmd_package, PACKAGE, entry, BUILD_WHERE, BUILD_HOW)
        return
    sub = p.add_subparsers(dest="model_command", metavar="{register,list,get,download}", parser_class=type(p))
    reg = sub.add_parser("register", help="store a model folder as the next version (same bytes: the same version)")
    command(
        reg, cmd_register,
        (Option("name", ("name",), help="model name"), Option("path", ("path",), kind="path", help="model folder"),
         Option("framework", ("--framework",), help="e.g. sklearn, pytorch (recorded)"),
         Option("run_id", ("--run-id",), help="the run that made it (default: found from runs/<id>/outputs)")),
        REGISTRY, REPO,
    )  # fmt: skip
    ls = sub.add_parser("list", help="every version of a model")
    command(ls, cmd_list, (Option("name", ("name",), help="model name"),), REGISTRY, REPO)
    get = sub.add_parser("get", help="one version's metadata (NAME: the latest)")
    command(get, cmd_get, (Option("ref", ("ref",), help="NAME:VERSION or NAME"),), REGISTRY, REPO)
    dl = sub.add_parser("download", help="a version's files into a new or empty folder")
    command(
        dl, cmd_download,
        (Option("ref", ("ref",), help="NAME:VERSION or NAME"), Option("dest", ("dest",), kind="path", help="folder"),
         Option("force", ("--force",), kind="flag", default=False, help="write into a folder that has files")),
        REGISTRY, REPO,
    )  # fmt: skip
    p.set_defaults(func=lambda args: _usage(p))


def _registry(args: argparse.Namespace) -> str:
    from ..errors import UsageError

    if not args.registry:
        raise UsageError("models live in a registry: give --registry (or set registry in the config)")
    return str(args.registry)


def _row(m: object) -> str:
    from ..grammar import printable as pr

    d = m.to_json()  # type: ignore[attr-defined]
    metrics = ", ".join(f"{pr(k, 30)}={pr(v, 30)}" for k, v in sorted(d["metrics"].items())[:6])
    return (
        f"{pr(d['name'], 63)}:{d['version']}  {d['layer'][:19]}  {d['size'] / 2**20:.1f} MiB  "
        f"{pr(d['framework'] or '-', 30)}  run {pr(d['run_id'] or '-', 60)}  {metrics}"
    )


def cmd_register(args: argparse.Namespace) -> int:
    from .. import models

    out = output(args)
    mv = models.register(
        _registry(args), args.name, args.path, repository=args.repository, framework=args.framework or "",
        run_id=args.run_id or "", info=out.info,
    )  # fmt: skip
    out.result(mv.to_json(), f"{mv.ref}@{mv.digest}  {'reused (same bytes)' if mv.reused else 'registered'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .. import models

    out = output(args)
    found = models.list_versions(_registry(args), args.name, repository=args.repository)
    out.result([m.to_json() for m in found], "\n".join(_row(m) for m in found) or "no versions")
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    from .. import models

    out = output(args)
    m = models.get(_registry(args), args.ref, repository=args.repository)
    out.result(m.to_json(), _row(m))
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .. import models

    out = output(args)
    m = models.download(_registry(args), args.ref, args.dest, repository=args.repository, force=args.force)
    out.result(m.to_json(), f"{m.name}:{m.version} -> {args.dest}")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..package import package

    for required in ("env", "entry", "model"):
        if not getattr(args, required):
            also = " (or inference_env in [tool.ml-env])" if required == "env" else ""
            raise UsageError(f"--{required} is required{also}")
    out = output(args)
    r = package(
        args.env, args.entry, args.model, build=build_options(args), repository=args.package_repository,
        versions=args.versions, info=out.info,
    )  # fmt: skip
    out.result(r.to_json(), f"{r.ref}  {'reused' if r.reused else 'packaged'}")
    return 0


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help(sys.stderr)
    return 2
