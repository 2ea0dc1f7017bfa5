"""Azure ML environment formats in and out.

In: a v1 environment directory (``azureml_environment.json`` + ``conda_dependencies.yml``, as
``Environment.save_to_directory`` and ``az ml environment scaffold`` write it), a CLI v2
environment YAML, a conda environment file, a pip requirements file. Out: a commented TOML
environment file (tomlkit) and copies of the files it names (a conda file, a Dockerfile, a
requirements file), written beside it. Every source field is carried, refused, or named in a
one-line warning (the tables of ``azure_fields``): nothing is dropped silently. A registry
password never reaches the output: it becomes the name of an environment variable to hold it.
An online deployment YAML and an ``inferenceconfig.json`` go to ``azure_deploy``.

The files imported are untrusted: every field is type-checked (one error naming file and key),
the files they name must lie inside the source's project, sizes are capped, YAML is read with
alias expansion bounded. Nothing is written unless the result loads as an environment file.

Back: a v1 directory and a v2 YAML, from an environment file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import tomlkit
import yaml

from ..build.stack import AZUREML_PACKAGES
from ..catalog import DEFAULT_BASE
from ..errors import SpecError, UsageError
from ..safe.grammar import printable
from ..safe.untrusted import json_loads
from ..safe.yamlsafe import load_yaml
from .azure_common import (
    AZURE_INFERENCE_PACKAGES,
    Imported,
    _azureml_server,
    _carry,
    _conda,
    _inference_from_conda,
    _read,
    _registry,
    _start,
)
from .azure_deploy import ImportedDeployment, import_deployment, import_inference_config
from .azure_export import V1_CONDA, V1_JSON, export_v1, export_v2
from .azure_fields import CARRIED, CONDA, REQUIREMENTS, V1_ENVIRONMENT, V2_ENVIRONMENT, _Fields, triage
from .azure_job import ImportedJob, import_command_job, is_command_job

__all__ = ["Imported", "ImportedJob", "ImportedDeployment", "import_source", "export_v1", "export_v2"]


def import_source(
    src: Path, stem: str | None = None, *, endpoint: Path | None = None
) -> Imported | ImportedJob | ImportedDeployment:
    """Import whatever ``src`` is: a v1 directory or JSON, a v2 YAML, a conda file, a requirements
    file — or a v2 command job YAML, which becomes an ``ml-env train`` invocation (``ImportedJob``),
    or an online deployment YAML (with its ``endpoint`` YAML) or an ``inferenceconfig.json``,
    which become an environment and the ``ml-env serve``/``smoke-test``/``package`` commands
    (``ImportedDeployment``).

    Files the result names (a conda file, a Dockerfile, a requirements file) are called
    ``<stem>.conda.yml`` and so on: ``stem`` is the output file's stem (default: the name)."""
    try:
        src.stat()
    except OSError as e:  # not there, a name too long, a loop of links...
        raise SpecError("not found" if e.errno == 2 else f"cannot be read: {e.strerror}", file=str(src)) from None
    result: Imported | ImportedJob | ImportedDeployment
    if src.is_dir():
        if not (src / V1_JSON).exists():
            raise SpecError(f"a directory without {V1_JSON}: not an Azure ML v1 environment directory", file=str(src))
        result = import_v1(src, stem=stem)
    elif not src.is_file():
        raise SpecError("not a regular file", file=str(src))
    elif src.suffix in (".yml", ".yaml"):
        data = load_yaml(_read(src), file=str(src))
        if not isinstance(data, dict):
            raise SpecError("expected a YAML mapping at the top", file=str(src))
        kind = yaml_kind(data)
        if kind == "job":
            result = import_command_job(src, data, stem, import_v2)
        elif kind == "deployment":
            result = import_deployment(src, data, stem, import_v2, endpoint=endpoint)
        elif kind == "endpoint":
            raise SpecError(
                "an online endpoint YAML: what it serves is in its deployment's YAML",
                file=str(src),
                hint=f"ml-env import DEPLOYMENT.yml --endpoint {printable(src, 80)} -o envs/NAME.toml",
            )
        elif kind == "conda":
            result = import_conda(src, data, stem)
        else:
            result = import_v2(src, data, stem)
    elif src.suffix == ".json":
        result = import_v1(src.parent, json_path=src, stem=stem)
    else:
        result = import_requirements(src, stem)
    if endpoint is not None and not isinstance(result, ImportedDeployment):
        raise UsageError("--endpoint goes with an online deployment YAML (the endpoint it belongs to)")
    return result


