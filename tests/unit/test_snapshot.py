"""Source snapshots: ignore files, content hash, size limits (no Docker needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.runs import RunOptions, _validate, snapshot


def tree(d: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return d


def names(s) -> list[str]:
    return [f[0] for f in s.files]


def test_amlignore_wins_over_gitignore(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {"train.py": "x", "data/big.csv": "1", "notes.md": "n", ".gitignore": "*.md\n", ".amlignore": "data/\n"},
    )
    s = snapshot(tmp_path)
    assert s.ignore_file == ".amlignore"
    assert names(s) == [".gitignore", "notes.md", "train.py"]


def test_dockerignore_and_gitignore_both_apply(tmp_path: Path) -> None:
    tree(
        tmp_path,
        {
            "a.py": "",
            "b.log": "",
            "c.tmp": "",
            "keep.tmp": "",
            ".dockerignore": "*.log\n",
            ".gitignore": "*.tmp\n!keep.tmp\n",
        },
    )
    s = snapshot(tmp_path)
    assert names(s) == [".dockerignore", ".gitignore", "a.py", "keep.tmp"]
    assert s.ignore_file == ".dockerignore+.gitignore"


def test_always_ignored(tmp_path: Path) -> None:
    tree(tmp_path, {"a.py": "", ".git/HEAD": "ref", "__pycache__/a.pyc": "", "runs/r1/run.json": "{}"})
    assert names(snapshot(tmp_path)) == ["a.py"]


def test_hash_follows_content_not_mtime(tmp_path: Path) -> None:
    tree(tmp_path, {"a.py": "print(1)\n"})
    h1 = snapshot(tmp_path).hash
    (tmp_path / "a.py").touch()
    assert snapshot(tmp_path).hash == h1
    (tmp_path / "a.py").write_text("print(2)\n")
    assert snapshot(tmp_path).hash != h1


def test_size_limits_name_the_biggest_files(tmp_path: Path) -> None:
    tree(tmp_path, {"train.py": "x", "weights.bin": b"\0" * (3 * 2**20), "small.txt": "s"})
    warnings: list[str] = []
    snapshot(tmp_path, warn_mb=1, max_mb=10, warn=warnings.append)
    assert len(warnings) == 1 and "weights.bin (3.0 MB)" in warnings[0]
    with pytest.raises(MlEnvError, match=r"over the 2 MB limit; biggest files: weights.bin \(3.0 MB\)"):
        snapshot(tmp_path, max_mb=2)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(MlEnvError, match="not found"):
        snapshot(tmp_path / "nope")


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"inputs": {"1bad": Path(".")}}, "input name"),
        ({"inputs": {"data": Path("/no/such/dir")}}, "not found"),
        ({"secrets": ("NOT_SET_ANYWHERE_XYZ",)}, "not set"),
        ({"env_vars": {"a b": "1"}}, "not a variable name"),
        ({"timeout": 0}, "positive"),
        ({"script": "../escape.py"}, "inside --source"),
    ],
)
def test_bad_run_options(tmp_path: Path, kw: dict, msg: str) -> None:
    base = {"env": "x.toml", "source": tmp_path, "script": "train.py"}
    base.update(kw)
    with pytest.raises(MlEnvError, match=msg):
        _validate(RunOptions(**base))
