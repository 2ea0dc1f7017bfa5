"""Layers that follow the resolution (``python.layers = "split"``): the build stages that install a
layer per declared package and per private wheel, and the resolution they are laid out by.

A build resolves first, in a small build of its own (``resolve_dockerfile`` of the plan: the
resolve stage on the base image, whose pins come back to the client), and then renders every
layer's pins into its stage's command, so a layer stage's cache key is its own text. (A layer
stage that read its pins from the resolve stage inside the same build had a content-based key,
which BuildKit matched against an imported cache in about one rebuild of two.) On a fresh builder
with only a registry cache BuildKit still installs some unchanged layers again, less often: an
export written by a build that took layer stages from the imported cache without their files
leaves their results out. They come out with the same digests, so nothing new is pushed or
pulled. Without a resolution (``ml-env plan``), the stages read their pins from the resolve
stage: the same image, built in one pass.

What runs inside the build is ``build/split.py``; the final stage copies each layer in with
``COPY --link`` so that a layer's digest depends on its own files only.
"""

from __future__ import annotations

import re
import shlex
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import BuildError
from ..safe.grammar import printable
from ..spec import Environment, FileRef
from .installer import CACHE_ROOT, MOUNT_ROOT, UV_HOME, installer_parts, run_line, variables_first
from .stack import SPLIT_SOURCE

__all__ = [
    "declared_names", "split_stages", "read_layers", "BASE_STAGE", "RESOLVE_STAGE",
    "SPLIT_SCRIPT", "MAX_NAMED", "REST",
]  # fmt: skip

BASE_STAGE = "ml-env-base"  # the base image, apt and the Python environment: every stage starts here
RESOLVE_STAGE = "ml-env-resolve"
PINS_STAGE = "ml-env-pins"  # the resolve build's output: the pins only
LAYERS_OUT = "/ml-env-layers"  # the resolve stage's output: a file of pins per layer
LAYER_OUT = "/ml-env-layer"  # a layer stage's output: what its install created, at its own paths
SPLIT_SCRIPT = f"{MOUNT_ROOT}/split/split.py"
WORK = "/tmp/ml-env-work"  # a tmpfs: the installer's report (it can name a private index) stays out of layers
MAX_NAMED = 48  # declared packages with a layer of their own (by name); the others share the rest's
REST = "_rest"  # the layer of what the declared packages pull in (no package name starts with _)
_LAYER_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*", re.A)
_PIN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*==[A-Za-z0-9][A-Za-z0-9.+!_-]{0,63}", re.A)
MAX_PINS = 4000
MAX_PINS_FILE = 256 * 1024


