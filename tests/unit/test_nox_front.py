"""The reusable nox sessions, run as a user would: a temp project with its own noxfile."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ml_env_tasks import spec
from ml_env_tasks.spec.hashing import env_hash


def _json_line(out: str) -> str:
    """The one JSON line of an action's output (its text sits between stop-commands markers)."""
    return next(x for x in out.splitlines() if x.startswith("{"))


REGISTER_ALL = "import ml_env_tasks.nox\nml_env_tasks.nox.register()\n"


def nox(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nox", *args], cwd=project, capture_output=True, text=True, timeout=120
    )


def test_import_gives_sessions_that_call_the_core(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text(REGISTER_ALL)
    (tmp_path / "envs").mkdir()
    f = tmp_path / "envs" / "tiny.toml"
    f.write_text('name = "tiny"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    # not default sessions (a bare `nox` must not start a build): the ml-env tag selects them
    assert json.loads(nox(tmp_path, "-l", "--json").stdout) == []
    listing = json.loads(nox(tmp_path, "-l", "--json", "-t", "ml-env").stdout)
    names = {s["session"]: s for s in listing}
    assert {
        "env_build(env='tiny')",
        "env_plan(env='tiny')",
        "env_hash(env='tiny')",
        "env_matrix",
        "train",
        "promote",
    } <= set(names)
    assert names["env_build(env='tiny')"]["description"].startswith("Build an environment image")
    assert "ml-env" in names["env_build(env='tiny')"]["tags"]
    p = nox(tmp_path, "-s", "env_hash", "--", "envs/tiny.toml")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == env_hash(spec.load(f))


def test_user_error_fails_the_session_with_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "noxfile.py").write_text(REGISTER_ALL)
    (tmp_path / "bad.toml").write_text('name = "x"\n[base]\nimage = "a/b:1"\n[apt]\npackages = ["Bad"]\n')
    p = nox(tmp_path, "-s", "env_plan", "--", "bad.toml")
    assert p.returncode != 0
    assert "ml-env: error: bad.toml: apt.packages[0]:" in p.stderr
    assert "Traceback" not in p.stderr


def project(tmp_path: Path, noxfile: str, envs_dir: str = "envs") -> Path:
    (tmp_path / "noxfile.py").write_text(noxfile)
    d = tmp_path / envs_dir
    d.mkdir()
    for name in ("alpha", "beta"):
        (d / f"{name}.toml").write_text(
            f'name = "{name}"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n[env]\nX = "{name}"\n'
        )
    return tmp_path


def test_register_subset_renamed_in_another_folder(tmp_path: Path) -> None:
    p = project(
        tmp_path,
        "import ml_env_tasks.nox\nml_env_tasks.nox.register(prefix='ml-', only=['env_build', 'env_hash', 'train'], envs='environments/')\n",
        "environments",
    )
    listing = json.loads(nox(p, "-l", "--json", "-t", "ml-env").stdout)
    sessions = sorted(s["session"] for s in listing)
    assert sessions == [
        "ml-env_build(env='alpha')", "ml-env_build(env='beta')", "ml-env_hash(env='alpha')", "ml-env_hash(env='beta')", "ml-train",
    ]  # fmt: skip
    assert all(s["tags"] == ["ml-env"] and s["description"] for s in listing)
    one = nox(p, "-s", "ml-env_hash(env='beta')")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == env_hash(spec.load(p / "environments/beta.toml"))
    both = nox(p, "-s", "ml-env_hash")
    assert both.stdout.split() == [env_hash(spec.load(p / f"environments/{n}.toml")) for n in ("alpha", "beta")]


def test_env_matrix_for_github_actions(tmp_path: Path) -> None:
    p = project(tmp_path, REGISTER_ALL)
    out_file = tmp_path / "gh_output"
    out_file.write_text("")
    r = subprocess.run([sys.executable, "-m", "nox", "-s", "env_matrix"], cwd=p, capture_output=True, text=True, timeout=120,
                       env={**__import__("os").environ, "GITHUB_OUTPUT": str(out_file)})  # fmt: skip
    matrix = json.loads(r.stdout.strip().splitlines()[-1])
    assert [m["env"] for m in matrix["include"]] == ["alpha", "beta"]
    assert matrix["include"][0]["spec"] == "envs/alpha.toml"
    assert out_file.read_text() == f"matrix={json.dumps(matrix)}\n"


def test_matrix_action_is_the_same_matrix(tmp_path: Path, monkeypatch) -> None:
    """The reusable workflow's matrix job (python -m ml_env_tasks.fronts.gha matrix) gives what the nox
    session gives, without nox; a broken environment file fails it with the file named."""
    envs = tmp_path / "envs"
    envs.mkdir()
    for n in ("beta", "alpha"):
        (envs / f"{n}.toml").write_text(f'name = "{n}"\n[base]\nimage = "python:3.11-slim-bookworm"\n')
    out_file = tmp_path / "out"
    env = {**os.environ, "INPUT_ENVS": str(envs), "GITHUB_OUTPUT": str(out_file)}
    r = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks.fronts.gha", "matrix"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    matrix = json.loads(_json_line(r.stdout))
    assert [m["env"] for m in matrix["include"]] == ["alpha", "beta"]
    assert out_file.read_text() == f"matrix={json.dumps(matrix)}\n"
    (envs / "gamma.toml").write_text('name = "gamma"\n[base]\nimage = "x"\n[apt]\npackages = ["Bad Name"]\n')
    r = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks.fronts.gha", "matrix"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "gamma.toml" in r.stderr and "Traceback" not in r.stderr


def test_matrix_action_refuses_a_folder_without_environments(tmp_path: Path) -> None:
    # (a NUL cannot reach an environment variable at all)
    for bad in (str(tmp_path / "missing"), "a\nb", "../../etc"):
        env = {**os.environ, "INPUT_ENVS": bad, "GITHUB_OUTPUT": str(tmp_path / "out")}
        r = subprocess.run([sys.executable, "-m", "ml_env_tasks.fronts.gha", "matrix"], env=env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        why = "control characters" if "\n" in bad else "no environment files"
        assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_versions_file_beside_the_environments_is_not_one(tmp_path: Path) -> None:
    """`ml-env register` writes envs/versions.toml: the matrix (action and nox) and the nox
    sessions list the environments only; a broken environment is still one line, no traceback."""
    from ml_env_tasks.catalog.versions import Versions
    from ml_env_tasks.commands.build import environments

    p = project(tmp_path, REGISTER_ALL)
    Versions(p / "envs/versions.toml").register(
        spec.load(p / "envs/alpha.toml"), image="r/alpha:h", digest="sha256:1", registry="r"
    )
    assert environments(p / "envs") == ["alpha", "beta"]
    env = {**os.environ, "INPUT_ENVS": "envs", "GITHUB_OUTPUT": str(tmp_path / "out")}
    r = subprocess.run([sys.executable, "-m", "ml_env_tasks.fronts.gha", "matrix"], cwd=p, env=env, capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [m["env"] for m in json.loads(_json_line(r.stdout))["include"]] == ["alpha", "beta"]
    listing = {s["session"] for s in json.loads(nox(p, "-l", "--json", "-t", "ml-env").stdout)}
    assert "env_build(env='alpha')" in listing and not any("versions" in s for s in listing)
    m = nox(p, "-s", "env_matrix")
    assert m.returncode == 0, m.stderr
    assert [e["env"] for e in json.loads(m.stdout.strip().splitlines()[-1])["include"]] == ["alpha", "beta"]
    (p / "envs/gamma.toml").write_text('name = "gamma"\n[base]\nimage = "x"\n[apt]\npackages = ["Bad Name"]\n')
    bad = nox(p, "-s", "env_matrix")
    assert bad.returncode != 0 and "ml-env: error: envs/gamma.toml: apt.packages[0]:" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_only_an_append_only_log_counts_as_one(tmp_path: Path) -> None:
    from ml_env_tasks.safe.tomllog import is_log_file

    cases = {
        "ledger.toml": ("# header\n[[promotion]]\ndigest = 'sha256:1'\n", True),
        "env.toml": ('name = "e"\n[base]\nimage = "a/b:1"\n', False),
        "broken.toml": ("[[environment]\n", False),  # the loader names what is wrong
        "empty.toml": ("# only a comment\n", False),
        "mixed.toml": ('name = "e"\n[[environment]]\nname = "e"\n', False),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert is_log_file(tmp_path / name) is expected, name
    assert is_log_file(tmp_path / "missing.toml") is False


def test_a_guest_in_someone_elses_noxfile(tmp_path: Path) -> None:
    """Importing registers nothing; register() refuses to replace the user's own sessions; under
    --quiet no third-party debug line reaches the output; a failure says ml-env's exit code."""
    own = (
        "import nox\n\n@nox.session(venv_backend='none')\ndef train(session):\n    print('users own train')\n\n"
        "@nox.session(venv_backend='none')\ndef build(session):\n    print('users own build')\n\n"
    )
    p = project(tmp_path, own + "import ml_env_tasks.nox  # noqa: F401\n")
    listing = {s["session"] for s in json.loads(nox(p, "-l", "--json").stdout)}
    assert listing == {"train", "build"}  # the import alone added nothing
    (p / "noxfile.py").write_text(own + "import ml_env_tasks.nox\nml_env_tasks.nox.register()\n")
    refused = nox(p, "-l")
    assert refused.returncode != 0 and "already has session(s) ['train']" in refused.stderr
    assert "prefix" in refused.stderr
    (p / "noxfile.py").write_text(own + "import ml_env_tasks.nox\nml_env_tasks.nox.register(prefix='ml-')\n")
    mine = nox(p, "-s", "train")
    assert mine.returncode == 0 and "users own train" in mine.stdout + mine.stderr
    assert "has already been registered" not in mine.stderr
    ok = nox(p, "-v", "-s", "ml-env_plan(env='alpha')")
    assert ok.returncode == 0, ok.stderr
    for noisy in ("python_on_whales", "py_serializable", "Running command", "DEBUG"):
        assert noisy not in ok.stdout + ok.stderr, noisy
    (p / "envs/bad.toml").write_text('name = "x"\n[base]\nimage = "a/b:1"\n[apt]\npackages = ["Bad"]\n')
    bad = nox(p, "-s", "ml-env_plan", "--", "envs/bad.toml")
    assert bad.returncode != 0
    assert "failed: exit 2, bad input" in bad.stderr and "Traceback" not in bad.stderr