def yaml_kind(data: dict[str, Any]) -> str:
    """Which Azure YAML this is: ``job``, ``deployment``, ``endpoint``, ``conda`` or ``environment``."""
    schema = data.get("$schema")
    s = schema.lower() if isinstance(schema, str) else ""
    if "onlinedeployment" in s or (not s and ({"endpoint_name", "code_configuration"} & set(data))):
        return "deployment"
    if "onlineendpoint" in s or (not s and "auth_mode" in data):
        return "endpoint"
    if is_command_job(data):
        return "job"
    if "dependencies" in data and not ({"image", "build"} & set(data)) and not s:
        return "conda"
    return "environment"


# --- v1 -----------------------------------------------------------------------------------


def import_v1(d: Path, json_path: Path | None = None, stem: str | None = None) -> Imported | ImportedDeployment:
    jp = json_path or d / V1_JSON
    try:
        data = json_loads(_read(jp), error=SpecError, file=str(jp))
    except ValueError as e:
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise SpecError(f"not valid JSON{where}", file=str(jp)) from None
    if not isinstance(data, dict):
        raise SpecError("expected a JSON object at the top", file=str(jp))
    if "entryScript" in data:
        return import_inference_config(jp, data, stem, v1_environment)
    return v1_environment(d, jp, data, stem)


def v1_environment(d: Path, jp: Path, data: dict[str, Any], stem: str | None, prefix: str = "") -> Imported:
    """An ``azureml_environment.json``'s document (``prefix``: where it sits in its file, as in an
    inference config's ``environment``)."""
    f = _Fields(jp, prefix)
    w = triage(data, V1_ENVIRONMENT, file=jp, prefix=prefix)
    kind = "the inference config" if prefix else "the Azure ML v1 environment directory"
    doc, more, name = _start(jp if prefix else d, kind, f.text(data, "name", "name"))
    w += more
    version = f.text(data, "version", "version", numbers=True)
    if version is not None:
        doc.add("version", version)
    if f.text(data, "inferencingStackVersion", "inferencingStackVersion"):
        doc.add("inference", True)
    docker = f.table(data, "docker", "docker")
    base = tomlkit.table()
    dockerfile = f.text(docker, "baseDockerfile", "docker.baseDockerfile")
    image = f.text(docker, "baseImage", "docker.baseImage")
    if dockerfile:
        base.add("dockerfile_text", tomlkit.string(dockerfile, multiline=True))
    elif image:
        base.add("image", image)
    else:
        raise f.err("docker", "neither docker.baseImage nor docker.baseDockerfile is set")
    _registry(f, f.table(docker, "baseImageRegistry", "docker.baseImageRegistry"), "docker.baseImageRegistry", base, w)
    doc.add("base", base)

    py = f.table(data, "python", "python")
    pyt = tomlkit.table()
    user_managed = f.flag(py, "userManagedDependencies", "python.userManagedDependencies")
    if user_managed:
        pyt.add("user_managed_dependencies", True)
    interpreter = f.text(py, "interpreterPath", "python.interpreterPath")
    if interpreter and interpreter not in ("python", "python3"):
        pyt.add("interpreter", interpreter)
    files: dict[str, bytes] = {}
    conda_rel = f.text(py, "condaDependenciesFile", "python.condaDependenciesFile") or V1_CONDA
    conda_bytes = None
    if (d / conda_rel).exists() or conda_rel != V1_CONDA:
        conda_bytes = _carry(d, conda_rel, file=jp, key=f"{prefix}python.condaDependenciesFile", what="conda file")
    elif py.get("condaDependencies") is not None:
        inline = f.table(py, "condaDependencies", "python.condaDependencies")
        conda_bytes = yaml.safe_dump(inline, sort_keys=False).encode()
        w.append(
            f"{prefix}python.condaDependencies is inline: it is written to {stem or name}.conda.yml beside the output"
        )
    if conda_bytes is not None and user_managed:
        w.append(
            f"{prefix}python.userManagedDependencies is true: the conda file is not installed (nor is it by Azure)"
        )
    elif conda_bytes is not None:
        _conda(conda_bytes, f"{stem or name}.conda.yml", files, pyt, doc, w)
    if len(pyt):
        doc.add("python", pyt)
    _env(doc, f.scalars(data, "environmentVariables", "environmentVariables"))
    shm = f.text(docker, "shmSize", "docker.shmSize", numbers=True)
    if shm:
        dt = tomlkit.table()
        dt.add("shm_size", shm)
        doc.add("docker", dt)
    return Imported(name, doc, w, files)


