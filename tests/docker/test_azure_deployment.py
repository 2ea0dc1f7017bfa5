"""An Azure online deployment, imported, runs as the import prints it: the smoke test of the same
entry script with the same model folder (Azure's layout: AZUREML_MODEL_DIR/model/...) and the
deployment's variables, then the packaged image, smoke-tested again with nothing mounted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.docker
FIX = Path(__file__).resolve().parents[1] / "fixtures" / "azure" / "online-deployment"


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_env_tasks", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env={**os.environ, **env})  # fmt: skip


def test_an_online_deployment_runs_as_its_import_prints(ws) -> None:
    d = ws.dir / "dep"
    shutil.copytree(FIX, d)
    (d / ".git").mkdir()
    blue = (d / "blue-deployment.yml").read_text().replace("127.0.0.1:5000/base/debian-python:bookworm",
                                                          ws.lab["base_image_python"])  # fmt: skip
    (d / "blue-deployment.yml").write_text(blue)
    registry = ws.lab["registry"]
    # the printed commands put images where this test's workspace cleans them (ML_ENV_* as a user sets them)
    ws.extra_repos.append((registry, f"{ws.repo}-pkg"))
    env = {"ML_ENV_REPOSITORY": ws.repo, "ML_ENV_PACKAGE_REPOSITORY": f"{ws.repo}-pkg"}
    p = run(["import", "blue-deployment.yml", "--endpoint", "endpoint.yml", "--request", "sample-request.json",
             "-o", "envs/blue.toml", "--registry", registry, "--json"], d, env)  # fmt: skip
    assert p.returncode == 0, p.stderr
    commands = {c[1]: c[1:] for c in json.loads(p.stdout)["commands"]}
    assert set(commands) == {"serve", "smoke-test", "package"}
    smoke = run([*commands["smoke-test"], "--no-record", "--json"], d, env)
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr
    assert json.loads(smoke.stdout)["passed"] == 1
    packaged = run([*commands["package"], "--json"], d, env)
    assert packaged.returncode == 0, packaged.stderr
    ref = json.loads(packaged.stdout)["ref"]
    again = run(["smoke-test", "--env", ref, "--cases", "envs/blue.cases.jsonl", "--no-record", "--json"], d, env)
    assert again.returncode == 0 and json.loads(again.stdout)["passed"] == 1, again.stdout + again.stderr
