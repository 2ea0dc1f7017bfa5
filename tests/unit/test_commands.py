"""One declaration per command: the registry, and the fronts generated from it. Every option of
every command means the same (name, default, validation) on every front that offers it."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

from ml_env_tasks.commands import REGISTRY, Command, every, load
from ml_env_tasks.commands.common import build_options
from ml_env_tasks.errors import UsageError
from ml_env_tasks.settings.options import Option, Resolved, add_options, from_inputs, resolve_options

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = list(REGISTRY)


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_is_one_declaration(name: str) -> None:
    cmd = load(name)
    assert cmd.name == name and cmd.help == REGISTRY[name][1]
    names = [o.name for o in cmd.options]
    assert len(names) == len(set(names)), f"{name}: an option declared twice"
    flags = [f for o in cmd.options for f in o.flags]
    assert len(flags) == len(set(flags)), f"{name}: two options share a flag"
    inputs = [o.input_name for o in cmd.options if o.input_name]
    assert len(inputs) == len(set(inputs)), f"{name}: two options share an action input"
    for required in cmd.required + (cmd.action.required if cmd.action else ()):
        cmd.option(required)  # names an option it has
    parser = argparse.ArgumentParser()
    add_options(parser, cmd.options)  # argparse accepts them all (no conflicting option strings)
    if any(o.name == "registry" for o in cmd.options):
        defaults = resolve_options(cmd.options, argparse.Namespace(), layers=None, environ={})
        build_options(defaults)  # every build option a command takes is a BuildOptions field


def _sample(o: Option) -> tuple[str, object]:
    """A text for an option and the value it must become."""
    if o.kind == "flag":
        return "true", True
    if o.kind in ("int", "port"):
        return "7", 7
    if o.kind == "float":
        return "2.5", 2.5
    if o.kind == "path":
        return "some/dir", Path("some/dir")
    if o.kind == "list":
        return "a", ["a"]
    if o.choices:
        return o.choices[-1], o.choices[-1]
    return "value", "value"


ACTION_OPTIONS = [
    (c.name, o.name) for c in every() if c.action is not None for o in c.options if o.input_name and not o.positional
]


@pytest.mark.parametrize(("command", "option"), ACTION_OPTIONS)
def test_an_option_means_the_same_on_the_command_line_and_as_an_input(command: str, option: str) -> None:
    cmd = load(command)
    o = cmd.option(option)
    text, want = _sample(o)
    parser = argparse.ArgumentParser()
    add_options(parser, [o])
    argv = [o.flags[0]] if o.kind == "flag" else [o.flags[0], text]
    from_flag = resolve_options([o], parser.parse_args(argv), layers=None, environ={})
    from_input = from_inputs([o], {f"INPUT_{o.input_name.upper().replace('-', '_')}": text}, layers=None)
    assert from_flag.values[option] == from_input.values[option] == want
    default_cli = resolve_options([o], argparse.Namespace(), layers=None, environ={}).values[option]
    default_input = from_inputs([o], {}, layers=None).values[option]
    assert default_cli == default_input
    if o.kind in ("int", "float", "port", "flag"):  # the same refusal of a value that is not one
        with pytest.raises(SystemExit):
            parser.parse_args([o.flags[0], "not-a-number"] if o.kind != "flag" else [f"{o.flags[0]}=x"])
        with pytest.raises(UsageError):
            from_inputs([o], {f"INPUT_{o.input_name.upper().replace('-', '_')}": "not-a-number"}, layers=None)


def test_the_fronts_are_generated_from_the_registry() -> None:
    import nox.registry

    import ml_env_tasks.fronts.nox as front
    from ml_env_tasks.fronts.actions import actions

    declared = {c.session.name for c in every() if c.session is not None}
    saved = dict(nox.registry._REGISTRY)
    try:
        assert set(front.register(prefix="zz-")) == {f"zz-{n}" for n in declared}
    finally:
        nox.registry._REGISTRY.clear()
        nox.registry._REGISTRY.update(saved)
        front._registered.clear()
    assert set(actions()) == {p.parent.name for p in (ROOT / "ci/github").glob("*/action.yml")}


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside functions, as absolute names."""
    package = "ml_env_tasks." + ".".join(path.relative_to(ROOT / "ml_env_tasks").with_suffix("").parts)
    if path.name == "__init__.py":
        package = package.rsplit(".", 1)[0] + ".__init__"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: -node.level] if node.level else []
            mod = ".".join([*base, node.module] if node.module else base)
            found.add(mod)
            found |= {f"{mod}.{a.name}" for a in node.names}
    return found


FRONTS = {"cli": "ml_env_tasks/fronts/cli.py", "nox": "ml_env_tasks/fronts/nox.py", "gha": "ml_env_tasks/fronts/gha.py"}


@pytest.mark.parametrize("front", sorted(FRONTS))
def test_the_fronts_stand_side_by_side(front: str) -> None:
    """No front imports another; the core (everything else) imports none of them."""
    path = ROOT / FRONTS[front]
    files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
    others = {f"ml_env_tasks.fronts.{f}" for f in FRONTS if f != front}
    for f in files:
        bad = {m for m in _imports(f) if any(m == o or m.startswith(o + ".") for o in others)}
        assert not bad, f"{f.relative_to(ROOT)} imports {bad}"


def test_the_core_imports_no_front() -> None:
    fronts = {f"ml_env_tasks.{f}" for f in FRONTS} | {"ml_env_tasks.fronts.actions"}
    for f in sorted((ROOT / "ml_env_tasks").rglob("*.py")):
        rel = f.relative_to(ROOT / "ml_env_tasks")
        if rel.parts[0] in ("cli", "nox.py", "gha.py", "actions.py"):
            continue
        bad = {m for m in _imports(f) if any(m == x or m.startswith(x + ".") for x in fronts)}
        assert not bad, f"{rel} imports the front(s) {bad}"


def test_an_unknown_option_name_is_an_error() -> None:
    values = Resolved({"a": 1}, {})
    with pytest.raises(AttributeError):
        _ = values.b
    with pytest.raises(KeyError):
        values.with_values(b=2)


def test_every_command_runs_through_one_function(capsys: pytest.CaptureFixture[str]) -> None:
    """A command's run gives an Outcome every front shows its own way (here: the CLI's JSON)."""
    import json

    from ml_env_tasks.fronts.cli import run

    assert run(["hash", str(ROOT / "envs/sklearn.toml"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "sklearn" and len(data["hash"]) == 64
    assert isinstance(load("hash"), Command)


@pytest.mark.parametrize("text", ["0.0.1 prod", "0.0.1, prod", "0.0.1\nprod\n", " 0.0.1,prod "])
def test_tags_as_an_input_split_like_metadata_action_writes_them(text: str) -> None:
    """The README's promote example wrote `tags: "1.4.0 prod"`: one tag '1.4.0 prod', refused."""
    for command in ("build", "promote"):
        o = load(command).option("tags")
        assert from_inputs([o], {"INPUT_TAGS": text}, layers=None).values["tags"] == ["0.0.1", "prod"]


def test_the_readme_examples_give_valid_tags() -> None:
    import re

    from ml_env_tasks.registry.reference import parse_ref

    text = (ROOT / "README.md").read_text()
    o = load("promote").option("tags")
    found = re.findall(r'tags: "([^"]+)"', text) + re.findall(r"tags: ([0-9][^\n#]*?)\s*(?:#|\n)", text)
    assert found
    for value in found:
        for tag in o.parse_text(value, "input 'tags'"):
            parse_ref(f"r.example/x:{tag}")  # raises on a tag that is not one
