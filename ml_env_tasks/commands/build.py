"""``build``, ``plan``, ``hash``, ``explain`` and ``matrix``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings.groups import BUILD_HOW, BUILD_ONLY, BUILD_WHERE, SIGN
from ..settings.options import Option
from . import Action, Annotation, Command, Console, Outcome, Session, Values
from .common import SPEC, build_options, cell, code, reporter, sign_pushed, signing_key, spec_path

__all__ = ["COMMANDS", "environments", "env_matrix", "build_metadata"]

QUIET = Option("quiet", ("--quiet", "-q"), kind="flag", default=False, gha=None,
               help="do not stream the build log (it is still saved)")  # fmt: skip
OUTPUTS = {
    "image": "Image reference, <registry>/<repository>:<hash>",
    "digest": "Manifest digest of the image (sha256:...)",
    "hash": "Content hash of the environment",
    "built": "'true' if this run built the image, 'false' if it was reused",
    "cache-hit": "'true' if every build step came from a cache",
    "ref": "image@digest, for later steps to pin",
    "tags": "Every reference the image has after this step, one per line (the hash tag first)",
    "imageid": "Image ID, as the engine names the image (containerd store: the manifest digest; classic: the config's)",
    "metadata": "Build result metadata as JSON (buildx's keys: containerimage.digest, image.name, ...)",
}


# docker/build-push-action's inputs that ml-env's own do not already cover under the same name
BUILD_PUSH_ACTION_ALIASES = {
    "push": ("no_push", "false", "Push when a registry is given (the default); false, as in docker/build-push-action, is "
             "--no-push: build and check, push nothing (the image stays in the engine under its hash tag; one the "
             "registry already has is reused, not built)"),
    "no-cache": ("upgrade", "true", "True, as in docker/build-push-action, is upgrade (--upgrade): build again without "
                 "cache, even when the hash is in the registry (unpinned packages re-resolve; the lock is rewritten)"),
}  # fmt: skip
BUILD_PUSH_ACTION_REFUSED = {
    "build-args": "build arguments change the image but not its content hash; set them in the environment file "
                  "(docker.build_args), where the hash sees them",
    "outputs": "ml-env decides where the image goes: the registry under its content hash, or the engine with push: "
               "false (docker save exports it from there)",
    "target": "ml-env writes the Dockerfile from the environment file (spec) and builds all of it; there is no "
              "stage to choose: another image is another environment file",
    "file": "ml-env writes the Dockerfile from the environment file given in spec; a Dockerfile of your own is its "
            "base (base.dockerfile in that file), where the content hash sees it",
    # the rest of docker/build-push-action's inputs: each would change the image or its build behind the hash
    "context": "ml-env makes the build context from the environment file (spec): the files it names, nothing else",
    "build-contexts": "a named context adds files the content hash does not see; name them in the environment file "
                      "(requirements, wheels, base.dockerfile)",
    "secrets": "build secrets come from the environment file's *_env names, read only where you allow them "
               "(ML_ENV_SPEC_ENV), and from ca-bundle; a secret from the step would reach a build the hash describes "
               "without it",
    "secret-envs": "as secrets: an environment file's *_env names, allowed by ML_ENV_SPEC_ENV",
    "secret-files": "as secrets: an environment file's *_env names, allowed by ML_ENV_SPEC_ENV; ca-bundle for a CA",
    "ssh": "no build step reaches an SSH agent: private packages come from an index (python.index_url_env) or "
           "as wheels in the environment's folder",
    "github-token": "ml-env builds no git context, so it needs no token",
    "add-hosts": "host entries change what a build reaches, not its hash: give the build network with network",
    "allow": "entitlements are the builder's: network is the only one offered (network: host)",
    "attests": "ml-env attaches an SBOM and BuildKit's provenance to every pushed image itself",
    "sbom": "ml-env attaches an SBOM (SPDX and CycloneDX) to every pushed image itself",
    "provenance": "ml-env asks BuildKit for provenance (mode=max) on every pushed image itself",
    "pull": "the base is checked at every build (a moved tag is said); pin it by digest with pin-base",
    "no-cache-filters": "no-cache: true (upgrade) builds the whole environment again; a stage rebuilt alone would "
                        "not be what the hash and the lock describe",
    "call": "a build check is not a build: ml-env plan prints the Dockerfile, hash and tag",
    "cgroup-parent": "the builder's resources are the builder's; the image's limits at run time are train's and "
                     "serve's options",
    "ulimit": "the builder's limits are the builder's; the image's at run time are train's and serve's options",
    "shm-size": "build-time /dev/shm is the builder's; the run-time size is docker.shm_size in the environment file",
}  # fmt: skip


def _load(value: str, v: Values) -> str | None:
    """build-push-action's ``load``: the image in the engine. That is where push: false (or no
    registry) leaves it; a pushed image is in the registry by digest, where every later step takes
    it from, so load with a push is refused rather than half done."""
    from ..settings.options import FALSE, TRUE

    if value not in TRUE + FALSE:
        return "must be true or false"
    if value in TRUE and v.values.get("registry") and not v.values.get("no_push"):
        return (
            "true with a push: the image goes to the registry under its digest, and the later steps (train, "
            "package, smoke-test) pull that digest; push: false keeps it in the engine instead (load is then implied)"
        )
    return None


BUILD_PUSH_ACTION_CHECKED: dict[str, tuple[str, Callable[[str, Values], str | None]]] = {
    "load": ("True, as in docker/build-push-action, keeps the image in the engine: what push: false already does "
             "for an image it builds (one the registry already has is reused there, not pulled: force: true builds "
             "it here); refused with a push (the image is in the registry by digest); false: the default",
             _load),
}  # fmt: skip


def run_build(v: Values, io: Console) -> Outcome:
    from ..build import build
    from ..errors import UsageError

    opts = build_options(v, where="input 'registry'" if io.actions else "--registry")
    path = spec_path(v.spec)
    key = signing_key(v)  # a missing key file is an error before the build, not after it
    if key is not None and not opts.pushes:
        raise UsageError(
            "--sign-key signs an image in a registry: give --registry, without --no-push (an engine's image has "
            "no digest to sign)"
        )
    with io.section(f"ml-env build {v.spec}"):
        result = build(path, opts, reporter(io, stream_logs=not v.quiet))
        signed = sign_pushed(result.pinned, key, ("image", "sbom", "provenance"), v, io)
    state = "built" if result.built else "up to date (not rebuilt)"
    also = "".join(f"\n  also {t}" for t in result.tags)
    repro = result.reproducible
    if repro is not None:
        also += "\n  reproducible" if repro["same"] else "".join(f"\n  differs: {f}" for f in repro["files"])

    def outputs() -> dict[str, str]:
        image_id = result.image_id or _image_id(result, v)
        return {
            "image": result.image, "digest": result.digest or "", "hash": result.hash,
            "built": "true" if result.built else "false", "cache-hit": "true" if result.cache_hit else "false",
            "ref": result.pinned, "tags": "\n".join([result.image, *result.tags]), "imageid": image_id or "",
            "metadata": json.dumps(build_metadata(result, image_id), sort_keys=True),
        }  # fmt: skip

    reused = "built" if result.built else "reused (hash already in the registry)"
    if result.built and opts.no_push and opts.registry:
        reused = "built, not pushed (push: false): in the engine only"
    summary = (
        f"### ml-env build: {code(result.name)}\n\n| field | value |\n|---|---|\n"
        f"| environment | {code(v.spec)} |\n| image | {code(result.image)} |\n| digest | {code(str(result.digest))} |\n"
        f"| hash | {code(result.hash)} |\n| result | {reused} |\n"
        f"| cache | {cell(result.cache_backend or '-')}"
        f"{' (all steps cached)' if result.built and result.cache_hit else ''} |\n"
        f"| time | {result.seconds:.1f}s |\n"
        + (f"| tags | {cell(', '.join(result.tags), 2000)} |\n" if result.tags else "")
        + (f"| unpinned | {cell(', '.join(result.unpinned), 2000)} |\n" if result.unpinned else "")
        + (f"| signed | {cell(', '.join(signed.covered))} by {code(signed.by)} |\n" if signed else "")
    )
    notes: tuple[Annotation, ...] = ()
    if result.unpinned:
        notes = (
            Annotation(
                f"unpinned packages: {', '.join(result.unpinned)}; the lock records their versions", "warning", path
            ),
        )
    return Outcome(
        {**result.to_json(), "signed": signed.to_json() if signed else None},
        f"{result.image}@{result.digest}  {state}{also}" + (f"\n  signed by {signed.by}" if signed else ""),
        exit_code=1 if repro is not None and not repro["same"] else 0,
        outputs=outputs,
        summary=summary,
        annotations=notes,
    )


def _image_id(result: Any, v: Values) -> str | None:
    """The ID the engine gives a reused image, as buildx reports it for a built one: with the
    containerd image store the manifest (index) digest, with the classic store the config digest."""
    from .. import engine

    eng = engine.current()
    local = eng.local_image_id(result.image)
    if local or not (result.registry and result.digest):
        return local
    if eng.capabilities(v.builder).containerd_store:
        return str(result.digest)
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(result.image)
    return RegistryClient(r.host, insecure=bool(v.insecure)).config_digest(r.repository, result.digest)


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


def run_plan(v: Values, io: Console) -> Outcome:
    from ..build import plan
    from ..build.dockerfile import describe, plan_json
    from ..build.resolution import source_date_epoch

    opts = build_options(v)
    env, p, ref = plan(spec_path(v.spec), opts)
    if v.resolve:
        from ..build import resolve_plan

        p = resolve_plan(env, p, opts, reporter(io, stream_logs=False))
    cache = None
    if opts.registry or opts.cache_ref:
        from ..build import cache_refs

        exact, moving = cache_refs(env, opts)
        cache = {"exact": exact, "moving": moving}
    if v.context_dir:
        _write_context(p, Path(v.context_dir))
    build_args = {"SOURCE_DATE_EPOCH": source_date_epoch()} if "ARG SOURCE_DATE_EPOCH" in p.dockerfile else {}
    lines = (
        [f"# image: {ref}"]
        + ([f"# registry cache: {cache['exact']} (moving: {cache['moving']})"] if cache else [])
        + [f"# build argument: {k}={x}" for k, x in build_args.items()]
    )
    return Outcome(json.loads(plan_json(p, ref, cache, build_args)), lambda: "\n".join(lines) + "\n" + describe(p))


def _write_context(p: Any, d: Path) -> None:
    from ..build.dockerfile import write_context
    from ..errors import UsageError

    if d.is_symlink() or (d.exists() and (not d.is_dir() or any(d.iterdir()))):
        raise UsageError(f"--write-context {d}: must be a new or empty directory")
    d.mkdir(parents=True, exist_ok=True)
    write_context(p, d)


def run_hash(v: Values, io: Console) -> Outcome:
    from ..build import load_env
    from ..spec.hashing import canonical, canonical_json, env_hash

    env = load_env(spec_path(v.spec), build_options(v))
    h = env_hash(env)
    data: dict[str, Any] = {"name": env.name, "hash": h}
    if v.canonical:
        data["canonical"] = canonical(env)
    return Outcome(data, h + (f"\n{canonical_json(env)}" if v.canonical else ""))


def _jsonable(x: Any) -> Any:
    from ..spec.hashing import MISSING

    return None if x is MISSING else x


def run_explain(v: Values, io: Console) -> Outcome:
    from .. import spec
    from ..spec.hashing import env_hash, explain

    a, b = spec.load(v.a), spec.load(v.b)
    diffs = explain(a, b)
    data = {
        "a": {"path": v.a, "hash": env_hash(a)},
        "b": {"path": v.b, "hash": env_hash(b)},
        "same": not diffs,
        "differences": [{"field": d.field, "a": _jsonable(d.a), "b": _jsonable(d.b)} for d in diffs],
    }
    return Outcome(data, lambda: "\n".join(str(d) for d in diffs) if diffs else f"same hash {env_hash(a)}")


def environments(envs: str | Path) -> list[str]:
    """The environment names of a folder (its ``*.toml`` files, not sub-folders). The versions
    file ``ml-env register`` writes there (``envs/versions.toml``) is a log, not an environment."""
    from ..safe.tomllog import is_log_file

    d = Path(envs)
    return sorted(p.stem for p in d.glob("*.toml") if not is_log_file(p)) if d.is_dir() else []


def env_matrix(envs: Path) -> str:
    """The environments of a folder as a GitHub Actions matrix (``{"include": [...]}``): each
    file is parsed, so a broken one fails here, before any job starts."""
    from .. import spec

    include = []
    for n in environments(envs):
        env = spec.load(envs / f"{n}.toml")
        include.append({"env": n, "spec": str(envs / f"{n}.toml"), "name": env.name, "inference": env.inference})
    return json.dumps({"include": include})


def run_matrix(v: Values, io: Console) -> Outcome:
    from ..errors import UsageError
    from ..safe.grammar import printable

    envs = str(v.envs or "envs")
    if not environments(envs):  # an empty matrix would skip every job without a word
        where = "input 'envs'" if io.actions else "envs"
        raise UsageError(f"{where}: no environment files (*.toml) in {printable(envs, 200)!r}")
    matrix = env_matrix(Path(envs))
    return Outcome(json.loads(matrix), matrix, outputs={"matrix": matrix})


COMMANDS = {
    "build": Command(
        "build", "build an environment (or reuse it when its hash is already in the registry)",
        SPEC + BUILD_WHERE + BUILD_HOW + BUILD_ONLY + SIGN + (QUIET,), run_build,
        action=Action(
            "ml-env build",
            "Build an ML environment image tagged by the content hash of its environment file, with BuildKit "
            "caching; an unchanged environment is not rebuilt. Outputs the image and its digest.",
            OUTPUTS, required=("spec",),
            aliases=BUILD_PUSH_ACTION_ALIASES, refused=BUILD_PUSH_ACTION_REFUSED,
            checked=BUILD_PUSH_ACTION_CHECKED,
        ),
        session=Session("env_build", "Build an environment image, or reuse it when its hash is already in the registry.",
                        per_env=True),
    ),
    "plan": Command(
        "plan", "print the Dockerfile, hash and image tag without building",
        SPEC + BUILD_WHERE + BUILD_HOW + (
            Option("context_dir", ("--write-context",), metavar="DIR", gha=None,
                   help="also write the build context (Dockerfile and files) to DIR, new or empty, for another builder"),
            Option("resolve", ("--resolve",), kind="flag", default=False, gha=None,
                   help="with python.layers = \"split\": resolve as a build does (with the engine) and show each "
                        "layer's pins, the Dockerfile ml-env builds"),
        ), run_plan,
        session=Session("env_plan", "Print an environment's Dockerfile, hash and image tag without building.",
                        per_env=True),
    ),
    "hash": Command(
        "hash", "print the environment's content hash",
        SPEC + tuple(o for o in BUILD_WHERE if o.name in ("pin_base", "locked", "insecure"))
        + (Option("canonical", ("--canonical",), kind="flag", default=False, gha=None,
                  help="also print the canonical JSON that is hashed"),),
        run_hash,
        session=Session("env_hash", "Print an environment's content hash.", per_env=True),
    ),
    "explain": Command(
        "explain", "list the fields that make two specs' hashes differ",
        (Option("a", ("a",), help="an environment file"), Option("b", ("b",), help="another")), run_explain,
    ),
    "matrix": Command(
        "matrix", "the environments of a folder as a GitHub Actions matrix (JSON)",
        (Option("envs", ("--envs",), kind="path", default=lambda: Path("envs"), gha="envs",
                help="Folder of environment files (*.toml)"),),
        run_matrix,
        action=Action(
            "ml-env matrix",
            "The environment files of a folder as a GitHub Actions matrix ({\"include\": [{env, spec, name, "
            "inference}]}), each parsed first: a broken one fails here, before any job starts.",
            {"matrix": "The matrix as JSON, for strategy.matrix through fromJson"},
        ),
        session=Session("env_matrix", "Print the environments as a GitHub Actions matrix (JSON; also to $GITHUB_OUTPUT)."),
    ),
}  # fmt: skip