def _route_warnings(ic: dict[str, Any], f: _Fields, doc: tomlkit.TOMLDocument, w: list[str]) -> None:
    """inference_config routes that differ from the chosen server's own (both on port 5001)."""
    azureml = isinstance(doc.get("inference"), dict)
    who = "azmlinfsrv's" if azureml else "ml-env's"
    ready = "/" if azureml else "/score"
    for route, default in (("liveness_route", "/"), ("readiness_route", ready), ("scoring_route", "/score")):
        r = f.table(ic, route, f"inference_config.{route}")
        if r and (r.get("path") not in (None, default) or r.get("port") not in (None, 5001)):
            w.append(
                f"{f.prefix}inference_config.{route} {printable(r, 120)} differs from {who} fixed {default} on port 5001"
            )


# --- v2 -----------------------------------------------------------------------------------


def import_v2(src: Path, data: dict[str, Any], stem: str | None = None, prefix: str = "") -> Imported:
    """A v2 environment YAML's document (``prefix``: ``environment.`` inline in a job or deployment)."""
    f = _Fields(src, prefix)
    schema = data.get("$schema")
    if isinstance(schema, str) and "environment" not in schema.lower():
        raise f.err(
            "$schema",
            f"{printable(schema.rsplit('/', 1)[-1], 60)} {V2_ENVIRONMENT['$schema'].note}",
            hint="ml-env import takes environment, command job and online deployment YAML",
        )
    w = triage(data, V2_ENVIRONMENT, file=src, prefix=prefix)
    doc, more, name = _start(src, "the Azure ML v2 environment YAML", f.text(data, "name", "name", numbers=True))
    w += more
    version = f.text(data, "version", "version", numbers=True)
    if version is not None:
        doc.add("version", version)
    description = f.text(data, "description", "description")
    if description:
        doc.add("description", description)
    ic = f.table(data, "inference_config", "inference_config")
    if "inference_config" in data:
        doc.add("inference", True)
    base = tomlkit.table()
    files: dict[str, bytes] = {}
    build = f.table(data, "build", "build") if "build" in data else None
    image = f.text(data, "image", "image")
    if build is not None and image:
        raise f.err("image", "goes with build in Azure neither: give one")
    if build is not None:
        ctx_rel = f.text(build, "path", "build.path") or "."
        df_rel = f.text(build, "dockerfile_path", "build.dockerfile_path") or "Dockerfile"
        if "://" in ctx_rel or ctx_rel.startswith(("azureml:", "git+")):
            raise f.err("build.path", "a build context in git or a datastore cannot be read here",
                        hint="download it and name the local folder")  # fmt: skip
        ctx = src.parent / ctx_rel
        files[f"{stem or name}.Dockerfile"] = _carry(
            ctx, df_rel, file=src, key=f"{prefix}build.dockerfile_path", what="Dockerfile"
        )
        base.add("dockerfile", f"{stem or name}.Dockerfile")
        if ctx.is_dir() and any(p.name != Path(df_rel).name for p in ctx.iterdir()):
            w.append(
                f"{prefix}build.path holds other files besides the Dockerfile; a base Dockerfile here has no build "
                "context: COPY from it is refused"
            )
    elif image:
        base.add("image", image)
    else:
        nested = "environment" in data
        raise f.err(
            "environment" if nested else "image",
            "needs image or build" + (": its environment is under environment:" if nested else ""),
            hint="a command job has command:, an online deployment endpoint_name: or code_configuration:"
            if nested
            else "an environment YAML names a base image (image:) or a Docker build folder (build: path:)",
        )
    doc.add("base", base)
    pyt = tomlkit.table()
    conda_rel = f.text(data, "conda_file", "conda_file")
    if conda_rel:
        conda = _carry(src.parent, conda_rel, file=src, key=f"{prefix}conda_file", what="conda file")
        _conda(conda, f"{stem or name}.conda.yml", files, pyt, doc, w)
    if len(pyt):
        doc.add("python", pyt)
    if ic:
        _route_warnings(ic, f, doc, w)  # after the conda file: it may choose Azure's server
    tags = f.scalars(data, "tags", "tags")
    if tags:
        lt = tomlkit.table()
        for k, v in tags.items():
            key = re.sub(r"[^a-z0-9.-]+", "-", k.lower()).strip("-.")
            lt.add(f"com.azure.ml.tag.{key}", v)
        doc.add("labels", lt)
    return Imported(name, doc, w, files)


