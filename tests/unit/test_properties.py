"""Property-based tests (hypothesis) over thousands of generated inputs, hostile ones included
(newlines, quotes, ``$()``, NUL, unicode, huge values, wrong types):

- an environment file ends in one SpecError or in a Dockerfile whose instructions are exactly
  those the template writes (parsed back here by an independent reader);
- an Azure file ends in one SpecError or an import that loads;
- a command line ends in an exit code a user error has (never 70, never an exception).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import string
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_env_tasks import spec
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.errors import SpecError, UsageError

HOSTILE = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "bash\n",
            "a\nRUN touch /pwned",
            "$(id)",
            "`id`",
            '"; rm -rf /',
            "x\r\nRUN x",
            "\0",
            "ok",
            "a b",
            "é",
            "\\",
            "\\\nRUN x",
            "FROM evil",
            "${HOME}",
            "a" * 5000,
            "--index-url=http://evil",
            "numpy==1.0",
            "a=1",
        ]  # fmt: skip
    ),
)
SAFE_NAME = st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)
VALUE = st.one_of(HOSTILE, st.integers(), st.booleans(), st.lists(HOSTILE, max_size=3), st.floats(allow_nan=False))


def _settings(n: int):
    return settings(
        max_examples=n, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
    )


# --- an independent Dockerfile reader ------------------------------------------------------


def instructions(dockerfile: str) -> list[str]:
    """The instruction keywords, in order: continuation lines joined (comments and empty lines
    inside a continuation skipped, as BuildKit does)."""
    out: list[str] = []
    pending = False
    for raw in dockerfile.split("\n"):
        s = raw.strip()
        if not s or s.startswith("#"):
            continue
        if not pending:
            out.append(s.split()[0].upper())
        pending = s.endswith("\\")
    assert not pending, "the Dockerfile ends inside a continuation"
    return out


def expected(env: spec.Environment) -> list[str]:
    """What the renderer's template writes for an environment with ``base.image``."""
    out = ["FROM"]
    out += ["ARG"] * len(env.build_args)
    out += ["RUN"] if env.apt else []
    if env.has_python_deps:
        if not env.user_managed:
            out += ["RUN", "ENV"]  # the venv and its PATH
        if env.splits_layers:  # unresolved: the resolve stage, a stage per layer, the final stage's copies
            from ml_env_tasks.build.layering import declared_names

            args = ["ARG"] * (1 + len(env.build_args))
            layers = len(declared_names(env)) + 1 + len(env.wheels)
            out += ["FROM", *args, "RUN"] * (1 + layers) + ["FROM", *args] + ["COPY"] * layers
        out += ["RUN"] * sum(bool(x) for x in (env.conda_pip, env.requirements, env.packages, env.wheels))
        out += ["RUN"] if env.inference else []
    out += ["ENV"] if env.variables else []
    out += ["ENV", "EXPOSE", "CMD"] if env.inference else []
    if "RUN" in out:  # ml-env runs steps: they are dated by SOURCE_DATE_EPOCH, declared first
        out.insert(1, "ARG")
    return out


@st.composite
def spec_docs(draw) -> dict:
    doc: dict = {"name": draw(st.one_of(SAFE_NAME, HOSTILE, st.integers()))}
    doc["base"] = draw(
        st.one_of(
            st.just({"image": "127.0.0.1:5000/base/busybox:1"}),
            st.fixed_dictionaries({"image": HOSTILE}),
            st.just({"image": "a/b:1", "dockerfile_text": "FROM a"}),
            HOSTILE,
        )
    )
    if draw(st.booleans()):
        doc["apt"] = {"packages": draw(st.lists(st.one_of(SAFE_NAME, HOSTILE), max_size=4))}
    if draw(st.booleans()):
        doc["env"] = draw(
            st.dictionaries(
                st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), HOSTILE), VALUE, max_size=4
            )
        )
    if draw(st.booleans()):
        doc["labels"] = draw(st.dictionaries(st.one_of(SAFE_NAME, HOSTILE), HOSTILE, max_size=3))
    if draw(st.booleans()):
        doc["docker"] = {
            "build_args": draw(
                st.dictionaries(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True), HOSTILE, max_size=3)
            ),
            "shm_size": draw(st.one_of(st.just("1g"), HOSTILE, st.integers(-5, 10**12))),
        }
    if draw(st.booleans()):
        py: dict = {
            "packages": draw(
                st.lists(st.one_of(st.sampled_from(["six==1.16.0", "numpy>=1", "tomli"]), HOSTILE), max_size=4)
            )
        }
        if draw(st.booleans()):
            py["interpreter"] = draw(st.one_of(st.just("python3"), HOSTILE))
        if draw(st.booleans()):
            py["user_managed_dependencies"] = draw(st.one_of(st.booleans(), HOSTILE))
        if draw(st.booleans()):
            py["index_url"] = draw(st.one_of(st.just("https://pypi.org/simple"), HOSTILE))
        doc["python"] = py
    if draw(st.booleans()):
        doc["inference"] = draw(st.one_of(st.booleans(), HOSTILE))
    if draw(st.integers(0, 9)) == 0:
        doc[draw(HOSTILE) or "x"] = draw(VALUE)
    return doc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("props")
    (d / ".git").mkdir()
    return d


