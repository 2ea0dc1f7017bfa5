"""Hostile or careless input, one test per finding: each ends in one clear error naming the file
or key, with an exit code, never a traceback, and never the content of a file it was pointed at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks import spec
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.errors import SpecError, UsageError
from ml_env_tasks.formats.azure import import_source

BASE = '[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n'
SECRET = "TOP-SECRET-LINE-4f1c"


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def one_clean_line(p: subprocess.CompletedProcess, code: int) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("ml-env")]
    assert len(lines) == 1, p.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()  # the project root
    (tmp_path / "envs").mkdir()
    return tmp_path


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("elsewhere") / "shadow"
    f.write_text(SECRET + ":$y$j9T$hash:19000:0:99999:7:::\n")
    return f


# --- finding 3: newline injection into the Dockerfile ------------------------------------


@pytest.mark.parametrize(
    "toml,key",
    [
        ('[apt]\npackages = ["bash\\n", "run", "touch", "zz-pwned"]\n', "apt.packages[0]"),
        ('[apt]\npackages = ["bash\\nRUN touch /zz"]\n', "apt.packages[0]"),
        ('[env]\n"A\\nRUN touch /zz" = "1"\n', "env."),
        ('[env]\nA = "1\\nRUN touch /zz"\n', "env.A"),
        ('[docker.build_args]\n"X\\n" = "1"\n', "docker.build_args."),
        ('[labels]\n"a.b\\n" = "1"\n', "labels."),
        ('[python]\ninterpreter = "python3\\n"\n', "python.interpreter"),
        ('[docker]\nshm_size = "1g\\n"\n', "docker.shm_size"),
    ],
)
def test_no_value_can_add_an_instruction(project: Path, toml: str, key: str) -> None:
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n' + BASE + toml)
    with pytest.raises(SpecError) as exc:
        spec.load(f)
    assert key in str(exc.value)


def test_name_with_trailing_newline(project: Path) -> None:
    f = project / "envs/e.toml"
    f.write_text('name = "e\\n"\n' + BASE)
    with pytest.raises(SpecError, match="name"):
        spec.load(f)


def test_the_renderer_itself_refuses_a_control_character(project: Path) -> None:
    import dataclasses

    f = project / "envs/e.toml"
    f.write_text('name = "e"\n' + BASE + '[apt]\npackages = ["curl"]\n')
    env = dataclasses.replace(spec.load(f), apt=("curl\nRUN touch /zz",))
    with pytest.raises(SpecError, match="control character"):
        render(env)


# --- findings 4 and 5: paths outside the project -----------------------------------------


@pytest.mark.parametrize("key", ["requirements", "conda_file", "wheels", "dockerfile"])
def test_paths_outside_the_project_are_refused(project: Path, outside: Path, key: str) -> None:
    f = project / "envs/e.toml"
    rel = os.path.relpath(outside, f.parent)
    body = {
        "requirements": f'[base]\nimage = "a/b:1"\n[python]\nrequirements = ["{rel}", "{outside}"]\n',
        "conda_file": f'[base]\nimage = "a/b:1"\n[python]\nconda_file = "{outside}"\n',
        "wheels": f'[base]\nimage = "a/b:1"\n[python]\nwheels = ["{rel}.whl"]\n',
        "dockerfile": f'[base]\ndockerfile = "{outside}"\n',
    }[key]
    if key == "wheels":
        Path(str(outside) + ".whl").write_bytes(b"PK" + SECRET.encode())
    f.write_text('name = "e"\n' + body)
    p = cli("plan", str(f))
    line = one_clean_line(p, 2)
    assert "outside the project" in line and SECRET not in p.stderr + p.stdout


def test_a_symlink_inside_the_project_pointing_out_is_refused(project: Path, outside: Path) -> None:
    (project / "envs/requirements").mkdir()
    os.symlink(outside, project / "envs/requirements/r.txt")
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n' + BASE + '[python]\nrequirements = ["requirements/r.txt"]\n')
    with pytest.raises(SpecError, match="outside the project") as exc:
        spec.load(f)
    assert SECRET not in str(exc.value)


def test_a_base_dockerfile_error_never_quotes_the_file(project: Path) -> None:
    df = project / "envs/Dockerfile"
    df.write_text(SECRET + ":x:0:0\n")
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n[base]\ndockerfile = "Dockerfile"\n')
    p = cli("plan", str(f))
    line = one_clean_line(p, 2)
    assert "line 1 is not a Dockerfile instruction" in line and SECRET not in p.stderr


@pytest.mark.parametrize(
    "text,why",
    [
        ("FROM a\nRUN true \\\n", "continuation"),
        ("FROM a\nRUN <<EOF\necho hi\n", "never closed"),
        ("# escape=`\nFROM a\n", "escape"),
    ],
)
def test_a_base_dockerfile_cannot_reach_past_its_end(project: Path, text: str, why: str) -> None:
    f = project / "envs/e.toml"
    f.write_text("name = 'e'\n[base]\ndockerfile_text = '''" + text + "'''\n")
    with pytest.raises(SpecError, match=why):
        spec.load(f)


# --- finding 8: YAML bombs and huge files ------------------------------------------------

BOMB = "name: bomb\ndependencies:\n  - pip: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"  - pip: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_a_yaml_alias_bomb_is_refused_on_import_and_as_a_conda_file(project: Path) -> None:
    (project / "bomb.yml").write_text(BOMB)
    with pytest.raises(SpecError, match="expands to more than"):
        import_source(project / "bomb.yml")
    (project / "envs/bomb.yml").write_text(BOMB)
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n[base]\nimage = "a/b:1"\n[python]\nconda_file = "bomb.yml"\n')
    p = cli("plan", str(f))
    line = one_clean_line(p, 2)
    assert "expands to more than" in line and len(p.stderr) < 1000


def test_a_huge_conda_file_gives_a_bounded_error_line(project: Path) -> None:
    deps = "".join(f"  - unknownpkg{i}\n" for i in range(400_000))
    (project / "envs/big.yml").write_text("dependencies:\n" + deps)
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n[base]\nimage = "a/b:1"\n[python]\nconda_file = "big.yml"\n')
    p = cli("plan", str(f))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert max(len(x) for x in p.stderr.splitlines()) <= 2200


# --- finding 9: secrets in a requirement URL ---------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        "foo @ https://host/x.whl?token=SECRET",
        "foo @ https://user:SECRET@host/x.whl",
        "foo @ https://SECRET@host/x.whl",
    ],
)
def test_a_requirement_url_with_a_token_is_refused(project: Path, req: str) -> None:
    f = project / "envs/e.toml"
    f.write_text('name = "e"\n' + BASE + f'[python]\npackages = ["{req}"]\n')
    p = cli("hash", str(f))
    line = one_clean_line(p, 2)
    assert "credentials or a query string" in line and "SECRET" not in p.stderr


# --- low: tracebacks, exit codes, credentials echoed -------------------------------------


@pytest.mark.parametrize(
    "args,code,needle",
    [
        (["serve", "--env", "x.toml", "--entry", "s.py", "--port", "70000"], 2, "0 to 65535"),
        (["train", "--env", "x.toml", "--source", ".", "--script", "t.py", "--memory", "abc"], 2, "not a size"),
        (["train", "--env", "x.toml", "--source", ".", "--script", "t.py", "--shm-size", "1zz"], 2, "not a size"),
        (["hash", "a\x01b.toml"], 2, "control characters"),
        (["runs", "show", "../../x"], 2, "not a run id"),
        (["build", "e.toml", "--registry", "alice:pw@host"], 2, "without a scheme or credentials"),
        (["promote", "a.io/b:1", "https://alice:pw@c.io/d", "--tag", "prod"], 2, "credentials"),
        (["promote", "a.io/b:1", "c.io/d", "--tag", "prod\n"], 2, "control characters"),
        (["promote", "a.io/b:1", "c.io/d", "--tag", "bad tag"], 2, "not a valid tag"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    p = cli(*args, cwd=tmp_path)
    assert p.returncode == code, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr
    assert "pw@" not in p.stderr and "alice:pw" not in p.stderr


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "x", "docker": [1]}',
        '{"name": "x", "docker": {"baseImage": [1, 2]}}',
        '{"name": "x", "docker": {"baseImage": "a/b:1"}, "python": "nope"}',
        '{"name": "x", "docker": {"baseImage": "a/b:1"}, "environmentVariables": [1]}',
        "[1, 2, 3]",
        "not json",
    ],
)
def test_wrong_types_in_a_v1_file(tmp_path: Path, text: str) -> None:
    d = tmp_path / "v1"
    d.mkdir()
    (d / "azureml_environment.json").write_text(text)
    one_clean_line(cli("import", str(d)), 2)


@pytest.mark.parametrize(
    "text",
    [
        "image: [1, 2]\nname: x\n",
        "build: 5\nname: x\n",
        "- a\n- b\n",
        "name: x\nimage: a/b:1\ntags: [1]\n",
        "name: [1]\nimage: a/b:1\n",
    ],
)
def test_wrong_types_in_a_v2_file(tmp_path: Path, text: str) -> None:
    (tmp_path / "env.yml").write_text(text)
    one_clean_line(cli("import", str(tmp_path / "env.yml")), 2)


def test_importer_names_ip_registries_with_a_valid_variable(tmp_path: Path) -> None:
    d = tmp_path / "v1"
    d.mkdir()
    (d / "azureml_environment.json").write_text(
        json.dumps(
            {
                "name": "x",
                "docker": {
                    "baseImage": "127.0.0.1:5001/a/b:1",
                    "baseImageRegistry": {"address": "127.0.0.1:5001", "username": "u", "password": "pw-secret"},
                },
                "python": {"userManagedDependencies": True},
            }
        )
    )
    out = tmp_path / "out" / "x.toml"
    p = cli("import", str(d), "-o", str(out))
    assert p.returncode == 0, p.stderr
    env = spec.load(out)
    assert env.base.registry.password_env == "REGISTRY_127_0_0_1_5001_PASSWORD"
    assert "pw-secret" not in out.read_text()


def test_a_malformed_run_record_is_skipped_not_a_crash(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for name, body in {"a_1": "not json", "b_2": "[]", "c_3": '{"run_id": "c_3", "status": "weird"}'}.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "run.json").write_text(body)
    p = cli("runs", "list", "--runs-dir", str(runs))
    assert p.returncode == 0 and "Traceback" not in p.stderr and p.stderr.count("skipped") == 3
    one_clean_line(cli("runs", "show", "a_1", "--runs-dir", str(runs)), 2)


@pytest.mark.parametrize(
    "text",
    [
        '[[promotion]]\ntime = 1\ndigest = "sha256:x"\ndestination = "d"\ntags = ["a"]\n',
        '[[promotion]]\ntime = "t"\ndigest = "d"\ndestination = "d"\ntags = "prod"\n',
        "promotion = 5\n",
        "[[promotion]\n",
    ],
)
def test_wrong_types_in_the_ledger(tmp_path: Path, text: str) -> None:
    (tmp_path / "releases.toml").write_text(text)
    line = one_clean_line(cli("ledger", "show", "--ledger", str(tmp_path / "releases.toml")), 2)
    assert "releases.toml" in line


def test_ledger_show_escapes_what_came_from_outside(tmp_path: Path) -> None:
    from ml_env_tasks.release.ledger import Ledger, Promotion

    f = tmp_path / "releases.toml"
    Ledger(f).append(
        Promotion(time="t", digest="sha256:" + "a" * 64, destination="r/x", tags=("prod",), actor="eve\nFORGED LINE")
    )
    p = cli("ledger", "show", "--ledger", str(f))
    assert p.returncode == 0 and len(p.stdout.strip().splitlines()) == 1 and "eve\\x0aFORGED" in p.stdout


def test_an_unexpected_error_is_one_line_exit_70(tmp_path: Path) -> None:
    """A bug shows where it is, not what it says (the text could hold anything)."""
    code = (
        "import dataclasses, sys\n"
        "import ml_env_tasks.fronts.cli as c\n"
        "import ml_env_tasks.commands.build as b\n"
        "def boom(values, io):\n"
        "    raise KeyError('SECRET-IN-A-BUG')\n"
        "b.COMMANDS['explain'] = dataclasses.replace(b.COMMANDS['explain'], run=boom)\n"
        "sys.exit(c.run(['explain', 'a.toml', 'b.toml']))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    line = one_clean_line(p, 70)
    assert "internal error: KeyError" in line and "ML_ENV_DEBUG=1" in line and "SECRET" not in p.stderr
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "ML_ENV_DEBUG": "1"},
    )
    assert p.returncode == 70 and "Traceback" in p.stderr


def test_a_get_restore_never_writes_outside_its_folder(tmp_path: Path) -> None:
    from ml_env_tasks.catalog.versions import VersionEntry, Versions

    v = Versions(tmp_path / "versions.toml")
    v.append_raw(
        VersionEntry("e", 1, "a" * 64, "", "i", "", "t", 'name = "e"\n', files={"../../escape.txt": "x"}).to_dict()
    )
    with pytest.raises(UsageError, match="outside"):
        v.write_back(v.get("e:1"), tmp_path / "out" / "e.toml")
    assert not (tmp_path.parent / "escape.txt").exists()


@pytest.mark.parametrize("name", ["--help", "-x", "a b", "x;rm", "../b", "", "é"])
def test_a_builder_name_is_a_name_before_anything_runs(name: str) -> None:
    """--builder reaches the docker CLI as an argument: an option or anything but a name is one
    line, exit 2, before buildx is asked."""
    from ml_env_tasks.engine import Engine
    from ml_env_tasks.errors import UsageError

    with pytest.raises(UsageError, match="is not a buildx builder name"):
        Engine().capabilities(name)


def test_a_folder_named_as_an_environment_is_said_before_any_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--env envs (a folder) was taken as a Docker Hub image: seconds of retries, then exit 4."""
    from ml_env_tasks.build.resolve import resolve_environment
    from ml_env_tasks.errors import UsageError

    (tmp_path / "envs").mkdir()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError, match="'envs' is a folder here"):
        resolve_environment("envs", None)