def declared_names(env: Environment) -> list[str]:
    """The top-level packages the environment names (PEP 503 names, sorted): each gets a layer."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    texts = [*env.packages, *env.conda_pip]
    for r in env.requirements:
        texts += r.read().decode("utf-8", "replace").replace("\\\n", " ").splitlines()
    names: set[str] = set()
    for text in texts:
        text = text.split(" #", 1)[0].strip()
        if not text or text.startswith(("#", "-")):
            continue
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue  # the installer says what is wrong with it
        if req.url is None:
            names.add(canonicalize_name(req.name))
    return sorted(names)[:MAX_NAMED]


def _resolve_stage(
    env: Environment,
    python: str,
    steps: list[tuple[str, str]],
    stage_args: list[str],
    *,
    locked: bool,
    base: str | None = None,
) -> list[str]:
    """The stage that runs the installer's resolution and writes a file of pins per layer: in the
    build (on the base stage), or with ``base`` (a ``FROM`` line's image) on the base image alone,
    in a throwaway virtualenv made as the image's is. The resolve build uses the latter: it then
    needs nothing from a cache (BuildKit re-ran the apt and venv steps rather than take them from
    a registry cache when a step had to run on top of them) and leaves nothing built behind that
    the image's own build would find instead of the cache."""
    venv = ""
    if base is not None and not env.user_managed:
        venv = f"{env.interpreter} -m venv {WORK}/venv; \\\n    "
        python = f"{WORK}/venv/bin/python"
    mounts, setup, command = installer_parts(python, env.installer, user_managed=env.user_managed)
    setup = venv + setup
    mounts = [*mounts, f"--mount=type=bind,source=ml-env/split,target={MOUNT_ROOT}/split"]
    mounts += [f"--mount=type=bind,source=ml-env/{sub},target={MOUNT_ROOT}/{sub}" for sub, _ in steps]
    constraint = ""
    if locked:
        mounts.append(f"--mount=type=bind,source=ml-env/lock,target={MOUNT_ROOT}/lock")
        constraint = f" -c {MOUNT_ROOT}/lock/lock.txt"
    mounts.append(f"--mount=type=tmpfs,target={WORK}")
    script = f"{python} -B {SPLIT_SCRIPT}"
    args = " ".join(a for _, a in steps)
    resolve = f"resolve --python {python} --named {MOUNT_ROOT}/split/named.txt --out {LAYERS_OUT}"
    if env.installer == "uv":
        # uv pip compile takes requirement files as arguments (no -r), and wheels through a file
        args = args.replace(f"{MOUNT_ROOT}/wheels/*.whl", f"{WORK}/wheels.txt").replace("-r ", "")
        wheels = f"    printf '%s\\n' {MOUNT_ROOT}/wheels/*.whl > {WORK}/wheels.txt; \\\n" if env.wheels else ""
        compile_ = f"{UV_HOME}/bin/uv pip compile --quiet --python {python} --cache-dir {CACHE_ROOT}/uv"
        body = (
            wheels
            + f"    {script} {resolve} --pins {WORK}/pins.txt -- {compile_}{constraint} -o {WORK}/pins.txt {args}"
        )
    else:
        env_vars, installer = variables_first(command)
        body = (
            f"    {env_vars}{script} {resolve} --report {WORK}/report.json -- "
            f"{installer} --dry-run --quiet --report {WORK}/report.json{constraint} {args}"
        )
    return [f"FROM {base or BASE_STAGE} AS {RESOLVE_STAGE}", *stage_args, run_line(mounts, setup + body)]


def split_stages(
    env: Environment,
    python: str,
    steps: list[tuple[str, str]],
    files: dict[str, bytes | FileRef],
    stage_args: list[str],
    *,
    locked: bool,
    layers: Mapping[str, Sequence[str]] | None,
    base: str,
) -> tuple[list[str], list[str], str | None]:
    """(the resolve stage, the layer stages and the final stage's copies, the resolve build's
    Dockerfile when there is no resolution yet; ``base`` is the image the base stage starts from). With ``layers`` (the
    resolution, from ``read_layers``) each stage installs its pins, written into its command;
    without, each reads them from the resolve stage, which is then part of the build."""
    named = declared_names(env)
    files["ml-env/split/split.py"] = SPLIT_SOURCE.read_bytes()
    files["ml-env/split/named.txt"] = "".join(n + "\n" for n in named).encode()
    resolve = _resolve_stage(env, python, steps, stage_args, locked=locked)
    mounts, setup, command = installer_parts(python, env.installer, user_managed=env.user_managed)
    # the installer's variables (UV_LINK_MODE, PIP_BREAK_SYSTEM_PACKAGES) go before the script,
    # which passes its environment on to the command it runs
    env_vars, installer = variables_first(command)
    script = f"{env_vars}{python} -B {SPLIT_SCRIPT} install --into {LAYER_OUT}"
    own = [*mounts, f"--mount=type=bind,source=ml-env/split/split.py,target={SPLIT_SCRIPT}"]
    lines: list[str] = []
    stages = []
    if layers is None:
        chosen: list[tuple[str, str]] = [(n, f"ml-env-layer-{n}") for n in named] + [(REST, "ml-env-rest")]
    else:
        chosen = [(n, f"ml-env-layer-{n}") for n in sorted(layers) if n != REST and layers[n]]
        chosen += [(REST, "ml-env-rest")] if layers.get(REST) else []
    for name, stage in chosen:
        if layers is None:
            src = f"--mount=type=bind,from={RESOLVE_STAGE},source={LAYERS_OUT}/{name}.txt,target={MOUNT_ROOT}/layer.txt"
            body = f"    {script} --layer {MOUNT_ROOT}/layer.txt -- {installer} --no-deps -r {MOUNT_ROOT}/layer.txt"
            run = run_line([*own, src], setup + body)
        else:
            pins = " ".join(shlex.quote(p) for p in layers[name])
            run = run_line(own, setup + f"    {script} -- {installer} --no-deps {pins}")
        lines += [f"FROM {BASE_STAGE} AS {stage}", *stage_args, run]
        stages.append(stage)
    for w in sorted(env.wheels, key=lambda w: w.path.name):
        # a wheel is a file known before the build: its stage needs no resolution (its
        # dependencies are resolved with the rest); named by content, which a file name may not be
        path, stage = f"{MOUNT_ROOT}/wheels/{w.path.name}", f"ml-env-wheel-{w.sha256[:16]}"
        mount = f"--mount=type=bind,source=ml-env/wheels/{w.path.name},target={path}"
        quoted = shlex.quote(path)  # the name is a wheel's (spec.validate), quoted all the same
        run = run_line([*own, mount], setup + f"    {script} --layer {quoted} -- {installer} --no-deps {quoted}")
        lines += [f"FROM {BASE_STAGE} AS {stage}", *stage_args, run]
        stages.insert(len(stages) - (1 if stages and stages[-1] == "ml-env-rest" else 0), stage)
    lines += [f"FROM {BASE_STAGE}", *stage_args]
    lines += [f"COPY --link --from={s} {LAYER_OUT}/ /" for s in stages]
    if layers is not None:
        return resolve, lines, None
    return resolve, lines, _resolve_dockerfile(_resolve_stage(env, python, steps, stage_args, locked=locked, base=base))


def _resolve_dockerfile(resolve: list[str]) -> str:
    """The resolve build: the resolve stage on the base image, and a stage holding the pins only
    (what ``--output type=local`` sends back)."""
    out = [*resolve, f"FROM scratch AS {PINS_STAGE}", f"COPY --from={RESOLVE_STAGE} {LAYERS_OUT}/ /"]
    return "\n".join(out) + "\n"


def read_layers(folder: Path) -> dict[str, list[str]]:
    """The pins the resolve build sent back, checked: it ran the installer over an index (and
    building an sdist's metadata runs its code), so nothing it says reaches a Dockerfile unless
    it is a layer name and ``name==version`` pins, and nothing it left is followed: a link, a
    folder or a device there is refused, never read through."""
    out: dict[str, list[str]] = {}
    total = 0
    found = []
    for i, f in enumerate(folder.iterdir() if folder.is_dir() else ()):
        if i > MAX_NAMED + 8:  # the layer files and buildx's own records; more is not ours
            raise BuildError(f"the resolution wrote more than {MAX_NAMED + 8} files")
        found.append(f)
    for f in sorted(found):
        if f.suffix == ".json" and f.is_file() and not f.is_symlink():
            continue  # buildx's own records (provenance.json) beside what the stage holds
        name = f.name.removesuffix(".txt")
        st = f.lstat()
        if (
            not f.name.endswith(".txt")
            or not (name == REST or _LAYER_NAME.fullmatch(name))
            or not stat.S_ISREG(st.st_mode)
        ):
            raise BuildError(f"the resolution wrote {printable(f.name, 80)!r}, which is not a layer file")
        if st.st_size > MAX_PINS_FILE:
            raise BuildError(f"the resolution's layer file {f.name} is larger than {MAX_PINS_FILE} bytes")
        with open(f, "rb") as fh:
            pins = fh.read(MAX_PINS_FILE + 1)[:MAX_PINS_FILE].decode("utf-8", "replace").split()
        bad = [x for x in pins if not _PIN.fullmatch(x)]
        if bad:
            raise BuildError(
                f"the resolution's layer file {f.name} holds {printable(bad[0], 80)!r}, which is not a pin"
            )
        total += len(pins)
        out[name] = pins
    if len(out) > MAX_NAMED + 1:
        raise BuildError(f"the resolution wrote {len(out)} layer files, more than {MAX_NAMED + 1}")
    if total > MAX_PINS:
        raise BuildError(f"the resolution named {total} packages, more than {MAX_PINS}")
    return out
