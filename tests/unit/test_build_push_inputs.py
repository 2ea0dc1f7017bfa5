"""docker/build-push-action's inputs on ml-env's build action: each is honoured, mapped onto the
ml-env option that means the same, or refused in one line naming it (exit 2), never ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ml_env_tasks.build import BuildOptions, BuildResult, Reporter
from ml_env_tasks.commands import load
from ml_env_tasks.errors import UsageError
from ml_env_tasks.fronts.gha import resolve_inputs


def build_inputs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **inputs: str) -> dict:
    monkeypatch.chdir(tmp_path)
    for k in list(os.environ):
        if k.startswith("INPUT_") or k.startswith("ML_ENV_"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("INPUT_SPEC", "envs/x.toml")
    for k, v in inputs.items():
        monkeypatch.setenv(f"INPUT_{k.upper().replace('-', '_')}", v)
    return resolve_inputs(load("build")).values


def test_push_false_is_no_push(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert build_inputs(monkeypatch, tmp_path, push="false")["no_push"] is True
    assert build_inputs(monkeypatch, tmp_path, push="true")["no_push"] is False
    assert build_inputs(monkeypatch, tmp_path)["no_push"] is False  # pushing stays the default
    with pytest.raises(UsageError, match="input 'push' must be true or false"):
        build_inputs(monkeypatch, tmp_path, push="sometimes")


def test_no_push_writes_nothing_to_a_registry() -> None:
    assert BuildOptions(registry="r:5000").pushes
    assert not BuildOptions(registry="r:5000", no_push=True).pushes and not BuildOptions().pushes


def test_a_registry_cache_export_is_refused_with_no_push() -> None:
    from ml_env_tasks.build.reuse import _check_extras

    with pytest.raises(UsageError, match="--no-push"):
        _check_extras(BuildOptions(registry="r:5000", no_push=True, cache_to="type=registry,ref=r:5000/c:x"))
    assert not _check_extras(BuildOptions(registry="r:5000", no_push=True, cache_to="type=local,dest=/tmp/c"))


def test_no_push_tags_a_reused_image_nowhere_and_says_so() -> None:
    """An image the registry already has is not in the engine: --no-push gives it no tag, in one
    line, and the result names none (the tags output is what exists)."""
    from ml_env_tasks.build.reuse import apply_tags

    said: list[str] = []

    class Rep(Reporter):
        def info(self, msg: str) -> None:
            said.append(msg)

    reused = BuildResult("r:5000/envs/x:" + "a" * 64, "sha256:" + "b" * 64, "a" * 64, built=False, cache_hit=True,
                         name="x", registry="r:5000")  # fmt: skip
    got = apply_tags(reused, BuildOptions(registry="r:5000", no_push=True, tags=("pr-1",)), Rep())
    assert got.tags == () and said and "not tagged r:5000/envs/x:pr-1" in said[0]


def test_signing_needs_a_pushed_image(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ml_env_tasks.fronts.cli import run

    spec = tmp_path / "x.toml"
    spec.write_text('name = "x"\n[base]\nimage = "127.0.0.1:9/b:1"\n')
    assert run(["build", str(spec), "--registry", "127.0.0.1:9", "--no-push", "--sign-keyless"]) == 2
    assert "without --no-push" in capsys.readouterr().err
