"""One model reference grammar for every command that names a model: ``model get``, ``model
download``, ``package --model`` and ``serve --model`` read the same forms the same way."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_env_tasks import models
from ml_env_tasks.errors import UsageError
from ml_env_tasks.models import ModelRef, parse_model_args, parse_model_ref


@pytest.mark.parametrize(
    "text,expected",
    [
        ("digits", ModelRef("digits")),
        ("digits:3", ModelRef("digits", 3)),
        ("Digits_v2.1:3", ModelRef("Digits_v2.1", 3)),
        ("az-models/digits:1", ModelRef("digits", 1, "az-models/digits")),
        ("team/ml/models/digits", ModelRef("digits", None, "team/ml/models/digits")),
        ("localhost:5000/models/digits:2", ModelRef("digits", 2, "models/digits", "localhost:5000")),
        ("registry.example.com/digits:2", ModelRef("digits", 2, "digits", "registry.example.com")),
    ],
)  # fmt: skip
def test_the_forms_a_model_reference_takes(text: str, expected: ModelRef) -> None:
    assert parse_model_ref(text) == expected
    assert str(parse_model_ref(str(expected))) == str(expected)  # it reads back what it prints


@pytest.mark.parametrize(
    "text,msg",
    [
        ("../x:1", "not a model name nor reference"),
        ("Team/Digits:1", "not a model name nor reference"),  # a repository is lowercase
        ("digits:0", "not a version number"),
        ("digits:latest", "not a version number"),
        ("digits:1\n", "not a model name nor reference"),
        ("a//b:1", "not a model name nor reference"),
        ("", "not a model name nor reference"),
    ],
)
def test_what_is_not_a_model_reference(text: str, msg: str) -> None:
    with pytest.raises(UsageError, match=msg):
        parse_model_ref(text)


def test_a_model_argument_is_a_folder_or_a_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    one = parse_model_args(["model"])  # a folder that exists is the folder
    assert one[0].folder == Path("model") and one[0].ref is None and one[0].mount == ""
    both = parse_model_args(["b=./model", "a=az-models/digits:1"])
    assert [(m.mount, m.folder, m.ref) for m in both] == [
        ("b", Path("model"), None), ("a", None, ModelRef("digits", 1, "az-models/digits")),
    ]  # fmt: skip
    with pytest.raises(UsageError, match="no such folder"):
        parse_model_args(["./gone"])  # written as a path: never a registry lookup
    with pytest.raises(UsageError, match="neither a folder here nor a model reference"):
        parse_model_args(["runs/R_20261203T1200/outputs/model"])
    with pytest.raises(UsageError, match="given twice"):
        parse_model_args(["a=model", "a=digits:1"])
    with pytest.raises(UsageError, match="either one unnamed"):
        parse_model_args(["model", "a=digits:1"])


@pytest.fixture
def looked_up(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, str]]:
    """Every (registry, repository, version) a command asked the registry for, answered with a model."""
    asked: list[tuple[str, str, str]] = []

    def read(client: object, registry: str, repo: str, reference: str) -> models.ModelVersion:
        asked.append((registry, repo, reference))
        return models.ModelVersion("digits", int(reference), f"{registry}/{repo}", "sha256:" + "1" * 64,
                                   "sha256:" + "2" * 64, 10)  # fmt: skip

    monkeypatch.setattr(models, "_read", read)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")  # nothing reaches an engine
    return asked


@pytest.mark.parametrize(
    "command",
    [
        ["model", "get", "{ref}"],
        ["model", "download", "{ref}", "out"],
        ["package", "--env", "e.toml", "--entry", "score.py", "--model", "{ref}"],
        ["serve", "--env", "e.toml", "--entry", "score.py", "--model", "{ref}"],
    ],
    ids=["model get", "model download", "package", "serve"],
)
@pytest.mark.parametrize("ref", ["az-models/digits:1", "127.0.0.1:5000/az-models/digits:1"])
def test_every_command_reads_a_model_reference_the_same_way(
    command: list[str], ref: str, looked_up: list[tuple[str, str, str]], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Reported: `model get az-models/digits:1` said "is not a model name" where `package --model`
    took exactly that form. Each command here gets as far as reading that version from the registry."""
    from ml_env_tasks.build import resolve
    from ml_env_tasks.fronts.cli import run
    from ml_env_tasks.registry import RegistryClient

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "score.py").write_text("def init(): pass\ndef run(raw): return raw\n")

    def stop(*_a: object, **_k: object) -> None:
        raise UsageError("stopped here")  # the model was read: its bytes, or the environment, come next

    monkeypatch.setattr(resolve, "resolve_environment", stop)
    monkeypatch.setattr(RegistryClient, "blob_chunks", stop)
    code = run([c.replace("{ref}", ref) for c in command] + ["--registry", "127.0.0.1:5000"])
    err = capsys.readouterr().err
    assert code == (0 if command[:2] == ["model", "get"] else 2) and "not a model" not in err, err
    assert looked_up[0] == ("127.0.0.1:5000", "az-models/digits", "1")


def test_a_reference_and_a_flag_naming_other_repositories_is_an_error(
    looked_up: list[tuple[str, str, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from ml_env_tasks.fronts.cli import run

    assert run(["model", "get", "az-models/digits:1", "--registry", "127.0.0.1:5000", "--repository", "x/y"]) == 2
    assert "--repository x/y and the model az-models/digits:1 name another repository" in capsys.readouterr().err
    assert run(["model", "get", "localhost:5000/m/digits:1", "--registry", "127.0.0.1:5000"]) == 2
    assert run(["model", "get", "127.0.0.1:5000/m/digits:1"]) == 0  # the reference names its registry
    assert looked_up == [("127.0.0.1:5000", "m/digits", "1")]
