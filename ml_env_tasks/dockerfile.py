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
from dataclasses import dataclass, field
from pathlib import Path

from .hashing import canonical_json, env_hash
from .spec import Environment, last_user

__all__ = ["BuildPlan", "render", "inference_stack", "VENV", "SECRET_CA", "SECRET_PIP", "SERVE_DIR"]

VENV = "/opt/ml-env"
SECRET_CA = "ml-env-ca"
SECRET_PIP = "ml-env-pip"
MOUNT_ROOT = "/tmp/ml-env"
SERVE_DIR = "/opt/ml-env-serve"
# the scoring server's own dependencies, pinned: the inference layer is reproducible
INFERENCE_PACKAGES = ("starlette==1.10.0", "uvicorn==0.54.0")
SERVER_SOURCE = Path(__file__).parent / "serve" / "server.py"


def inference_stack() -> dict[str, object]:
    """What the inference layer is made of, for the hash: its packages and the server's source."""
    return {
        "packages": list(INFERENCE_PACKAGES),
        "server_sha256": hashlib.sha256(SERVER_SOURCE.read_bytes()).hexdigest(),
    }


@dataclass(frozen=True)
class BuildPlan:
    hash: str
    dockerfile: str
    files: dict[str, bytes] = field(default_factory=dict)
    python: str | None = None  # the interpreter the lock is read with; None: no Python layer
    canonical: str = ""

    def tag(self) -> str:
        return self.hash


