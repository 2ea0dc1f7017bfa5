"""Source snapshots: ignore files, content hash, size limits (no Docker needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.runs import RunOptions
from ml_env_tasks.runs.snapshot import snapshot, tar_chunks
from ml_env_tasks.runs.train import _validate, without_outputs


def tree(d: Path, files: dict[str, str | bytes]) -> Path:
    for rel, data in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data if isinstance(data, bytes) else data.encode())
    return d


def names(s) -> list[str]:
    return [f.rel for f in s.files]


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
    assert len(warnings) == 1 and "weights.bin (3.0 MiB)" in warnings[0]
    with pytest.raises(MlEnvError, match=r"over the 2 MiB limit; biggest files: weights.bin \(3.0 MiB\)"):
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
        ({"script": "outputs/train.py"}, "under outputs/"),
    ],
)
def test_bad_run_options(tmp_path: Path, kw: dict, msg: str) -> None:
    base = {"environment": "x.toml", "source": tmp_path, "script": "train.py"}
    base.update(kw)
    with pytest.raises(MlEnvError, match=msg):
        _validate(RunOptions(**base))


def test_a_top_level_outputs_is_left_out_of_a_run_snapshot(tmp_path: Path) -> None:
    """./outputs in the container is the run's outputs mount: what the source holds there stays home."""
    tree(tmp_path, {"train.py": "", "outputs/model.pkl": "old", "outputs/a/b.txt": "", "outputs.py": "",
                    "pkg/outputs/keep.txt": ""})  # fmt: skip
    said: list[str] = []
    snap = without_outputs(snapshot(tmp_path, warn=said.append), said.append)
    assert names(snap) == ["outputs.py", "pkg/outputs/keep.txt", "train.py"]
    assert said == [f"2 file(s) under outputs/ in {tmp_path} are left out of the snapshot: "
                    "./outputs in the run is the run's outputs directory"]  # fmt: skip
    (tmp_path / "outputs" / "model.pkl").unlink()
    (tmp_path / "outputs" / "a" / "b.txt").unlink()
    assert without_outputs(snapshot(tmp_path, warn=print), said.append).hash == snap.hash  # of the kept files
    # a file (or a link) named outputs is left out the same way: the mount point must be free
    (tmp_path / "outputs" / "a").rmdir()
    (tmp_path / "outputs").rmdir()
    (tmp_path / "outputs").write_text("a file")
    assert "outputs" not in names(without_outputs(snapshot(tmp_path, warn=print), print))


def test_symlinks_inside_are_kept_as_links_outside_are_left_out(tmp_path: Path) -> None:
    """Finding 1: a link to /etc/shadow must never bring the host's file into the run."""
    import io
    import os
    import tarfile

    src = tree(tmp_path / "src", {"train.py": "print(1)", "data/a.csv": "1,2"})
    secret = tree(tmp_path / "outside", {"secret.txt": "TOP-SECRET-CONTENT"}) / "secret.txt"
    os.symlink(secret, src / "leak.txt")
    os.symlink("/etc", src / "etc")
    os.symlink("../outside", src / "up")
    os.symlink("data/a.csv", src / "rel.csv")
    os.symlink(src / "data", src / "absdata")  # absolute but in-tree: kept, made relative
    warnings: list[str] = []
    s = snapshot(src, warn=warnings.append)
    assert sorted(s.skipped) == ["etc", "leak.txt", "up"]
    assert "point outside" in warnings[0] and "TOP-SECRET" not in warnings[0]
    links = {e.rel: e.link for e in s.files if e.link is not None}
    assert links == {"rel.csv": "data/a.csv", "absdata": "data"}
    data = b"".join(tar_chunks(s, "mnt/code", uid=1000, gid=1000))
    assert b"TOP-SECRET-CONTENT" not in data
    members = {m.name: m for m in tarfile.open(fileobj=io.BytesIO(data))}
    assert members["mnt"].uid == 0 and members["mnt/code"].uid == 1000
    assert members["mnt/code/rel.csv"].issym() and members["mnt/code/rel.csv"].linkname == "data/a.csv"
    assert "mnt/code/leak.txt" not in members and "mnt/code/etc" not in members


