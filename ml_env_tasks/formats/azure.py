"""Azure ML environment formats in and out.

In: a v1 environment directory (``azureml_environment.json`` + ``conda_dependencies.yml``, as
``Environment.save_to_directory`` and ``az ml environment scaffold`` write it), a CLI v2
environment YAML, a conda environment file, a pip requirements file. Out: a commented TOML
environment file (tomlkit). Every source field is mapped, or named in a warning as unsupported:
nothing is dropped silently. A registry password never reaches the output: it becomes the name
of an environment variable to hold it.

Back: a v1 directory and a v2 YAML, from an environment file.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
import yaml

from ..errors import SpecError
from ..spec import Environment

__all__ = ["Imported", "import_source", "export_v1", "export_v2"]

V1_JSON = "azureml_environment.json"
V1_CONDA = "conda_dependencies.yml"
AZURE_INFERENCE_PACKAGES = ("azureml-defaults", "azureml-inference-server-http")


@dataclass
class Imported:
    name: str
    doc: tomlkit.TOMLDocument
    warnings: list[str] = field(default_factory=list)
    files: dict[str, bytes] = field(default_factory=dict)  # written beside the output (e.g. a base Dockerfile)

    def text(self) -> str:
        return tomlkit.dumps(self.doc)


def _name(raw: Any, source: Path, warnings: list[str]) -> str:
    name = str(raw or source.stem or "imported")
    clean = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._")[:63] or "imported"
    if clean != name:
        warnings.append(f"name {name!r} became {clean!r} (lowercase letters, digits, '.', '_', '-')")
    return clean


def _rel(target: Path, out_dir: Path) -> str:
    return os.path.relpath(target.resolve(), out_dir.resolve())


DEFAULT_BASE = "127.0.0.1:5000/base/debian-python:bookworm"  # the lab's Python base, for formats without one


def _start(source: Path, kind: str, raw_name: Any) -> tuple[tomlkit.TOMLDocument, list[str], str]:
    """A new commented document with its name: (document, warnings, name)."""
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Imported from {kind} {source} by `ml-env import`."))
    doc.add(tomlkit.comment("Fields the importer could not map are listed in its warnings; review, then build."))
    w: list[str] = []
    name = _name(raw_name, source, w)
    doc.add("name", name)
    return doc, w, name


def import_source(src: Path, out_dir: Path) -> Imported:
    """Import whatever ``src`` is; ``out_dir`` is where the TOML will live (paths are made relative)."""
    if not src.exists():
        raise SpecError("not found", file=str(src))
    if src.is_dir():
        if (src / V1_JSON).exists():
            return import_v1(src, out_dir)
        raise SpecError(f"a directory without {V1_JSON}: not an Azure ML v1 environment directory", file=str(src))
    text = src.read_text(encoding="utf-8", errors="replace")
    if src.suffix in (".yml", ".yaml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SpecError(f"not valid YAML: {e}", file=str(src)) from None
        if not isinstance(data, dict):
            raise SpecError("expected a YAML mapping", file=str(src))
        if "dependencies" in data and not ({"image", "build"} & set(data)):
            return import_conda(src, out_dir, data)
        return import_v2(src, out_dir, data)
    if src.suffix == ".json":
        return import_v1(src.parent, out_dir, json_path=src)
    return import_requirements(src, out_dir)


# --- v1 -----------------------------------------------------------------------------------


def import_v1(d: Path, out_dir: Path, json_path: Path | None = None) -> Imported:
    jp = json_path or d / V1_JSON
    try:
        data = json.loads(jp.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SpecError(f"not valid JSON: {e}", file=str(jp)) from None
    if "environment" in data and isinstance(data["environment"], dict) and "entryScript" in data:
        data = data["environment"]  # an inference config with the environment inline
    doc, w, name = _start(d, "the Azure ML v1 environment directory", data.get("name"))
    if data.get("version") is not None:
        doc.add("version", str(data["version"]))
    known = {
        "name",
        "version",
        "python",
        "docker",
        "environmentVariables",
        "inferencingStackVersion",
        "spark",
        "databricks",
        "r",
    }
    for k in sorted(set(data) - known):
        w.append(f"unsupported field {k!r} (not imported)")
    for k in ("spark", "databricks", "r"):
        v = data.get(k)
        if v and (not isinstance(v, dict) or any(x for x in v.values() if x not in (None, [], {}, False))):
            w.append(f"unsupported field {k!r} with settings (not imported)")
    if str(data.get("inferencingStackVersion") or "").lower() == "latest":
        doc.add("inference", True)
    docker = data.get("docker") or {}
    base = tomlkit.table()
    if docker.get("baseDockerfile"):
        base.add("dockerfile_text", tomlkit.string(docker["baseDockerfile"], multiline=True))
    elif docker.get("baseImage"):
        base.add("image", docker["baseImage"])
    else:
        raise SpecError("neither docker.baseImage nor docker.baseDockerfile is set", file=str(jp), key="docker")
    reg = docker.get("baseImageRegistry") or {}
    if reg.get("address"):
        r = tomlkit.inline_table()
        r.add("address", reg["address"])
        if reg.get("username"):
            r.add("username", reg["username"])
            var = re.sub(r"[^A-Z0-9]+", "_", reg["address"].upper()).strip("_") + "_PASSWORD"
            r.add("password_env", var)
            w.append(f"docker.baseImageRegistry.password is not written: set the environment variable {var} to it")
        base.add("registry", r)
    doc.add("base", base)
    for k in sorted(
        set(docker)
        - {"baseImage", "baseDockerfile", "baseImageRegistry", "shmSize", "enabled", "arguments", "sharedVolumes"}
    ):
        w.append(f"unsupported field docker.{k!r} (not imported)")
    if docker.get("arguments"):
        w.append(
            f"unsupported field docker.arguments {docker['arguments']!r}: pass run options to `ml-env train` instead"
        )
    if docker.get("sharedVolumes") is False:
        w.append("docker.sharedVolumes = false has no equivalent (runs get their own mounts)")

    py = data.get("python") or {}
    pyt = tomlkit.table()
    if py.get("userManagedDependencies"):
        pyt.add("user_managed_dependencies", True)
    if py.get("interpreterPath") and py["interpreterPath"] not in ("python", "python3"):
        pyt.add("interpreter", py["interpreterPath"])
    if py.get("baseCondaEnvironment"):
        w.append(f"unsupported field python.baseCondaEnvironment {py['baseCondaEnvironment']!r} (not imported)")
    conda_file = d / V1_CONDA
    if py.get("condaDependenciesFile"):
        conda_file = d / py["condaDependenciesFile"]
    if not py.get("userManagedDependencies"):
        if conda_file.exists():
            pyt.add("conda_file", _rel(conda_file, out_dir))
            _inference_from_conda(conda_file, doc, w)
        elif py.get("condaDependencies"):
            w.append("python.condaDependencies is inline: it is written to conda_dependencies.yml beside the output")
            pyt.add("conda_file", f"{name}.conda.yml")
            return _finish(
                doc,
                pyt,
                data,
                w,
                name,
                {f"{name}.conda.yml": yaml.safe_dump(py["condaDependencies"], sort_keys=False).encode()},
            )
    return _finish(doc, pyt, data, w, name, {})


def _inference_from_conda(conda_file: Path, doc: tomlkit.TOMLDocument, w: list[str]) -> None:
    text = conda_file.read_text(encoding="utf-8", errors="replace")
    for pkg in AZURE_INFERENCE_PACKAGES:
        if re.search(rf"^\s*-\s*{pkg}\b", text, re.M):
            w.append(f"{pkg} in {conda_file.name} is Azure's inference stack; `inference = true` gives ml-env's")


def _finish(
    doc: tomlkit.TOMLDocument, pyt: Any, data: dict[str, Any], w: list[str], name: str, files: dict[str, bytes]
) -> Imported:
    if len(pyt):
        doc.add("python", pyt)
    envs = data.get("environmentVariables") or {}
    if envs:
        t = tomlkit.table()
        for k, v in envs.items():
            t.add(k, str(v))
        doc.add("env", t)
    shm = (data.get("docker") or {}).get("shmSize")
    if shm:
        dt = tomlkit.table()
        dt.add("shm_size", str(shm))
        doc.add("docker", dt)
    return Imported(name, doc, w, files)


# --- v2 -----------------------------------------------------------------------------------


def import_v2(src: Path, out_dir: Path, data: dict[str, Any]) -> Imported:
    doc, w, name = _start(src, "the Azure ML v2 environment YAML", data.get("name"))
    if data.get("version") is not None:
        doc.add("version", str(data["version"]))
    if data.get("description"):
        doc.add("description", str(data["description"]))
    if data.get("inference_config"):
        doc.add("inference", True)
        ic = data["inference_config"]
        for route, default in (("liveness_route", "/"), ("readiness_route", "/score"), ("scoring_route", "/score")):
            r = (ic.get(route) or {}) if isinstance(ic, dict) else {}
            if r and (r.get("path") not in (None, default) or r.get("port") not in (None, 5001)):
                w.append(f"inference_config.{route} {r!r} differs from ml-env's fixed {default} on port 5001")
    known = {
        "$schema",
        "name",
        "version",
        "description",
        "tags",
        "image",
        "conda_file",
        "build",
        "inference_config",
        "os_type",
    }
    for k in sorted(set(data) - known):
        w.append(f"unsupported field {k!r} (not imported)")
    if str(data.get("os_type") or "linux").lower() != "linux":
        raise SpecError(f"os_type {data['os_type']!r}: only linux images are built", file=str(src), key="os_type")
    base = tomlkit.table()
    files: dict[str, bytes] = {}
    if data.get("build"):
        b = data["build"]
        ctx = (src.parent / b.get("path", ".")).resolve()
        dockerfile = ctx / b.get("dockerfile_path", "Dockerfile")
        if not dockerfile.exists():
            raise SpecError(f"build Dockerfile {dockerfile} not found", file=str(src), key="build.dockerfile_path")
        base.add("dockerfile", _rel(dockerfile, out_dir))
        others = [p for p in ctx.iterdir() if p != dockerfile] if ctx.is_dir() else []
        if others:
            w.append(
                f"build.path {b.get('path')!r} holds other files ({', '.join(sorted(p.name for p in others)[:5])}); "
                "a base Dockerfile here has no build context: COPY from it is refused"
            )
    elif data.get("image"):
        base.add("image", data["image"])
    else:
        raise SpecError("needs image or build", file=str(src))
    doc.add("base", base)
    pyt = tomlkit.table()
    if data.get("conda_file"):
        cf = src.parent / data["conda_file"]
        if not cf.exists():
            raise SpecError(f"conda_file {cf} not found", file=str(src), key="conda_file")
        pyt.add("conda_file", _rel(cf, out_dir))
        _inference_from_conda(cf, doc, w)
    if len(pyt):
        doc.add("python", pyt)
    if data.get("tags"):
        lt = tomlkit.table()
        for k, v in data["tags"].items():
            lt.add(f"com.azure.ml.tag.{re.sub(r'[^a-z0-9.-]+', '-', str(k).lower())}", str(v))
        doc.add("labels", lt)
    return Imported(name, doc, w, files)


# --- conda and requirements files ---------------------------------------------------------


def import_conda(src: Path, out_dir: Path, data: dict[str, Any]) -> Imported:
    doc, w, name = _start(src, "the conda environment file", data.get("name"))
    base = tomlkit.table()
    base.add("image", DEFAULT_BASE)
    base["image"].comment("a base with the Python the conda file asks for")
    doc.add("base", base)
    pyt = tomlkit.table()
    pyt.add("conda_file", _rel(src, out_dir))
    doc.add("python", pyt)
    for k in sorted(set(data) - {"name", "channels", "dependencies", "prefix"}):
        w.append(f"unsupported field {k!r} (not imported)")
    if data.get("prefix"):
        w.append("prefix is ignored: the environment lives in the image")
    _inference_from_conda(src, doc, w)
    return Imported(name, doc, w)


def import_requirements(src: Path, out_dir: Path) -> Imported:
    doc, w, name = _start(
        src, "the pip requirements file", src.stem if src.stem != "requirements" else src.resolve().parent.name
    )
    base = tomlkit.table()
    base.add("image", DEFAULT_BASE)
    doc.add("base", base)
    pyt = tomlkit.table()
    pyt.add("requirements", [_rel(src, out_dir)])
    doc.add("python", pyt)
    text = src.read_text(encoding="utf-8", errors="replace")
    for line in text.splitlines():
        s = line.strip()
        if s.startswith(("-r ", "-c ", "--requirement", "--constraint")):
            w.append(f"{s!r}: included files are installed but not hashed (the content hash covers {src.name} only)")
        elif s.startswith(("--index-url", "-i ", "--extra-index-url")):
            w.append(
                f"{s.split()[0]} in {src.name}: set python.index_url_env / extra_index_urls_env instead (credentials)"
            )
    return Imported(name, doc, w)


# --- export -------------------------------------------------------------------------------


def _conda_doc(env: Environment) -> dict[str, Any]:
    if env.conda_file is not None:
        data = yaml.safe_load(env.conda_file.data) or {}
        data.setdefault("name", "project_environment")
        pip = list(env.packages)
        if pip:
            deps = data.setdefault("dependencies", [])
            for d in deps:
                if isinstance(d, dict) and "pip" in d:
                    d["pip"] = list(d["pip"]) + pip
                    break
            else:
                deps.append({"pip": pip})
        return data
    deps: list[Any] = [f"python={env.conda_python}" if env.conda_python else "python", "pip"]
    pip = list(env.packages)
    for r in env.requirements:
        pip += [ln.strip() for ln in r.text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if pip:
        deps.append({"pip": pip})
    return {"name": "project_environment", "dependencies": deps}


def _not_exported(target: str, **fields: Any) -> list[str]:
    """Warnings for the environment's fields that the target format has no place for."""
    return [
        f"{name.replace('_', ' ')} have no {target} and are not exported" for name, value in fields.items() if value
    ]


