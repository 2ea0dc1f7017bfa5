"""A pull request cannot steal: a checkout whose environment file and ``pyproject.toml`` are
hostile, run the way CI runs it (registry credentials and a secret in the environment, the
runner's own files on disk), sends no credential anywhere, reads no host file and turns no TLS
off. Each attack is run through the real ``ml-env`` command against a real HTTP registry on
loopback that asks for credentials, so a client that would send them does. No Docker needed:
every refusal comes before the first build step."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks.errors import SpecError, UsageError
from ml_env_tasks.registry.credentials import credentials_for
from ml_env_tasks.settings.files import load_layers
from ml_env_tasks.spec.dockerlint import check_base_dockerfile

from .test_hostile_registry import M_DIGEST, MANIFEST, server

VICTIM = "victim-secret-value-8f3a"  # what the runner holds in its environment
REG_PASSWORD = "registry-password-77c1"


def _challenge(h):
    """A registry that wants Basic auth for everything: a client with credentials sends them."""
    if not h.headers.get("Authorization"):
        return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
    return (
        200,
        {"Content-Type": "application/vnd.oci.image.manifest.v1+json", "Docker-Content-Digest": M_DIGEST},
        MANIFEST,
    )


def _ml_env(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def runner_env(tmp_path: Path) -> dict[str, str]:
    """The job's environment: a secret, registry credentials, an empty docker config and user config."""
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    (home / ".docker/config.json").write_text("{}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ML_ENV_", "DOCKER_"))}
    env.update(
        HOME=str(home),
        DOCKER_CONFIG=str(home / ".docker"),
        ML_ENV_CONFIG=str(home / "user.toml"),
        ML_ENV_SITE_CONFIG=str(home / "site.toml"),
        RT_VICTIM_SECRET=VICTIM,
        ML_ENV_REGISTRY_USERNAME="ci-bot",
        ML_ENV_REGISTRY_PASSWORD=REG_PASSWORD,
        ML_ENV_REGISTRY_HOST="registry.corp.example",  # the one registry the credentials are for
    )
    return env


def _checkout(root: Path, pyproject: str, spec: str) -> Path:
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'pr'\n[tool.ml-env]\n" + pyproject)
    (root / "env.toml").write_text(spec)
    return root


def _no_leak(seen, *outputs: str) -> None:
    for _, _, auth in seen.requests:
        assert not auth, f"a credential reached the registry: {auth[:10]}..."
    for text in outputs:
        assert VICTIM not in text and REG_PASSWORD not in text
        assert "Traceback" not in text


def test_a_spec_cannot_send_an_environment_variable_to_its_registry(tmp_path: Path, runner_env) -> None:
    with server(_challenge) as (port, seen):
        host = f"127.0.0.1:{port}"
        root = _checkout(
            tmp_path / "pr",
            "",
            f'name = "x"\n[base]\nimage = "{host}/base:1"\n'
            f'registry = {{ address = "{host}", username = "x", password_env = "RT_VICTIM_SECRET" }}\n',
        )
        p = _ml_env(root, "build", "env.toml", "--pin-base", "--json", env=runner_env)
        _no_leak(seen, p.stdout, p.stderr)
    assert p.returncode == 2, p.stderr
    assert "base.registry.password_env" in p.stderr and "not allowed" in p.stderr
    assert f"RT_VICTIM_SECRET@{host}" in p.stderr  # the hint says exactly what the user would allow