def _q(value: str) -> str:
    """A double-quoted Dockerfile ENV/ARG value: backslash, quote and $ escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$").replace("\n", "\\n") + '"'


def _pip_run(python: str, subdir: str, args: str, *, user_managed: bool, locked: bool) -> str:
    mounts = [
        f"--mount=type=secret,id={SECRET_CA},required=false",
        f"--mount=type=secret,id={SECRET_PIP},required=false",
        f"--mount=type=bind,source=ml-env/{subdir},target={MOUNT_ROOT}/{subdir}",
    ]
    constraint = ""
    if locked:
        mounts.append(f"--mount=type=bind,source=ml-env/lock,target={MOUNT_ROOT}/lock")
        constraint = f" -c {MOUNT_ROOT}/lock/lock.txt"
    prefix = "PIP_BREAK_SYSTEM_PACKAGES=1 " if user_managed else ""
    body = (
        f"if [ -s /run/secrets/{SECRET_CA} ]; then export PIP_CERT=/run/secrets/{SECRET_CA}; fi; \\\n"
        f"    if [ -s /run/secrets/{SECRET_PIP} ]; then export PIP_CONFIG_FILE=/run/secrets/{SECRET_PIP}; fi; \\\n"
        f"    {prefix}{python} -m pip install --no-cache-dir --disable-pip-version-check --no-input{constraint} {args}"
    )
    return "RUN " + " \\\n    ".join(mounts) + " \\\n    " + body


def render(env: Environment) -> BuildPlan:
    h = env_hash(env)
    lines: list[str] = []
    files: dict[str, bytes] = {}
    b = env.base
    restore_user = None
    if b.image is not None:
        ref = b.image
        if b.digest:
            ref = ref.split("@", 1)[0] + "@" + b.digest
        lines.append(f"FROM {ref}")
    else:
        source = (b.dockerfile_source or "").replace("\r\n", "\n").rstrip("\n")
        lines.append("# --- base Dockerfile, as declared ---")
        lines.append(source)
        lines.append("# --- ml-env steps ---")
        restore_user = last_user(source)
        if restore_user and restore_user.split(":")[0] not in ("root", "0"):
            lines.append("USER root")
        else:
            restore_user = None
    for k, v in sorted(env.build_args.items()):
        lines.append(f"ARG {k}={_q(v)}")
    if env.apt:
        pkgs = " ".join(sorted(set(env.apt)))
        lines.append(
            "RUN apt-get update \\\n"
            f"    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {pkgs} \\\n"
            "    && rm -rf /var/lib/apt/lists/*"
        )
    python: str | None = None
    if env.conda_packages:
        # python.conda_installer = "conda": the base image's conda installs the conda part, and
        # its python is the interpreter for everything after
        pkgs = " ".join(shlex.quote(p) for p in env.conda_packages)
        chans = " ".join(f"-c {shlex.quote(c)}" for c in env.conda_channels)
        lines.append(
            "RUN set -e; CONDA=; for c in micromamba mamba conda; do if command -v $c >/dev/null; then CONDA=$c; break; fi; done; \\\n"
            '    if [ -z "$CONDA" ]; then echo "ml-env: python.conda_installer = conda, but the base image has no micromamba, mamba or conda" >&2; exit 1; fi; \\\n'
            f"    $CONDA install -y -n base {chans} {pkgs} && $CONDA clean -afy"
        )
    if env.has_python_deps:
        if env.user_managed or env.conda_packages:
            python = env.interpreter if env.user_managed else "python"
        else:
            lines.append(f"RUN {env.interpreter} -m venv {VENV}")
            lines.append(f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:$PATH")
            python = f"{VENV}/bin/python"
        locked = env.lock is not None
        if locked:
            assert env.lock is not None
            files["ml-env/lock/lock.txt"] = env.lock.data
        pip = lambda sub, args: _pip_run(python, sub, args, user_managed=env.user_managed, locked=locked)  # noqa: E731
        if env.conda_pip:
            files["ml-env/conda/requirements.txt"] = ("\n".join(sorted(env.conda_pip)) + "\n").encode()
            lines.append(pip("conda", f"-r {MOUNT_ROOT}/conda/requirements.txt"))
        if env.requirements:
            names = []
            for r in sorted(env.requirements, key=lambda r: r.sha256):
                name = f"{r.sha256[:16]}.txt"
                files[f"ml-env/requirements/{name}"] = r.data
                names.append(f"-r {MOUNT_ROOT}/requirements/{name}")
            lines.append(pip("requirements", " ".join(dict.fromkeys(names))))
        if env.packages:
            files["ml-env/packages/requirements.txt"] = ("\n".join(sorted(env.packages)) + "\n").encode()
            lines.append(pip("packages", f"-r {MOUNT_ROOT}/packages/requirements.txt"))
        if env.wheels:
            for w in env.wheels:
                files[f"ml-env/wheels/{w.path.name}"] = w.data
            lines.append(pip("wheels", f"{MOUNT_ROOT}/wheels/*.whl"))
        if env.inference:
            # after every dependency layer: the inference image shares them all with the training image
            files["ml-env/inference/server.py"] = SERVER_SOURCE.read_bytes()
            files["ml-env/inference/requirements.txt"] = ("\n".join(INFERENCE_PACKAGES) + "\n").encode()
            lines.append(
                pip("inference", f"-r {MOUNT_ROOT}/inference/requirements.txt")
                + f" \\\n    && mkdir -p {SERVE_DIR} && cp {MOUNT_ROOT}/inference/server.py {SERVE_DIR}/server.py"
            )
    if env.env:
        lines.append("ENV " + " \\\n    ".join(f"{k}={_q(v)}" for k, v in sorted(env.env.items())))
    if env.inference:
        lines.append(
            "ENV AML_APP_ROOT=/var/azureml-app AZUREML_ENTRY_SCRIPT=score.py "
            "AZUREML_MODEL_DIR=/var/azureml-app/azureml-models WORKER_COUNT=1 SCORING_TIMEOUT_MS=3600000"
        )
        lines.append("EXPOSE 5001")
        lines.append(f'CMD ["{python}", "{SERVE_DIR}/server.py"]')
    if restore_user:
        lines.append(f"USER {restore_user}")
    dockerfile = "\n".join(lines) + "\n"
    return BuildPlan(hash=h, dockerfile=dockerfile, files=files, python=python, canonical=canonical_json(env))


def describe(plan: BuildPlan) -> str:
    """Human form for ``ml-env plan``: the hash, the files in the context, the Dockerfile."""
    ctx = "\n".join(f"  {name} ({len(data)} bytes)" for name, data in sorted(plan.files.items())) or "  (none)"
    return f"# hash: {plan.hash}\n# context files:\n{ctx}\n{plan.dockerfile}"


def plan_json(plan: BuildPlan, image: str | None) -> str:
    return json.dumps(
        {"hash": plan.hash, "image": image, "dockerfile": plan.dockerfile, "context_files": sorted(plan.files)},
        indent=2,
    )
