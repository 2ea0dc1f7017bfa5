"""A registered ``NAME:VERSION`` is its registered image, by digest, in the registry and
repository the versions file names: ``train`` without ``--registry``/``--repository`` runs it as
it is (nothing built), the command the v2 job importer prints runs as printed, and a rebuild
happens only with ``--rebuild``, which says so."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from .helpers import ml_env

pytestmark = pytest.mark.docker

JOB = """$schema: https://azuremlschemas.azureedge.net/latest/commandJob.schema.json
command: python fit.py --alpha ${{inputs.alpha}}
code: src
inputs:
  alpha: 0.5
environment: azureml:reg:1
"""


def _register(ws) -> dict:
    (ws.dir / "envs").mkdir()
    f = ws.spec(f'name = "reg"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n[docker]\nshm_size = "96m"\n',
                name="envs/reg.toml")  # fmt: skip
    got = ml_env("register", str(f), *ws.cli_args(), "--json")
    assert got.returncode == 0, got.stderr
    src = ws.dir / "src"
    src.mkdir()
    (src / "fit.py").write_text("import sys\nprint('args', sys.argv[1:])\n")
    return json.loads(got.stdout)


def _record(stdout: str) -> dict:
    return json.loads(stdout)["environment"]


def test_a_registered_version_runs_its_registered_image_by_digest(ws) -> None:
    entry = _register(ws)
    pinned = f"{ws.lab['registry']}/{ws.repo}@{entry['digest']}"
    # no --registry, no --repository: the versions file says where the image is
    run = ml_env("train", "--env", "reg:1", "--source", "src", "--script", "fit.py", "--json")
    assert run.returncode == 0, run.stderr
    env = _record(run.stdout)
    assert (env["image"], env["digest"], env["hash"]) == (pinned, entry["digest"], entry["hash"])
    assert env["registered"] == "reg:1"
    assert "building" not in run.stderr and f"reg:1: its registered image {pinned}" in run.stderr
    assert json.loads(run.stdout)["resources"]["shm_size"] == 96 * 2**20  # the recorded file's run setting

    # the command the job importer prints runs as printed: the registered image, nothing built
    (ws.dir / "job.yml").write_text(JOB)
    imported = ml_env("import", "job.yml")
    assert imported.returncode == 0 and "warning" not in imported.stderr, imported.stderr
    argv = shlex.split(imported.stdout.strip())
    assert argv[:4] == ["ml-env", "train", "--env", "reg:1"]
    printed = ml_env(*argv[1:])  # exactly as printed
    assert printed.returncode == 0, printed.stderr
    assert "args ['--alpha', '0.5']" in printed.stdout and "building" not in printed.stderr
    run_id = printed.stdout.split("\nrun ", 1)[1].split(":", 1)[0]
    record = json.loads((ws.dir / "runs" / run_id / "run.json").read_text())
    assert (record["environment"]["digest"], record["environment"]["registered"]) == (entry["digest"], "reg:1")

    # --rebuild builds the recorded file (in the entry's registry, where its hash is: reused), and says so
    again = ml_env("train", "--env", "reg:1", "--rebuild", "--source", "src", "--script", "fit.py", "--json")
    assert again.returncode == 0, again.stderr
    assert "reg:1: --rebuild: building its recorded environment file" in again.stderr
    assert _record(again.stdout)["registered"] is None


def test_a_registered_image_that_is_gone_is_one_line(ws) -> None:
    entry = _register(ws)
    versions = Path("envs/versions.toml")
    versions.write_text(versions.read_text().replace(entry["digest"], "sha256:" + "0" * 64))
    run = ml_env("train", "--env", "reg:1", "--source", "src", "--script", "fit.py")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and str(versions) in lines[0] and "--rebuild" in lines[0], run.stderr
    # a version the file does not have: the printed command is warned about when imported
    (ws.dir / "job.yml").write_text(JOB.replace("reg:1", "reg:7"))
    imported = ml_env("import", "job.yml")
    assert imported.returncode == 0 and "reg:7 is not registered in envs/versions.toml" in imported.stderr


def test_a_curated_environment_registered_here_is_its_registered_image(ws) -> None:
    """``curated/NAME`` (here the default environment of ``train``) registered with the hash its
    file has now: that registered image, where the versions file says it is."""
    got = ml_env("register", "curated/minimal", *ws.cli_args(), "--json")
    assert got.returncode == 0, got.stderr
    entry = json.loads(got.stdout)
    src = ws.dir / "src"
    src.mkdir()
    (src / "t.py").write_text("print('ok')\n")
    run = ml_env("train", "--source", "src", "--script", "t.py", "--json")  # no --env: curated/minimal
    assert run.returncode == 0, run.stderr
    env = _record(run.stdout)
    assert (env["digest"], env["registered"]) == (entry["digest"], f"ml-env-minimal:{entry['version']}")
    assert env["image"] == f"{ws.lab['registry']}/{ws.repo}@{entry['digest']}" and "building" not in run.stderr
