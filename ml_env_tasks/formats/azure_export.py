"""Azure ML formats out: a v1 environment directory and a CLI v2 environment YAML, from an
environment file. Every field of the environment file is carried or named in one warning line
(``azure_fields.EXPORT_V1``/``EXPORT_V2``): nothing is dropped silently.

A user-managed environment's packages (Azure installs nothing into a user-managed environment)
go into the base Dockerfile as one ``RUN <interpreter> -m pip install`` after the base."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..safe.yamlsafe import load_yaml
from ..spec import Environment
from .azure_fields import EXPORT_V1, EXPORT_V2, WARNED, Field, say, says_nothing

__all__ = ["export_v1", "export_v2", "exported_values", "V1_JSON", "V1_CONDA"]

V1_JSON = "azureml_environment.json"
V1_CONDA = "conda_dependencies.yml"


def exported_values(env: Environment) -> dict[str, Any]:
    """Each environment-file field's value in ``env``: what the export tables speak of."""
    r, ix = env.base.registry, env.index
    return {
        "name": env.name, "version": env.version, "description": env.description, "inference": env.inference,
        "inference.server": env.inference_server if env.inference else None,
        "base.image": env.base.image, "base.dockerfile": env.base.dockerfile,
        "base.dockerfile_text": env.base.dockerfile_text, "base.registry.address": r.address if r else None,
        "base.registry.username": r.username if r else None, "base.registry.password_env": r.password_env if r else None,
        "python.installer": env.installer, "python.layers": env.layers, "python.conda_installer": env.conda_installer,
        "python.user_managed_dependencies": env.user_managed, "python.interpreter": env.interpreter,
        "python.packages": list(env.packages), "python.requirements": list(env.requirements),
        "python.conda_file": env.conda_file, "python.wheels": list(env.wheels), "python.index_url": ix.index_url,
        "python.index_url_env": ix.index_url_env, "python.extra_index_urls": list(ix.extra_index_urls),
        "python.extra_index_urls_env": list(ix.extra_index_urls_env), "apt.packages": list(env.apt),
        "env": dict(env.variables), "labels": dict(env.labels), "docker.shm_size": env.shm_size,
        "docker.build_args": dict(env.build_args),
    }  # fmt: skip


def _untaken(table: dict[str, Field], env: Environment) -> list[str]:
    """One line for each field set in ``env`` that the target format has no place for."""
    values = exported_values(env)
    return [
        say(table, path, values[path])
        for path, f in table.items()
        if f.fate == WARNED and not f.own and not says_nothing(values[path], f.quiet)
    ]


def _server_packages(env: Environment) -> list[str]:
    """inference.server = "azureml": Azure serves with the server its conda file installs, so the
    export lists it (and an import of the export maps it back to the setting)."""
    from packaging.requirements import Requirement

    from ..build.stack import AZUREML_PACKAGES

    if not (env.inference and env.inference_server == "azureml"):
        return []
    have = {Requirement(p).name for p in env.packages + env.conda_pip}
    return [] if have & {"azureml-defaults", "azureml-inference-server-http"} else list(AZUREML_PACKAGES)


def _requirement_lines(env: Environment) -> list[str]:
    return [ln.strip() for r in env.requirements for ln in r.text.splitlines()
            if ln.strip() and not ln.strip().startswith("#")]  # fmt: skip


def _conda_doc(env: Environment) -> dict[str, Any]:
    if env.conda_file is not None:
        data = load_yaml(env.conda_file.read(), file=str(env.conda_file.path)) or {}
        data.setdefault("name", "project_environment")
        extra = list(env.packages) + _requirement_lines(env) + _server_packages(env)
        if extra:
            listed = data.setdefault("dependencies", [])
            for d in listed:
                if isinstance(d, dict) and "pip" in d:
                    d["pip"] = list(d["pip"]) + extra
                    break
            else:
                listed.append({"pip": extra})
        return data
    deps: list[Any] = [f"python={env.conda_python}" if env.conda_python else "python", "pip"]
    pip = list(env.packages) + _server_packages(env) + _requirement_lines(env)
    if pip:
        deps.append({"pip": pip})
    return {"name": "project_environment", "dependencies": deps}


def _user_managed_dockerfile(env: Environment) -> str | None:
    """A user-managed environment's packages, which Azure would not install, as a base Dockerfile:
    the base (its Dockerfile, or FROM its image), then one pip install into its interpreter."""
    words = list(env.packages) + list(env.conda_pip) + _server_packages(env)
    words += [w for ln in _requirement_lines(env) for w in shlex.split(ln, comments=True)]
    if not (env.user_managed and words):
        return None
    head = env.base.dockerfile_source or f"FROM {env.base.image}"
    run = f"RUN {shlex.quote(env.interpreter)} -m pip install --no-cache-dir " + " ".join(map(shlex.quote, words))
    return head.rstrip("\n") + "\n# the user-managed environment's Python packages (ml-env export)\n" + run + "\n"


def export_v1(env: Environment, out: Path) -> list[str]:
    """Write an Azure ML v1 environment directory; returns warnings for what does not carry over."""
    out.mkdir(parents=True, exist_ok=True)
    reg = None
    if env.base.registry:
        reg = {"address": env.base.registry.address, "username": env.base.registry.username, "password": None}
    dockerfile = _user_managed_dockerfile(env) or env.base.dockerfile_source
    data: dict[str, Any] = {
        "name": env.name,
        "version": env.version,
        "environmentVariables": dict(env.variables),
        "python": {
            "userManagedDependencies": env.user_managed,
            "interpreterPath": env.interpreter,
            "condaDependenciesFile": V1_CONDA if not env.user_managed else None,
            "baseCondaEnvironment": None,
        },
        "docker": {
            "enabled": True,
            "baseImage": None if dockerfile else env.base.image,
            "baseDockerfile": dockerfile,
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
    return _untaken(EXPORT_V1, env)


def export_v2(env: Environment, out: Path) -> list[str]:
    """Write an Azure ML CLI v2 environment YAML (and its conda file and Dockerfile beside it)."""
    data: dict[str, Any] = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/environment.schema.json",
        "name": env.name,
    }
    if env.version:
        data["version"] = env.version
    if env.description:
        data["description"] = env.description
    if env.labels:
        data["tags"] = {k.removeprefix("com.azure.ml.tag."): v for k, v in env.labels.items()}
    dockerfile = _user_managed_dockerfile(env) or env.base.dockerfile_source
    if dockerfile is None:
        data["image"] = env.base.image
    else:
        df = out.with_name(f"{out.stem}.Dockerfile")
        df.write_text(dockerfile)
        data["build"] = {"path": ".", "dockerfile_path": df.name}
    if not env.user_managed and (env.conda_file or env.packages or env.requirements or _server_packages(env)):
        cf = out.with_name(f"{out.stem}.conda.yml")
        cf.write_text(yaml.safe_dump(_conda_doc(env), sort_keys=False))
        data["conda_file"] = cf.name
    if env.inference:
        data["inference_config"] = {
            "liveness_route": {"path": "/", "port": 5001},
            # azmlinfsrv's GET /score calls run(): its readiness is GET / (answered once init() is done)
            "readiness_route": {"path": "/" if env.inference_server == "azureml" else "/score", "port": 5001},
            "scoring_route": {"path": "/score", "port": 5001},
        }
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return _untaken(EXPORT_V2, env)
