"""Imported and curated environments build on the real lab; versions through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks.build import build
from ml_env_tasks.catalog import clone
from ml_env_tasks.engine import Engine

from .helpers import ml_env

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


def test_conda_file_with_pinned_packages_builds_and_imports(ws) -> None:
    (ws.dir / "conda.yml").write_text(
        "name: project_environment\nchannels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - pip\n"
        "  - numpy=2.1.3\n  - scipy=1.14.1\n  - scikit-learn=1.5.2\n  - pip:\n    - tomli==2.0.2\n"
    )
    f = ws.spec(
        f'name = "condaenv"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n[python]\nconda_file = "conda.yml"\n'
    )
    p = ml_env("build", str(f), *ws.cli_args(), "--quiet", "--json")
    assert p.returncode == 0, p.stderr
    assert "conda packages installed from PyPI" in p.stderr and "numpy=2.1.3 -> numpy==2.1.3" in p.stderr
    image = json.loads(p.stdout)["image"]
    out = Engine().run_capture(
        image,
        [
            "/opt/ml-env/bin/python",
            "-c",
            "import numpy, scipy, sklearn, tomli; print(numpy.__version__, scipy.__version__, sklearn.__version__)",
        ],
    )
    assert out.split() == ["2.1.3", "1.14.1", "1.5.2"]


def test_curated_environments_build(ws) -> None:
    for name in ("minimal", "sklearn"):
        r = build(ROOT / f"envs/curated/{name}.toml", ws.opts(repository=f"{ws.repo}/{name}"))
        ws.extra_repos.append((ws.lab["registry"], f"{ws.repo}/{name}"))
        assert r.digest
    cloned = clone("curated/minimal", "my-minimal", ws.dir / "envs")
    assert build(cloned, ws.opts()).digest
    # a run that names no environment runs in curated/minimal (built above: reused), and says so
    src = ws.dir / "src"
    src.mkdir()
    (src / "t.py").write_text("import sys\nprint('ran on', sys.version_info[:2])\n")
    args = [a if a != ws.repo else f"{ws.repo}/minimal" for a in ws.cli_args()]
    ran = ml_env("train", "--source", str(src), "--script", "t.py", *args, "--runs-dir", str(ws.dir / "runs"), "--json")
    assert ran.returncode == 0, ran.stderr
    assert "no --env: the run uses curated/minimal" in ran.stderr and "ran on (3, 11)" in ran.stderr
    assert json.loads(ran.stdout)["environment"]["name"] == "ml-env-minimal", ran.stdout


def test_register_list_get_diff_through_the_cli(ws) -> None:
    f = ws.spec(
        f'name = "versioned"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nV = "1"\n',
        name="envs/versioned.toml",
    )
    versions = str(ws.dir / "envs/versions.toml")
    args = ["--versions", versions]
    one = ml_env("register", str(f), *ws.cli_args(), *args, "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["version"] == 1 and json.loads(one.stdout)["digest"].startswith("sha256:")
    one_hash = json.loads(one.stdout)["hash"]
    again = json.loads(ml_env("register", str(f), *ws.cli_args(), *args, "--json").stdout)
    assert again["version"] == 1 and again["created"] is False
    f.write_text(f.read_text().replace('V = "1"', 'V = "2"'))
    two = json.loads(ml_env("register", str(f), *ws.cli_args(), *args, "--json").stdout)
    assert two["version"] == 2 and two["hash"] != again["hash"]
    listing = json.loads(ml_env("list", *args, "--json").stdout)
    assert [(e["name"], e["version"]) for e in listing["registered"]] == [("versioned", 2)]
    assert "curated/sklearn" in listing["curated"]
    got = ml_env("get", "versioned:1", *args)
    assert 'V = "1"' in got.stdout
    diff = ml_env("diff", "versioned:1", "versioned:2", *args)
    assert diff.returncode == 0 and diff.stdout.strip() == 'env.V: "1" -> "2"'
    out = ws.dir / "restored"  # -o names a folder, as Azure's -d does
    assert ml_env("get", "versioned:1", "-o", str(out), *args).returncode == 0
    assert ml_env("hash", str(out / "versioned.toml")).stdout.strip() == again["hash"]
    refused = ml_env("get", "versioned:2", "-o", str(out), *args)
    assert refused.returncode == 2 and "not overwriting" in refused.stderr and "--force" in refused.stderr
    assert ml_env("get", "versioned:2", "-o", str(out), "--force", *args).returncode == 0
    assert ml_env("hash", str(out / "versioned.toml")).stdout.strip() == two["hash"]
    # NAME:VERSION is accepted where an environment is: the registered file, its image
    from ml_env_tasks.build.resolve import resolve_environment

    r = resolve_environment("versioned:1", ws.opts(), versions=Path(versions))
    assert r.hash == one_hash and r.digest == json.loads(one.stdout)["digest"] and not r.built
