"""Every check that can fail runs before the first build step, for every command that builds
(build, register, train, package, serve, smoke-test). Reported: a wheel outside the environment's
folder was accepted by `build`, then refused by `register` after 66 s of build and push.

Here a build is a sentinel that records it was asked for and stops the command: each bad input
must be refused, in one line naming it, with nothing built."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from ml_env_tasks.errors import UsageError

BASE = 'name = "{name}"\n[base]\nimage = "127.0.0.1:9/base/python:3"\n'


@pytest.fixture
def builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The builds asked for (each stops the command with "BUILD STARTED"); a project in tmp_path."""
    from ml_env_tasks import build

    asked: list[str] = []

    def sentinel(env_or_path: object, *_a: object, **_k: object) -> None:
        asked.append(str(getattr(env_or_path, "name", env_or_path)))
        raise UsageError("BUILD STARTED")

    monkeypatch.setattr(build, "build_env", sentinel)
    monkeypatch.setattr(build, "build", sentinel)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # nothing reaches an engine
    monkeypatch.delenv("ML_ENV_REGISTRY", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    (tmp_path / "envs").mkdir()
    (tmp_path / "envs" / "e.toml").write_text(BASE.format(name="e"))
    (tmp_path / "envs" / "i.toml").write_text(BASE.format(name="i") + "inference = true\n")
    (tmp_path / "envs" / "az.toml").write_text(BASE.format(name="az") + '[inference]\nserver = "azureml"\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "t.py").write_text("print(1)\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("1")
    return asked


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from ml_env_tasks.fronts.cli import run

    code = run(argv)
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return code, err


def test_the_build_sentinel_is_reached_when_nothing_is_wrong(builds: list[str], capsys) -> None:
    assert refused(["train", "--env", "envs/e.toml", "--source", "src", "--script", "t.py"], capsys)[0] == 2
    assert builds == ["e"]


def test_register_refuses_a_wheel_outside_the_folder_before_building(builds: list[str], tmp_path: Path,
                                                                     capsys) -> None:  # fmt: skip
    from tests.docker.helpers import make_wheel

    make_wheel(tmp_path, "outside", "1.0")
    (tmp_path / "envs" / "w.toml").write_text(
        BASE.format(name="w") + '[python]\nwheels = ["../outside-1.0-py3-none-any.whl"]\n'
    )
    code, err = refused(["register", "envs/w.toml"], capsys)
    assert code == 2 and "envs/w.toml: python.wheels: wheel" in err and "outside the environment's directory" in err
    assert builds == []
    (tmp_path / "envs" / "versions.toml").write_text("[[environment]]\nname = 1\n")
    code, err = refused(["register", "envs/e.toml"], capsys)  # a versions file that does not read
    assert code == 2 and "versions.toml" in err and builds == []


def test_signing_without_cosign_is_refused_before_building(builds: list[str], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # fmt: skip
    monkeypatch.setenv("ML_ENV_COSIGN", str(tmp_path / "no-cosign"))
    (tmp_path / "cosign.key").write_text("k")
    code, err = refused(["build", "envs/e.toml", "--registry", "127.0.0.1:9", "--sign-key", "cosign.key"], capsys)
    assert code == 3 and "cosign is not installed" in err and builds == []
    code, err = refused(["package", "--env", "envs/i.toml", "--entry", "app/score.py", "--model", "model",
                         "--registry", "127.0.0.1:9", "--sign-key", "cosign.key"], capsys)  # fmt: skip
    assert code == 3 and "cosign is not installed" in err and builds == []


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--runs-dir", "afile"], "--runs-dir afile: cannot make a run folder there"),
        (["--runner", "kubernetes", "--registry", "127.0.0.1:9", "--emit", "nowhere/job.yaml"],
         "--emit nowhere/job.yaml: the folder nowhere does not exist"),
    ],
    ids=["runs-dir", "emit"],
)  # fmt: skip
def test_train_refuses_what_would_stop_the_run_before_building(
    builds: list[str], tmp_path: Path, capsys, extra: list[str], message: str
) -> None:
    (tmp_path / "afile").write_text("")
    code, err = refused(["train", "--env", "envs/e.toml", "--source", "src", "--script", "t.py", *extra], capsys)
    assert code == 2 and message in err and builds == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may give a folder to any uid")
def test_train_refuses_a_user_it_cannot_give_the_outputs_to_before_building(builds: list[str], capsys) -> None:
    code, err = refused(["train", "--env", "envs/e.toml", "--source", "src", "--script", "t.py",
                         "--user", "4242:4242"], capsys)  # fmt: skip
    assert code == 2 and "--user 4242:4242: cannot give the outputs directory" in err and builds == []


def test_package_reads_its_entry_models_and_repository_before_building(builds: list[str], tmp_path: Path,
                                                                       capsys) -> None:  # fmt: skip
    pkg = ["package", "--env", "envs/i.toml", "--entry", "app/score.py", "--registry", "127.0.0.1:9"]
    code, err = refused([*pkg, "--model", "./gone"], capsys)
    assert code == 2 and "--model ./gone: no such folder" in err
    code, err = refused([*pkg, "--model", "model", "--package-repository", "Bad Repo"], capsys)
    assert code == 2 and "not a valid image reference" in err
    (tmp_path / "model" / "w.txt").unlink()
    code, err = refused([*pkg, "--model", "model"], capsys)
    assert code == 2 and "model folder model has no files" in err
    (tmp_path / "model" / "w.txt").write_text("1")
    (tmp_path / "app" / ".amlignore").write_text("score.py\n")
    code, err = refused([*pkg, "--model", "model"], capsys)
    assert code == 2 and "excluded by the folder's ignore file" in err
    assert builds == []


def test_serve_and_smoke_test_refuse_before_building(builds: list[str], tmp_path: Path, capsys) -> None:
    serve = ["serve", "--entry", "app/score.py", "--model", "model"]  # the port: 0 unless said
    code, err = refused([*serve, "--env", "envs/i.toml", "--read-timeout", "9999", "--port", "0"], capsys)
    assert code == 2 and "--read-timeout must be between 0 and 3600 seconds" in err
    code, err = refused([*serve, "--env", "envs/az.toml", "--max-body", "1m", "--port", "0"], capsys)
    assert code == 2 and "this image runs azmlinfsrv" in err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, err = refused([*serve, "--env", "envs/i.toml", "--port", str(port)], capsys)
    assert code == 2 and f"port {port} on 127.0.0.1 is taken" in err
    code, err = refused([*serve, "--env", "envs/i.toml", "--name", "not a name", "--port", "0"], capsys)
    assert code == 2 and "service name 'not a name' is not valid" in err
    (tmp_path / "cases.jsonl").write_text('{"request": {"x": 1}}\n')
    (tmp_path / "afile").write_text("")
    smoke = ["smoke-test", "--env", "envs/i.toml", "--entry", "app/score.py", "--model", "model",
             "--cases", "cases.jsonl"]  # fmt: skip
    code, err = refused([*smoke, "--report-dir", "afile/reports"], capsys)
    assert code == 2 and "--report-dir afile/reports: cannot make it" in err
    (tmp_path / "app" / ".amlignore").write_text("score.py\n")
    code, err = refused([*smoke, "--no-record"], capsys)
    assert code == 2 and "is ignored by its folder's ignore file" in err
    assert builds == []


def test_train_asks_the_engine_for_gpus_and_volumes_before_building(builds: list[str], monkeypatch, capsys) -> None:
    from ml_env_tasks import engine

    class Containers:
        def gpus_available(self) -> bool:
            return False

        def volume_exists(self, name: str) -> bool:
            return name == "there"

    class Endpoint:
        local = True

        def describe(self) -> str:
            return "the test's engine"

    class Engine:
        containers, endpoint = Containers(), Endpoint()

    monkeypatch.setattr(engine, "current", lambda: Engine())
    train = ["train", "--env", "envs/e.toml", "--source", "src", "--script", "t.py"]
    code, err = refused([*train, "--gpus", "all"], capsys)
    assert code == 3 and "--gpus all asked for, but this engine has no GPU" in err
    code, err = refused([*train, "--input", "data=volume:gone"], capsys)
    assert code == 3 and "input data: the engine (the test's engine) has no volume gone" in err
    assert builds == []
    assert refused([*train, "--input", "data=volume:there"], capsys)[1] == "ml-env: error: BUILD STARTED"


def test_train_asks_the_model_registry_before_building(builds: list[str], monkeypatch, capsys) -> None:
    """--register-model registers at the end of the run: a registry that is down or refuses the
    credentials is said before the build and the run, not after hours of training."""
    from ml_env_tasks.errors import RegistryError
    from ml_env_tasks.registry import RegistryClient

    def refuse(self: RegistryClient, repository: str) -> list[str]:
        raise RegistryError(f"registry {self.host} refused the credentials for {repository}")

    monkeypatch.setattr(RegistryClient, "tags", refuse)
    code, err = refused(["train", "--env", "envs/e.toml", "--source", "src", "--script", "t.py",
                         "--registry", "127.0.0.1:9", "--register-model", "digits=outputs/model"], capsys)  # fmt: skip
    assert code == 4 and "refused the credentials for models/digits" in err and builds == []
