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


def test_no_cache_is_upgrade_and_the_inputs_that_do_not_fit_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert build_inputs(monkeypatch, tmp_path, **{"no-cache": "true"})["upgrade"] is True
    assert build_inputs(monkeypatch, tmp_path, **{"no-cache": "false"})["upgrade"] is False
    with pytest.raises(UsageError, match=r"input 'build-args': .*docker.build_args"):
        build_inputs(monkeypatch, tmp_path, **{"build-args": "A=1"})
    with pytest.raises(UsageError, match="input 'outputs': ml-env decides where the image goes"):
        build_inputs(monkeypatch, tmp_path, outputs="type=local,dest=out")
    assert build_inputs(monkeypatch, tmp_path, **{"build-args": "  "})["spec"]  # empty is not given


def test_labels_given_for_a_reused_image_are_on_it_or_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reused image keeps the labels and annotations of the build that made it: given again they
    must already be there, with the same value; anything else is one line, never dropped."""
    import json

    import ml_env_tasks.build.exists as exists
    import ml_env_tasks.registry as registry
    from ml_env_tasks.build.exists import check_reused

    image = "r:5000/envs/x:" + "a" * 64
    monkeypatch.setattr(
        exists, "_image_labels", lambda ref, opts: {"team": "ml", "org.opencontainers.image.title": "x"}
    )
    child = json.dumps({"annotations": {"note": "n"}}).encode()
    index = json.dumps({"manifests": [{"digest": "sha256:att", "platform": {"os": "unknown"}},
                                      {"digest": "sha256:img", "platform": {"os": "linux"}}]}).encode()  # fmt: skip

    class Client:
        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def get_manifest(self, repo: str, ref: str) -> tuple[None, bytes]:
            return None, child if ref == "sha256:img" else index

    monkeypatch.setattr(registry, "RegistryClient", Client)
    opts = BuildOptions(registry="r:5000", labels=("team=ml",), annotations=("note=n",))
    check_reused(image, "sha256:idx", opts)  # the same values: a re-run converges
    for changed, words in (
        ({"labels": ("team=other",)}, "label team: .* has another value"),
        ({"labels": ("org.opencontainers.image.revision=abc",)}, "does not carry it"),
        ({"annotations": ("note=m",)}, "annotation note: .*its manifest has another value"),
    ):
        with pytest.raises(UsageError, match=words):
            check_reused(image, "sha256:idx", BuildOptions(**{**opts.__dict__, **changed}))
    with pytest.raises(UsageError, match="the engine does not show"):
        check_reused("envs/x:" + "a" * 64, None, BuildOptions(annotations=("note=n",)))


def test_a_label_the_environment_file_sets_is_not_replaced_silently(tmp_path: Path) -> None:
    from ml_env_tasks.build.dockerfile import render
    from ml_env_tasks.build.flow import _labels
    from ml_env_tasks.spec import load

    spec = tmp_path / "x.toml"
    spec.write_text('name = "x"\ndescription = "d"\n[base]\nimage = "b:1"\n[labels]\nteam = "ml"\n')
    env = load(spec)
    p = render(env)
    got = _labels(env, p, {"org.opencontainers.image.description": "mine", "team": "ml", "extra": "1"})
    assert got["org.opencontainers.image.description"] == "mine" and got["team"] == "ml" and got["extra"] == "1"
    assert got["ml-env.hash"] == p.hash
    with pytest.raises(UsageError, match="label team: x.toml sets it to another value"):
        _labels(env, p, {"team": "other"})


def test_target_and_file_are_refused_naming_the_environment_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ml-env writes the Dockerfile from the environment file: a stage to pick or a Dockerfile of
    one's own would change the image without its content hash (a base Dockerfile is the file's)."""
    with pytest.raises(UsageError, match=r"^input 'target': .*environment file \(spec\).*no stage to choose"):
        build_inputs(monkeypatch, tmp_path, target="runtime")
    with pytest.raises(UsageError, match=r"^input 'file': .*given in spec.*base\.dockerfile"):
        build_inputs(monkeypatch, tmp_path, file="docker/Dockerfile")
    assert build_inputs(monkeypatch, tmp_path, target=" ", file="")["spec"]  # empty is not given


def test_load_is_what_push_false_does_and_refused_with_a_push(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """load keeps the image in the engine: push: false (or no registry) leaves it there already; a
    pushed image lives in the registry by digest, so load with a push is one line, not half done."""
    got = build_inputs(monkeypatch, tmp_path, load="true", push="false", registry="r:5000")
    assert got["no_push"] is True and got["registry"] == "r:5000"
    assert build_inputs(monkeypatch, tmp_path, load="true")["no_push"] is False  # no registry: the engine's
    with pytest.raises(UsageError, match=r"^input 'load': true with a push: .*push: false keeps it in the engine"):
        build_inputs(monkeypatch, tmp_path, load="true", registry="r:5000")
    monkeypatch.setenv("ML_ENV_REGISTRY", "r:5000")  # a registry from anywhere pushes: the same refusal
    with pytest.raises(UsageError, match=r"^input 'load': true with a push"):
        resolve_inputs(load("build"))
    monkeypatch.delenv("ML_ENV_REGISTRY")
    assert build_inputs(monkeypatch, tmp_path, load="false", registry="r:5000")["no_push"] is False  # the default
    with pytest.raises(UsageError, match="input 'load': must be true or false"):
        build_inputs(monkeypatch, tmp_path, load="maybe", push="false")


def test_every_build_push_input_named_here_is_in_the_action_file() -> None:
    """The build action declares each of them (the runner warns of an undeclared input and drops it)."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    inputs = yaml.safe_load((root / "ci/github/build/action.yml").read_text())["inputs"]
    for name in ("push", "no-cache", "build-args", "outputs", "load", "target", "file"):
        assert name in inputs, name
    env = yaml.safe_load((root / "ci/github/build/action.yml").read_text())["runs"]["steps"][1]["env"]
    assert env["INPUT_LOAD"] == "${{ inputs.load }}" and env["INPUT_FILE"] == "${{ inputs.file }}"


# docker/build-push-action's inputs (its action.yml, v6): a step moved over from it keeps every one
BUILD_PUSH_ACTION_INPUTS = (
    "add-hosts allow annotations attests build-args build-contexts builder cache-from cache-to call cgroup-parent "
    "context file labels load network no-cache no-cache-filters outputs platforms provenance pull push sbom secrets "
    "secret-envs secret-files shm-size ssh tags target ulimit github-token"
).split()


def test_every_input_of_build_push_action_is_declared() -> None:
    """None gets only the runner's "unexpected input" warning: each is an input of ml-env's build
    action, honoured, mapped, checked or refused."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    declared = yaml.safe_load((root / "ci/github/build/action.yml").read_text())["inputs"]
    assert [i for i in BUILD_PUSH_ACTION_INPUTS if i not in declared] == []


@pytest.mark.parametrize("name", ["context", "secrets", "ssh", "sbom", "pull", "shm-size", "build-contexts"])
def test_the_inputs_that_would_change_the_image_behind_its_hash_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    with pytest.raises(UsageError, match=f"'{name}'"):
        build_inputs(monkeypatch, tmp_path, **{name: "x"})
