"""``model register|list|get|download`` and ``package``."""

from __future__ import annotations

from ..settings.groups import (
    BUILD_HOW,
    BUILD_WHERE,
    INFERENCE_ENV,
    MODEL_REPOSITORY,
    MODEL_SOURCE_REPOSITORY,
    PACKAGE_REPOSITORY,
    REBUILD,
    SERVE,
    SIGN,
    VERSIONS,
)
from ..settings.options import Option
from . import Action, Command, Console, Outcome, Values
from .common import build_options, cell, code, sign_pushed, signing_key

__all__ = ["COMMANDS"]

REGISTRY = tuple(o for o in BUILD_WHERE if o.name in ("registry", "insecure"))
REPO = (MODEL_REPOSITORY,)
PACKAGE = (
    INFERENCE_ENV,
    Option("model", ("--model",), kind="list", metavar="[NAME=]DIR|MODEL",
           help="a registered model (NAME, NAME:VERSION, REPOSITORY/NAME:VERSION; no version: the latest) or a folder, "
                "at AZUREML_MODEL_DIR; several: NAME=MODEL or NAME=DIR each, at AZUREML_MODEL_DIR/NAME"),
    MODEL_SOURCE_REPOSITORY,
    PACKAGE_REPOSITORY,
    VERSIONS,
    REBUILD,
)  # fmt: skip


def _where(args: Values, ref: str) -> str:
    """The model reference, once its registry and repository are not named twice: a reference that
    names them wins over the config; over a flag that names others, it is an error."""
    from ..errors import UsageError
    from ..models import parse_model_ref
    from ..settings.options import Source

    m = parse_model_ref(ref)
    for named, opt in ((m.registry, "registry"), (m.repository, "repository")):
        given = args.values.get(opt)
        if named and given and given != named and args.origin(opt).source in (Source.FLAG, Source.INPUT):
            raise UsageError(f"--{opt} {given} and the model {ref} name another {opt}: give it once")
    return ref


def _row(m: object) -> str:
    from ..safe.grammar import printable as pr

    d = m.to_json()  # type: ignore[attr-defined]
    metrics = ", ".join(f"{pr(k, 30)}={pr(v, 30)}" for k, v in sorted(d["metrics"].items())[:6])
    return (
        f"{pr(d['name'], 63)}:{d['version']}  {d['layer'][:19]}  {d['size'] / 2**20:.1f} MiB  "
        f"{pr(d['framework'] or '-', 30)}  run {pr(d['run_id'] or '-', 60)}  {metrics}"
    )


def run_register(args: Values, io: Console) -> Outcome:
    from .. import models

    mv = models.register(
        args.registry, _where(args, args.name), args.path, repository=args.repository, framework=args.framework or "",
        run_id=args.run_id or "", info=io.info,
    )  # fmt: skip
    return Outcome(mv.to_json(), f"{mv.ref}@{mv.digest}  {'reused (same bytes)' if mv.reused else 'registered'}")


def run_list(args: Values, io: Console) -> Outcome:
    from .. import models

    found = models.list_versions(args.registry, _where(args, args.name), repository=args.repository)
    return Outcome([m.to_json() for m in found], "\n".join(_row(m) for m in found) or "no versions")


def run_get(args: Values, io: Console) -> Outcome:
    from .. import models

    m = models.get(args.registry, _where(args, args.ref), repository=args.repository)
    return Outcome(m.to_json(), _row(m))


def run_download(args: Values, io: Console) -> Outcome:
    from .. import models

    m = models.download(args.registry, _where(args, args.ref), args.dest, repository=args.repository, force=args.force)
    return Outcome(m.to_json(), f"{m.name}:{m.version} -> {args.dest}")


def run_package(args: Values, io: Console) -> Outcome:
    from ..models.package import package

    key = signing_key(args)
    with io.section(f"ml-env package {args.env}"):
        r = package(
            args.env, args.entry, args.model, build=build_options(args), repository=args.package_repository,
            versions=args.versions, model_repository=args.model_repository, info=io.info,
        )  # fmt: skip
        signed = sign_pushed(r.ref, key, ("image", "sbom", "provenance"), args, io)
    summary = (
        f"### ml-env package: {'reused' if r.reused else 'packaged'}\n\n| part | value |\n|---|---|\n"
        f"| image | {code(r.ref)} |\n| environment | {code(r.environment)} |\n| entry | {code(r.entry)} "
        f"({code(r.entry_hash[:16])}) |\n| model | {code(r.model)} ({code(r.model_digest[:19])}) |\n"
        + (f"| signed | {cell(', '.join(signed.covered))} by {code(signed.by)} |\n" if signed else "")
    )
    outputs = {"image": r.image, "digest": r.digest, "ref": r.ref, "reused": "true" if r.reused else "false"}
    text = f"{r.ref}  {'reused' if r.reused else 'packaged'}" + (f", signed by {signed.by}" if signed else "")
    return Outcome({**r.to_json(), "signed": signed.to_json() if signed else None}, text, 0, outputs, summary)


NAME = (Option("name", ("name",), help="model name, or REPOSITORY/NAME"),)
REF = (
    Option(
        "ref",
        ("ref",),
        metavar="MODEL",
        help="NAME, NAME:VERSION, REPOSITORY/NAME:VERSION or HOST/REPOSITORY/NAME:VERSION (no version: the latest)",
    ),
)
COMMANDS = {
    "model register": Command(
        "model register", "store a model folder as the next version (same bytes: the same version)",
        NAME + (Option("path", ("path",), kind="path", help="model folder"),
                Option("framework", ("--framework",), help="e.g. sklearn, pytorch (recorded)"),
                Option("run_id", ("--run-id",), help="the run that made it (default: found from runs/<id>/outputs)"))
        + REGISTRY + REPO, run_register,
    ),
    "model list": Command("model list", "every version of a model", NAME + REGISTRY + REPO, run_list),
    "model get": Command("model get", "one version's metadata (NAME: the latest)", REF + REGISTRY + REPO, run_get),
    "model download": Command(
        "model download", "a version's files into a new or empty folder",
        REF + (Option("dest", ("dest",), kind="path", help="folder"),
               Option("force", ("--force",), kind="flag", default=False, help="write into a folder that has files"))
        + REGISTRY + REPO, run_download,
    ),
    "package": Command(
        "package", "an inference image with its entry script and model inside (serve, smoke-test, promote it)",
        PACKAGE + tuple(o for o in SERVE if o.name == "entry") + BUILD_WHERE + BUILD_HOW + SIGN, run_package,
        usage="ml-env package [--env ENV] --entry score.py --model [NAME=]MODEL|DIR ... --registry HOST [--json]",
        required=("env", "entry", "model"),
        action=Action(
            "ml-env package",
            "Package an inference environment, an entry script and a model (a registered NAME:VERSION or a folder) "
            "into one image in the registry, assembled over the registry API; the same parts give the same digest. "
            "Smoke-test and promote that image as it is.",
            {
                "image": "The packaged image, <registry>/<repository>:<package hash>",
                "digest": "Its digest",
                "ref": "image@digest, for the smoke test and the promotion",
                "reused": "'true' when the same parts were packaged before",
            },
            required=("env", "entry", "model"),
        ),
    ),
}  # fmt: skip
