"""GitHub Actions helpers: toolkit escaping, outputs, annotations, and the action files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ml_env_tasks.errors import SpecError
from ml_env_tasks.fronts import gha

ROOT = Path(__file__).resolve().parents[2]
ACTIONS = sorted((ROOT / "ci" / "github").glob("*/action.yml"))


def test_escaping_matches_the_toolkit() -> None:
    assert gha.escape_data("50%\r\nnext") == "50%25%0D%0Anext"
    assert gha.escape_property("a:b,c%\n") == "a%3Ab%2Cc%25%0A"


def test_command_format(capsys: pytest.CaptureFixture[str]) -> None:
    gha.command("error", "bad: thing\nmore", file="envs/a,b.toml", line=3, col=None)
    assert capsys.readouterr().out == "::error file=envs/a%2Cb.toml,line=3::bad: thing%0Amore\n"


def test_outputs_single_and_multiline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setenv("GITHUB_OUTPUT", str(out))
    gha.set_output("image", "r:5000/x:1")
    gha.set_output("lock", "a==1\nb==2")
    text = out.read_text()
    assert text.startswith("image=r:5000/x:1\n")
    m = re.search(r"lock<<(ghadelimiter_[0-9a-f-]{36})\na==1\nb==2\n\1\n", text)
    assert m, text


def test_locate_key(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text('name = "x"\n\n[base]\nimage = "a"\n\n[python]\npackages = ["ok", "bad !!"]\n[env]\nA = "1"\n')
    assert gha.locate_key(f, "name") == 1
    assert gha.locate_key(f, "base.image") == 4
    assert gha.locate_key(f, "python.packages[1]") == 7
    assert gha.locate_key(f, "env.A") == 9
    assert gha.locate_key(f, "python.conda_file") == 6  # absent key: its table


def test_error_annotation_points_at_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "e.toml"
    f.write_text('name = "x"\n[python]\npackages = ["bad !!"]\n')
    gha.annotate_error(SpecError("not a valid requirement", file=str(f), key="python.packages[0]"))
    out = capsys.readouterr().out
    assert out.startswith(f"::error file={gha.escape_property(str(f))},line=3,title=ml-env%3A SpecError::")


@pytest.mark.parametrize("path", ACTIONS, ids=[p.parent.name for p in ACTIONS])
def test_action_files_are_well_formed(path: Path) -> None:
    doc = yaml.safe_load(path.read_text())
    assert doc["runs"]["using"] == "composite"
    for name, spec in doc["inputs"].items():
        assert spec.get("description"), f"input {name} has no description"
    for section in ("inputs", "outputs"):  # act evaluates expressions in descriptions too
        for name, spec in (doc.get(section) or {}).items():
            assert "${{" not in spec["description"], f"{section[:-1]} {name}: an expression in its description"
    ids = {s.get("id") for s in doc["runs"]["steps"]}
    for step in doc["runs"]["steps"]:
        if "run" in step:
            assert step.get("shell"), f"step {step.get('name')} has no shell"
            assert "${{" not in step["run"], "inputs reach scripts through env, never interpolated"
    for name, out in (doc.get("outputs") or {}).items():
        assert out.get("description")
        m = re.fullmatch(r"\$\{\{ steps\.([\w-]+)\.outputs\.([\w-]+) \}\}", out["value"])
        assert m and m.group(1) in ids, f"output {name} maps to no step"


def test_there_is_a_build_action() -> None:
    assert ROOT / "ci/github/build/action.yml" in ACTIONS


def test_build_action_speaks_build_push_actions_vocabulary() -> None:
    import yaml

    doc = yaml.safe_load((ROOT / "ci/github/build/action.yml").read_text())
    wanted = {"tags", "labels", "annotations", "builder", "cache-from", "cache-to", "platforms"}
    assert wanted <= set(doc["inputs"])
    assert {"imageid", "metadata", "digest", "cache-hit", "tags"} <= set(doc["outputs"])
    code = (ROOT / "ml_env_tasks/commands/build.py").read_text()
    for name in doc["outputs"]:  # every declared output is one the command gives
        assert f'"{name}":' in code.split("def outputs()")[1].split("def ")[0], name


@pytest.mark.parametrize("name", ["build", "matrix", "train", "smoke-test", "package", "promote", "login"])
def test_action_files_are_rendered_from_the_option_declarations(name: str) -> None:
    """Every input is an option of the action's command (or one of the action's own) and reaches
    the step as INPUT_*: the committed file is exactly what the declarations render."""
    from ml_env_tasks.fronts.actions import actions, render

    ACTIONS = {n: c.action for n, c in actions().items()}  # noqa: N806
    assert sorted(actions()) == sorted(p.parent.name for p in (ROOT / "ci/github").glob("*/action.yml"))
    committed = (ROOT / "ci/github" / name / "action.yml").read_text()
    assert committed == render(actions()[name]), f"ci/github/{name}/action.yml is stale: run `nox -s actions`"
    doc = yaml.safe_load(committed)
    step_env = doc["runs"]["steps"][-1]["env"]
    for inp in doc["inputs"]:
        if inp not in ("install", "python", "extras"):
            assert step_env[f"INPUT_{inp.upper().replace('-', '_')}"] == f"${{{{ inputs.{inp} }}}}"
    option_inputs = {o.input_name for o in actions()[name].options if o.input_name}
    own = {n for n, _, _ in ACTIONS[name].extra} | {"install", "python", "extras"}
    # another action's names: mapped, refused, or honoured in some steps only
    theirs = set(ACTIONS[name].aliases) | set(ACTIONS[name].refused) | set(ACTIONS[name].checked)
    own |= theirs
    assert not (option_inputs & theirs)
    assert set(doc["inputs"]) == option_inputs | own


def test_inputs_resolve_like_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_env_tasks.commands import load
    from ml_env_tasks.settings.options import from_inputs

    monkeypatch.setenv("INPUT_REGISTRY", "r.example:5000")
    monkeypatch.setenv("INPUT_PIN_BASE", "true")
    monkeypatch.setenv("INPUT_LOCKED", "false")
    monkeypatch.setenv("ML_ENV_BUILD_NETWORK", "host")
    monkeypatch.setenv("INPUT_NETWORK", "")
    got = from_inputs(load("build").options)
    assert got.values["registry"] == "r.example:5000" and str(got.sources["registry"]) == "input"
    assert got.values["pin_base"] is True and got.values["locked"] is False
    assert got.values["network"] == "host" and str(got.sources["network"]) == "environment (ML_ENV_BUILD_NETWORK)"
    monkeypatch.setenv("INPUT_PIN_BASE", "maybe")
    with pytest.raises(Exception, match="input 'pin-base' must be true or false"):
        from_inputs(load("build").options)


def test_promote_offers_no_build_option() -> None:
    """`promote --check-reproducible` (and the promote action's check-reproducible input) was
    accepted and did nothing: a promotion builds nothing, so a user asking for a reproducibility
    check got exit 0 and no check. Unknown to promote, it is refused like any unknown flag."""
    import subprocess
    import sys

    inputs = yaml.safe_load((ROOT / "ci/github/promote/action.yml").read_text())["inputs"]
    assert "check-reproducible" not in inputs
    p = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", "promote", "127.0.0.1:9/a:1", "127.0.0.1:9/b", "--tag", "x",
         "--check-reproducible"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 2 and "--check-reproducible" in p.stderr
