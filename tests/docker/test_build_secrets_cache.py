"""Secrets stay out of everything; registry cache survives a pruned daemon; private bases; pinning."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from python_on_whales import docker

from ml_env_tasks import BuildError, RegistryAuthError, SpecError, spec
from ml_env_tasks.build import Reporter, build, cache_refs
from ml_env_tasks.engine import Engine
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.spec.hashing import env_hash

from .helpers import make_wheel, private_index

pytestmark = pytest.mark.docker


class Capture(Reporter):
    def __init__(self) -> None:
        super().__init__(stream_logs=True)
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    warn = info

    def log(self, line: str) -> None:
        self.lines.append(line)


def test_secrets_never_leak(ws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = "s3cretT0ken-" + ws.repo.split("/")[1]
    wheels_dir = tmp_path / "wheelhouse"
    wheels_dir.mkdir()
    indexed = make_wheel(wheels_dir, "privpkg", "1.0.0", "SOURCE = 'index'\n")
    local = make_wheel(ws.dir, "localpkg", "2.0.0", "SOURCE = 'wheel'\n")
    with private_index(tmp_path / "index", [indexed], "ml-env-user", token) as url:
        monkeypatch.setenv("CORP_INDEX_URL", url)
        monkeypatch.setenv("ML_ENV_SPEC_ENV", "CORP_INDEX_URL")  # the user lets the spec read it
        f = ws.spec(
            f"""
name = "secret"
[base]
image = "{ws.lab["base_image_python"]}"
[python]
packages = ["privpkg==1.0.0"]
wheels = ["{local.name}"]
index_url_env = "CORP_INDEX_URL"
"""
        )
        rep = Capture()
        r = build(f, ws.opts(), rep)
    assert r.built
    ca = Path(ws.lab["ca_bundle"]).read_text() if ws.lab.get("ca_bundle") else ""
    ca_line = next((x for x in ca.splitlines() if x and not x.startswith("-----")), None)
    hostport = url.split("@")[1].split("/")[0]
    labels = RegistryClient(ws.lab["registry"]).image_config(ws.repo, r.hash)
    places = {
        "reporter output": "\n".join(rep.lines),
        "saved build log": Path(r.log_path).read_text(),
        "labels/config": json.dumps(labels),
        "docker history": Engine().history(r.image),
        "lock": (ws.dir / "env.lock").read_text(),
    }
    for where, text in places.items():
        assert token not in text, where
        assert url not in text and hostport not in text, where
        if ca_line:
            assert ca_line not in text, where
    assert "privpkg==1.0.0" in places["lock"] and "localpkg==2.0.0" in places["lock"]
    # the packages really came from the private index and the private wheel
    out = Engine().run_capture(
        r.image, ["/opt/ml-env/bin/python", "-c", "import privpkg, localpkg; print(privpkg.SOURCE, localpkg.SOURCE)"]
    )
    assert out.strip() == "index wheel"
    # the secret mounts left nothing behind in the image
    Engine().run_capture(
        r.image,
        ["sh", "-c", "test ! -e /run/secrets/ml-env-ca && test ! -e /run/secrets/ml-env-pip && test ! -e /tmp/ml-env"],
    )


@pytest.mark.exclusive  # it prunes the build cache every other test builds with
def test_registry_cache_survives_a_pruned_daemon(ws) -> None:
    f = ws.spec(
        f"""
name = "cached"
[base]
image = "{ws.lab["base_image_python"]}"
[python]
packages = ["six==1.16.0"]
[env]
CACHE_TEST = "{ws.repo}"
"""
    )
    first = build(f, ws.opts(cache="registry"))
    assert first.built and first.cache_backend == "registry"
    exact, moving = cache_refs(spec.load(f), ws.opts())
    reg = RegistryClient(ws.lab["registry"])
    for ref in (exact, moving):
        cache_repo, cache_tag = ref.split("/", 1)[1].rsplit(":", 1)
        assert reg.head_manifest(cache_repo, cache_tag) is not None, ref
    Engine().remove_image(first.image)
    Engine().prune_builder()
    again = build(f, ws.opts(cache="registry", force=True))
    assert again.built
    log = Path(again.log_path).read_text()
    assert again.cache_hit, log
    assert "CACHED" in log


def test_base_from_private_registry_with_password_env(ws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lab = ws.lab
    base_ref = f"{lab['auth_registry']}/{ws.repo}-base:1"
    docker.image.tag(lab["base_image_tiny"], base_ref)
    docker.image.push(base_ref, quiet=True)
    docker.image.remove(base_ref, force=True)
    ws.extra_repos.append((lab["auth_registry"], f"{ws.repo}-base"))
    empty = tmp_path / "no-creds"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(empty))  # nothing but the spec's reference can log in
    text = f"""
