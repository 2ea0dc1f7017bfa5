"""Malformed environment files: each gives one SpecError naming the file and the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks import SpecError, spec

BASE = '[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n'
OK = 'name = "x"\n' + BASE

# (id, toml text, extra files {name: bytes}, expected key (substring) in the error)
CASES: list[tuple[str, str, dict[str, bytes], str]] = [
    ("bad-toml", 'name = "x\n', {}, ""),
    ("bad-toml-table", "[base\nimage='x'", {}, ""),
    ("dup-key", 'name = "x"\nname = "y"\n' + BASE, {}, ""),
    ("missing-name", BASE, {}, "name"),
    ("empty-name", 'name = ""\n' + BASE, {}, "name"),
    ("blank-name", 'name = "   "\n' + BASE, {}, "name"),
    ("name-int", "name = 3\n" + BASE, {}, "name"),
    ("name-upper", 'name = "Sklearn"\n' + BASE, {}, "name"),
    ("name-space", 'name = "my env"\n' + BASE, {}, "name"),
    ("name-slash", 'name = "a/b"\n' + BASE, {}, "name"),
    ("name-too-long", 'name = "' + "a" * 70 + '"\n' + BASE, {}, "name"),
    ("unknown-top", "colour = 'red'\n" + OK, {}, "colour"),
    ("version-bool", 'name = "x"\nversion = true\n' + BASE, {}, "version"),
    ("version-empty", 'name = "x"\nversion = ""\n' + BASE, {}, "version"),
    ("description-int", 'name = "x"\ndescription = 5\n' + BASE, {}, "description"),
    ("no-base", 'name = "x"\n', {}, "base"),
    ("base-not-table", 'name = "x"\nbase = "img"\n', {}, "base"),
    ("base-empty", 'name = "x"\n[base]\n', {}, "base"),
    ("base-two", 'name = "x"\n[base]\nimage = "a/b:1"\ndockerfile_text = "FROM a"\n', {}, "base"),
    ("base-unknown", OK + "pull = true\n", {}, "base.pull"),
    ("image-bad-ref", 'name = "x"\n[base]\nimage = "UPPER/Case:tag"\n', {}, "base.image"),
    ("image-space", 'name = "x"\n[base]\nimage = "a b"\n', {}, "base.image"),
    ("image-bad-digest", 'name = "x"\n[base]\nimage = "a/b@sha256:xyz"\n', {}, "base.image"),
    ("image-int", 'name = "x"\n[base]\nimage = 4\n', {}, "base.image"),
    ("dockerfile-missing", 'name = "x"\n[base]\ndockerfile = "nope/Dockerfile"\n', {}, "base.dockerfile"),
    ("dockerfile-dir", 'name = "x"\n[base]\ndockerfile = "adir"\n', {"adir/f": b""}, "base.dockerfile"),
    (
        "dockerfile-empty",
        'name = "x"\n[base]\ndockerfile = "Dockerfile"\n',
        {"Dockerfile": b"# nothing\n"},
        "base.dockerfile",
    ),
    ("dockerfile-no-from", 'name = "x"\n[base]\ndockerfile_text = "RUN true"\n', {}, "base.dockerfile_text"),
    (
        "dockerfile-syntax",
        'name = "x"\n[base]\ndockerfile_text = "# syntax=docker/dockerfile:1\\nFROM a"\n',
        {},
        "base.dockerfile_text",
    ),
    ("dockerfile-cycle", 'name = "x"\n[base]\ndockerfile_text = "FROM base AS base"\n', {}, "base.dockerfile_text"),
    ("dockerfile-copy-ctx", 'name = "x"\n[base]\ndockerfile_text = "FROM a\\nCOPY x /x"\n', {}, "base.dockerfile_text"),
    (
        "dockerfile-from-empty",
        'name = "x"\n[base]\ndockerfile_text = "FROM --platform=linux/amd64"\n',
        {},
        "base.dockerfile_text",
    ),
    (
        "dockerfile-binary",
        'name = "x"\n[base]\ndockerfile = "Dockerfile"\n',
        {"Dockerfile": b"\xff\xfe\x00F"},
        "base.dockerfile",
    ),
    (
        "registry-password",
        OK + '[base.registry]\naddress = "r.io"\nusername = "u"\npassword = "hunter2"\n',
        {},
        "base.registry.password",
    ),
    ("registry-no-address", OK + '[base.registry]\nusername = "u"\npassword_env = "P"\n', {}, "base.registry.address"),
    ("registry-half", OK + '[base.registry]\naddress = "r.io"\nusername = "u"\n', {}, "base.registry"),
    (
        "registry-bad-env",
        OK + '[base.registry]\naddress = "r.io"\nusername = "u"\npassword_env = "not valid"\n',
        {},
        "base.registry.password_env",
    ),
    ("registry-address-path", OK + '[base.registry]\naddress = "r.io/x"\n', {}, "base.registry.address"),
    ("python-not-table", 'python = "3.11"\n' + OK, {}, "python"),
    ("python-unknown", OK + "[python]\nversion = '3.11'\n", {}, "python.version"),
    ("packages-not-list", OK + "[python]\npackages = 'numpy'\n", {}, "python.packages"),
    ("packages-int", OK + "[python]\npackages = [1]\n", {}, "python.packages[0]"),
    ("packages-bad-req", OK + "[python]\npackages = ['numpy==1.0', 'bad req !!']\n", {}, "python.packages[1]"),
    ("packages-empty", OK + "[python]\npackages = ['']\n", {}, "python.packages[0]"),
    ("packages-conflict", OK + "[python]\npackages = ['numpy==1', 'NumPy==2']\n", {}, "python.packages[1]"),
    ("packages-url-creds", OK + "[python]\npackages = ['pkg @ https://u:p@host/pkg.whl']\n", {}, "python.packages[0]"),
    ("requirements-missing", OK + "[python]\nrequirements = ['req.txt']\n", {}, "python.requirements[0]"),
    ("requirements-dir", OK + "[python]\nrequirements = ['d']\n", {"d/x": b""}, "python.requirements[0]"),
    (
        "requirements-binary",
        OK + "[python]\nrequirements = ['r.txt']\n",
        {"r.txt": b"\xff\xfe"},
        "python.requirements[0]",
    ),
    ("user-managed-str", OK + "[python]\nuser_managed_dependencies = 'yes'\n", {}, "python.user_managed_dependencies"),
    ("interpreter-bad", OK + "[python]\ninterpreter = 'python3; rm -rf /'\n", {}, "python.interpreter"),
    ("wheel-url", OK + "[python]\nwheels = ['https://x/y.whl']\n", {}, "python.wheels[0]"),
    ("wheel-not-whl", OK + "[python]\nwheels = ['a.tar.gz']\n", {"a.tar.gz": b"x"}, "python.wheels[0]"),
    ("wheel-missing", OK + "[python]\nwheels = ['a-1-py3-none-any.whl']\n", {}, "python.wheels[0]"),
    # a file name that pip takes (its build tag is lax) but that would be read as shell or as mount options
    (
        "wheel-name-shell",
        OK + "[python]\nwheels = ['m-0.1-1$(id)-py3-none-any.whl']\n",
        {"m-0.1-1$(id)-py3-none-any.whl": b"PK"},
        "python.wheels[0]",
    ),  # fmt: skip
    (
        "wheel-name-mount",
        OK + "[python]\nwheels = ['m-0.1-1,from=x,source=y-py3-none-any.whl']\n",
        {"m-0.1-1,from=x,source=y-py3-none-any.whl": b"PK"},
        "python.wheels[0]",
    ),  # fmt: skip
    (
        "wheel-not-zip",
        OK + "[python]\nwheels = ['a-1-py3-none-any.whl']\n",
        {"a-1-py3-none-any.whl": b"nope"},
        "python.wheels[0]",
    ),
    ("index-creds", OK + "[python]\nindex_url = 'https://u:tok@idx/simple'\n", {}, "python.index_url"),
    ("index-not-url", OK + "[python]\nindex_url = 'idx/simple'\n", {}, "python.index_url"),
    ("index-both", OK + "[python]\nindex_url = 'https://idx/simple'\nindex_url_env = 'IDX'\n", {}, "python.index_url"),
    (
        "extra-index-creds",
        OK + "[python]\nextra_index_urls = ['https://x@idx/simple']\n",
        {},
        "python.extra_index_urls[0]",
    ),
    ("extra-index-env-bad", OK + "[python]\nextra_index_urls_env = ['1BAD']\n", {}, "python.extra_index_urls_env[0]"),
    ("index-token-query", OK + "[python]\nindex_url = 'https://idx/simple?token=abc'\n", {}, "python.index_url"),
    ("conda-missing", OK + "[python]\nconda_file = 'env.yml'\n", {}, "python.conda_file"),
    ("conda-bad-yaml", OK + "[python]\nconda_file = 'env.yml'\n", {"env.yml": b"a: [b\n"}, "python.conda_file"),
    ("conda-not-mapping", OK + "[python]\nconda_file = 'env.yml'\n", {"env.yml": b"- a\n"}, "python.conda_file"),
    (
        "conda-other-pkg",
        OK + "[python]\nconda_file = 'env.yml'\n",
        {"env.yml": b"dependencies:\n  - python=3.11\n  - libgomp=12\n"},
        "python.conda_file",
    ),
    (
        "conda-bad-pip",
        OK + "[python]\nconda_file = 'env.yml'\n",
        {"env.yml": b"dependencies:\n  - pip:\n    - 'bad req !!'\n"},
        "python.conda_file:pip[0]",
    ),
    (
        "conda-pip-option",
        OK + "[python]\nconda_file = 'env.yml'\n",
        {"env.yml": b"dependencies:\n  - pip:\n    - --index-url https://x\n"},
        "python.conda_file",
    ),
    ("apt-not-table", "apt = ['curl']\n" + OK, {}, "apt"),
    ("apt-bad-name", OK + "[apt]\npackages = ['curl; rm -rf /']\n", {}, "apt.packages[0]"),
    ("apt-upper", OK + "[apt]\npackages = ['Curl']\n", {}, "apt.packages[0]"),
    ("apt-unknown", OK + "[apt]\ninstall = ['curl']\n", {}, "apt.install"),
    ("env-not-table", "env = ['A=1']\n" + OK, {}, "env"),
    ("env-bad-name", OK + '[env]\n"1A" = "x"\n', {}, "env.1A"),
    ("env-list-value", OK + "[env]\nA = [1]\n", {}, "env.A"),
    ("env-bool-value", OK + "[env]\nA = true\n", {}, "env.A"),
    ("labels-reserved", OK + '[labels]\n"ml-env.hash" = "x"\n', {}, "labels.ml-env.hash"),
    (
        "labels-oci-reserved",
        OK + '[labels]\n"org.opencontainers.image.title" = "x"\n',
        {},
        "labels.org.opencontainers.image.title",
    ),
    ("labels-bad-key", OK + '[labels]\n"Bad Key" = "x"\n', {}, "labels.Bad Key"),
    ("docker-unknown", OK + "[docker]\ngpus = 1\n", {}, "docker.gpus"),
    ("shm-bad", OK + "[docker]\nshm_size = 'lots'\n", {}, "docker.shm_size"),
    ("shm-bool", OK + "[docker]\nshm_size = true\n", {}, "docker.shm_size"),
    ("build-args-bad", OK + '[docker]\nbuild_args = { "a b" = "1" }\n', {}, "docker.build_args.a b"),
    ("build-args-table", OK + "[docker]\nbuild_args = { A = { b = 1 } }\n", {}, "docker.build_args.A"),
    ("inference-string", 'name = "x"\ninference = "azureml"\n' + BASE, {}, "inference"),
    ("inference-server-unknown", OK + '[inference]\nserver = "triton"\n', {}, "inference.server"),
    ("inference-server-int", OK + "[inference]\nserver = 1\n", {}, "inference.server"),
    ("inference-unknown-key", OK + "[inference]\nport = 8080\n", {}, "inference.port"),
]


def test_there_are_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50


@pytest.mark.parametrize("case_id,text,files,key", CASES, ids=[c[0] for c in CASES])
def test_malformed_spec(tmp_path: Path, case_id: str, text: str, files: dict[str, bytes], key: str) -> None:
    for name, data in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    f = tmp_path / "env.toml"
    f.write_text(text)
    with pytest.raises(SpecError) as exc:
        spec.load(f)
    e = exc.value
    assert e.exit_code == 2
    assert e.file == str(f)
    message = str(e)
    assert str(f) in message
    if key:
        assert e.key == key or (e.key or "").startswith(key), (e.key, message)
    assert "Traceback" not in message


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not found"):
        spec.load(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match="directory"):
        spec.load(tmp_path)


def test_symlink_loop_dockerfile(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    f = tmp_path / "env.toml"
    f.write_text('name = "x"\n[base]\ndockerfile = "a"\n')
    with pytest.raises(SpecError) as exc:
        spec.load(f)
    assert exc.value.key == "base.dockerfile"


def test_locked_without_lock(tmp_path: Path) -> None:
    f = tmp_path / "env.toml"
    f.write_text(OK)
    with pytest.raises(SpecError, match="lock"):
        spec.load(f, locked=True)


@pytest.mark.parametrize("argv_tail", [["build"], ["plan"], ["hash"]])
def test_cli_bad_spec_exit_2_one_line_no_traceback(tmp_path: Path, argv_tail: list[str]) -> None:
    f = tmp_path / "env.toml"
    f.write_text('name = "x"\n[base]\nimage = "a/b:1"\n[python]\npackages = ["bad req !!"]\n')
    p = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", *argv_tail, str(f)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith(f"ml-env: error: {f}: python.packages[0]: ")


def test_cli_json_error(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", "hash", str(tmp_path / "missing.toml"), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    import json

    out = json.loads(p.stdout)
    assert out["exit_code"] == 2 and out["file"].endswith("missing.toml")


def test_no_engine_is_one_clear_error(tmp_path: Path) -> None:
    import os

    f = tmp_path / "env.toml"
    f.write_text(OK)
    p = subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", "build", str(f)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"},
    )
    assert p.returncode == 3, p.stderr
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("ml-env: error: the Docker engine (")
        and "no-such-docker.sock (from DOCKER_HOST)) is not reachable" in last
    )
