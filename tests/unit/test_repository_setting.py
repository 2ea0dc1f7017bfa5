"""A repository setting, like every other option (flag > environment > project > user > machine),
with ``{name}`` for the environment's or the model's name: an adopting project names its
repositories once instead of passing --repository to every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks.registry.reference import repository_named


def test_the_name_template() -> None:
    assert repository_named(None, "ml-envs/{name}", "sklearn") == "ml-envs/sklearn"
    assert repository_named("acme/ml/{name}", "ml-envs/{name}", "sklearn") == "acme/ml/sklearn"
    assert repository_named("acme/fixed", "ml-envs/{name}", "sklearn") == "acme/fixed"


def _plan(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    e = {k: v for k, v in os.environ.items() if not k.startswith("ML_ENV_")}
    e.update(ML_ENV_CONFIG=str(cwd / "none.toml"), ML_ENV_SITE_CONFIG=str(cwd / "none.toml"), **(env or {}))
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "plan", "envs/a.toml", "--registry", "r.example:5000",
                        "--json", *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    import json

    return str(json.loads(p.stdout)["image"])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs/a.toml").write_text('name = "a"\n[base]\nimage = "r.example:5000/base/x:1"\n')
    (tmp_path / "pyproject.toml").write_text('[tool.ml-env]\nrepository = "acme/envs/{name}"\n')
    return tmp_path


def test_a_project_names_its_repositories_once(project: Path) -> None:
    assert _plan(project).startswith("r.example:5000/acme/envs/a:")
    assert _plan(project, env={"ML_ENV_REPOSITORY": "team/{name}-img"}).startswith("r.example:5000/team/a-img:")
    assert _plan(project, "--repository", "one/x").startswith("r.example:5000/one/x:")


def test_the_model_and_package_repositories_are_settings_too() -> None:
    from ml_env_tasks.commands import load

    assert load("model list").option("repository").config == "model_repository"
    assert load("package").option("package_repository").config == "package_repository"
    assert load("build").option("repository").env == "ML_ENV_REPOSITORY"
