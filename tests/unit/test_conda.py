"""Conda files without conda: python/pip, pinned packages mapped to PyPI with a warning, the rest an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_env_tasks import SpecError, spec
from ml_env_tasks.build.dockerfile import render

CONDA = """name: project_environment
channels:
  - conda-forge
dependencies:
  - python=3.11.2
  - pip
  - numpy=1.26.4
  - conda-forge::scikit-learn=1.5.2=py311h1234_0
  - scipy=1.14
  - pytorch>=2.1
  - pip:
    - tomli==2.0.2
"""


def load(tmp_path: Path, conda: str, extra: str = "") -> spec.Environment:
    (tmp_path / "conda.yml").write_text(conda)
    f = tmp_path / "env.toml"
    f.write_text(
        f'name = "c"\n[base]\nimage = "127.0.0.1:5000/base/debian-python:bookworm"\n[python]\nconda_file = "conda.yml"\n{extra}'
    )
    return spec.load(f)


def test_known_conda_packages_become_pip_requirements_with_a_warning(tmp_path: Path) -> None:
    env = load(tmp_path, CONDA)
    assert env.conda_python == "3.11.2"
    assert set(env.conda_pip) == {"numpy==1.26.4", "scikit-learn==1.5.2", "scipy==1.14.*", "torch>=2.1", "tomli==2.0.2"}
    assert len(env.warnings) == 1
    w = env.warnings[0]
    assert (
        "numpy=1.26.4 -> numpy==1.26.4" in w
        and "pytorch>=2.1 -> torch>=2.1" in w
        and "scipy=1.14 -> scipy==1.14.*" in w
    )
    assert env.conda_channels == ("conda-forge",)
    df = render(env).dockerfile
    assert "conda/requirements.txt" in df and "conda install" not in df


def test_unknown_conda_packages_are_an_error_naming_them(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load(tmp_path, CONDA.replace("  - pip\n", "  - pip\n  - libgomp=12\n  - cudatoolkit=11.8\n"))
    assert "libgomp=12, cudatoolkit=11.8" in str(exc.value) and exc.value.key == "python.conda_file"


def test_conda_installer_uses_the_base_images_conda(tmp_path: Path) -> None:
    env = load(tmp_path, CONDA.replace("  - pip\n", "  - pip\n  - libgomp=12\n"), 'conda_installer = "conda"\n')
    assert "libgomp=12" in env.conda_packages and env.warnings == ()
    df = render(env).dockerfile
    assert "for c in micromamba mamba conda" in df and "-c conda-forge" in df and " libgomp=12" in df
    assert "-m venv" not in df  # the conda environment's python is the interpreter


def test_conda_installer_is_in_the_hash_only_when_set(tmp_path: Path) -> None:
    from ml_env_tasks.spec.hashing import canonical

    assert "conda_installer" not in canonical(load(tmp_path, CONDA))["python"]
    assert canonical(load(tmp_path, CONDA, 'conda_installer = "conda"\n'))["python"]["conda_installer"] == "conda"
