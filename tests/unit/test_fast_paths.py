"""The fast paths are exact: a remembered spec summary is used only while every file it came from
is unchanged; TOML readers never echo file content. No Docker here."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from ml_env_tasks import spec
from ml_env_tasks.build import speccache
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.errors import LogError, SpecError, UsageError
from ml_env_tasks.release.ledger import Ledger
from ml_env_tasks.safe.grammar import toml_error
from ml_env_tasks.settings.files import load_layers

SPEC = """
name = "fast"
[base]
image = "127.0.0.1:5000/base/debian-python:bookworm"
[python]
requirements = ["req.txt"]
packages = ["six"]
"""


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("ML_ENV_CONFIG", str(tmp_path / "no-user-config.toml"))
    monkeypatch.setenv("ML_ENV_SITE_CONFIG", str(tmp_path / "no-site-config.toml"))


def _old(*paths: Path) -> None:
    """Files last written a minute ago: old enough for their timestamps to be trusted."""
    t = time.time() - 60
    for p in paths:
        os.utime(p, (t, t))


def _project(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    f = tmp_path / "fast.toml"
    f.write_text(SPEC)
    req = tmp_path / "req.txt"
    req.write_text("tomli==2.0.2\n")
    _old(f, req)
    return f, req


def _remember(f: Path, locked: bool = False) -> str:
    env = spec.load(f, locked=locked)
    p = render(env)
    speccache.store(env, p.hash, p.python, locked=locked)
    return p.hash


def test_summary_is_used_while_nothing_changed(tmp_path: Path) -> None:
    f, _ = _project(tmp_path)
    h = _remember(f)
    s = speccache.lookup(f, locked=False)
    assert s is not None and s.hash == h and s.name == "fast"
    assert s.unpinned == ("six",)
    assert speccache.lookup(f, locked=True) is None  # --locked is another entry


@pytest.mark.parametrize("change", ["spec", "requirements", "requirements-removed", "code"])
def test_any_change_means_parsing_again(tmp_path: Path, change: str, monkeypatch: pytest.MonkeyPatch) -> None:
    f, req = _project(tmp_path)
    h = _remember(f)
    if change == "spec":
        f.write_text(SPEC.replace('"six"', '"six==1.16.0"'))
        _old(f)
    elif change == "requirements":
        req.write_text("tomli==2.0.1\n")  # same size, other content
        _old(req)
    elif change == "requirements-removed":
        req.unlink()
    else:
        monkeypatch.setattr(speccache, "_code_stamp", lambda: ["another version of the hashing code"])
    assert speccache.lookup(f, locked=False) is None
    if change in ("spec", "requirements"):
        assert _remember(f) != h  # and the full parse gives the new hash


def test_a_file_written_just_now_is_not_remembered(tmp_path: Path) -> None:
    f, req = _project(tmp_path)
    req.write_text("tomli==2.0.1\n")  # mtime now: within the racy window
    _remember(f)
    assert speccache.lookup(f, locked=False) is None


def test_a_corrupt_cache_entry_is_a_miss(tmp_path: Path) -> None:
    f, _ = _project(tmp_path)
    _remember(f)
    for entry in (tmp_path / "cache").rglob("*.json"):
        entry.write_text('{"code": "nope", "files": 3')
    assert speccache.lookup(f, locked=False) is None


# --- TOML readers: the line, never the content -------------------------------------------------

SECRET = "hunter2-do-not-echo"


def test_toml_error_names_the_line_not_the_content() -> None:
    import tomllib

    with pytest.raises(tomllib.TOMLDecodeError) as e:
        tomllib.loads(f'a = 1\ntoken = "{SECRET}" oops\n')
    what, line = toml_error(e.value)
    assert line == 2 and what.startswith("at line 2, column") and SECRET not in what


def test_spec_ledger_and_config_errors_do_not_echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = f'name = "x"\n[base]\nimage = "{SECRET}\n'
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    f = tmp_path / "env.toml"
    f.write_text(bad)
    with pytest.raises(SpecError) as se:
        spec.load(f)
    assert se.value.line == 3 and SECRET not in str(se.value)

    ledger = tmp_path / "releases.toml"
    ledger.write_text(f'[[promotion]]\ndigest = "{SECRET}\n')
    with pytest.raises(LogError) as le:
        Ledger(ledger).entries()
    assert le.value.line == 2 and SECRET not in str(le.value) and le.value.file == str(ledger)

    (tmp_path / "pyproject.toml").write_text(f'[tool.ml-env]\nregistry = "{SECRET}\n')
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as ce:
        load_layers()
    assert ce.value.line == 2 and SECRET not in str(ce.value)


def test_a_pyproject_without_our_table_is_not_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # another tool's broken pyproject.toml is that tool's problem, not a reason to stop ml-env
    (tmp_path / "pyproject.toml").write_text("[tool.other]\nx = = 1\n")
    monkeypatch.chdir(tmp_path)
    assert load_layers().project.path is None


def test_shell_completion_answers_from_every_command(tmp_path: Path) -> None:
    """argcomplete (register-python-argcomplete ml-env) completes commands and their flags."""
    import subprocess
    import sys

    def complete(line: str) -> list[str]:
        out = tmp_path / "completions"
        env = {**os.environ, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_IFS": "\n", "COMP_LINE": line,
               "COMP_POINT": str(len(line)), "_ARGCOMPLETE_STDOUT_FILENAME": str(out)}  # fmt: skip
        subprocess.run([sys.executable, "-m", "ml_env_tasks"], env=env, capture_output=True, timeout=60)
        return out.read_text().split("\n") if out.exists() else []

    assert {"build", "promote"} <= {c.strip() for c in complete("ml-env ")}
    assert "--pin-base" in {c.strip() for c in complete("ml-env build --pin")}


def test_the_base_label_is_asked_once_per_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reuse asks an image's recorded base once: the answer is kept by the image's digest (content
    never changes under it); anything but a digest in the label counts as none."""
    from ml_env_tasks.build import exists as reuse
    from ml_env_tasks.build.model import BuildOptions

    asked: list[str] = []
    labels = {"a": {reuse.BASE_DIGEST_LABEL: "sha256:" + "a" * 64}, "b": {reuse.BASE_DIGEST_LABEL: "x\n" * 9}}
    monkeypatch.setattr(reuse, "_image_labels", lambda ref, opts: asked.append(ref) or labels[ref])
    opts = BuildOptions()
    for _ in range(3):
        assert reuse._built_on("a", "sha256:" + "1" * 64, opts) == "sha256:" + "a" * 64
        assert reuse._built_on("b", "sha256:" + "2" * 64, opts) == ""
    assert asked == ["a", "b"]
    assert reuse._built_on("a", "sha256:../../x", opts) == "sha256:" + "a" * 64  # not a file name: asked again
    assert asked == ["a", "b", "a"]