def test_an_allowed_variable_goes_only_to_the_registry_it_was_allowed_for(tmp_path: Path, runner_env) -> None:
    with server(_challenge) as (port, seen):
        host = f"127.0.0.1:{port}"
        runner_env["ML_ENV_SPEC_ENV"] = "RT_VICTIM_SECRET@registry.corp.example"
        root = _checkout(
            tmp_path / "pr",
            "",
            f'name = "x"\n[base]\nimage = "{host}/base:1"\n'
            f'registry = {{ address = "{host}", username = "x", password_env = "RT_VICTIM_SECRET" }}\n',
        )
        p = _ml_env(root, "build", "env.toml", "--pin-base", "--json", env=runner_env)
        _no_leak(seen, p.stdout, p.stderr)
        assert p.returncode == 2 and "not allowed" in p.stderr
        runner_env["ML_ENV_SPEC_ENV"] = f"RT_VICTIM_SECRET@{host}"  # now the user allows this host
        p = _ml_env(root, "build", "env.toml", "--pin-base", "--json", env=runner_env)
        sent = [a for _, _, a in seen.requests if a]
    assert sent and all(base64.b64decode(a.split()[1]).decode() == f"x:{VICTIM}" for a in sent)


def test_registry_credentials_from_the_environment_go_to_their_own_host_only(tmp_path: Path, runner_env) -> None:
    with server(_challenge) as (port, seen):
        host = f"127.0.0.1:{port}"
        root = _checkout(tmp_path / "pr", f'registry = "{host}"\n', 'name = "x"\n[base]\nimage = "scratch"\n')
        p = _ml_env(root, "verify", f"{host}/team/app@{M_DIGEST}", "--json", env=runner_env)
        _no_leak(seen, p.stdout, p.stderr)
        assert seen.requests, "the registry was never asked: the test proves nothing"


