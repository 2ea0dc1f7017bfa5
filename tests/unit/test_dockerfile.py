"""Rendering: layer order, secrets as mounts, escaping, no syntax line, user restore."""

from __future__ import annotations

from pathlib import Path

from ml_env_tasks import spec
from ml_env_tasks.build.dockerfile import render
from ml_env_tasks.safe.redact import Redactor

FULL = """
name = "r"
[base]
image = "127.0.0.1:5000/base/debian-python:bookworm"
[python]
packages = ["six==1.16.0"]
requirements = ["req.txt"]
conda_file = "conda.yml"
wheels = ["w-1-py3-none-any.whl"]
index_url_env = "IDX"
[apt]
packages = ["curl"]
[env]
GREETING = 'say "hi" to $USER \\ ok'
[docker]
build_args = { MODE = "fast" }
"""


def load(tmp_path: Path, text: str = FULL):
    (tmp_path / "req.txt").write_text("numpy==2.1.3\n")
    (tmp_path / "conda.yml").write_text(
        "name: x\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - tomli==2.0.2\n"
    )
    (tmp_path / "w-1-py3-none-any.whl").write_bytes(b"PK\x03\x04")
    f = tmp_path / "env.toml"
    f.write_text(text)
    return spec.load(f)


def test_layer_order_and_mounts(tmp_path: Path) -> None:
    env = load(tmp_path, FULL.replace("[python]\n", '[python]\nlayers = "one"\n'))
    p = render(env)
    df = p.dockerfile
    assert not df.lstrip().startswith("# syntax")
    order = [
        "FROM ",
        "ARG MODE",
        "apt-get install",
        "-m venv",
        "conda/requirements.txt",
        "requirements/",
        "packages/requirements.txt",
        "wheels/*.whl",
        "ENV GREETING",
    ]
    positions = [df.index(x) for x in order]
    assert positions == sorted(positions), df
    assert "--mount=type=secret,id=ml-env-ca,required=false" in df
    assert "--mount=type=secret,id=ml-env-pip,required=false" in df
    assert "COPY" not in df  # files reach RUN steps by bind mount, no layer keeps them
    assert set(p.files) == {
        "ml-env/conda/requirements.txt",
        f"ml-env/requirements/{env.requirements[0].sha256[:16]}.txt",
        "ml-env/packages/requirements.txt",
        "ml-env/wheels/w-1-py3-none-any.whl",
    }
    assert p.files["ml-env/conda/requirements.txt"] == b"tomli==2.0.2\n"
    assert env.conda_python == "3.11"
    assert p.python == "/opt/ml-env/bin/python"


def test_env_values_escaped(tmp_path: Path) -> None:
    df = render(load(tmp_path)).dockerfile
    assert 'GREETING="say \\"hi\\" to \\$USER \\\\ ok"' in df


def test_user_managed_uses_interpreter(tmp_path: Path) -> None:
    text = FULL.replace("[python]", '[python]\nuser_managed_dependencies = true\ninterpreter = "/usr/bin/python3"')
    p = render(load(tmp_path, text))
    assert "-m venv" not in p.dockerfile
    assert "PIP_BREAK_SYSTEM_PACKAGES=1 /usr/bin/python3 -m pip install" in p.dockerfile
    assert p.python == "/usr/bin/python3"


