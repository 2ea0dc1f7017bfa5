"""Azure ML environment formats in and out.

In: a v1 environment directory (``azureml_environment.json`` + ``conda_dependencies.yml``, as
``Environment.save_to_directory`` and ``az ml environment scaffold`` write it), a CLI v2
environment YAML, a conda environment file, a pip requirements file. Out: a commented TOML
environment file (tomlkit) and copies of the files it names (a conda file, a Dockerfile, a
requirements file), written beside it. Every source field is mapped, or named in a warning as
unsupported: nothing is dropped silently. A registry password never reaches the output: it
becomes the name of an environment variable to hold it.

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
from ..errors import SpecError
from ..safe.grammar import printable
from ..safe.untrusted import json_loads
from ..safe.yamlsafe import load_yaml
from .azure_export import V1_CONDA, V1_JSON, export_v1, export_v2
from .azure_fields import (
    AZURE_INFERENCE_PACKAGES,
    Imported,
    _azureml_server,
    _carry,
    _conda,
    _Fields,
    _inference_from_conda,
    _password_env,
    _read,
    _start,
)
from .azure_job import ImportedJob, import_command_job, is_command_job

__all__ = ["Imported", "ImportedJob", "import_source", "export_v1", "export_v2"]


def import_source(src: Path, stem: str | None = None) -> Imported | ImportedJob:
    """Import whatever ``src`` is: a v1 directory or JSON, a v2 YAML, a conda file, a requirements
    file — or a v2 command job YAML, which becomes an ``ml-env train`` invocation (``ImportedJob``).

    Files the result names (a conda file, a Dockerfile, a requirements file) are called
    ``<stem>.conda.yml`` and so on: ``stem`` is the output file's stem (default: the name)."""
    try:
        src.stat()
    except OSError as e:  # not there, a name too long, a loop of links...
        raise SpecError("not found" if e.errno == 2 else f"cannot be read: {e.strerror}", file=str(src)) from None
    if src.is_dir():
        if (src / V1_JSON).exists():
            return import_v1(src, stem=stem)
        raise SpecError(f"a directory without {V1_JSON}: not an Azure ML v1 environment directory", file=str(src))
    if not src.is_file():
        raise SpecError("not a regular file", file=str(src))
    if src.suffix in (".yml", ".yaml"):
        data = load_yaml(_read(src), file=str(src))
        if not isinstance(data, dict):
            raise SpecError("expected a YAML mapping at the top", file=str(src))
        if is_command_job(data):
            return import_command_job(src, data, stem, import_v2)
        if "dependencies" in data and not ({"image", "build"} & set(data)):
            return import_conda(src, data, stem)
        return import_v2(src, data, stem)
    if src.suffix == ".json":
        return import_v1(src.parent, json_path=src, stem=stem)
    return import_requirements(src, stem)


# --- v1 -----------------------------------------------------------------------------------


def import_v1(d: Path, json_path: Path | None = None, stem: str | None = None) -> Imported:
    jp = json_path or d / V1_JSON
    try:
        data = json_loads(_read(jp), error=SpecError, file=str(jp))
    except ValueError as e:
        where = f" at line {e.lineno}, column {e.colno}" if isinstance(e, json.JSONDecodeError) else ""
        raise SpecError(f"not valid JSON{where}", file=str(jp)) from None
    if not isinstance(data, dict):
        raise SpecError("expected a JSON object at the top", file=str(jp))
    f = _Fields(jp)
    if isinstance(data.get("environment"), dict) and "entryScript" in data:
        data = data["environment"]  # an inference config with the environment inline
    doc, w, name = _start(d, "the Azure ML v1 environment directory", f.text(data, "name", "name"))
    version = f.text(data, "version", "version", numbers=True)
    if version is not None:
        doc.add("version", version)
    known = {"name", "version", "python", "docker", "environmentVariables", "inferencingStackVersion"}
    known |= {"spark", "databricks", "r"}
    for k in sorted(set(data) - known):
        w.append(f"unsupported field {printable(k, 60)!r} (not imported)")
    for k in ("spark", "databricks", "r"):
        v = data.get(k)
        if v and (not isinstance(v, dict) or any(x for x in v.values() if x not in (None, [], {}, False))):
            w.append(f"unsupported field {k!r} with settings (not imported)")
    if str(f.text(data, "inferencingStackVersion", "inferencingStackVersion") or "").lower() == "latest":
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
        raise SpecError("neither docker.baseImage nor docker.baseDockerfile is set", file=str(jp), key="docker")
    reg = f.table(docker, "baseImageRegistry", "docker.baseImageRegistry")
    address = f.text(reg, "address", "docker.baseImageRegistry.address")
    if address:
        r = tomlkit.inline_table()
        r.add("address", address)
        user = f.text(reg, "username", "docker.baseImageRegistry.username")
        if user:
            r.add("username", user)
            var = _password_env(address)
            r.add("password_env", var)
            w.append(
                f"docker.baseImageRegistry.password is not written: set the environment variable {var} to it, "
                f"and allow the environment file to read it for that registry: ML_ENV_SPEC_ENV={var}@{address}"
            )
        base.add("registry", r)
    doc.add("base", base)
    handled = {"baseImage", "baseDockerfile", "baseImageRegistry", "shmSize", "enabled", "arguments", "sharedVolumes"}
    for k in sorted(set(docker) - handled):
        w.append(f"unsupported field docker.{printable(k, 60)!r} (not imported)")
    args = docker.get("arguments")
    if args:
        w.append(
            f"unsupported field docker.arguments {printable(args, 120)}: pass run options to `ml-env train` instead"
        )
    if docker.get("sharedVolumes") is False:
        w.append("docker.sharedVolumes = false has no equivalent (runs get their own mounts)")

    py = f.table(data, "python", "python")
    pyt = tomlkit.table()
    user_managed = f.flag(py, "userManagedDependencies", "python.userManagedDependencies")
    if user_managed:
        pyt.add("user_managed_dependencies", True)
    interpreter = f.text(py, "interpreterPath", "python.interpreterPath")
    if interpreter and interpreter not in ("python", "python3"):
        pyt.add("interpreter", interpreter)
    if py.get("baseCondaEnvironment"):
        w.append("unsupported field python.baseCondaEnvironment (not imported)")
    files: dict[str, bytes] = {}
    if not user_managed:
        conda_rel = f.text(py, "condaDependenciesFile", "python.condaDependenciesFile") or V1_CONDA
        conda_bytes = None
        if (d / conda_rel).exists() or conda_rel != V1_CONDA:
            conda_bytes = _carry(d, conda_rel, file=jp, key="python.condaDependenciesFile", what="conda file")
        elif py.get("condaDependencies") is not None:
            inline = f.table(py, "condaDependencies", "python.condaDependencies")
            conda_bytes = yaml.safe_dump(inline, sort_keys=False).encode()
            w.append(f"python.condaDependencies is inline: it is written to {stem or name}.conda.yml beside the output")
        if conda_bytes is not None:
            _conda(conda_bytes, f"{stem or name}.conda.yml", files, pyt, doc, w)
    if len(pyt):
        doc.add("python", pyt)
    envs = f.scalars(data, "environmentVariables", "environmentVariables")
    if envs:
        t = tomlkit.table()
        for k, v in envs.items():
            t.add(k, v)
        doc.add("env", t)
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
            w.append(f"inference_config.{route} {printable(r, 120)} differs from {who} fixed {default} on port 5001")