@pytest.mark.parametrize(
    ("command", "pyproject", "expected", "source"),
    [
        (["train", "--source", ".", "--script", "t.py"], "", "curated/minimal", "default"),
        (["train", "--source", ".", "--script", "t.py"], 'train_env = "envs/t.toml"\n', "envs/t.toml", "project"),
        (["train", "--env", "x.toml", "--source", ".", "--script", "t.py"], 'train_env = "y"\n', "x.toml", "flag"),
        (["serve", "--entry", "s.py"], 'inference_env = "curated/sklearn-inference"\n', "curated/sklearn-inference",
         "project"),
        (["serve", "--entry", "s.py"], "", None, "default"),
        (["package", "--entry", "s.py"], 'inference_env = "i.toml"\ntrain_env = "t.toml"\n', "i.toml", "project"),
    ],
)  # fmt: skip
def test_the_environment_a_command_runs_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str], pyproject: str, expected: str | None,
    source: str,
) -> None:  # fmt: skip
    """Without --env, train runs in the default environment (Azure ML's habit), and a project names
    its own once in [tool.ml-env]: train_env for runs, inference_env for serving and packaging."""
    from ml_env_tasks.commands.parse import parse

    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'p'\n[tool.ml-env]\n{pyproject}")
    monkeypatch.chdir(tmp_path)
    values = parse(command).values
    assert values.env == expected and values.origin("env").source.value == source


def test_a_project_environment_is_found_from_a_subfolder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_env names a file of the project: relative to pyproject.toml, wherever the command runs."""
    from ml_env_tasks.commands.parse import parse

    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n[tool.ml-env]\ntrain_env = 'envs/t.toml'\n")
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "t.toml").write_text('name = "t"\n')
    (tmp_path / "src").mkdir()
    monkeypatch.chdir(tmp_path / "src")
    command = ["train", "--source", ".", "--script", "t.py"]
    assert Path(parse(command).values.env) == tmp_path / "envs" / "t.toml"


@pytest.mark.parametrize("where", ["project", "environment"])
def test_a_bad_setting_names_where_it_was_set(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An option's value the user did not type is named by its key and file (or variable) in the error."""
    from ml_env_tasks.fronts.cli import run

    tool = "require = ['bogus']\n" if where == "project" else ""
    (tmp_path / "pyproject.toml").write_text(f"[project]\nname = 'p'\n[tool.ml-env]\n{tool}")
    if where == "environment":
        monkeypatch.setenv("ML_ENV_LEDGER", "oci://u:secret@127.0.0.1:9/x")
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # never reached
    monkeypatch.chdir(tmp_path)
    assert run(["promote", "127.0.0.1:9/a/b:1", "127.0.0.1:9/c/d", "--tag", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "secret" not in err
    if where == "project":
        assert (
            err
            == f"ml-env: error: --require 'bogus': the gates are smoke-test, signed (set by require in project ({tmp_path / 'pyproject.toml'}))"
        )
    else:
        assert err.startswith("ml-env: error: --ledger oci://...: give") and err.endswith(
            "(set by environment (ML_ENV_LEDGER))"
        )
    # typed on the command line: no source said
    assert run(["promote", "127.0.0.1:9/a/b:1", "127.0.0.1:9/c/d", "--tag", "x", "--require", "nope"]) == 2
    assert capsys.readouterr().err.strip() == "ml-env: error: --require 'nope': the gates are smoke-test, signed"
