"""ci/github/install.sh and the shared tool cache: what it finds there is run only when it is
trusted. Each test installs a tiny stand-in for the package (no Docker; pip from the local
index), in folders of its own."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLANTED = "#!/bin/sh\ntouch '{pwned}'\nexit 0\n"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """An action checkout in small: the install script, its checks, and a package to install."""
    s = tmp_path / "src"
    (s / "ci" / "github").mkdir(parents=True)
    for name in ("install.sh", "cache_tree.py"):
        shutil.copy(ROOT / "ci" / "github" / name, s / "ci" / "github" / name)
    (s / "ml_env_tasks").mkdir()
    (s / "ml_env_tasks" / "__init__.py").write_text("X = 1\n")
    (s / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "fake-ml-env-tasks"\nversion = "0"\n[tool.setuptools]\npackages = ["ml_env_tasks"]\n'
    )
    return s


def key_of(src: Path) -> str:
    """The cache key install.sh computes for a source that is not a git checkout."""
    files = sorted(
        str(p.relative_to(src)) for p in [*(src / "ml_env_tasks").rglob("*"), src / "pyproject.toml"] if p.is_file()
    )
    lines = "".join(f"{hashlib.sha256((src / f).read_bytes()).hexdigest()}  {f}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()[:16]


def install(src: Path, tmp_path: Path, **extra_env: str) -> tuple[Path, str]:
    """Run install.sh as an action step does; (ML_ENV_BIN, its output)."""
    env_file = tmp_path / "github_env"
    env_file.write_text("")
    (tmp_path / "runner-temp").mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "ML_ENV_"))}
    env.update(ML_ENV_SRC=str(src), ML_ENV_PYTHON=sys.executable, GITHUB_ENV=str(env_file),
               RUNNER_TOOL_CACHE=str(tmp_path / "toolcache"), RUNNER_TEMP=str(tmp_path / "runner-temp"), **extra_env)  # fmt: skip
    p = subprocess.run(["bash", str(src / "ci" / "github" / "install.sh")], env=env, capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    line = env_file.read_text().strip()
    assert line.startswith("ML_ENV_BIN="), line
    return Path(line.removeprefix("ML_ENV_BIN=")), p.stdout + p.stderr


def version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def plant(entry: Path, pwned: Path, marker: str = "") -> None:
    (entry / "bin").mkdir(parents=True)
    python = entry / "bin" / "python"
    python.write_text(PLANTED.format(pwned=pwned))
    python.chmod(0o755)
    (entry / ".complete").write_text(marker)


def check_installed(bin_dir: Path, pwned: Path) -> None:
    """ML_ENV_BIN's python is the package's, and nothing planted ran."""
    out = subprocess.run([str(bin_dir / "python"), "-c", "import ml_env_tasks; print(ml_env_tasks.X)"],
                         capture_output=True, text=True, timeout=60, cwd=bin_dir)  # fmt: skip
    assert not pwned.exists(), "the planted bin/python ran"
    assert out.stdout.strip() == "1", out.stdout + out.stderr


@pytest.mark.parametrize("marker", ["", "ml-env-tasks-tree sha256:" + "0" * 64 + "\n"])
def test_a_planted_cache_entry_is_not_run(src: Path, tmp_path: Path, marker: str) -> None:
    """A .complete marker under the commit-keyed path is not enough: the planted entry does not
    hash to what its marker says, so it is installed again."""
    pwned = tmp_path / "pwned"
    entry = tmp_path / "toolcache" / "ml-env-tasks" / f"py{version()}-{key_of(src)}"
    plant(entry, pwned, marker)
    (tmp_path / "toolcache" / "ml-env-tasks").chmod(0o700)
    bin_dir, out = install(src, tmp_path)
    assert bin_dir == entry / "bin" and "not trusted" in out, out
    check_installed(bin_dir, pwned)


@pytest.mark.parametrize("how", ["world-writable", "another user's"])
def test_a_cache_folder_others_control_is_not_used(src: Path, tmp_path: Path, how: str) -> None:
    pwned = tmp_path / "pwned"
    base = tmp_path / "toolcache" / "ml-env-tasks"
    entry = base / f"py{version()}-{key_of(src)}"
    plant(entry, pwned)
    if how == "world-writable":
        base.chmod(0o777)
    else:
        if os.getuid() != 0:
            pytest.skip("giving a folder to another user needs root")
        for p in [base, *base.rglob("*")]:
            os.lchown(p, 4242, 4242)
    bin_dir, out = install(src, tmp_path)
    assert not bin_dir.is_relative_to(base), bin_dir
    assert bin_dir.is_relative_to(tmp_path / "runner-temp") and "installed for this job only" in out, out
    check_installed(bin_dir, pwned)


def test_the_cache_is_reused_and_a_changed_entry_is_installed_again(src: Path, tmp_path: Path) -> None:
    first, _ = install(src, tmp_path)
    assert (tmp_path / "toolcache" / "ml-env-tasks").stat().st_mode & 0o077 == 0
    again, out = install(src, tmp_path)
    assert again == first and "not trusted" not in out, out
    changed = next((first.parent / "lib").glob("python*/site-packages/ml_env_tasks/__init__.py"))
    changed.write_text("X = 2\n")
    third, out = install(src, tmp_path)
    assert third == first and "not trusted" in out, out
    check_installed(third, tmp_path / "pwned")


def test_extras_are_installed_into_an_environment_of_their_own(src: Path, tmp_path: Path) -> None:
    """An action's `extras` (ML_ENV_EXTRAS): the package with those extras, under a key that names
    them, so a job whose earlier step installed it without them gets them, and one that has them
    keeps them; anything but extras' names is refused before pip sees it."""
    dep = tmp_path / "dep"
    (dep / "fake_extra").mkdir(parents=True)
    (dep / "fake_extra" / "__init__.py").write_text("Y = 7\n")
    (dep / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "fake-extra"\nversion = "0"\n[tool.setuptools]\npackages = ["fake_extra"]\n'
    )
    pyproject = src / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text().replace(
            "[tool.setuptools]",
            f'[project.optional-dependencies]\ndemo = ["fake-extra @ {dep.as_uri()}"]\n[tool.setuptools]',
        )
    )
    plain, _ = install(src, tmp_path)
    with_demo, _ = install(src, tmp_path, ML_ENV_EXTRAS="demo", ML_ENV_BIN=f"{plain}/")
    assert with_demo != plain and with_demo.parent.name == f"py{version()}-{key_of(src)}-with-demo", with_demo
    got = subprocess.run([str(with_demo / "python"), "-c", "import fake_extra, ml_env_tasks; print(fake_extra.Y)"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert got.stdout.strip() == "7", got.stderr
    assert subprocess.run([str(plain / "python"), "-c", "import fake_extra"], capture_output=True).returncode != 0
    # a later step of the job with or without them: the environment it has serves (no line to GITHUB_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "ML_ENV_"))}
    for extras in ("demo", ""):
        again = subprocess.run(["bash", str(src / "ci/github/install.sh")], capture_output=True, text=True, timeout=60,
                               env={**env, "ML_ENV_SRC": str(src), "ML_ENV_BIN": f"{with_demo}/", "ML_ENV_EXTRAS": extras,
                                    "GITHUB_ENV": str(tmp_path / "later")})  # fmt: skip
        assert again.returncode == 0 and not (tmp_path / "later").exists(), again.stdout + again.stderr
    for bad in (f"demo]; touch {tmp_path}/pwned", "../x", "demo,,nox", "-e"):
        refused = subprocess.run(["bash", str(src / "ci/github/install.sh")], capture_output=True, text=True,
                                 timeout=60, env={**env, "ML_ENV_SRC": str(src), "ML_ENV_EXTRAS": bad})  # fmt: skip
        assert refused.returncode == 2 and "::error title=ml-env::extras:" in refused.stdout, (bad, refused.stdout)
        assert "touch" not in refused.stdout  # the value given is not echoed into a workflow command
    assert not (tmp_path / "pwned").exists()
