"""Render the build plan: a Dockerfile in cache-friendly layer order and its small build context.

Layer order, slowest-changing first: base → apt → Python environment → conda pip section →
requirements files → packages → private wheels → env vars. Files the build needs travel in the
context under ``ml-env/`` and are bind-mounted into the one RUN step that reads them, so no
layer keeps a copy and a change to one file re-runs only its own step and those after it.

Secrets (an extra CA bundle, a pip config holding private index URLs) are BuildKit secret
mounts, read at build time and never stored in a layer, the history or a label. No
``# syntax=`` line: it would pull a frontend image from a registry.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecError
from ..safe.grammar import has_control
from ..spec import Environment, FileRef
from ..spec.dockerlint import last_user
from ..spec.hashing import canonical_json, env_hash
from .installer import MOUNT_ROOT, SECRET_CA, SECRET_PIP, SECRET_UV, installer_parts, run_line
from .layering import BASE_STAGE, SPLIT_SCRIPT, split_stages
from .stack import AZUREML_PACKAGES, INFERENCE_PACKAGES, SERVER_SOURCE, UV_VERSION, inference_stack

__all__ = [
    "BuildPlan",
    "render",
    "inference_stack",
    "VENV",
    "SECRET_CA",
    "SECRET_PIP",
    "SECRET_UV",
    "SERVE_DIR",
    "UV_VERSION",
]

VENV = "/opt/ml-env"
SERVE_DIR = "/opt/ml-env-serve"  # where the inference layer puts the scoring server
SERVE_PORT = 5001  # both servers listen here (azmlinfsrv's default too): serve.local.CONTAINER_PORT


@dataclass(frozen=True)
class BuildPlan:
    hash: str
    dockerfile: str
    files: dict[str, bytes | FileRef] = field(default_factory=dict)  # context files: bytes, or a file to copy
    python: str | None = None  # the interpreter the lock is read with; None: no Python layer
    canonical: str = ""
    # python.layers = "split" without a resolution: the build that resolves (build.layering)
    resolve_dockerfile: str | None = None

    def tag(self) -> str:
        return self.hash


def _v(value: str, key: str) -> str:
    """Every value the renderer writes into a Dockerfile line passes here: no CR, LF, NUL or other
    control character can reach it, so no value can end an instruction or start another."""
    if has_control(value):
        raise SpecError("a value written into the Dockerfile contains a control character", key=key)
    return value


def _q(value: str, key: str) -> str:
    """A double-quoted Dockerfile ENV/ARG value: backslash, quote and $ escaped."""
    value = _v(value, key)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _install_run(python: str, subdir: str, args: str, *, user_managed: bool, locked: bool, installer: str) -> str:
    """One dependency layer: pip (or uv) installing the files bind-mounted from ``ml-env/<subdir>``."""
    mounts, setup, command = installer_parts(python, installer, user_managed=user_managed)
    mounts.append(f"--mount=type=bind,source=ml-env/{subdir},target={MOUNT_ROOT}/{subdir}")
    constraint = ""
    if locked:
        mounts.append(f"--mount=type=bind,source=ml-env/lock,target={MOUNT_ROOT}/lock")
        constraint = f" -c {MOUNT_ROOT}/lock/lock.txt"
    return run_line(mounts, setup + f"    {command}{constraint} {args}")


# Reproducible layers. BuildKit's rewrite-timestamp cannot be used with the engine's own image
# store (it conflicts with unpacking), so each ml-env step dates what it changed itself: every
# file and folder it created or modified (under the places installers write, on the image's own
# filesystem: -xdev leaves the cache, secret and bind mounts alone) gets SOURCE_DATE_EPOCH as its
# mtime before the layer is taken. With .pyc files written as checked hashes (Python does that
# when SOURCE_DATE_EPOCH is set) and no logs left behind, the same inputs give the same layers.
_DATE_START = 'ml_env_t0="$(date +%s.%N)"; '
_DATE_END = (
    ' \\\n    && { find /opt /usr /etc /var /root /home -xdev -newermt "@$ml_env_t0" '
    '-exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} + 2>/dev/null || true; }'
)


def _dated(run: str) -> str:
    """An ml-env RUN line whose changes are dated SOURCE_DATE_EPOCH (see above)."""
    parts = run.removeprefix("RUN ").split(" \\\n    ")
    i = next(n for n, part in enumerate(parts) if not part.startswith("--mount="))
    parts[i] = _DATE_START + parts[i]
    return "RUN " + " \\\n    ".join(parts) + _DATE_END


def render(env: Environment, layers: Mapping[str, Sequence[str]] | None = None) -> BuildPlan:
    """The build plan. With ``python.layers = "split"``, ``layers`` is the resolution (from the
    plan's ``resolve_dockerfile``, built first): each layer's pins go into its stage's command."""
    h = env_hash(env)
    lines: list[str] = []
    files: dict[str, bytes | FileRef] = {}
    b = env.base
    restore_user = None
    resolving: str | None = None  # python.layers = "split": the resolve build's Dockerfile
    if b.image is not None:
        ref = b.image
        if b.digest:
            ref = ref.split("@", 1)[0] + "@" + b.digest
        lines.append(f"FROM {_v(ref, 'base.image')}")
    else:
        source = (b.dockerfile_source or "").replace("\r\n", "\n").rstrip("\n")
        lines.append("# --- base Dockerfile, as declared ---")
        lines.append(source)
        lines.append("# --- ml-env steps ---")
        restore_user = last_user(source)
        if restore_user and _v(restore_user, "base.dockerfile").split(":")[0] not in ("root", "0"):
            lines.append("USER root")
        else:
            restore_user = None
    # reproducible layers: BuildKit dates the image by this build argument, and Python writes
    # .pyc files as checked hashes (not timestamps) when it is set (ml-env always sets it)
    lines.append("ARG SOURCE_DATE_EPOCH")
    own = len(lines)  # the steps from here on are ml-env's (the base Dockerfile's are the user's)
    for k, v in sorted(env.build_args.items()):
        lines.append(f"ARG {_v(k, 'docker.build_args')}={_q(v, f'docker.build_args.{k}')}")
    if env.apt:
        pkgs = " ".join(_v(a, "apt.packages") for a in sorted(set(env.apt)))
        # apt's lists and downloaded packages are cache mounts: not in the layer, kept for the next build
        lines.append(
            "RUN --mount=type=cache,id=ml-env-apt-lists,target=/var/lib/apt/lists,sharing=locked \\\n"
            "    --mount=type=cache,id=ml-env-apt-archives,target=/var/cache/apt/archives,sharing=locked \\\n"
            "    apt-get update \\\n"
            "    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            f"-o APT::Keep-Downloaded-Packages=true {pkgs} \\\n"
            # logs and caches that record when: not part of what the image is
            "    && rm -rf /var/log/apt/* /var/log/dpkg.log /var/log/alternatives.log /var/cache/ldconfig/aux-cache /var/cache/apt/*.bin "
            "/var/cache/debconf/*-old"
        )
    python: str | None = None
    if env.conda_packages:
        # python.conda_installer = "conda": the base image's conda installs the conda part, and
        # its python is the interpreter for everything after
        pkgs = " ".join(shlex.quote(_v(p, "python.conda_file")) for p in env.conda_packages)
        chans = " ".join(f"-c {shlex.quote(_v(c, 'python.conda_file'))}" for c in env.conda_channels)
        lines.append(
            "RUN set -e; CONDA=; for c in micromamba mamba conda; do if command -v $c >/dev/null; then CONDA=$c; break; fi; done; \\\n"
            '    if [ -z "$CONDA" ]; then echo "ml-env: python.conda_installer = conda, but the base image has no micromamba, mamba or conda" >&2; exit 1; fi; \\\n'
            f"    $CONDA install -y -n base {chans} {pkgs} && $CONDA clean -afy"
        )
    if env.has_python_deps:
        if env.user_managed or env.conda_packages:
            python = _v(env.interpreter, "python.interpreter") if env.user_managed else "python"
        else:
            lines.append(f"RUN {_v(env.interpreter, 'python.interpreter')} -m venv {VENV}")
            lines.append(f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:$PATH")
            python = f"{VENV}/bin/python"
        locked = env.lock is not None
        if locked:
            assert env.lock is not None
            files["ml-env/lock/lock.txt"] = env.lock.read()
        interpreter: str = python

        def pip(sub: str, args: str) -> str:
            return _install_run(
                interpreter, sub, args, user_managed=env.user_managed, locked=locked, installer=env.installer
            )

        steps: list[tuple[str, str]] = []  # (folder in the context, the installer's arguments)
        if env.conda_pip:
            files["ml-env/conda/requirements.txt"] = ("\n".join(sorted(env.conda_pip)) + "\n").encode()
            steps.append(("conda", f"-r {MOUNT_ROOT}/conda/requirements.txt"))
        if env.requirements:
            names = []
            for r in sorted(env.requirements, key=lambda r: r.sha256):
                name = f"{r.sha256[:16]}.txt"
                files[f"ml-env/requirements/{name}"] = r.read()
                names.append(f"-r {MOUNT_ROOT}/requirements/{name}")
            steps.append(("requirements", " ".join(dict.fromkeys(names))))
        if env.packages:
            files["ml-env/packages/requirements.txt"] = ("\n".join(sorted(env.packages)) + "\n").encode()
            steps.append(("packages", f"-r {MOUNT_ROOT}/packages/requirements.txt"))
        if env.wheels:
            for w in env.wheels:
                files[f"ml-env/wheels/{w.path.name}"] = w  # copied (and re-checked) when the context is made
            steps.append(("wheels", f"{MOUNT_ROOT}/wheels/*.whl"))
        if env.splits_layers:
            stage_args = ["ARG SOURCE_DATE_EPOCH", *(x for x in lines[own:] if x.startswith("ARG "))]
            base = lines[0].removeprefix("FROM ")
            lines[0] += f" AS {BASE_STAGE}"
            resolve, stages, resolving = split_stages(
                env, interpreter, steps, files, stage_args, locked=locked, layers=layers, base=base
            )
            lines += (resolve if layers is None else []) + stages
        for sub, args in steps:
            lines.append(pip(sub, args))
        if env.inference and env.inference_server == "azureml":
            # Microsoft's azmlinfsrv (gunicorn + flask, inference-schema): its own routes and swagger
            files["ml-env/inference/requirements.txt"] = ("\n".join(AZUREML_PACKAGES) + "\n").encode()
            lines.append(pip("inference", f"-r {MOUNT_ROOT}/inference/requirements.txt"))
        elif env.inference:
            # after every dependency layer: the inference image shares them all with the training image
            files["ml-env/inference/server.py"] = SERVER_SOURCE.read_bytes()
            files["ml-env/inference/requirements.txt"] = ("\n".join(INFERENCE_PACKAGES) + "\n").encode()
            lines.append(
                pip("inference", f"-r {MOUNT_ROOT}/inference/requirements.txt")
                + f" \\\n    && mkdir -p {SERVE_DIR} && cp {MOUNT_ROOT}/inference/server.py {SERVE_DIR}/server.py"
            )
    if env.variables:
        lines.append(
            "ENV " + " \\\n    ".join(f"{_v(k, 'env')}={_q(v, f'env.{k}')}" for k, v in sorted(env.variables.items()))
        )
    if env.inference:
        lines.append(
            "ENV AML_APP_ROOT=/var/azureml-app AZUREML_ENTRY_SCRIPT=score.py "
            "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models WORKER_COUNT=1 SCORING_TIMEOUT_MS=3600000"
        )
        lines.append(f"EXPOSE {SERVE_PORT}")
        lines.append(_serve_cmd(env, python))
    if restore_user:
        lines.append(f"USER {_v(restore_user, 'base.dockerfile')}")
    if any(x.startswith("RUN ") for x in lines[own:]):
        # a layer stage dates its own files (split.py); its RUN is not dated twice
        lines[own:] = [_dated(x) if x.startswith("RUN ") and SPLIT_SCRIPT not in x else x for x in lines[own:]]
    else:
        del lines[own - 1]  # nothing of ml-env's runs: no date to give (an ENV-only image stays FROM + ENV)
    dockerfile = "\n".join(lines) + "\n"
    return BuildPlan(
        hash=h, dockerfile=dockerfile, files=files, python=python, canonical=canonical_json(env),
        resolve_dockerfile=resolving,
    )  # fmt: skip


def _serve_cmd(env: Environment, python: str | None) -> str:
    """The image's CMD. azmlinfsrv refuses to start without ``--entry_script``, and the entry is
    only known when the container starts (``ml-env serve`` and packaged images set
    AML_APP_ROOT/AZUREML_ENTRY_SCRIPT then): a shell expands them, ``exec`` keeps it PID 1."""
    if env.inference_server != "azureml":
        return f'CMD ["{python}", "{SERVE_DIR}/server.py"]'
    # in the venv, its console script; for an interpreter the user manages, the same entry point by module
    exe = f"{VENV}/bin/azmlinfsrv" if python == f"{VENV}/bin/python" else f"{python} -m azureml_inference_server_http"
    script = f'exec {exe} --entry_script "$AML_APP_ROOT/$AZUREML_ENTRY_SCRIPT" --port {SERVE_PORT}'
    return "CMD " + json.dumps(["/bin/sh", "-c", script])


def _size(data: bytes | FileRef) -> int:
    return data.size if isinstance(data, FileRef) else len(data)


def write_context(plan: BuildPlan, context: Path) -> None:
    """The build context on disk: the Dockerfile and the plan's files. A file copied from the
    project (a wheel) is hashed while it is copied and must still be what the plan hashed."""

    (context / "Dockerfile").write_text(plan.dockerfile)
    for rel, data in plan.files.items():
        target = context / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            target.write_bytes(data)
            continue
        h = hashlib.sha256()
        with open(data.real, "rb") as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                h.update(chunk)
                dst.write(chunk)
        if h.hexdigest() != data.sha256:
            raise SpecError(f"{data.path} changed while the build was being prepared; build again", key="python.wheels")


def describe(plan: BuildPlan) -> str:
    """Human form for ``ml-env plan``: the hash, the files in the context, the Dockerfile."""
    ctx = "\n".join(f"  {name} ({_size(data)} bytes)" for name, data in sorted(plan.files.items())) or "  (none)"
    return f"# hash: {plan.hash}\n# context files:\n{ctx}\n{plan.dockerfile}"


def plan_json(
    plan: BuildPlan, image: str | None, cache: dict[str, str] | None = None, build_args: dict[str, str] | None = None
) -> str:
    doc: dict[str, object] = {
        "hash": plan.hash, "image": image, "dockerfile": plan.dockerfile, "context_files": sorted(plan.files),
        "build_args": build_args or {},  # what another builder must pass to build the same image
    }  # fmt: skip
    if cache:
        doc["cache"] = cache
    return json.dumps(doc, indent=2)
