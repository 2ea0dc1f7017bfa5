"""Azure ML v2 command jobs in: a job YAML (``$schema: .../commandJob.schema.json``) as the
``ml-env train`` invocation that runs the same script, in the same environment, on the same data.

Mapped: ``command`` (split as a shell would; only ``python SCRIPT ARGS...``), ``code`` (the
source folder), ``inputs`` (a local ``uri_folder``/``uri_file`` path → ``--input NAME=PATH``; a
literal → its value put into the arguments), ``outputs`` (``${{outputs.NAME}}`` is a folder of
the run's outputs), ``environment`` (``azureml:NAME:VERSION`` → a registered ``NAME:VERSION``;
inline → the environment importer), ``environment_variables``, ``experiment_name``,
``limits.timeout``, ``resources.shm_size``. What cannot be mapped is an error when the run would
differ without it (a cloud datastore input, a shell pipeline in ``command``), else a warning
(compute, outputs uploaded to a datastore): never dropped silently (``azure_fields.V2_JOB``).

The YAML is untrusted: read bounded (``yamlsafe``), every field type-checked, every local path
resolved (symlinks included) inside the job's project; errors name the file and key and never
quote what the file holds beyond a name that passed its grammar.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError, UsageError
from ..runs.placeholders import PLACEHOLDER, REFERENCE
from ..safe.grammar import ENV_NAME, INPUT_NAME, NAME, has_control, matches, printable
from ..safe.paths import project_root, resolve_inside
from .azure_fields import V2_JOB, triage

__all__ = ["ImportedJob", "import_command_job", "is_command_job"]

PYTHONS = re.compile(r"python(3(\.\d{1,2})?)?", re.A)
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ">", ">>", "<", "2>", "2>&1", "&>"}
CLOUD = re.compile(r"(azureml|https?|wasbs?|abfss?|adl|s3|gs):", re.I)
LITERAL_TYPES = {"string", "integer", "number", "boolean"}


@dataclass
class ImportedJob:
    """``ml-env train`` arguments for the job. An inline environment (``environment``) has no
    file yet: ``argv`` needs the path ``-o`` writes it to, and ``--env`` names that file."""

    env_ref: str | None  # a registered NAME:VERSION; None for an inline environment
    rest: list[str]  # every argument after --env ENV
    environment: Any = None  # an azure.Imported, for an inline environment
    warnings: list[str] = field(default_factory=list)
    versions: Path | None = None  # a versions file the command must name (not the default one)

    def argv(self, env_file: Path | None = None) -> list[str]:
        env = self.env_ref or (str(env_file) if env_file else None)
        if env is None:
            raise UsageError(
                "the job's environment is inline: give -o FILE.toml to write it; the command then names that file"
            )
        named = ["--versions", _shown(self.versions.absolute())] if self.env_ref and self.versions else []
        return ["train", "--env", env, *named, *self.rest]

    def command(self, env_file: Path | None = None) -> str:
        return shlex.join(["ml-env", *self.argv(env_file)])

    def check_registered(self, versions: Path) -> None:
        """A registered environment the command names must be in the versions file it reads: a
        warning now, not a failure when the printed command runs."""
        if self.env_ref is None:
            return
        from ..catalog.versions import Versions

        name, _, version = self.env_ref.partition(":")
        have = [e.version for e in Versions(versions).entries(name)] if versions.is_file() else []
        if int(version) not in have:
            self.warnings.append(
                f"environment {self.env_ref} is not registered in {versions}: `ml-env register` it before running "
                "the command (it runs that version's registered image)"
            )


def is_command_job(data: dict[str, Any]) -> bool:
    schema = data.get("$schema")
    return "command" in data or data.get("type") == "command" or (isinstance(schema, str) and "Job" in schema)


def _shown(path: Path) -> str:
    """A path as the printed command should name it: relative to here when below here."""
    here = Path.cwd().resolve()
    return os.path.relpath(path, here) if path.is_relative_to(here) else str(path)


class _Job:
    def __init__(self, src: Path, data: dict[str, Any]) -> None:
        self.src, self.data, self.file = src, data, str(src)
        self.base = src.parent
        self.root = project_root(src.parent)
        self.warnings: list[str] = []

    def err(self, key: str, msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=self.file, key=key, hint=hint)

    def text(self, d: dict[str, Any], key: str, where: str) -> str | None:
        v = d.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not v or has_control(v):
            raise self.err(where, "must be a non-empty string on one line")
        return v

    def table(self, d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
            raise self.err(where, "must be a mapping")
        return v

    def local(self, rel: str, where: str, what: str) -> Path:
        if CLOUD.match(rel) or "://" in rel:
            raise self.err(
                where,
                f"a cloud {what} (datastore, URL or registered asset) cannot be mapped to a local run",
                hint="download it and give a local path",
            )
        return resolve_inside(self.base, rel, self.root, file=self.file, key=where, what=what)


def import_command_job(
    src: Path, data: dict[str, Any], stem: str | None, import_environment: Callable[..., Any]
) -> ImportedJob:
    """The ``ml-env train`` invocation for an Azure ML v2 command job YAML (already parsed, bounded);
    an inline environment is imported by ``import_environment`` (``azure.import_v2``, which calls
    this module: passed in, so the two stay one-way)."""
    j = _Job(src, data)
    schema = data.get("$schema")
    if isinstance(schema, str) and "commandjob" not in schema.lower():
        raise j.err("$schema", V2_JOB["$schema"].note)
    j.warnings += triage(data, V2_JOB, file=src)  # every field not carried; a non-command type refused

    environment, env_ref = _environment(j, stem, import_environment)
    script, raw_args = _command(j)
    code = j.text(data, "code", "code")
    if code is None:
        raise j.err("code", "is required: the folder that holds the script", hint="code: ./src")
    source = j.local(code, "code", "code folder")
    if not source.is_dir():
        raise j.err("code", "must be a folder")
    resolve_inside(source, script, source, file=j.file, key="command", what="script")
    if not (source / script).resolve().is_file():
        raise j.err("command", "the script is not a file inside the code folder")

    input_args, literals = _inputs(j)
    output_names = _outputs(j)
    args = [_substitute(j, a, set(n for n, _ in input_args), literals, output_names) for a in raw_args]

    argv = ["--source", _shown(source), "--script", script]
    for name, path in input_args:
        argv += ["--input", f"{name}={_shown(path)}"]
    for k, v in _variables(j).items():
        argv += ["--env-var", f"{k}={v}"]
    experiment = j.text(data, "experiment_name", "experiment_name")
    if experiment:
        argv += ["--experiment", experiment]
    argv += _limits(j)
    argv += _compute(j)
    if args:
        argv += ["--", *args]
    return ImportedJob(env_ref, argv, environment, j.warnings)


def _environment(j: _Job, stem: str | None, import_environment: Callable[..., Any]) -> tuple[Any, str | None]:
    env = j.data.get("environment")
    if isinstance(env, dict):
        imported = import_environment(j.src, env, stem, "environment.")
        j.warnings += imported.warnings
        return imported, None
    if not isinstance(env, str) or has_control(env):
        raise j.err("environment", "is required: azureml:NAME:VERSION or an inline environment")
    m = re.fullmatch(r"azureml:([A-Za-z0-9][A-Za-z0-9._-]{0,254}):(\d{1,9})", env, re.A)
    if m is None:
        raise j.err(
            "environment",
            "only azureml:NAME:VERSION (a version registered here) or an inline environment can be mapped",
            hint="register it with `ml-env register`, or import its YAML and write the job's environment inline",
        )
    name = re.sub(r"[^a-z0-9._-]+", "-", m.group(1).lower()).strip("-._")[:63]
    if not matches(NAME, name):
        raise j.err("environment", "the environment name cannot be an ml-env name")
    if name != m.group(1):
        j.warnings.append(f"environment name {m.group(1)!r} became {name!r} (lowercase letters, digits, '.', '_', '-')")
    return None, f"{name}:{m.group(2)}"


def _command(j: _Job) -> tuple[str, list[str]]:
    raw = j.data.get("command")
    if not isinstance(raw, str) or not raw.strip():
        raise j.err("command", "is required: a string, python SCRIPT ARGS...")
    if has_control(raw.replace("\n", " ")):
        raise j.err("command", "contains a control character")
    try:
        words = shlex.split(raw)
    except ValueError:
        raise j.err("command", "cannot be split as a shell would (an unclosed quote?)") from None
    if len(words) < 2 or not PYTHONS.fullmatch(words[0]) or words[1].startswith("-"):
        raise j.err(
            "command",
            "only `python SCRIPT ARGS...` can be mapped (no interpreter options, no other program)",
            hint="ml-env train runs the script with the environment's interpreter",
        )
    script, args = words[1], words[2:]
    if any(a in SHELL_OPERATORS for a in args) or any("$[[" in a or "`" in a or "$(" in a for a in args):
        raise j.err(
            "command",
            "uses shell syntax (&&, |, ;, redirection, $(...), optional $[[...]]) and ml-env runs no shell",
            hint="keep one `python SCRIPT ARGS...`",
        )
    if any(re.search(r"\$(?!\{\{)", a) for a in args):
        j.warnings.append("command: $VARIABLES are passed to the script literally (no shell expands them)")
    p = Path(script)
    if p.is_absolute() or ".." in p.parts:
        raise j.err("command", "the script must be a relative path inside the code folder")
    return p.as_posix(), args


def _inputs(j: _Job) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    paths: list[tuple[str, Path]] = []
    literals: dict[str, str] = {}
    for name, v in j.table(j.data, "inputs", "inputs").items():
        where = f"inputs.{printable(name, 70)}"
        if not matches(INPUT_NAME, name):
            raise j.err(where, "an input name is a letter, then letters, digits or _")
        if isinstance(v, dict):
            kind = j.text(v, "type", f"{where}.type") or "uri_folder"
            if kind in LITERAL_TYPES:
                v = v.get("value", v.get("default"))
            elif kind in ("uri_folder", "uri_file"):
                rel = j.text(v, "path", f"{where}.path")
                if rel is None:
                    raise j.err(f"{where}.path", "is required for a uri_folder or uri_file input")
                path = j.local(rel, f"{where}.path", "input")
                if (kind == "uri_file") != path.is_file():
                    raise j.err(
                        f"{where}.path", f"a {kind} input must name a {'file' if kind == 'uri_file' else 'folder'}"
                    )
                mode = v.get("mode")
                if mode not in (None, "ro_mount", "download"):
                    j.warnings.append(f"{where}.mode is not mapped: inputs are mounted read-only")
                paths.append((name, path))
                continue
            else:
                raise j.err(f"{where}.type", "only uri_folder, uri_file and literal inputs can be mapped")
        if isinstance(v, bool):
            literals[name] = str(v)  # Azure's Python SDK writes True / False
        elif isinstance(v, (int, float, str)):
            s = str(v)
            if has_control(s) or "${{" in s:
                raise j.err(where, "a literal input must be one line without ${{ }}")
            literals[name] = s
        else:
            raise j.err(where, "must be a literal (string, number, true/false) or a mapping with type and path")
    return paths, literals


def _outputs(j: _Job) -> set[str]:
    names = set()
    for name, v in j.table(j.data, "outputs", "outputs").items():
        where = f"outputs.{printable(name, 70)}"
        if not matches(INPUT_NAME, name):
            raise j.err(where, "an output name is a letter, then letters, digits or _")
        if v is not None and not isinstance(v, dict):
            raise j.err(where, "must be a mapping (type, path, mode) or empty")
        v = v or {}
        if j.text(v, "path", f"{where}.path"):
            j.warnings.append(f"{where}.path is not mapped: the output stays in runs/<run-id>/outputs/{name}/")
        kind = j.text(v, "type", f"{where}.type") or "uri_folder"
        if kind != "uri_folder":
            j.warnings.append(f"{where}.type {printable(kind, 40)}: ${{{{outputs.{name}}}}} is a folder here")
        names.add(name)
    return names


def _substitute(j: _Job, arg: str, inputs: set[str], literals: dict[str, str], outputs: set[str]) -> str:
    """Literal inputs put in now (as Azure does); path inputs and outputs stay placeholders for
    ``ml-env train``. A reference to anything the job does not declare is an error here, as in Azure."""

    def one(m: re.Match[str]) -> str:
        ref = REFERENCE.fullmatch(m.group(1))
        if ref is None:
            raise j.err("command", "a ${{...}} placeholder that is not inputs.NAME or outputs.NAME")
        kind, name = ref.groups()
        if kind == "inputs" and name in literals:
            return literals[name]
        declared = inputs if kind == "inputs" else outputs
        if name not in declared:
            raise j.err(
                "command", f"${{{{{kind}.{name}}}}} names no declared {kind[:-1]}", hint=f"declare it under {kind}:"
            )
        return f"${{{{{kind}.{name}}}}}"

    return PLACEHOLDER.sub(one, arg)


def _variables(j: _Job) -> dict[str, str]:
    out = {}
    for k, v in j.table(j.data, "environment_variables", "environment_variables").items():
        where = f"environment_variables.{printable(k, 60)}"
        if not matches(ENV_NAME, k):
            raise j.err(where, "is not an environment variable name")
        if isinstance(v, (dict, list)) or v is None or has_control(str(v)):
            raise j.err(where, "must be a one-line value")
        out[k] = str(v)
    return out


def _limits(j: _Job) -> list[str]:
    out = []
    timeout = j.table(j.data, "limits", "limits").get("timeout")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise j.err("limits.timeout", "must be a positive number of seconds")
        out += ["--timeout", str(timeout)]
    res = j.table(j.data, "resources", "resources")
    shm = res.get("shm_size")
    if shm is not None:
        if not isinstance(shm, str) or not re.fullmatch(r"\d{1,6}[kmgKMG]?[bB]?", shm):
            raise j.err("resources.shm_size", "must be a size such as 2g")
        out += ["--shm-size", shm]
    return out


def _compute(j: _Job) -> list[str]:
    """``compute:`` names a compute target of the same name ([compute.NAME] in your config),
    ``resources.instance_count`` the nodes, ``distribution`` how processes meet: PyTorch's, one
    process per node with torchrun's variables, is what a Slurm target gives. A target that is
    not declared here is not named in the command (it must run as printed): one line says so."""
    from ..settings.compute import targets
    from ..settings.files import load_layers

    out: list[str] = []
    compute = j.text(j.data, "compute", "compute")
    name = compute.removeprefix("azureml:") if compute else None
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name, re.A):
        raise j.err("compute", "must name a compute target (letters, digits, '_', '.', '-')")
    declared = name is not None and name in targets(load_layers())
    if name is not None and declared:
        out += ["--compute", name]
    elif name is not None:
        j.warnings.append(f"compute: {name}: no [compute.{name}] is declared here (ml-env compute list): the run "
                          "goes to the command's engine; declare it to send the run there")  # fmt: skip
    count = j.table(j.data, "resources", "resources").get("instance_count")
    if count is not None:
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 64:
            raise j.err("resources.instance_count", "must be a number of nodes from 1 to 64")
        if count > 1 and declared:
            out += ["--nodes", str(count)]
        elif count > 1:
            j.warnings.append(f"resources.instance_count {count}: one node: several need a declared Slurm compute "
                              "target (compute: NAME)")  # fmt: skip
    return out  # distribution: its fields' fates are azure_fields.V2_JOB's (pytorch's is what a target gives)
