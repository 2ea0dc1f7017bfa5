"""Builds against the real lab: engine, buildx, registries, base images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks import BuildError, RegistryAuthError, RegistryError, RegistryUnreachable, spec
from ml_env_tasks.build import build
from ml_env_tasks.engine import Engine
from ml_env_tasks.registry import RegistryClient, parse_ref
from ml_env_tasks.spec.hashing import env_hash

from .helpers import fault_proxy, free_port, ml_env

pytestmark = pytest.mark.docker

TINY = """
name = "tiny"
[base]
image = "{base}"
[env]
GREETING = 'say "hi" to $USER \\ ok'
[labels]
"com.example.team" = "ml"
"""

PY = """
name = "py"
[base]
image = "{base}"
[python]
packages = ["six"]
"""


def tiny(ws, **kw) -> Path:
    return ws.spec(TINY.format(base=ws.lab["base_image_tiny"]), **kw)


def registry_digest(ref: str) -> str | None:
    r = parse_ref(ref)
    info = RegistryClient(r.host).head_manifest(r.repository, r.reference)
    return info.digest if info else None


def test_build_then_noop(ws) -> None:
    f = tiny(ws)
    first = build(f, ws.opts())
    assert first.built and first.digest and first.image.endswith(":" + first.hash)
    assert registry_digest(first.image) == first.digest
    second = build(f, ws.opts())
    assert not second.built and second.digest == first.digest and second.cache_hit
    # the value went through Dockerfile escaping and came out whole
    out = Engine().run_capture(first.image, ["sh", "-c", 'printf %s "$GREETING"'])
    assert out == 'say "hi" to $USER \\ ok'
    cfg = RegistryClient(ws.lab["registry"]).image_config(ws.repo, first.hash)
    labels = cfg["config"]["Labels"]
    assert labels["ml-env.hash"] == first.hash
    assert labels["org.opencontainers.image.title"] == "tiny"
    assert labels["com.example.team"] == "ml"
    assert json.loads(labels["ml-env.spec"])["env"]["GREETING"].startswith("say")


def test_cli_json_and_noop_exit(ws) -> None:
    f = tiny(ws)
    p = ml_env("build", str(f), *ws.cli_args(), "--json", "--quiet")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert {"image", "digest", "hash", "built", "cache_hit"} <= set(out)
    assert out["built"] is True
    p2 = ml_env("build", str(f), *ws.cli_args(), "--json")
    assert json.loads(p2.stdout)["built"] is False
    assert "buildx" not in p2.stderr and "#1" not in p2.stderr  # BuildKit was not touched


HEAVY = ("python_on_whales", "docker", "tomlkit", "packaging", "ml_env_tasks.build.flow", "ml_env_tasks.build.dockerfile",
         "ml_env_tasks.spec.validate", "ml_env_tasks.spec.environment")  # fmt: skip
PROBE = """
import json, sys
from ml_env_tasks.fronts.cli import run
code = run(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("where", ["registry", "local"])
def test_noop_build_fast_path_loads_no_builder(ws, where: str) -> None:
    """An unchanged environment whose image exists is answered from the spec summary and one
    question (a registry HEAD, or one Engine API call): no parser, renderer or docker client is
    even imported. Its files are made old enough for their timestamps to be trusted."""
    import os
    import time

    f = ws.spec(PY.format(base=ws.lab["base_image_python"]))
    args = ws.cli_args() if where == "registry" else ws.cli_args()[2:]  # without --registry: the local store
    assert ml_env("build", str(f), *args, "--quiet").returncode == 0
    old = time.time() - 60
    for p in (f, f.with_suffix(".lock")):
        os.utime(p, (old, old))
    assert ml_env("build", str(f), *args, "--quiet").returncode == 0  # parses once more, remembers
    p = subprocess.run([sys.executable, "-c", PROBE, "build", str(f), *args, "--json"], capture_output=True, text=True)
    *printed, probe = p.stdout.strip().splitlines()
    last = json.loads(probe)
    assert last["code"] == 0, p.stderr
    result = json.loads("\n".join(printed))
    assert result["built"] is False
    loaded = [m for m in last["modules"] if m.split(".")[0] in HEAVY or m in HEAVY]
    assert loaded == [], f"the no-op fast path imported {loaded}"
    # a change to the spec is seen at once, by the full path
    f.write_text(f.read_text().replace('"six"', '"six", "tomli==2.0.2"'))
    changed = json.loads(ml_env("build", str(f), *args, "--json", "--quiet").stdout)
    assert changed["hash"] != result["hash"] and changed["built"] is True


def test_python_lock_label_and_locked_build(ws) -> None:
    f = ws.spec(PY.format(base=ws.lab["base_image_python"]))
    r = build(f, ws.opts())
    lock = (ws.dir / "env.lock").read_text()
    assert "six==" in lock and "pip==" in lock
    labels = RegistryClient(ws.lab["registry"]).image_config(ws.repo, r.hash)["config"]["Labels"]
    assert labels["ml-env.lock"] == lock
    assert r.unpinned == ("six",)
    # --locked: the lock is part of the hash and installs exactly it
    (ws.dir / "env.lock").write_text(lock.replace(spec.lock_packages(lock)["six"], "1.15.0"))
    locked = build(f, ws.opts(locked=True))
    assert locked.hash != r.hash and locked.built
    got = Engine().run_capture(locked.image, ["/opt/ml-env/bin/python", "-c", "import six; print(six.__version__)"])
    assert got.strip() == "1.15.0"
    assert (ws.dir / "env.lock").read_text().count("six==1.15.0") == 1  # --locked leaves the lock as it is
    # a package that is not in the lock: the build refuses to push a mismatch
    ws.spec(PY.format(base=ws.lab["base_image_python"]).replace('["six"]', '["six", "tomli==2.0.2"]'))
    with pytest.raises(BuildError, match="not in the lock: tomli==2.0.2"):
        build(f, ws.opts(locked=True))


def test_a_reuse_brings_the_lock_of_the_image_it_reuses(ws) -> None:
    """Changed back to an environment whose image exists, the reuse rewrites the lock the change
    wrote (it named the other image's packages) from the reused image's label, and says so."""
    from ml_env_tasks.build import Reporter

    said: list[str] = []

    class Rep(Reporter):
        def info(self, msg: str) -> None:
            said.append(msg)

    text = PY.format(base=ws.lab["base_image_python"])
    f = ws.spec(text)
    first = build(f, ws.opts())
    lock = (ws.dir / "env.lock").read_text()
    assert f"# hash: {first.hash}\n" in lock
    ws.spec(text.replace('["six"]', '["six", "tomli==2.0.2"]'))
    changed = build(f, ws.opts())
    assert changed.built and "tomli==2.0.2" in (ws.dir / "env.lock").read_text()
    ws.spec(text)  # changed back: the first image is reused
    again = build(f, ws.opts(), reporter=Rep())
    assert not again.built and again.digest == first.digest
    assert (ws.dir / "env.lock").read_text() == lock
    assert any("another hash" in m and changed.hash[:12] in m for m in said), said


def test_failing_run_step_pushes_nothing(ws) -> None:
    text = PY.format(base=ws.lab["base_image_python"]).replace('["six"]', '["ml-env-no-such-package-xyz==9.9.9"]')
    f = ws.spec(text)
    ref = f"{ws.lab['registry']}/{ws.repo}:{env_hash(spec.load(f))}"
    p = ml_env("build", str(f), *ws.cli_args(), "--quiet")
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert "ml-env-no-such-package-xyz" in p.stderr  # the failing step's own output
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ml-env: error: the build failed at step:")
    # the error itself ends with pip's own words, not only the (cut) RUN line
    assert "its last lines: " in last and "No matching distribution found for ml-env-no-such-package-xyz==9.9.9" in last
    assert registry_digest(ref) is None
    assert Engine().local_image_id(ref) is None


def test_a_base_without_python_says_so(ws) -> None:
    f = ws.spec(f'name = "nopy"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[python]\npackages = ["six==1.16.0"]\n')
    p = ml_env("build", str(f), *ws.cli_args(), "--quiet")
    assert p.returncode == 1 and "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("ml-env: error: the base image has no python3"), last
    assert "python.user_managed_dependencies = true" in last and "python.interpreter" in last


def test_registry_down_is_an_error_not_exists(ws) -> None:
    f = tiny(ws)
    port = free_port()
    p = ml_env("build", str(f), *ws.cli_args()[2:], "--registry", f"127.0.0.1:{port}")
    assert p.returncode == RegistryUnreachable.exit_code
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and f"127.0.0.1:{port}" in lines[0], p.stderr
    assert not (ws.dir / "logs").exists()  # no build was started


def test_wrong_and_missing_credentials(ws, tmp_path: Path) -> None:
    f = tiny(ws)
    cfg = tmp_path / "dockercfg"
    cfg.mkdir()
    import base64

    bad = base64.b64encode(f"{ws.lab['auth_user']}:wrong-password".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {ws.lab["auth_registry"]: {"auth": bad}}}))
    args = [str(f), *ws.cli_args()[2:], "--registry", ws.lab["auth_registry"]]
    p = ml_env("build", *args, env={"DOCKER_CONFIG": str(cfg)})
    assert p.returncode == RegistryAuthError.exit_code
    assert "refused" in p.stderr and "wrong-password" not in p.stderr
    (cfg / "config.json").write_text("{}")
    p = ml_env("build", *args, env={"DOCKER_CONFIG": str(cfg)})
    assert p.returncode == RegistryAuthError.exit_code and "anonymously" in p.stderr