# --- conda and requirements files ---------------------------------------------------------


def import_conda(src: Path, data: dict[str, Any], stem: str | None = None) -> Imported:
    f = _Fields(src)
    w = triage(data, CONDA, file=src)
    doc, more, name = _start(src, "the conda environment file", f.text(data, "name", "name"))
    w += more
    base = tomlkit.table()
    base.add("image", DEFAULT_BASE)
    base["image"].comment("a base with the Python the conda file asks for")
    doc.add("base", base)
    pyt = tomlkit.table()
    pyt.add("conda_file", f"{stem or name}.conda.yml")
    doc.add("python", pyt)
    _env(doc, f.scalars(data, "variables", "variables"))
    conda = _read(src)
    _inference_from_conda(conda, doc, w)
    return Imported(name, doc, w, {f"{stem or name}.conda.yml": conda})


def import_requirements(src: Path, stem: str | None = None) -> Imported:
    # a requirements file has no name of its own: the output file's, as Azure's
    # from_pip_requirements(name=...) takes one; else the file's (its folder's for requirements.txt)
    raw_name = stem or (src.stem if src.stem != "requirements" else src.resolve().parent.name)
    doc, w, name = _start(src, "the pip requirements file", raw_name)
    base = tomlkit.table()
    base.add("image", DEFAULT_BASE)
    doc.add("base", base)
    pyt = tomlkit.table()
    pyt.add("requirements", [f"{stem or name}.requirements.txt"])
    doc.add("python", pyt)
    data = _read(src)
    for n, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        s = line.strip()
        if not s.startswith("-"):
            continue  # a requirement (or a comment): carried in the file
        option = re.split(r"[\s=]", s, maxsplit=1)[0]
        field = REQUIREMENTS.get(option)
        if field is None:
            w.append(f"line {n} ({printable(option, 40)}): an option ml-env does not know: passed to pip as written")
        elif field.fate != CARRIED:
            w.append(f"line {n} ({printable(s if option in ('-r', '-c') else option, 80)}): {field.note}")
    _inference_from_requirements(data, doc, w)
    return Imported(name, doc, w, {f"{stem or name}.requirements.txt": data})


def _inference_from_requirements(data: bytes, doc: tomlkit.TOMLDocument, w: list[str]) -> None:
    """A requirements file that installs Azure's scoring server, as a conda file's pip section
    does: ``inference.server = "azureml"`` (pip's names: any case, ``-``/``_``/``.`` alike)."""
    text = data.decode("utf-8", errors="replace")
    for pkg in AZURE_INFERENCE_PACKAGES:
        name = "[-_.]".join(pkg.split("-"))
        if re.search(rf"^\s*{name}(?=\s*(?:[=<>!~\[;#@]|$))", text, re.M | re.I):
            _azureml_server(doc)
            w.append(
                f'{pkg} in the requirements file is Azure\'s inference stack: inference.server = "azureml" '
                f"(the inference layer installs {AZUREML_PACKAGES[0]} and runs azmlinfsrv)"
            )
            return


def _env(doc: Any, variables: dict[str, Any]) -> None:
    """An ``[env]`` table of the environment file, when there are variables."""
    if variables:
        t = tomlkit.table()
        for k, v in variables.items():
            t.add(k, v)
        doc.add("env", t)
