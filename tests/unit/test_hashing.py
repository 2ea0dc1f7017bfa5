"""Canonical form and content hash: golden values, what counts and what does not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks import spec
from ml_env_tasks.spec.hashing import canonical, canonical_json, env_hash, explain

FULL = """
name = "demo"
version = "3"
description = "golden"

[base]
image = "127.0.0.1:5000/base/debian-python:bookworm"

[python]
packages = ["scikit-learn==1.5.2", "Pandas>=2"]
requirements = ["req.txt"]
wheels = ["mylib-0.1-py3-none-any.whl"]
extra_index_urls_env = ["CORP_INDEX"]

[apt]
packages = ["libgomp1", "curl"]

[env]
B = "2"
A = "1"

[labels]
"com.example.team" = "ml"

[docker]
shm_size = "2g"
build_args = { X = "y" }
"""

FILES = {"req.txt": b"numpy==2.1.3\n", "mylib-0.1-py3-none-any.whl": b"PK\x03\x04wheel-bytes"}


def write(d: Path, text: str, files: dict[str, bytes] | None = None, name: str = "env.toml") -> Path:
    for n, data in (FILES if files is None else files).items():
        (d / n).write_bytes(data)
    f = d / name
    f.write_text(text)
    return f


# Literal expected values: a change here is a change of every user's image tags.
GOLDEN_FULL = "ec98f7351bd2545da63d386bb3f1f1052473d0b932f1c72d68d3f5a53fd73700"
GOLDEN_MINIMAL = "200d40d58f77a9d2b5c394d815c93aa18b1270ecf156bbe4ef661f5e71ddf4ed"
CANONICAL_MINIMAL = (
    '{"apt":[],"base":{"image":"127.0.0.1:5000/base/busybox:1"},"build_args":{},"env":{},"labels":{},'
    '"python":{"interpreter":"python3","packages":[],"requirements":[],"user_managed":false,"wheels":[]},"renderer":1}'
)


def test_golden_full(tmp_path: Path) -> None:
    """``python.layers = "one"`` (the default: every dependency in the steps by kind) keeps the
    hash an environment had."""
    env = spec.load(write(tmp_path, FULL.replace("[python]\n", '[python]\nlayers = "one"\n', 1)))
    assert env_hash(env) == env_hash(spec.load(write(tmp_path, FULL)))
    assert env_hash(env) == GOLDEN_FULL, canonical_json(env)


def test_split_layers_enter_the_hash_with_the_script_that_lays_them_out(tmp_path: Path) -> None:
    from ml_env_tasks.build.stack import split_stack

    env = spec.load(write(tmp_path, FULL.replace("[python]\n", '[python]\nlayers = "split"\n', 1)))
    assert env.layers == "split" and env.splits_layers
    assert canonical(env)["python"]["layers"] == split_stack()
    assert env_hash(env) != GOLDEN_FULL


def test_golden_minimal(tmp_path: Path) -> None:
    env = spec.load(write(tmp_path, 'name = "m"\n[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n', {}))
    assert canonical_json(env) == CANONICAL_MINIMAL
    assert env_hash(env) == GOLDEN_MINIMAL


def test_canonical_json_is_compact_sorted_and_secret_free(tmp_path: Path) -> None:
    text = FULL.replace('extra_index_urls_env = ["CORP_INDEX"]', 'index_url = "https://private.example.com/simple"')
    env = spec.load(write(tmp_path, text))
    cj = canonical_json(env)
    assert json.dumps(json.loads(cj), sort_keys=True, separators=(",", ":"), ensure_ascii=False) == cj
    assert "private.example.com" not in cj


@pytest.mark.parametrize(
    "old,new",
    [
        ('name = "demo"', 'name = "other"'),
        ('version = "3"', 'version = "4"'),
        ('description = "golden"', 'description = "changed"'),
        ('shm_size = "2g"', 'shm_size = "8g"'),
        ('packages = ["scikit-learn==1.5.2", "Pandas>=2"]', 'packages = ["pandas >= 2", "scikit_learn==1.5.2"]'),
        ('packages = ["libgomp1", "curl"]', 'packages = ["curl", "libgomp1", "curl"]'),
        ('B = "2"\nA = "1"', 'A = "1"\nB = "2"'),
    ],
    ids=["name", "version", "description", "shm-size", "package-order-and-spelling", "apt-order-dupes", "env-order"],
)
def test_hash_ignores(tmp_path: Path, old: str, new: str) -> None:
    a = spec.load(write(tmp_path, FULL, name="a.toml"))
    assert old in FULL
    b = spec.load(write(tmp_path, FULL.replace(old, new), name="b.toml"))
    assert env_hash(a) == env_hash(b), [str(d) for d in explain(a, b)]


@pytest.mark.parametrize(
    "old,new,field",
    [
        (
            'image = "127.0.0.1:5000/base/debian-python:bookworm"',
            'image = "127.0.0.1:5000/base/debian-python:trixie"',
            "base.image",
        ),
        ('"scikit-learn==1.5.2"', '"scikit-learn==1.5.1"', "python.packages"),
        ('"curl"]', '"curl", "git"]', "apt"),
        ('A = "1"', 'A = "2"', "env.A"),
        ('"com.example.team" = "ml"', '"com.example.team" = "data"', "labels.com.example.team"),
        ('X = "y"', 'X = "z"', "build_args.X"),
        (
            'extra_index_urls_env = ["CORP_INDEX"]',
            'extra_index_urls_env = ["OTHER"]',
            "python.index.extra_index_urls_env",
        ),
        ("[python]", "[python]\nuser_managed_dependencies = true", "python.user_managed"),
    ],
)
def test_hash_counts(tmp_path: Path, old: str, new: str, field: str) -> None:
    a = spec.load(write(tmp_path, FULL, name="a.toml"))
    b = spec.load(write(tmp_path, FULL.replace(old, new), name="b.toml"))
    assert env_hash(a) != env_hash(b)
    assert field in [d.field for d in explain(a, b)]


def test_file_contents_count_not_paths(tmp_path: Path) -> None:
    a = spec.load(write(tmp_path, FULL, name="a.toml"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "req.txt").write_bytes(FILES["req.txt"])
    b = spec.load(write(tmp_path, FULL.replace('["req.txt"]', '["sub/req.txt"]'), name="b.toml"))
    assert env_hash(a) == env_hash(b)
    (tmp_path / "sub" / "req.txt").write_bytes(b"numpy==2.1.2\n")
    c = spec.load(tmp_path / "b.toml")
    assert env_hash(a) != env_hash(c)
    assert [d.field for d in explain(a, c)] == ["python.requirements", "python.requirements"]


def test_wheel_contents_count(tmp_path: Path) -> None:
    a = spec.load(write(tmp_path, FULL))
    (tmp_path / "mylib-0.1-py3-none-any.whl").write_bytes(b"PK\x03\x04other")
    b = spec.load(tmp_path / "env.toml")
    assert env_hash(a) != env_hash(b)


def test_base_dockerfile_order_matters(tmp_path: Path) -> None:
    one = 'name = "d"\n[base]\ndockerfile_text = """FROM a/b:1\nRUN echo 1\nRUN echo 2\n"""\n'
    two = 'name = "d"\n[base]\ndockerfile_text = """FROM a/b:1\nRUN echo 2\nRUN echo 1\n"""\n'
    a = spec.load(write(tmp_path, one, {}, "a.toml"))
    b = spec.load(write(tmp_path, two, {}, "b.toml"))
    assert env_hash(a) != env_hash(b)
    # the same text from a file hashes like the inline text
    (tmp_path / "Dockerfile").write_text("FROM a/b:1\nRUN echo 1\nRUN echo 2\n")
    c = spec.load(write(tmp_path, 'name = "d"\n[base]\ndockerfile = "Dockerfile"\n', {}, "c.toml"))
    assert env_hash(a) == env_hash(c)


def test_pinned_base_digest_changes_hash(tmp_path: Path) -> None:
    a = spec.load(write(tmp_path, FULL))
    b = a.with_base_digest("sha256:" + "1" * 64)
    c = a.with_base_digest("sha256:" + "2" * 64)
    assert len({env_hash(a), env_hash(b), env_hash(c)}) == 3
    assert canonical(b)["base"]["digest"] == "sha256:" + "1" * 64


def test_lock_counts_by_packages_not_comments(tmp_path: Path) -> None:
    f = write(tmp_path, FULL)
    (tmp_path / "env.lock").write_text("# one\nnumpy==2.1.3\nsix==1.16.0\n")
    a = spec.load(f, locked=True)
    (tmp_path / "env.lock").write_text("# another comment\nsix==1.16.0\nnumpy==2.1.3\n")
    b = spec.load(f, locked=True)
    (tmp_path / "env.lock").write_text("numpy==2.1.2\nsix==1.16.0\n")
    c = spec.load(f, locked=True)
    unlocked = spec.load(f)
    assert env_hash(a) == env_hash(b)
    assert env_hash(a) != env_hash(c)
    assert env_hash(unlocked) not in (env_hash(a), env_hash(c))


def test_explain_same(tmp_path: Path) -> None:
    a = spec.load(write(tmp_path, FULL))
    assert explain(a, a) == []


def test_dependency_key_ignores_metadata_and_inference(tmp_path: Path) -> None:
    from ml_env_tasks.spec.hashing import dependency_key

    a = spec.load(write(tmp_path, FULL, name="a.toml"))
    twin = spec.load(
        write(tmp_path, FULL.replace('description = "golden"', 'description = "g"\ninference = true'), name="b.toml")
    )
    meta = spec.load(write(tmp_path, FULL.replace('A = "1"', 'A = "9"'), name="c.toml"))
    deps = spec.load(write(tmp_path, FULL.replace('"curl"]', '"curl", "git"]'), name="d.toml"))
    assert env_hash(a) != env_hash(twin) and dependency_key(a) == dependency_key(twin)
    assert env_hash(a) != env_hash(meta) and dependency_key(a) == dependency_key(meta)
    assert dependency_key(a) != dependency_key(deps)
