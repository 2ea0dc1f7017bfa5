"""The composite actions under ``ci/github/``, declared from the same options as the CLI.

Each action's ``action.yml`` is rendered from this table (``nox -s actions`` writes them; a test
checks that the committed files are exactly what this renders): every input is an option of
``ml_env_tasks.options`` (or one of the few an action has of its own, listed here), and each
reaches ``python -m ml_env_tasks.gha <action>`` as an ``INPUT_*`` variable, never interpolated
into a shell line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import options as o
from .options import INFERENCE_ENV, TRAIN_ENV, Option

__all__ = ["Action", "ACTIONS", "render", "write_all"]


@dataclass(frozen=True)
class Action:
    name: str
    title: str
    description: str
    options: tuple[Option, ...]
    outputs: dict[str, str] = field(default_factory=dict)  # name -> description
    required: tuple[str, ...] = ()  # option names the action requires
    extra: tuple[tuple[str, str, str], ...] = ()  # (input, description, default) of the action's own
    secret_inputs: tuple[str, ...] = ()  # inputs masked before anything runs


def _opt(name: str, flag: str, help: str, **kw: Any) -> Option:
    return Option(name, (flag,), help=help, **kw)


SPEC = (_opt("spec", "spec", "Environment file, e.g. envs/sklearn.toml (or curated/NAME)", gha="spec"),)
TRAIN = (
    TRAIN_ENV,
    _opt("source", "--source", "Source directory of the training script (snapshotted)"),
    _opt("script", "--script", "Script path inside the source directory"),
    _opt("args", "--args", "Arguments for the script, as one string (split like a shell would)"),
    _opt("register_model", "--register-model",
         "After a completed run, register this folder of its outputs as the next version of a model: NAME=outputs/PATH"),
)  # fmt: skip
SERVE_ENV = (INFERENCE_ENV,)
PROMOTE_WHAT = (
    _opt("source", "source", "Source image by tag or digest (e.g. the build action's ref output)", gha="source"),
    _opt("destination", "destination", "Destination host[:port]/repository, optionally :tag", gha="destination"),
)

ACTIONS: dict[str, Action] = {
    "build": Action(
        "build",
        "ml-env build",
        "Build an ML environment image tagged by the content hash of its environment file, with BuildKit "
        "caching; an unchanged environment is not rebuilt. Outputs the image and its digest.",
        SPEC + o.BUILD_WHERE + o.BUILD_HOW + o.BUILD_ONLY,
        {
            "image": "Image reference, <registry>/<repository>:<hash>",
            "digest": "Manifest digest of the image (sha256:...)",
            "hash": "Content hash of the environment",
            "built": "'true' if this run built the image, 'false' if it was reused",
            "cache-hit": "'true' if every build step came from a cache",
            "ref": "image@digest, for later steps to pin",
            "tags": "Every reference the image has after this step, one per line (the hash tag first)",
            "imageid": "Image ID, as the engine names the image (containerd store: the manifest digest; classic: the config's)",
            "metadata": "Build result metadata as JSON (buildx's keys: containerimage.digest, image.name, ...)",
        },
        required=("spec",),
    ),
    "train": Action(
        "train",
        "ml-env train",
        "Run a training script inside an environment container (built or reused by hash): source snapshot, "
        "read-only inputs, outputs, metrics and a run record. Fails with the script's exit code.",
        TRAIN + o.RUN + o.BUILD_WHERE + o.BUILD_HOW,
        {
            "run-id": "The run's id (runs/<run-id>/run.json holds its record)",
            "status": "completed, failed, canceled, timed_out or lost",
            "exit-code": "The script's exit code",
            "outputs": "Path of the run's outputs directory",
            "model": "The registered model version, NAME:VERSION (with register-model)",
            "model-ref": "Its artifact, registry/repository:VERSION (with register-model)",
        },
        required=("source", "script"),
    ),
    "smoke-test": Action(
        "smoke-test",
        "ml-env smoke-test",
        "Build or reuse an inference image (an environment with inference = true, or inference.server = "
        '"azureml" for Microsoft\'s azmlinfsrv), start the scoring server with your entry script and model, '
        "send sample requests, check the answers, report latency, and remove the container. Fails when any case fails.",
        SERVE_ENV + o.SERVE + o.SMOKE + o.BUILD_WHERE + o.BUILD_HOW,
        {
            "passed": "Cases that passed",
            "failed": "Cases that failed",
            "p50-ms": "Median latency (ms)",
            "p95-ms": "95th percentile latency (ms)",
            "report": "Path of the JSON report",
            "junit": "Path of the JUnit XML report",
            "record": "Digest of the result attached to the tested image (empty when it is not in a registry)",
        },
        required=("env", "cases"),
    ),
    "package": Action(
        "package",
        "ml-env package",
        "Package an inference environment, an entry script and a model (a registered NAME:VERSION or a folder) into "
        "one image in the registry, assembled over the registry API; the same parts give the same digest. Smoke-test "
        "and promote that image as it is.",
        SERVE_ENV
        + (
            _opt("entry", "--entry", "Entry script: init() and run(raw_data)"),
            _opt(
                "model",
                "--model",
                "A registered model NAME:VERSION (REPOSITORY:VERSION for another repository) or a folder",
            ),
            _opt("package_repository", "--package-repository", "Repository of the image (default ml-packages/<env>)"),
        )
        + o.BUILD_WHERE
        + o.BUILD_HOW,
        {
            "image": "The packaged image, <registry>/<repository>:<package hash>",
            "digest": "Its digest",
            "ref": "image@digest, for the smoke test and the promotion",
            "reused": "'true' when the same parts were packaged before",
        },
        required=("env", "entry", "model"),
    ),
    "promote": Action(
        "promote",
        "ml-env promote",
        "Promote exactly the tested image, by digest, from one registry or repository to another, without a "
        "Docker daemon: the destination digest equals the source digest. Refuses to move a tag that points at "
        "another image unless allowed; records the promotion in the release ledger, kept by default in the "
        "destination repository (ledger: registry) so every fresh clone and re-run sees the same history.",
        PROMOTE_WHAT + o.PROMOTE,
        {
            "digest": "The promoted digest (identical at source and destination)",
            "refs": "Destination references, one per line",
            "ref": "destination@digest",
            "no-op": "'true' when every tag already pointed at the digest",
            "ledger": "Where the promotion is recorded (default here: oci://<destination>:ml-env-ledger)",
        },
        required=("source", "destination"),
    ),
    "login": Action(
        "login",
        "ml-env login",
        "Log in to a registry for the ml-env actions (docker/login-action style inputs). The password is masked "
        "in the log before anything else runs. A registry that needs no login needs no password.",
        (),
        extra=(
            ("registry", "Registry host[:port]", ""),
            ("username", "User name (empty: nothing to log in with)", ""),
            ("password", "Password or token (pass a secret; empty: no login)", ""),
        ),
        secret_inputs=("password",),
    ),
}

COMMON = (
    ("install", "Install ml-env-tasks from this action's repository first (set false if it is installed)", "true"),
    ("python", "Python interpreter to create ml-env's virtual environment with", "python3"),
)


def _inputs(action: Action) -> list[tuple[str, str, bool, str]]:
    """(input, description, required, default) in order."""
    out = []
    seen = set()
    for opt in action.options:
        name = opt.input_name
        if name is None or name in seen:
            continue
        seen.add(name)
        help_ = opt.help[0].upper() + opt.help[1:]
        if opt.env and not opt.config:
            help_ += f" (default: ${opt.env})"
        elif opt.env and f"{opt.config} from the config files" not in help_:
            help_ += f" (default: ${opt.env}, then the config files)"
        # a value the config files can give is not required of the step, only of the run
        out.append((name, help_, opt.name in action.required and not opt.config, ""))
    out += [(n, d, False, default) for n, d, default in action.extra + COMMON]
    return out


def _q(text: str) -> str:
    """A YAML double-quoted scalar."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(action: Action) -> str:
    """The action.yml of an action."""
    lines = ["# Generated by `nox -s actions` from ml_env_tasks/actions.py: edit that, not this file.",
             f"name: {action.title}", "description: >-"]  # fmt: skip
    lines += [f"  {action.description}", "inputs:"]
    for name, desc, required, default in _inputs(action):
        lines += [f"  {name}:", f"    description: {_q(desc)}", f"    required: {'true' if required else 'false'}"]
        if not required:
            lines.append(f"    default: {_q(default)}")
    lines.append("outputs:" + ("" if action.outputs else " {}"))
    step = action.name.replace("-", "_")
    for name, desc in action.outputs.items():
        lines += [f"  {name}:", f"    description: {_q(desc)}", f"    value: ${{{{ steps.{step}.outputs.{name} }}}}"]
    lines += [
        "runs:",
        "  using: composite",
        "  steps:",
        "    - name: Install ml-env-tasks",
        "      if: inputs.install == 'true'",
        "      shell: bash",
        "      env:",
        "        ML_ENV_PYTHON: ${{ inputs.python }}",
        "        ML_ENV_SRC: ${{ github.action_path }}/../../..",
        '      run: bash "$ML_ENV_SRC/ci/github/install.sh"',
        f"    - name: {action.title}",
        f"      id: {step}",
        "      shell: bash",
        "      env:",
    ]
    lines.append("        ML_ENV_PYTHON: ${{ inputs.python }}")
    for name, _d, _r, _default in _inputs(action):
        if name in ("install", "python"):
            continue
        lines.append(f"        INPUT_{name.upper().replace('-', '_')}: ${{{{ inputs.{name} }}}}")
    lines += [
        "      run: |",
        '        py="${ML_ENV_BIN:+${ML_ENV_BIN}python}"',
        '        "${py:-$ML_ENV_PYTHON}" -m ml_env_tasks.gha ' + action.name,
    ]
    return "\n".join(lines) + "\n"


def write_all(root: Path) -> list[Path]:
    out = []
    for action in ACTIONS.values():
        path = root / action.name / "action.yml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(action))
        out.append(path)
    return out
