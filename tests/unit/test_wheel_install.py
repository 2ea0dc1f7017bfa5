"""The package is whole: what ``pip install`` of a release gives carries everything the commands
read from the package. The sdist is built from a copy of the checkout, the wheel from that sdist
(as ``python -m build`` does for a release, and pip for a user installing the sdist), and the
wheel is installed with its dependencies into a fresh venv; the commands then run from an empty
folder, with a cache, a config and a home of their own. No Docker engine: ``hash --locked``,
``list`` and ``nox -l`` need none.

The dependencies come from pip's own configuration, as for a user; the project itself only from
the wheel (asserted: ``ml_env_tasks`` is imported from the new venv, never from the checkout)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from ml_env_tasks.spec.pins import lock_packages

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "ml_env_tasks"

# built once for the module's tests, on one worker under `--dist loadgroup`
pytestmark = pytest.mark.xdist_group("wheel_install")

# what the copy the sdist is built from leaves out of the checkout's top: caches, virtualenvs,
# build output, and an egg-info, whose SOURCES.txt setuptools would read back into the sdist
# (hiding a file the configuration forgot)
_NOT_SOURCE = {".git", ".venv", ".nox", ".lab", ".ml-env", ".bench", ".hypothesis", ".pytest_cache", ".ruff_cache",
               ".mypy_cache", "build", "dist", "runs", "tests", "ml_env_tasks.egg-info"}  # fmt: skip


def _not_source(folder: str, names: list[str]) -> set[str]:
    top = Path(folder) == ROOT
    return {n for n in names if (top and n in _NOT_SOURCE) or n == "__pycache__" or n.endswith(".pyc")}


@dataclass(frozen=True)
class Installed:
    venv: Path
    sdist: Path
    wheel: Path
    env: dict[str, str]  # the environment the commands run with: nothing of the checkout's
    home: Path
    build_output: str

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A command of the installed package, from an empty folder."""
        cwd = cwd or self.home / "empty"
        return subprocess.run(args, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=120)


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"{args[:4]}: exit {p.returncode}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p


def _isolated_env(home: Path, path_first: Path | None = None) -> dict[str, str]:
    """The caller's environment without anything that points at the checkout or at ml-env's
    settings; a home, cache and config of its own (the user cache may hold curated locks of a
    build on this machine, which would stand in for the ones the package must ship)."""
    drop = {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUSERBASE", "VIRTUAL_ENV", "NOX_DEFAULT_VENV_BACKEND"}
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ML_ENV")}
    env |= {
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_DATA_HOME": str(home / "data"),
        "XDG_STATE_HOME": str(home / "state"),
        "ML_ENV_CONFIG": str(home / "none" / "config.toml"),
        "ML_ENV_SITE_CONFIG": str(home / "none" / "site.toml"),
        "PYTHONNOUSERSITE": "1",
        "NO_COLOR": "1",
    }
    if path_first is not None:
        env["PATH"] = f"{path_first}{os.pathsep}{env.get('PATH', '')}"
    return env


def _builder_env() -> dict[str, str]:
    """For building and installing: the caller's environment (pip's configuration, its cache),
    without what would put the checkout on a path."""
    return {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    src, dist, venv, home = base / "src", base / "dist", base / "venv", base / "home"
    shutil.copytree(ROOT, src, ignore=_not_source, symlinks=True)
    (home / "empty").mkdir(parents=True)
    # the sdist, then the wheel from it: what the sdist lacks, the wheel lacks too
    built = _run([sys.executable, "-m", "build", "--outdir", str(dist), str(src)], cwd=base, env=_builder_env())
    (sdist,) = dist.glob("ml_env_tasks-*.tar.gz")
    (wheel,) = dist.glob("ml_env_tasks-*.whl")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base, env=_builder_env())
    # with its dependencies (and the nox extra), resolved as for a user: from pip's configuration
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run([*pip, f"{wheel}[nox]"], cwd=home / "empty", env=_builder_env())
    return Installed(
        venv, sdist, wheel, _isolated_env(home, path_first=venv / "bin"), home, built.stdout + built.stderr
    )


def _package_files(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def test_the_package_comes_from_the_wheel_with_every_file_of_the_source(installed: Installed) -> None:
    p = installed.run(installed.bin("python"), "-c", "import ml_env_tasks; print(ml_env_tasks.__file__)")
    assert p.returncode == 0, p.stderr
    where = Path(p.stdout.strip()).resolve()
    assert where.is_relative_to(installed.venv.resolve()) and not where.is_relative_to(ROOT), where
    package = where.parent
    # every file of the source package: the modules, the curated environments, their
    # requirements and shipped locks, the scoring server, py.typed
    missing = _package_files(PACKAGE) - _package_files(package)
    assert not missing, f"not in the installed package: {sorted(missing)}"
    with tarfile.open(installed.sdist) as t:
        in_sdist = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = {f"ml_env_tasks/{f}" for f in _package_files(PACKAGE)} - in_sdist
    assert not missing, f"not in the sdist: {sorted(missing)}"
    # the license as an SPDX expression with its file (PEP 639): setuptools has nothing to say of it
    assert "LICENSE" in in_sdist and "`project.license`" not in installed.build_output
    assert list(installed.venv.glob("lib/python*/site-packages/ml_env_tasks-*.dist-info/licenses/LICENSE"))
    p = installed.run(installed.bin("python"), "-m", "ml_env_tasks", "--help")
    assert p.returncode == 0 and "usage: ml-env" in p.stdout, p.stderr


def test_hash_locked_and_list_of_the_curated_environments(installed: Installed) -> None:
    """From an empty folder, with an empty user cache: the locks shipped with the package."""
    p = installed.run(installed.bin("ml-env"), "hash", "curated/sklearn", "--locked")
    assert p.returncode == 0, p.stderr
    got = p.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", got), p.stdout
    # the same hash as the checkout gives, in the same isolation
    here = installed.run(sys.executable, "-m", "ml_env_tasks", "hash", "curated/sklearn", "--locked")
    assert here.returncode == 0 and here.stdout.strip() == got, here.stderr

    p = installed.run(installed.bin("ml-env"), "list", "--json")
    assert p.returncode == 0, p.stderr
    listed = {e["name"]: e for e in json.loads(p.stdout)["curated_environments"]}
    # each as the checkout ships it: sklearn's lock lists its packages, minimal's none (it installs
    # nothing); an environment without a shipped lock (a build on the lab writes one) shows none
    assert sorted(listed) == sorted(f"curated/{t.stem}" for t in (PACKAGE / "curated").glob("*.toml"))
    for name, e in listed.items():
        shipped = PACKAGE / "curated" / f"{name.removeprefix('curated/')}.lock"
        want = lock_packages(shipped.read_text()) if shipped.exists() else {}
        assert e["locked"] == want, name
    assert listed["curated/sklearn"]["locked"]["scikit-learn"] == "1.5.2"


def test_the_nox_sessions_of_the_installed_package(installed: Installed) -> None:
    project = installed.home / "project"
    project.mkdir()
    (project / "noxfile.py").write_text(
        "import pathlib\nimport ml_env_tasks.nox\n"
        "pathlib.Path('where.txt').write_text(ml_env_tasks.__file__)\n"
        "ml_env_tasks.nox.register()\n"
    )
    p = installed.run(installed.bin("nox"), "-l", "--json", "-t", "ml-env", cwd=project)
    assert p.returncode == 0, p.stderr
    assert "env_hash" in {s["session"] for s in json.loads(p.stdout)}
    assert Path((project / "where.txt").read_text()).resolve().is_relative_to(installed.venv.resolve())