def test_no_python_layer_without_python_deps(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text('name = "t"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n[env]\nA = "1"\n')
    p = render(spec.load(f))
    assert p.python is None
    assert p.dockerfile == 'FROM 127.0.0.1:5000/base/busybox:1\nENV A="1"\n'


def test_base_dockerfile_user_is_restored(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text(
        'name = "t"\n[base]\ndockerfile_text = """FROM 127.0.0.1:5000/base/debian-python:bookworm\nRUN useradd app\nUSER app\n"""\n'
        '[apt]\npackages = ["curl"]\n'
    )
    df = render(spec.load(f)).dockerfile
    assert df.index("USER app") < df.index("USER root") < df.index("apt-get") < df.rindex("USER app")


def test_pinned_base_is_from_digest(tmp_path: Path) -> None:
    env = load(tmp_path).with_base_digest("sha256:" + "a" * 64)
    assert render(env).dockerfile.startswith("FROM 127.0.0.1:5000/base/debian-python:bookworm@sha256:" + "a" * 64)


def test_locked_adds_constraints(tmp_path: Path) -> None:
    env = load(tmp_path)
    (tmp_path / "env.lock").write_text("six==1.16.0\n")
    p = render(spec.load(env.path, locked=True))
    assert p.dockerfile.count("-c /tmp/ml-env/lock/lock.txt") == 4
    assert p.files["ml-env/lock/lock.txt"] == b"six==1.16.0\n"


def test_redactor_masks_urls_hosts_and_passwords() -> None:
    r = Redactor()
    r.add_url("https://bob:t0ps3cret@pypi.corp.example/simple/")
    line = "Looking in indexes: https://bob:****@pypi.corp.example/simple/ and t0ps3cret at pypi.corp.example"
    out = r(line)
    assert "t0ps3cret" not in out and "pypi.corp.example" not in out and "bob" not in out


def test_step_counting_reads_plain_progress() -> None:
    from ml_env_tasks.engine.buildlog import count_step as _count_step

    steps: set[str] = set()
    cached: set[str] = set()
    for line in [
        "#4 [stage-0 1/3] FROM 127.0.0.1:5000/base/debian-python:bookworm",
        "#7 [stage-0 2/3] RUN python3 -m venv /opt/ml-env",
        "#7 CACHED",
        "#8 [stage-0 3/3] RUN --mount=type=bind,source=ml-env/packages pip install",
        "#8 sha256:f1ba7c5e199e111020434019107f8534b3793c48b99136bcd90deada5d377e9b 29.38kB / 29.38kB done",
        "#9 [2/2] RUN true",
        "#9 0.123 some output",
        "#9 DONE 0.1s",
    ]:
        _count_step(line, steps, cached)
    assert steps == {"#7", "#8", "#9"}
    assert cached == {"#7", "#8"}


def test_cache_backend_choice_follows_the_engine(tmp_path: Path) -> None:
    import pytest

    from ml_env_tasks.build import BuildOptions
    from ml_env_tasks.build import choose_cache as _cache
    from ml_env_tasks.engine import Capabilities
    from ml_env_tasks.errors import EngineError
    from ml_env_tasks.spec.hashing import dependency_key

    f = tmp_path / "e.toml"
    f.write_text('name = "t"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    env = spec.load(f)
    ref = "127.0.0.1:5000/ml-envs/t:abc"
    containerd = Capabilities("26.1.5", True, "0.13.1", "docker")
    classic = Capabilities("26.1.5", False, "0.13.1", "docker")
    reg = BuildOptions(registry="127.0.0.1:5000", cache_dir=tmp_path / "c")
    plan = _cache(env, reg, containerd, ref)
    exact = f"127.0.0.1:5000/ml-envs/buildcache:{dependency_key(env)[:40]}"
    assert plan.backend == "registry" and plan.target == {"type": "registry", "ref": exact, "mode": "max"}
    # the moving per-environment ref sits beside the exact one; both are candidates to import
    assert [s["ref"] for s in plan.sources] == [exact, plan.moving]
    assert plan.moving.startswith("127.0.0.1:5000/ml-envs/buildcache:env-t-")
    # an inference twin shares the exact ref, not the moving one
    twin = tmp_path / "twin.toml"
    twin.write_text('name = "t-inf"\ninference = true\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    twin_plan = _cache(spec.load(twin), reg, containerd, ref)
    assert twin_plan.target == plan.target and twin_plan.moving != plan.moving
    assert _cache(env, BuildOptions(cache_dir=tmp_path / "c"), containerd, "ml-envs/t:abc").backend == "local"
    inline = _cache(env, reg, classic, ref)
    assert inline.backend == "inline" and inline.target == {"type": "inline"}
    assert inline.sources == ({"type": "registry", "ref": "127.0.0.1:5000/ml-envs/t:buildcache"},)
    with pytest.raises(EngineError, match="'registry' is not supported.*classic image store"):
        _cache(env, BuildOptions(registry="r:5000", cache="registry"), classic, ref)
