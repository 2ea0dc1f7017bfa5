"""Azure-shaped input where ml-env wants something else: one line that names the way forward,
exit 2, no traceback (the cases of the report, each as the user met it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks import SpecError
from ml_env_tasks.formats.azure import ImportedDeployment, import_source

CONDA_EXPORT = """name: myenv
channels:
  - defaults
dependencies:
  - _libgcc_mutex=0.1=main
  - ca-certificates=2024.3.11=h06a4308_0
  - openssl=3.0.13=h7f8727e_0
  - python=3.11.8=h955ad1f_0
  - pip=23.3.1=py311h06a4308_0
  - pip:
    - six==1.16.0
prefix: /home/u/miniconda3/envs/myenv
"""


def ml_env(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_env_tasks", *args], cwd=cwd, capture_output=True, text=True)


def one_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    (line,) = [x for x in p.stderr.splitlines() if not x.startswith("ml-env: warning:")]
    return line


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / "azure").mkdir()
    return tmp_path


def test_building_an_azure_yaml_says_to_import_it(project: Path) -> None:
    """Reported: `invalid TOML at line 1, column 1: invalid statement`, no word of `ml-env import`."""
    (project / "azure" / "env-infer.yml").write_text("$schema: https://azuremlschemas.azureedge.net/latest/"
                                                     "environment.schema.json\nname: infer\nimage: python:3.11\n")  # fmt: skip
    line = one_line(ml_env("build", "azure/env-infer.yml", cwd=project))
    assert "invalid TOML" in line and "`ml-env import azure/env-infer.yml -o envs/NAME.toml`" in line
    (project / "v1").mkdir()
    (project / "v1" / "azureml_environment.json").write_text("{}")
    assert "`ml-env import v1 -o envs/NAME.toml`" in one_line(ml_env("build", "v1", cwd=project))
    # a TOML file with errors of its own gets no such hint
    (project / "envs.toml").write_text('name = "x"\n[base]\nimage = 3\n')
    assert "ml-env import" not in one_line(ml_env("build", "envs.toml", cwd=project))


def test_an_online_deployment_yaml_is_read_as_one(project: Path) -> None:
    """Reported: "needs image or build", though it has environment.image. Even without its $schema,
    a deployment is known by its endpoint_name and code_configuration."""
    (project / "src").mkdir()
    (project / "src" / "score.py").write_text("def init(): pass\ndef run(r): return r\n")
    (project / "dep.yml").write_text("endpoint_name: ep\ncode_configuration: {code: src, scoring_script: score.py}\n"
                                     "environment: {image: python:3.11-slim}\ninstance_type: Standard_DS3_v2\n")  # fmt: skip
    imp = import_source(project / "dep.yml", stem="dep")
    assert isinstance(imp, ImportedDeployment) and imp.environment is not None
    # a YAML with its environment nested, but neither a job nor a deployment: the error says where to look
    (project / "other.yml").write_text("environment: {image: python:3.11-slim}\n")
    with pytest.raises(SpecError, match="its environment is under environment:") as e:
        import_source(project / "other.yml")
    assert "endpoint_name" in (e.value.hint or "") and e.value.key == "environment"


def test_a_conda_env_export_names_from_history_and_the_conda_installer(project: Path) -> None:
    """Reported: refused naming _libgcc_mutex, openssl, … with no hint of --from-history or
    conda_installer = "conda"."""
    (project / "environment.yml").write_text(CONDA_EXPORT)
    line = one_line(ml_env("import", "environment.yml", "-o", "envs/myenv.toml", cwd=project))
    assert "_libgcc_mutex=0.1=main" in line and "openssl" in line
    assert "`conda env export --from-history`" in line and 'python.conda_installer = "conda"' in line
    assert not (project / "envs").exists() or not list((project / "envs").iterdir())
    # the same file named by an environment file: the build says the same
    (project / "env.toml").write_text(
        'name = "x"\n[base]\nimage = "python:3.11"\n[python]\nconda_file = "environment.yml"\n'
    )
    assert "--from-history" in one_line(ml_env("build", "env.toml", cwd=project))
    # a hand-written conda file with an unknown package keeps the plain hint
    (project / "hand.yml").write_text("dependencies:\n  - python=3.11\n  - libfoo=1.2\n")
    (project / "hand.toml").write_text('name = "h"\n[base]\nimage = "python:3.11"\n[python]\nconda_file = "hand.yml"\n')
    line = one_line(ml_env("build", "hand.toml", cwd=project))
    assert "libfoo=1.2" in line and "--from-history" not in line and "move them to the pip: section" in line


def test_a_registered_version_where_a_file_goes_says_get_it(project: Path) -> None:
    """Met in the README's walkthrough of Azure's "debug the image build": `ml-env plan myenv:2`
    answered `environment file not found`, no word of `ml-env get`."""
    line = one_line(ml_env("plan", "myenv:2", cwd=project))
    assert "environment file not found" in line and "`ml-env get myenv:2 -o DIR`" in line
    assert "train, serve, smoke-test and package take myenv:2 as it is" in line
    # a missing file that does not look like NAME:VERSION keeps the plain message
    assert "ml-env get" not in one_line(ml_env("plan", "envs/nope.toml", cwd=project))


def test_a_requirements_file_imported_takes_the_output_name(project: Path) -> None:
    """Azure's from_pip_requirements(name="myenv", ...): a requirements file has no name of its own,
    so `-o envs/myenv.toml` names it (it was named after the requirements file: `sklearn`)."""
    (project / "requirements").mkdir()
    (project / "requirements" / "sklearn.txt").write_text("six==1.16.0\n")
    p = ml_env("import", "requirements/sklearn.txt", "-o", "envs/myenv.toml", cwd=project)
    assert p.returncode == 0, p.stderr
    from ml_env_tasks import spec

    assert spec.load(project / "envs" / "myenv.toml").name == "myenv"
    assert (project / "envs" / "myenv.requirements.txt").read_text() == "six==1.16.0\n"
    # to stdout, with no output file: the file's own stem, as before
    assert 'name = "sklearn"' in ml_env("import", "requirements/sklearn.txt", cwd=project).stdout