@_settings(2000)
@given(doc=spec_docs())
def test_every_spec_is_an_error_or_exactly_the_template(project: Path, doc: dict) -> None:
    f = project / "env.toml"
    try:
        f.write_text(tomlkit.dumps(doc))
    except (ValueError, TypeError, UnicodeEncodeError):
        return  # not representable as TOML at all
    try:
        env = spec.load(f)
    except SpecError as e:
        assert str(e) and "\n" not in e.message
        return
    plan = render(env)
    assert instructions(plan.dockerfile) == expected(env)
    assert "\0" not in plan.dockerfile and "\r" not in plan.dockerfile


@_settings(800)
@given(text=st.text(alphabet=string.printable + "é\0", max_size=300))
def test_arbitrary_text_as_a_spec(project: Path, text: str) -> None:
    f = project / "raw.toml"
    f.write_text(text, encoding="utf-8", errors="replace")
    with contextlib.suppress(SpecError):
        env = spec.load(f)
        if env.base.image:
            assert instructions(render(env).dockerfile)[0] == "FROM"


@_settings(300)
@given(lines=st.lists(st.one_of(st.sampled_from(["FROM a", "RUN true \\", "RUN <<EOF", "EOF", "", "# c", "USER bob",
                                                  "COPY --from=a /x /y", "# escape=`", "ARG X=1"]), HOSTILE), max_size=8))  # fmt: skip
def test_a_base_dockerfile_never_swallows_the_template(project: Path, lines: list[str]) -> None:
    f = project / "df.toml"
    try:
        f.write_text(tomlkit.dumps({"name": "e", "base": {"dockerfile_text": "\n".join(lines)}, "env": {"AFTER": "1"}}))
    except (ValueError, TypeError):
        return
    try:
        env = spec.load(f)
    except SpecError:
        return
    got = instructions(render(env).dockerfile)
    assert got[-1] in ("ENV", "USER") and "ENV" in got  # our ENV is a line of its own, after the base's


# --- Azure files ---------------------------------------------------------------------------

JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), HOSTILE),
    lambda kids: st.one_of(st.lists(kids, max_size=3), st.dictionaries(st.one_of(HOSTILE, st.sampled_from(
        ["name", "image", "build", "conda_file", "docker", "python", "baseImage", "baseDockerfile", "tags",
         "environmentVariables", "inference_config", "version", "os_type", "path", "dockerfile_path",
         "userManagedDependencies", "interpreterPath", "baseImageRegistry", "address", "username"])), kids, max_size=4)),
    max_leaves=12,
)  # fmt: skip


@_settings(1000)
@given(data=JSONISH, kind=st.sampled_from(["v1", "v2", "conda"]))
def test_azure_files_import_or_fail_cleanly(tmp_path_factory: pytest.TempPathFactory, data, kind: str) -> None:
    import yaml

    from ml_env_tasks.formats.azure import import_source

    d = tmp_path_factory.mktemp("az")
    (d / ".git").mkdir()
    if kind == "v1":
        (d / "v1").mkdir()
        (d / "v1" / "azureml_environment.json").write_text(json.dumps(data))
        src = d / "v1"
    else:
        src = d / ("env.yml" if kind == "v2" else "conda.yml")
        src.write_text(yaml.safe_dump(data if kind == "v2" else {"dependencies": data}))
    try:
        imp = import_source(src)
        imp.write(d / "out" / "x.toml")
    except SpecError as e:
        assert "\n" not in e.message
        return
    spec.load(d / "out" / "x.toml")


# --- command lines -------------------------------------------------------------------------

COMMANDS = [
    ["hash"], ["plan"], ["explain"], ["import"], ["export"], ["runs", "list"], ["runs", "show"], ["ledger", "show"],
    ["list"], ["get"], ["diff"], ["clone"], ["scaffold"], ["promote"], ["runs", "gc"],
]  # fmt: skip
OPTIONS = ["--json", "--tag", "--env", "--format", "-o", "--runs-dir", "--ledger", "--versions", "--canonical",
           "--pin-base", "--locked", "--experiment", "-d", "--registry", "--dry-run", "--jobs", "--insecure"]  # fmt: skip


@_settings(1000)
@given(
    command=st.sampled_from(COMMANDS),
    rest=st.lists(st.one_of(st.sampled_from(OPTIONS), HOSTILE.filter(lambda s: "\0" not in s), st.sampled_from(
        ["env.toml", "curated/minimal", "x:1", "v1", "../../etc/passwd", "/etc/shadow", "a/b:1", "nope.toml"])),
        max_size=5),
)  # fmt: skip
def test_command_lines_end_in_a_user_error_code(project: Path, command: list[str], rest: list[str]) -> None:
    from ml_env_tasks.fronts import cli

    if command == ["promote"]:
        rest = rest + ["--dry-run"]  # never write a registry from a fuzzer
    old = os.getcwd()
    os.chdir(project)
    out, err = io.StringIO(), io.StringIO()
    env_before = dict(os.environ)
    os.environ["ML_ENV_REGISTRY"] = ""
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.run([*command, *rest])
    finally:
        os.chdir(old)
        os.environ.clear()
        os.environ.update(env_before)
    assert code in (0, 1, 2, 3, 4, 5), (command, [r[:80] for r in rest], err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()
    assert all(len(line) <= 2600 for line in err.getvalue().splitlines())


def test_usage_errors_are_exit_2() -> None:
    assert UsageError("x").exit_code == 2 and SpecError("x").exit_code == 2
