"""``package`` with several models, as ``serve`` takes them: ``--model NAME=MODEL`` or
``NAME=DIR`` each, one folder per model under ``AZUREML_MODEL_DIR`` (Azure's ``Model.deploy``
with several models). Reported: two ``--model`` kept the last and dropped the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks import models
from ml_env_tasks.registry import RegistryClient

from .helpers import ml_env

pytestmark = pytest.mark.docker

SCORE = """
import json, os
def init():
    global a, b
    d = os.environ["AZUREML_MODEL_DIR"]
    a = float(open(os.path.join(d, "a", "factor.txt")).read())
    b = float(open(os.path.join(d, "b", "factor.txt")).read())
def run(raw):
    x = json.loads(raw)["x"]
    return {"a": [v * a for v in x], "b": [v * b for v in x]}
"""


def test_a_package_of_two_models_serves_both_as_serve_mounts_them(ws, tmp_path: Path, monkeypatch) -> None:
    lab = ws.lab
    reg = lab["registry"]
    models_repo, pkg_repo = f"{ws.repo}-models/factor", f"{ws.repo}-pkg"
    ws.extra_repos += [(reg, models_repo), (reg, pkg_repo)]
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # where serve fetches a registered model
    env = ws.spec(f'name = "light"\ninference = true\n[base]\nimage = "{lab["base_image_python"]}"\n', name="l.toml")
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(SCORE)
    first, second = tmp_path / "m2", tmp_path / "m3"
    for folder, factor in ((first, "2"), (second, "3")):
        folder.mkdir()
        (folder / "factor.txt").write_text(factor)
    mv = models.register(reg, "factor", first, repository=models_repo)
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"request": {"x": [1, 2]}, "expect_json": {"a": [2.0, 4.0], "b": [3.0, 6.0]}}\n')

    # serve's own way of mounting them: the same entry script passes
    smoke = ml_env("smoke-test", "--env", str(env), "--entry", str(app / "score.py"), "--cases", str(cases),
                   "--model", f"a={models_repo}:{mv.version}", "--model", f"b={second}", *ws.cli_args(),
                   "--report-dir", str(tmp_path / "r0"), "--no-record")  # fmt: skip
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr

    args = ["package", "--env", str(env), "--entry", str(app / "score.py"), *ws.cli_args(),
            "--package-repository", pkg_repo, "--json"]  # fmt: skip
    p = ml_env(*args, "--model", f"a={models_repo}:{mv.version}", "--model", f"b={second}")
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    assert not r["reused"] and [(m["mount"], m["model"]) for m in r["models"]] == [
        ("a", f"a=factor:{mv.version}"), ("b", f"b={second}"),
    ]  # fmt: skip
    # the order of --model changes nothing: the same parts, the same image (one HEAD)
    again = json.loads(ml_env(*args, "--model", f"b={second}", "--model", f"a={models_repo}:{mv.version}").stdout)
    assert again["reused"] and again["digest"] == r["digest"]
    cfg = RegistryClient(reg).image_config(pkg_repo, r["digest"])
    assert [h["created_by"] for h in cfg["history"][-3:]] == [
        "ml-env package: entry score.py", "ml-env package: model a", "ml-env package: model b",
    ]  # fmt: skip
    assert "AZUREML_MODEL_DIR=/var/azureml-models" in cfg["config"]["Env"]
    from ml_env_tasks.release.verify import verify

    checks = {c.name: c.ok for c in verify(r["image"], ledger=None)}
    assert checks["package"] and checks["sbom"] and checks["provenance"], checks

    # the packaged image answers as the mounted models did: both are in it, nothing mounted
    packaged = ml_env("smoke-test", "--env", r["ref"], "--cases", str(cases), *ws.cli_args(),
                      "--report-dir", str(tmp_path / "r1"), "--no-record")  # fmt: skip
    assert packaged.returncode == 0, packaged.stdout + packaged.stderr