def test_auth_registry_build_and_noop(ws) -> None:
    f = tiny(ws)
    opts = ws.opts(registry=ws.lab["auth_registry"])
    r = build(f, opts)
    assert r.built
    again = build(f, opts)
    assert not again.built and again.digest == r.digest


def test_transient_5xx_is_retried(ws) -> None:
    f = tiny(ws)
    first = build(f, ws.opts())
    with fault_proxy(ws.lab["registry"], fail_first=2) as (proxy, seen):
        r = build(f, ws.opts(registry=proxy))
    assert not r.built and r.digest == first.digest
    assert seen[:2] == [503, 503] and seen[2] == 200


def test_persistent_5xx_is_a_clear_error(ws) -> None:
    f = tiny(ws)
    with fault_proxy(ws.lab["registry"], always_fail=True) as (proxy, seen):
        with pytest.raises(RegistryError) as exc:
            build(f, ws.opts(registry=proxy))
    assert "503" in str(exc.value) and "could not check" in str(exc.value)
    assert len(seen) == 5  # 1 + 4 retries, bounded
    assert not (ws.dir / "logs").exists()


def test_concurrent_builds_one_digest(ws) -> None:
    f = ws.spec(TINY.format(base=ws.lab["base_image_tiny"]).replace("[env]", '[env]\nRACE = "1"'))
    cmd = [sys.executable, "-m", "ml_env_tasks", "build", str(f), *ws.cli_args(), "--json", "--quiet"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = [json.loads(o[0]) for o in outs]
    assert results[0]["digest"] == results[1]["digest"]
    assert sorted(r["built"] for r in results) == [False, True]
    assert registry_digest(results[0]["image"]) == results[0]["digest"]


def test_a_build_stopped_after_its_first_pass_leaves_no_image_under_its_tag(ws) -> None:
    """The first pass tags the image in the engine without its lock; when the second pass fails
    (here its cache export), that tag goes: the next build builds, it does not reuse a lockless image."""
    f = ws.spec(f'name = "halfway"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n[env]\nH = "1"\n')
    local = [a for a in ws.cli_args() if a not in ("--registry", ws.lab["registry"])]
    failed = ml_env("build", str(f), *local, "--cache-to", "type=local,dest=/proc/ml-env-nope", "--json", "--quiet")
    assert failed.returncode == 1 and "/proc/ml-env-nope" in failed.stderr, failed.stderr
    h = ml_env("hash", str(f)).stdout.strip()
    assert Engine().local_image_id(f"{ws.repo}:{h}") is None
    again = ml_env("build", str(f), *local, "--json", "--quiet")
    assert again.returncode == 0, again.stderr
    out = json.loads(again.stdout)
    assert out["built"] and out["lock_path"]
    assert "ml-env.lock" in Engine().containers.image_labels(out["image"])
    Engine().remove_image(out["image"])