def test_env_credentials_follow_ml_env_registry_host(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.setenv("ML_ENV_REGISTRY_USERNAME", "u")
    monkeypatch.setenv("ML_ENV_REGISTRY_PASSWORD", "p")
    monkeypatch.delenv("ML_ENV_REGISTRY_HOST", raising=False)
    monkeypatch.delenv("ML_ENV_REGISTRY", raising=False)
    assert credentials_for("evil.example") is None  # bound to nothing: sent nowhere
    monkeypatch.setenv("ML_ENV_REGISTRY", "mine.example:5000")
    assert credentials_for("mine.example:5000") == ("u", "p")
    assert credentials_for("evil.example") is None
    monkeypatch.setenv("ML_ENV_REGISTRY_HOST", "other.example")
    assert credentials_for("other.example") == ("u", "p")
    assert credentials_for("mine.example:5000") is None


@pytest.mark.parametrize(
    ("line", "key", "why"),
    [
        ("insecure = true", "insecure", "turns TLS off"),
        ('builder = "remote-one"', "builder", "secrets it is given"),
        ('network = "host"', "network", "default or none"),
        ('spec_env = ["RT_VICTIM_SECRET@127.0.0.1:1"]', "spec_env", "environment variables"),
        ('sign_key = "/root/.ssh/id_ed25519"', "sign_key", "releases are signed with"),
        ('sign_key = "env://RT_VICTIM_SECRET"', "sign_key", "releases are signed with"),
        ("sign_keyless = true", "sign_keyless", "workflow's identity"),
        ('verify_key = "attacker.pub"', "verify_key", "whose signature a gate trusts"),
        ('certificate_identity = "https://github.com/evil/x"', "certificate_identity", "whose signature"),
        ('certificate_oidc_issuer = "https://evil.example"', "certificate_oidc_issuer", "whose signature"),
        ('ca_bundle = "/etc/hostname"', "ca_bundle", "outside the project"),
        ('runs_dir = "/tmp/elsewhere"', "runs_dir", "outside the project"),
        ('log_dir = "../logs"', "log_dir", "outside the project"),
        ('versions = "/etc/passwd"', "versions", "outside the project"),
        ('ledger = "/etc/shadow"', "ledger", "outside the project"),
        ('train_env = "/etc/hostname"', "train_env", "outside the project"),
        ('ca_bundle = "link.pem"', "ca_bundle", "outside the project"),  # a symlink out of the project
    ],
)
def test_the_project_config_cannot_reach_tls_secrets_or_host_files(
    tmp_path: Path, runner_env, line: str, key: str, why: str
) -> None:
    root = _checkout(tmp_path / "pr", line + "\n", 'name = "x"\n[base]\nimage = "127.0.0.1:1/base:1"\n')
    (root / "link.pem").symlink_to("/etc/hostname")
    p = _ml_env(root, "hash", "env.toml", env=runner_env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"tool.ml-env.{key}" in p.stderr and why in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2  # one line (and its hint)
    _no_leak(type("S", (), {"requests": []})(), p.stdout, p.stderr)


def test_the_project_config_keeps_what_it_may_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "ok"
    (root / "certs").mkdir(parents=True)
    (root / "certs/ca.pem").write_text("pem")
    (root / "pyproject.toml").write_text(
        "[tool.ml-env]\ninsecure = false\nnetwork = 'none'\nca_bundle = 'certs/ca.pem'\nruns_dir = 'runs'\n"
        "ledger = 'oci://127.0.0.1:5000/team/ledger'\ntrain_env = 'curated/minimal'\nregistry = 'r.example'\n"
    )
    monkeypatch.chdir(root)
    monkeypatch.setenv("ML_ENV_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("ML_ENV_SITE_CONFIG", str(tmp_path / "none.toml"))
    layers = load_layers()
    assert layers.project.get("ca_bundle") == "certs/ca.pem" and layers.project.get("registry") == "r.example"


def test_the_user_config_may_set_what_the_project_may_not(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "user.toml"
    user.write_text("insecure = true\nnetwork = 'host'\nca_bundle = '/etc/hostname'\nspec_env = ['A@b.example']\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ML_ENV_CONFIG", str(user))
    monkeypatch.setenv("ML_ENV_SITE_CONFIG", str(tmp_path / "none.toml"))
    assert load_layers().lookup("insecure") == (True, f"user ({user})")


@pytest.mark.parametrize(
    "step",
    [
        "RUN --mount=type=secret,id=ml-env-ca cp /run/secrets/ml-env-ca /leaked.txt",
        "RUN --mount=id=ml-env-pip,type=secret cat /run/secrets/ml-env-pip",
        'RUN --mount="type=secret,id=ml-env-pip" true',
        "RUN --mount type=ssh ssh-add -l",
        "ARG T=secret\nRUN --mount=type=$T,id=ml-env-ca true",
        "ONBUILD RUN --mount=type=secret,id=ml-env-ca cp /run/secrets/ml-env-ca /x",
        "RUN echo ok && \\\n    --mount=type=secret,id=ml-env-ca true",
    ],
)
def test_a_base_dockerfile_cannot_read_the_builds_secrets(step: str) -> None:
    with pytest.raises(SpecError, match="build secret"):
        check_base_dockerfile(f"FROM 127.0.0.1:5000/base/x:1\n{step}\n", "env.toml", "base.dockerfile_text")


def test_a_base_dockerfile_keeps_its_cache_mounts() -> None:
    check_base_dockerfile(
        "FROM 127.0.0.1:5000/base/x:1\nRUN --mount=type=cache,target=/root/.cache pip --version\n", "e", "k"
    )


def test_a_secret_mount_in_dockerfile_text_is_refused_by_the_command(tmp_path: Path, runner_env) -> None:
    spec = (
        'name = "x"\n[base]\ndockerfile_text = """\nFROM 127.0.0.1:5000/base/x:1\n'
        'RUN --mount=type=secret,id=ml-env-ca cp /run/secrets/ml-env-ca /leaked.txt\n"""\n'
    )
    root = _checkout(tmp_path / "pr", "", spec)
    p = _ml_env(root, "hash", "env.toml", env=runner_env)
    assert p.returncode == 2 and "base.dockerfile_text" in p.stderr and "build secret" in p.stderr, p.stderr


def test_errors_are_usage_errors_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _checkout(tmp_path / "pr", "insecure = true\n", 'name = "x"\n')
    monkeypatch.chdir(root)
    with pytest.raises(UsageError) as e:
        load_layers()
    assert e.value.file == str(root / "pyproject.toml") and e.value.key == "tool.ml-env.insecure"