# --- v2 -----------------------------------------------------------------------------------


def import_v2(src: Path, data: dict[str, Any], stem: str | None = None) -> Imported:
    f = _Fields(src)
    doc, w, name = _start(src, "the Azure ML v2 environment YAML", f.text(data, "name", "name", numbers=True))
    version = f.text(data, "version", "version", numbers=True)
    if version is not None:
        doc.add("version", version)
    description = f.text(data, "description", "description")
    if description:
        doc.add("description", description)
    ic = f.table(data, "inference_config", "inference_config")
    if ic:
        doc.add("inference", True)
    known = {"$schema", "name", "version", "description", "tags", "image", "conda_file", "build"}
    known |= {"inference_config", "os_type"}
    for k in sorted(set(data) - known):
        w.append(f"unsupported field {printable(k, 60)!r} (not imported)")
    os_type = f.text(data, "os_type", "os_type") or "linux"
    if os_type.lower() != "linux":
        raise SpecError(
            f"os_type {printable(os_type, 40)!r}: only linux images are built", file=str(src), key="os_type"
        )
    base = tomlkit.table()
    files: dict[str, bytes] = {}
    build = f.table(data, "build", "build") if "build" in data else None
    image = f.text(data, "image", "image")
    if build is not None:
        ctx_rel = f.text(build, "path", "build.path") or "."
        df_rel = f.text(build, "dockerfile_path", "build.dockerfile_path") or "Dockerfile"
        ctx = src.parent / ctx_rel
        files[f"{stem or name}.Dockerfile"] = _carry(
            ctx, df_rel, file=src, key="build.dockerfile_path", what="Dockerfile"
        )
        base.add("dockerfile", f"{stem or name}.Dockerfile")
        if ctx.is_dir() and any(p.name != Path(df_rel).name for p in ctx.iterdir()):
            w.append(
                "build.path holds other files besides the Dockerfile; a base Dockerfile here has no build context: "
                "COPY from it is refused"
            )
    elif image:
        base.add("image", image)
    else:
        raise SpecError("needs image or build", file=str(src))
    doc.add("base", base)
    pyt = tomlkit.table()
    conda_rel = f.text(data, "conda_file", "conda_file")
    if conda_rel:
        conda = _carry(src.parent, conda_rel, file=src, key="conda_file", what="conda file")
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
    doc, w, name = _start(src, "the conda environment file", f.text(data, "name", "name"))
    base = tomlkit.table()
    base.add("image", DEFAULT_BASE)
    base["image"].comment("a base with the Python the conda file asks for")
    doc.add("base", base)
    pyt = tomlkit.table()
    pyt.add("conda_file", f"{stem or name}.conda.yml")
    doc.add("python", pyt)
    for k in sorted(set(data) - {"name", "channels", "dependencies", "prefix"}):
        w.append(f"unsupported field {printable(k, 60)!r} (not imported)")
    if data.get("prefix"):
        w.append("prefix is ignored: the environment lives in the image")
    conda = _read(src)
    _inference_from_conda(conda, doc, w)
    return Imported(name, doc, w, {f"{stem or name}.conda.yml": conda})


def import_requirements(src: Path, stem: str | None = None) -> Imported:
    raw_name = src.stem if src.stem != "requirements" else src.resolve().parent.name
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
        if s.startswith(("-r ", "-c ", "--requirement", "--constraint")):
            w.append(
                f"line {n} ({printable(s, 80)}): included files are installed but not hashed "
                "(the content hash covers this file only)"
            )
        elif s.startswith(("--index-url", "-i ", "--extra-index-url")):
            w.append(
                f"line {n} ({s.split()[0]}): set python.index_url_env / extra_index_urls_env instead (credentials)"
            )
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