name = "privbase"
[base]
image = "{base_ref}"
registry = {{ address = "{lab["auth_registry"]}", username = "{lab["auth_user"]}", password_env = "BASE_PW" }}
[env]
FROM_PRIVATE = "1"
"""
    f = ws.spec(text)
    monkeypatch.setenv("BASE_PW", lab["auth_password"])
    monkeypatch.setenv("ML_ENV_SPEC_ENV", f"BASE_PW@{lab['auth_registry']}")  # for that registry only
    rep = Capture()
    r = build(f, ws.opts(), rep)
    assert r.built
    assert lab["auth_password"] not in "\n".join(rep.lines) + Path(r.log_path).read_text()
    monkeypatch.setenv("BASE_PW", "wrong-" + lab["auth_password"])
    with pytest.raises((RegistryAuthError, BuildError)) as exc:
        build(f, ws.opts(force=True))
    assert lab["auth_password"] not in str(exc.value) + (exc.value.details or "")
    monkeypatch.delenv("BASE_PW")
    with pytest.raises(SpecError, match="BASE_PW is not set"):
        build(f, ws.opts(force=True))


def test_pin_base_follows_a_moved_tag(ws) -> None:
    lab = ws.lab
    base_ref = f"{lab['registry']}/{ws.repo}-movable:latest"
    ws.extra_repos.append((lab["registry"], f"{ws.repo}-movable"))
    docker.image.tag(lab["base_image_tiny"], base_ref)
    docker.image.push(base_ref, quiet=True)
    f = ws.spec(f'name = "pinned"\n[base]\nimage = "{base_ref}"\n')
    unpinned = env_hash(spec.load(f))
    p1 = subprocess.run(["ml-env", "hash", str(f), "--pin-base"], capture_output=True, text=True)
    assert p1.returncode == 0, p1.stderr
    assert p1.stdout.strip() != unpinned
    # move the tag to a different image: the pinned hash moves, the unpinned one does not
    ctx = ws.dir / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text(f"FROM {lab['base_image_tiny']}\nENV MOVED=1\n")
    docker.buildx.build(ctx, tags=[base_ref], push=True, network="host")
    p2 = subprocess.run(["ml-env", "hash", str(f), "--pin-base"], capture_output=True, text=True)
    assert p2.stdout.strip() not in (p1.stdout.strip(), unpinned)
    assert env_hash(spec.load(f)) == unpinned
    plan = subprocess.run(["ml-env", "plan", str(f), "--pin-base"], capture_output=True, text=True).stdout
    assert f"FROM {base_ref}@sha256:" in plan
    docker.image.remove(base_ref, force=True)


@pytest.mark.exclusive  # it prunes the build cache
def test_a_changed_dependency_reuses_the_moving_cache_after_a_prune(ws) -> None:
    """Adding a package used to read a cache ref that did not exist yet: every change was cold."""
    text = f"""
name = "moving"
[base]
image = "{ws.lab["base_image_python"]}"
[apt]
packages = ["libgomp1"]
[python]
packages = ["six==1.16.0"]
[docker.build_args]
UNIQUE = "{ws.repo}"
"""
    f = ws.spec(text)
    first = build(f, ws.opts(cache="registry"))
    assert first.built and first.cache_from == ()  # nothing to import yet, and no importer ERROR
    assert "ERROR" not in Path(first.log_path).read_text()
    Engine().remove_image(first.image)
    Engine().prune_builder()
    f.write_text(text.replace('packages = ["six==1.16.0"]', 'packages = ["six==1.16.0", "tomli==2.0.2"]'))
    again = build(f, ws.opts(cache="registry"))
    exact, moving = cache_refs(spec.load(f), ws.opts())
    assert again.built and again.cache_from == (moving,)  # the exact ref is new; the moving one serves
    # apt and the venv come from the cache; only the packages layer (and the lock pass) run again
    assert again.cached_steps >= 2 and again.cached_steps == again.steps - 1, Path(again.log_path).read_text()
    assert "six==1.16.0" in (ws.dir / "env.lock").read_text() and "tomli==2.0.2" in (ws.dir / "env.lock").read_text()


def test_uv_installs_the_same_packages_with_a_private_index_and_leaves_no_trace(
    ws, tmp_path: Path, monkeypatch
) -> None:
    token = "uvT0ken-" + ws.repo.split("/")[1]
    wheelhouse = tmp_path / "wheelhouse"
    wheelhouse.mkdir()
    pkg = make_wheel(wheelhouse, "uvprivpkg", "1.0.0", "SOURCE = 'index'\n")
    with private_index(tmp_path / "index", [pkg], "uv-user", token) as url:
        monkeypatch.setenv("UV_PRIVATE_INDEX", url)
        monkeypatch.setenv("ML_ENV_SPEC_ENV", "UV_PRIVATE_INDEX")
        f = ws.spec(
            f"""
name = "uvenv"
[base]
image = "{ws.lab["base_image_python"]}"
[python]
installer = "uv"
packages = ["six==1.16.0", "uvprivpkg==1.0.0"]
extra_index_urls_env = ["UV_PRIVATE_INDEX"]
"""
        )
        rep = Capture()
        r = build(f, ws.opts(), rep)
    assert r.built
    lock = (ws.dir / "env.lock").read_text()
    assert "six==1.16.0" in lock and "uvprivpkg==1.0.0" in lock
    out = Engine().run_capture(
        r.image,
        ["sh", "-c", "ls /tmp; /opt/ml-env/bin/python -c 'import uvprivpkg, six; print(uvprivpkg.SOURCE)'"],
        entrypoint="",
    )
    assert "index" in out and "ml-env-uv" not in out  # uv lived in a cache mount, not in the image
    assert token not in "\n".join(rep.lines) + Path(r.log_path).read_text()
    pip_twin = ws.spec(f.read_text().replace('installer = "uv"\n', ""), name="pip.toml")
    assert env_hash(spec.load(pip_twin)) != env_hash(spec.load(f))  # the installer is part of the hash