def test_a_file_swapped_after_the_snapshot_is_refused(tmp_path: Path) -> None:
    import os

    src = tree(tmp_path / "src", {"train.py": "print(1)", "d/x.txt": "safe"})
    s = snapshot(src)
    (src / "d" / "x.txt").unlink()
    os.symlink("/etc/passwd", src / "d" / "x.txt")  # a race: the file became a link out
    with pytest.raises(MlEnvError, match="changed"):
        b"".join(tar_chunks(s))
    (src / "d" / "x.txt").unlink()
    (src / "d" / "x.txt").write_text("other")  # same name, other content
    with pytest.raises(MlEnvError, match="changed after the snapshot"):
        b"".join(tar_chunks(s))


def test_tar_stream_uses_fixed_memory(tmp_path: Path) -> None:
    """A 64 MiB snapshot streams in ~1 MiB chunks (never one buffer the size of the file)."""
    src = tree(tmp_path / "src", {"big.bin": os.urandom(1) * 0 + b"\0" * (64 * 2**20)})
    s = snapshot(src)
    sizes = [len(c) for c in tar_chunks(s)]
    assert max(sizes) <= 2 * 2**20 and sum(sizes) >= 64 * 2**20


_SEGMENTS = [
    ".git",
    "__pycache__",
    ".nox",
    ".ml-env",
    ".pytest_cache",
    ".amlignore",
    "runs",
    "src",
    "a.py",
    "runs.py",
    "x",
]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.sampled_from(_SEGMENTS), min_size=1, max_size=5), st.booleans())
def test_fixed_names_match_as_gitignore_does(parts: list[str], is_dir: bool) -> None:
    """Without an ignore file the always-ignored names are matched without pathspec: the same
    answer as pathspec's gitignore matching, for files and folders at any depth."""
    import pathspec

    from ml_env_tasks.runs.snapshot import ALWAYS_IGNORED, _matcher

    rel = "/".join(parts) + ("/" if is_dir else "")
    ours = _matcher(list(ALWAYS_IGNORED))
    assert type(ours).__name__ == "_FixedNames"
    assert ours.match_file(rel) == pathspec.GitIgnoreSpec.from_lines(ALWAYS_IGNORED).match_file(rel), rel


def test_an_untracked_file_the_snapshot_ships_makes_the_source_dirty(tmp_path: Path) -> None:
    """Reported: run.json said git_dirty: false with a commit that did not hold the training
    script, because untracked files were not counted. One the snapshot ships counts; one git
    ignores, or one the snapshot leaves out, does not."""
    import shutil
    import subprocess

    from ml_env_tasks.release.provenance import git_info

    if not shutil.which("git"):
        pytest.skip("git is not installed")

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=tmp_path,
                       check=True, capture_output=True)  # fmt: skip

    git("init", "-q")
    src = tmp_path / "src"
    src.mkdir()
    (src / "util.py").write_text("X = 1\n")
    (src / ".gitignore").write_text("*.log\n")
    (src / ".amlignore").write_text("scratch.py\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")

    def dirty() -> bool | None:
        return git_info(src, [e.rel for e in snapshot(src, warn=lambda m: None).files]).dirty

    assert dirty() is False
    (src / "train.log").write_text("ignored by git\n")
    (src / "scratch.py").write_text("left out of the snapshot by .amlignore\n")
    assert dirty() is False
    (src / "train.py").write_text("print('not committed')\n")
    assert git_info(src).dirty is False  # tracked files only: what was reported
    assert dirty() is True
    git("add", "src/train.py")
    git("commit", "-q", "-m", "second")
    assert dirty() is False
