"""The project's own sessions: lab, demo, tests, lint, bench. It also imports the reusable
sessions (env_build, env_plan, env_hash) exactly as a user's noxfile would.

Quick start (as root on Debian bookworm):
    python3 -m pip install -q -e '.[test]' && nox -s demo
    python3 -m pip install -q -e '.[test]' && nox -s tests
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).parent
sys.path.insert(0, str(ROOT))

import ml_env_tasks.nox  # noqa: E402  (dogfooding: the reusable sessions, as a user's noxfile does)

ml_env_tasks.nox.register()

nox.options.sessions = ["tests"]
LAB = ROOT / "ci/lab/lab.py"
# one lab per machine: its facts live machine-wide, whichever checkout brought it up
LAB_ENV = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab")) / "run" / "env.json"


def lab_up(session: nox.Session) -> dict:
    session.run(sys.executable, str(LAB), "up", external=True)
    return json.loads(LAB_ENV.read_text())


def lab_build_args(lab: dict) -> list[str]:
    args = ["--registry", lab["registry"], "--network", lab["build_network"]]
    if lab.get("ca_bundle"):
        args += ["--ca-bundle", lab["ca_bundle"]]
    return args


@nox.session(venv_backend="none")
def lab(session: nox.Session) -> None:
    """Bring the machine's lab up and heal it (engine, registries, base images); `-- status` checks, `-- down` stops."""
    action = session.posargs[0] if session.posargs else "up"
    session.run(sys.executable, str(LAB), action, external=True)


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """End to end on the embedded default: lab up, build, no-op rebuild, train, smoke-test the scoring image."""
    lab = lab_up(session)
    args = ["build", "envs/sklearn.toml", *lab_build_args(lab)]
    session.log("first build (builds, or reuses an image built earlier with the same hash)")
    session.run("ml-env", *args, external=True)
    t0 = time.monotonic()
    session.run("ml-env", *args, "--json", external=True)
    session.log(f"second build of the unchanged environment: {time.monotonic() - t0:.2f}s, nothing rebuilt")
    session.log("train the example in that environment")
    session.run(
        "ml-env",
        "train",
        "--env",
        "envs/sklearn.toml",
        "--source",
        "examples/train",
        "--script",
        "train.py",
        *lab_build_args(lab),
        "--",
        "--alpha",
        "0.5",
        external=True,
    )
    session.run("ml-env", "runs", "list", external=True)
    from ml_env_tasks.runs import list_runs

    model = Path(list_runs(ROOT / "runs")[-1].run_id)
    session.log("smoke-test the scoring image with the model that run wrote")
    session.run(
        "ml-env",
        "smoke-test",
        "--env",
        "envs/sklearn-inference.toml",
        "--entry",
        "examples/serve/score.py",
        "--model",
        str(ROOT / "runs" / model / "outputs" / "model"),
        "--cases",
        "examples/serve/cases.jsonl",
        "--repeat",
        "5",
        *lab_build_args(lab),
        external=True,
    )


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """The checks: ruff, mypy --strict, the action files, then the test suite — unit tests and tests
    against the real lab (marker `docker`), whose health is checked first."""
    session.run("ruff", "check", ".", external=True)
    session.run("ruff", "format", "--check", ".", external=True)
    session.run(sys.executable, "-m", "mypy", external=True)
    lab_up(session)
    env = {"ML_ENV_LAB": str(LAB_ENV), "ML_ENV_LAB_SCRIPT": str(LAB)}
    pytest = [sys.executable, "-m", "pytest"]
    if session.posargs:
        session.run(*pytest, *session.posargs, env=env, external=True)
        return
    # what changes shared state runs alone, first; then the tests against the engine one after
    # the other in one worker (see tests/conftest.py: concurrent pushes can crash this engine)
    # while the pure-logic tests run in the other
    session.run(*pytest, "-m", "exclusive", "tests", env=env, external=True)
    workers = os.environ.get("ML_ENV_TEST_WORKERS", "2")
    session.run(*pytest, "-n", workers, "--dist", "loadgroup", "-m", "not exclusive", "tests", env=env, external=True)


@nox.session(venv_backend="none")
def actions(session: nox.Session) -> None:
    """Render ci/github/*/action.yml from the option declarations (ml_env_tasks/actions.py)."""
    from ml_env_tasks.fronts.actions import write_all

    for path in write_all(ROOT / "ci/github"):
        session.log(f"wrote {path.relative_to(ROOT)}")


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff check and format check."""
    session.run("ruff", "check", ".", external=True)
    session.run("ruff", "format", "--check", ".", external=True)


@nox.session(python=False)
def bench(session: nox.Session) -> None:
    """Benchmarks against the baseline tool in the same run: `-- build promote train transfer serve hash` (all by
    default). ml-env is measured as a user runs it: installed (not editable) into its own venv
    under .bench/venv, rebuilt from this checkout each time. Figures go to .bench/*.json; a
    baseline that did not do what it claims stops the run (exit 3)."""
    lab_up(session)
    available = sorted(p.stem.removeprefix("bench_") for p in (ROOT / "tests/bench").glob("bench_*.py"))
    chosen = session.posargs or available
    for name in chosen:
        if name not in available:
            session.error(f"no benchmark {name!r}; have: {', '.join(available)}")
    venv = ROOT / ".bench" / "venv"
    if not (venv / "bin" / "python").exists():
        session.run(sys.executable, "-m", "venv", str(venv), external=True)
    py = str(venv / "bin" / "python")
    session.run(py, "-m", "pip", "install", "-q", "--force-reinstall", "--no-deps", str(ROOT), external=True)
    session.run(py, "-m", "pip", "install", "-q", str(ROOT), external=True)  # dependencies, once
    env = {"ML_ENV_LAB": str(LAB_ENV), "ML_ENV_BIN": str(venv / "bin" / "ml-env")}
    for name in chosen:
        session.run(py, str(ROOT / "tests/bench" / f"bench_{name}.py"), external=True, env=env)