def export_v1(env: Environment, out: Path) -> list[str]:
    """Write an Azure ML v1 environment directory; returns warnings for what does not carry over."""
    w: list[str] = []
    out.mkdir(parents=True, exist_ok=True)
    reg = None
    if env.base.registry:
        reg = {"address": env.base.registry.address, "username": env.base.registry.username, "password": None}
        w.append("baseImageRegistry.password is left empty: Azure needs it set there")
    data = {
        "name": env.name,
        "version": env.version,
        "environmentVariables": dict(env.env),
        "python": {
            "userManagedDependencies": env.user_managed,
            "interpreterPath": env.interpreter if env.user_managed else "python",
            "condaDependenciesFile": V1_CONDA if not env.user_managed else None,
            "baseCondaEnvironment": None,
        },
        "docker": {
            "enabled": True,
            "baseImage": env.base.image,
            "baseDockerfile": env.base.dockerfile_source,
            "baseImageRegistry": reg,
            "sharedVolumes": True,
            "shmSize": env.shm_size,
            "arguments": [],
        },
        "inferencingStackVersion": "latest" if env.inference else None,
    }
    (out / V1_JSON).write_text(json.dumps(data, indent=4) + "\n")
    if not env.user_managed:
        (out / V1_CONDA).write_text(yaml.safe_dump(_conda_doc(env), sort_keys=False))
    w += _not_exported(
        "v1 field", wheels=env.wheels, apt_packages=env.apt, labels=env.labels, build_args=env.build_args
    )
    return w


def export_v2(env: Environment, out: Path) -> list[str]:
    """Write an Azure ML CLI v2 environment YAML (and its conda file beside it)."""
    w: list[str] = []
    data: dict[str, Any] = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
        "name": env.name,
    }
    if env.version:
        data["version"] = env.version
    if env.description:
        data["description"] = env.description
    if env.base.image:
        data["image"] = env.base.image
    else:
        df = out.with_name(f"{out.stem}.Dockerfile")
        df.write_text(env.base.dockerfile_source or "")
        data["build"] = {"path": ".", "dockerfile_path": df.name}
    if not env.user_managed and (env.conda_file or env.packages or env.requirements):
        cf = out.with_name(f"{out.stem}.conda.yml")
        cf.write_text(yaml.safe_dump(_conda_doc(env), sort_keys=False))
        data["conda_file"] = cf.name
    if env.inference:
        data["inference_config"] = {
            "liveness_route": {"path": "/", "port": 5001},
            "readiness_route": {"path": "/score", "port": 5001},
            "scoring_route": {"path": "/score", "port": 5001},
        }
    w += _not_exported(
        "v2 environment field", env_vars=env.env, wheels=env.wheels, apt_packages=env.apt, shm_size=env.shm_size
    )
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return w
