"""Azure ML formats out: a v1 environment directory and a CLI v2 environment YAML, from an
environment file; what a format has no place for is named in a warning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from ..safe.yamlsafe import load_yaml
from ..spec import Environment

__all__ = ["export_v1", "export_v2", "V1_JSON", "V1_CONDA"]

V1_JSON = "azureml_environment.json"
V1_CONDA = "conda_dependencies.yml"


def _server_packages(env: Environment) -> list[str]:
    """inference.server = "azureml": Azure serves with the server its conda file installs, so the
    export lists it (and an import of the export maps it back to the setting)."""
    from packaging.requirements import Requirement

    from ..build.stack import AZUREML_PACKAGES

    if not (env.inference and env.inference_server == "azureml"):
        return []
    have = {Requirement(p).name for p in env.packages + env.conda_pip}
    return [] if have & {"azureml-defaults", "azureml-inference-server-http"} else list(AZUREML_PACKAGES)


def _conda_doc(env: Environment) -> dict[str, Any]:
    if env.conda_file is not None:
        data = load_yaml(env.conda_file.read(), file=str(env.conda_file.path)) or {}
        data.setdefault("name", "project_environment")
        extra = list(env.packages) + _server_packages(env)
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
    pip = list(env.packages) + _server_packages(env)
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
    data: dict[str, Any] = {
        "name": env.name,
        "version": env.version,
        "environmentVariables": dict(env.variables),
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
    w += _not_exported(
        "v2 environment field", env_vars=env.variables, wheels=env.wheels, apt_packages=env.apt, shm_size=env.shm_size
    )
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return w
