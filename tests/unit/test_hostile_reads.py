"""Files that are not what their name says: a device (``/dev/zero``, whose ``st_size`` is 0), a
FIFO, a file nested thousands deep. Every read is bounded by what it reads, opens without
blocking and refuses what is not a regular file; every parse refuses nesting past a bound before
it recurses. Each ends in one error naming the file with a documented exit code, never 70.

The children run with their address space capped (and the in-process readers on a watchdog), so
a regression fails here quickly instead of eating the machine's memory or hanging.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ml_env_tasks import spec
from ml_env_tasks.errors import EXIT_INTERNAL, MlEnvError
from ml_env_tasks.safe.fsutil import read_bounded
from ml_env_tasks.safe.untrusted import MAX_DEPTH, check_depth, json_loads, toml_loads
from ml_env_tasks.settings import files as config

AS_LIMIT = 2 * 2**30  # a child that reads /dev/zero unbounded dies of MemoryError here, not of the OOM killer
DEEP = 20_000
VALID = 'name = "e"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n'


def _cap() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=60,
        preexec_fn=_cap,
    )


def one_line(p: subprocess.CompletedProcess, code: int, needle: str) -> str:
    assert p.returncode == code, (p.returncode, p.stdout[-500:], p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len([x for x in lines if needle in x]) == 1, p.stderr
    return lines[0]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / ".git").mkdir()
    (tmp_path / "envs").mkdir()
    return tmp_path


# --- the reader itself ------------------------------------------------------------------------


def test_the_reader_refuses_a_device_a_fifo_and_a_folder_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo), str(tmp_path)):
        with pytest.raises(MlEnvError, match="not a regular") as exc:
            within(lambda p: read_bounded(p, 10, error=MlEnvError), path)
        assert exc.value.file == path


def test_the_reader_is_bounded_by_what_it_reads(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"x" * 11)
    assert read_bounded(f, 11, error=MlEnvError) == b"x" * 11
    with pytest.raises(MlEnvError, match="over 10 bytes"):
        read_bounded(f, 10, error=MlEnvError)


@pytest.mark.parametrize(
    "text,toml",
    [
        ("[" * (MAX_DEPTH + 1), False),
        ('{"a":' * (MAX_DEPTH + 1), False),
        ("a = " + "[" * (MAX_DEPTH + 1), True),
        ("a = " + "{b = " * (MAX_DEPTH + 1), True),
    ],
)
def test_nesting_past_the_bound_is_refused_before_parsing(text: str, toml: bool) -> None:
    with pytest.raises(MlEnvError, match="nested more than"):
        check_depth(text, toml=toml, error=MlEnvError, file="f")


@pytest.mark.parametrize(
    "text,toml",
    [
        ('["' + "[" * 500 + '"]', False),  # brackets inside a string are not nesting
        ('{"a": "\\"' + "{" * 500 + '"}', False),
        ("a = '" + "[" * 500 + "'", True),
        ('a = """\n' + "[" * 500 + '\n"""', True),
        ("# " + "[" * 500 + "\na = 1", True),
        ("[[entry]]\na = [1, [2]]\n" * 500, True),  # many tables, each shallow
    ],
)
def test_brackets_in_strings_comments_and_many_tables_are_not_depth(text: str, toml: bool) -> None:
    check_depth(text, toml=toml, error=MlEnvError, file="f")
    (toml_loads if toml else json_loads)(text, error=MlEnvError, file="f")


# --- every reader of a user's or a repository's file -----------------------------------------


def within(fn: Callable[[str], Any], path: str, seconds: float = 20) -> Any:
    """``fn(path)`` on a watchdog: a read that blocks on a FIFO fails the test (and is unblocked)."""
    out: dict[str, Any] = {}

    def go() -> None:
        try:
            out["value"] = fn(path)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        if Path(path).is_fifo():
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))  # let the blocked reader go
        t.join(5)
        pytest.fail(f"reading {path} blocked for {seconds} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _docker_config(path: str) -> Any:
    from ml_env_tasks.registry.credentials import credentials_for

    d = Path(path).parent / "docker"
    d.mkdir(exist_ok=True)
    (d / "config.json").unlink(missing_ok=True)
    (d / "config.json").symlink_to(path)
    old = os.environ.get("DOCKER_CONFIG")
    os.environ["DOCKER_CONFIG"] = str(d)
    try:
        return credentials_for("registry.example")
    finally:
        if old is None:
            del os.environ["DOCKER_CONFIG"]
        else:
            os.environ["DOCKER_CONFIG"] = old


def _ledger(path: str) -> Any:
    from ml_env_tasks.release.ledger import Ledger

    return Ledger(Path(path)).raw_entries()


def _versions(path: str) -> Any:
    from ml_env_tasks.catalog.versions import Versions

    return Versions(Path(path)).raw_entries()


def _cases(path: str) -> Any:
    from ml_env_tasks.serve.smoke import load_cases

    return load_cases(Path(path))


def _record(path: str) -> Any:
    from ml_env_tasks.runs.record import RunRecord

    return RunRecord.read(Path(path))


def _azure_v1(path: str) -> Any:
    from ml_env_tasks.formats.azure import import_source

    return import_source(Path(path))


READERS: dict[str, tuple[Callable[[str], Any], str, str]] = {
    # name: (read the file at a path, a file nested too deep in its format, its suffix)
    "spec": (lambda p: spec.load(p), "a = " + "[" * DEEP + "]" * DEEP + "\n", ".toml"),
    "config": (lambda p: config._read(Path(p)), "a = " + "[" * DEEP + "]" * DEEP + "\n", ".toml"),
    "ledger": (_ledger, "[[promotion]]\na = " + "[" * DEEP + "]" * DEEP + "\n", ".toml"),
    "versions": (_versions, "[[environment]]\na = " + "[" * DEEP + "]" * DEEP + "\n", ".toml"),
    "cases": (_cases, "[" * DEEP + "]" * DEEP + "\n", ".jsonl"),
    "docker config": (_docker_config, '{"a": ' + "[" * DEEP + "]" * DEEP + "}", ".json"),
    "run record": (_record, '{"a": ' + "[" * DEEP + "]" * DEEP + "}", ".json"),
    "azure v1": (_azure_v1, '{"a": ' + "[" * DEEP + "]" * DEEP + "}", ".json"),
}


def _no_crash(e: BaseException, shown: str) -> None:
    assert isinstance(e, MlEnvError), repr(e)[:300]
    assert e.exit_code != EXIT_INTERNAL
    assert shown in str(e), str(e)


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_device_is_refused_by_every_reader(tmp_path: Path, name: str) -> None:
    read, _, suffix = READERS[name]
    link = tmp_path / f"zz{suffix}"
    link.symlink_to("/dev/zero")
    with pytest.raises(BaseException) as exc:
        within(read, str(link))
    _no_crash(exc.value, "config.json" if name == "docker config" else "zz")


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_fifo_never_blocks_a_reader(tmp_path: Path, name: str) -> None:
    read, _, suffix = READERS[name]
    fifo = tmp_path / f"ff{suffix}"
    os.mkfifo(fifo)
    with pytest.raises(BaseException) as exc:
        within(read, str(fifo))
    _no_crash(exc.value, "config.json" if name == "docker config" else "ff")


@pytest.mark.parametrize("name", sorted(READERS))
def test_deep_nesting_is_one_error_in_every_reader(tmp_path: Path, name: str) -> None:
    read, text, suffix = READERS[name]
    f = tmp_path / f"deep{suffix}"
    f.write_text(text)
    with pytest.raises(BaseException) as exc:
        within(read, str(f))
    _no_crash(exc.value, "config.json" if name == "docker config" else "deep")
    assert "nested" in str(exc.value)


def test_a_deep_spec_recorded_in_a_versions_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(MlEnvError, match="nested"):
        spec.parse("a = " + "[" * DEEP, tmp_path / "e.toml")


def test_a_log_file_check_on_a_device_or_deep_file_is_simply_no(tmp_path: Path) -> None:
    from ml_env_tasks.safe.tomllog import is_log_file

    (tmp_path / "z.toml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "f.toml")
    (tmp_path / "d.toml").write_text("[[x]]\na = " + "[" * DEEP)
    for n in ("z.toml", "f.toml", "d.toml"):
        assert within(is_log_file, str(tmp_path / n)) is False


# --- through the fronts: one line, exit 2, in bounded memory and time --------------------------


def test_dev_zero_as_an_environment_file(project: Path) -> None:
    one_line(run("ml_env_tasks", "plan", "/dev/zero", cwd=project), 2, "/dev/zero")


def test_a_symlink_to_dev_zero_and_a_fifo_as_environment_files(project: Path) -> None:
    (project / "envs/zz.toml").symlink_to("/dev/zero")
    os.mkfifo(project / "envs/ff.toml")
    one_line(run("ml_env_tasks", "plan", "envs/zz.toml", cwd=project), 2, "zz.toml")
    one_line(run("ml_env_tasks", "plan", "envs/ff.toml", cwd=project), 2, "ff.toml")


def test_the_github_matrix_job_refuses_a_symlink_to_dev_zero(project: Path) -> None:
    (project / "envs/a.toml").write_text(VALID)
    (project / "envs/zz.toml").symlink_to("/dev/zero")
    out = project / "gh-output"
    p = run("ml_env_tasks.fronts.gha", "matrix", cwd=project, env={"INPUT_ENVS": "envs", "GITHUB_OUTPUT": str(out)})
    assert p.returncode == 2, (p.returncode, p.stdout[-300:], p.stderr[-2000:])
    assert "zz.toml" in p.stdout + p.stderr and "Traceback" not in p.stderr
    assert not out.exists() or "matrix" not in out.read_text()


@pytest.mark.parametrize("what", ["ledger", "versions"])
def test_dev_zero_and_deep_logs_through_the_cli(project: Path, what: str) -> None:
    deep = project / "deep.toml"
    deep.write_text("[[x]]\na = " + "[" * DEEP + "]" * DEEP + "\n")
    for path, needle in (("/dev/zero", "/dev/zero"), (str(deep), "deep.toml")):
        args = ["ledger", "show", "--ledger", path] if what == "ledger" else ["list", "--versions", path]
        one_line(run("ml_env_tasks", *args, cwd=project), 2, needle)


def test_dev_zero_and_a_deep_file_as_the_user_config(project: Path) -> None:
    f = project / "envs/e.toml"
    f.write_text(VALID)
    deep = project / "deep.toml"
    deep.write_text("a = " + "[" * DEEP + "]" * DEEP + "\n")
    for path in ("/dev/zero", str(deep)):
        p = run("ml_env_tasks", "plan", str(f), cwd=project, env={"ML_ENV_CONFIG": path})
        one_line(p, 2, path)


def test_a_deep_pyproject_is_one_line(project: Path) -> None:
    (project / "pyproject.toml").write_text("[tool.ml-env]\na = " + "[" * DEEP + "]" * DEEP + "\n")
    f = project / "envs/e.toml"
    f.write_text(VALID)
    one_line(run("ml_env_tasks", "plan", str(f), cwd=project), 2, "pyproject.toml")


def test_a_deep_smoke_case_names_its_line(tmp_path: Path) -> None:
    from ml_env_tasks.serve.smoke import load_cases

    f = tmp_path / "cases.jsonl"
    f.write_text(json.dumps({"request": {}}) + "\n" + "[" * DEEP + "\n")
    with pytest.raises(MlEnvError, match="nested") as exc:
        load_cases(f)
    assert "cases.jsonl:2" in str(exc.value)


def test_a_deep_spec_in_a_versions_entry_with_wheels_is_one_error(tmp_path: Path) -> None:
    from ml_env_tasks.catalog.versions import VersionEntry
    from ml_env_tasks.catalog.wheelstore import targets

    entry = VersionEntry("e", 1, "h", "", "i", "", "now", "a = " + "[" * DEEP, wheels={"x.whl": "0" * 64})
    with pytest.raises(MlEnvError, match="nested") as exc:
        targets(entry, tmp_path)
    assert "e:1" in str(exc.value) and exc.value.exit_code == 2


def test_a_promotion_gate_lock_that_is_a_device_or_a_fifo_is_refused(project: Path) -> None:
    from ml_env_tasks.release.promote import _spec_lock

    f = project / "envs/e.toml"
    f.write_text(VALID)
    lock = project / "envs/e.lock"
    for make in (lambda: lock.symlink_to("/dev/zero"), lambda: os.mkfifo(lock)):
        lock.unlink(missing_ok=True)
        make()
        with pytest.raises(BaseException) as exc:
            within(lambda p: _spec_lock(Path(p)), str(f))
        _no_crash(exc.value, "e.lock")
