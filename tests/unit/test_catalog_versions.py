"""Curated environments, clone, scaffold, the reserved prefix, and environment versions."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_env_tasks import SpecError, spec
from ml_env_tasks.catalog import clone, curated, scaffold
from ml_env_tasks.catalog.versions import Versions
from ml_env_tasks.errors import MlEnvError, UsageError
from ml_env_tasks.spec.hashing import env_hash


def test_curated_set_and_reserved_prefix(tmp_path: Path) -> None:
    assert {p.stem for p in curated()} >= {"minimal", "sklearn", "sklearn-inference", "pytorch-cpu"}
    for p in curated():
        assert spec.load(p).name == f"ml-env-{p.stem}"
    f = tmp_path / "mine.toml"
    f.write_text('name = "ml-env-sklearn"\n[base]\nimage = "a/b:1"\n')
    with pytest.raises(SpecError, match="reserved for curated") as exc:
        spec.load(f)
    assert exc.value.key == "name"


def test_clone_is_an_editable_copy_with_its_files(tmp_path: Path) -> None:
    out = clone("curated/sklearn", "my-sklearn", tmp_path / "envs")
    env = spec.load(out)
    assert env.name == "my-sklearn" and env.version == "1"
    assert env_hash(env) == env_hash(spec.load(curated()[[p.stem for p in curated()].index("sklearn")]))
    assert (tmp_path / "envs/requirements/sklearn.txt").exists()
    assert out.read_text().startswith("# Curated: scikit-learn for training. Cloned from curated/sklearn.")
    with pytest.raises(MlEnvError, match="exists"):
        clone("curated/sklearn", "my-sklearn", tmp_path / "envs")
    with pytest.raises(MlEnvError, match="not a name"):
        clone("curated/sklearn", "ml-env-mine", tmp_path / "envs")
    with pytest.raises(MlEnvError, match="no curated environment"):
        clone("curated/nope", "x", tmp_path / "envs")


def test_scaffold(tmp_path: Path) -> None:
    files = scaffold("proj", tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [
        "envs/proj.toml",
        "envs/requirements/proj.txt",
        "src/train.py",
    ]
    assert spec.load(tmp_path / "envs/proj.toml").name == "proj"
    compile((tmp_path / "src/train.py").read_text(), "train.py", "exec")
    with pytest.raises(MlEnvError, match="not overwriting"):
        scaffold("proj", tmp_path)


def test_versions_bump_only_on_a_changed_hash(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    (envs / "requirements").mkdir(parents=True)
    (envs / "requirements/r.txt").write_text("six==1.16.0\n")
    f = envs / "e.toml"
    f.write_text('name = "e"\n[base]\nimage = "a/b:1"\n[python]\nrequirements = ["requirements/r.txt"]\n')
    v = Versions(envs / "versions.toml")
    one, created = v.register(spec.load(f), image="r/e:h1", digest="sha256:1", registry="r")
    assert created and one.version == 1
    same, created = v.register(spec.load(f), image="r/e:h1", digest="sha256:1", registry="r")
    assert not created and same.version == 1
    f.write_text('description = "cosmetic only"\n' + f.read_text())
    assert v.register(spec.load(f), image="r/e:h1", digest="sha256:1", registry="r")[1] is False
    (envs / "requirements/r.txt").write_text("six==1.17.0\n")
    two, created = v.register(spec.load(f), image="r/e:h2", digest="sha256:2", registry="r")
    assert created and two.version == 2
    assert v.get("e").version == 2 and v.get("e:1").hash == one.hash
    with pytest.raises(MlEnvError, match="has no version 9"):
        v.get("e:9")
    diffs = v.diff("e:1", "e:2")
    assert [d.field for d in diffs] == ["python.requirements", "python.requirements"]
    back = v.write_back(v.get("e:1"), tmp_path / "restored" / "e.toml")
    assert env_hash(spec.load(back)) == one.hash
    assert (tmp_path / "restored/requirements/r.txt").read_text() == "six==1.16.0\n"


def test_shipped_files_name_public_base_images_and_curated_locks_stay_out_of_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No environment a user gets names the lab's registry; a curated environment's lock goes to
    the user cache (the installed package is not the user's to write in), a project's beside it."""
    from ml_env_tasks.catalog import DEFAULT_BASE
    from ml_env_tasks.spec.pins import lock_path_for

    root = Path(__file__).resolve().parents[2]
    shipped = [*curated(), *(root / "envs").glob("*.toml")]
    for p in shipped:
        assert "127.0.0.1" not in p.read_text(), p
    assert "127.0.0.1" not in DEFAULT_BASE and DEFAULT_BASE.startswith("python:")
    scaffold("demo", tmp_path / "s")
    assert all("127.0.0.1" not in f.read_text() for f in (tmp_path / "s").rglob("*") if f.is_file())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    sk = next(p for p in curated() if p.stem == "sklearn")
    assert lock_path_for(sk) == tmp_path / "cache" / "ml-env" / "curated" / "sklearn.lock"
    assert lock_path_for(tmp_path / "envs" / "x.toml") == tmp_path / "envs" / "x.lock"
    # the lock shipped with the package is read until the user has one of their own
    from ml_env_tasks.spec.pins import lock_to_read

    assert lock_to_read(sk) == sk.with_suffix(".lock") and sk.with_suffix(".lock").exists()
    lock_path_for(sk).parent.mkdir(parents=True)
    lock_path_for(sk).write_text("numpy==2.0.0\n")
    assert lock_to_read(sk) == lock_path_for(sk)


def _wheel(path: Path, body: bytes) -> None:
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("demo/__init__.py", body)


def test_diff_of_versions_with_private_wheels_needs_no_wheel_bytes(tmp_path: Path) -> None:
    """The versions file keeps a wheel's name and digest, not its bytes: two versions compare on
    those, in a checkout that never had the wheels (no temp path in the answer)."""
    envs = tmp_path / "envs"
    whl = envs / "wheels/demo-1.0-py3-none-any.whl"
    _wheel(whl, b"V = 1\n")
    f = envs / "w.toml"
    f.write_text('name = "w"\n[base]\nimage = "a/b:1"\n[python]\nwheels = ["wheels/demo-1.0-py3-none-any.whl"]\n')
    v = Versions(envs / "versions.toml")
    one = v.register(spec.load(f), image="r/w:h1", digest="sha256:1", registry="r")[0]
    _wheel(whl, b"V = 2\n")
    two = v.register(spec.load(f), image="r/w:h2", digest="sha256:2", registry="r")[0]
    assert (one.version, two.version) == (1, 2)
    whl.unlink()
    diffs = v.diff("w:1", "w:2")
    assert {d.field for d in diffs} == {"python.wheels"}
    shown = "\n".join(str(d) for d in diffs)
    assert one.wheels["demo-1.0-py3-none-any.whl"] in shown and two.wheels["demo-1.0-py3-none-any.whl"] in shown
    assert "ml-env-diff-" not in shown
    assert v.diff("w:1", "w:1") == []


def test_get_into_a_folder_refuses_to_overwrite_and_list_all_shows_every_version(tmp_path: Path) -> None:
    """`get NAME:V -o DIR` (Azure's -d habit) writes into the folder DIR; a file already there is one
    error line naming it, exit 2, nothing written; `list --all` shows older versions too."""
    import json
    import subprocess
    import sys

    def ml_env(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "ml_env_tasks", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    envs = tmp_path / "envs"
    (envs / "requirements").mkdir(parents=True)
    (envs / "requirements/r.txt").write_text("six==1.16.0\n")
    f = envs / "e.toml"
    f.write_text('name = "e"\n[base]\nimage = "a/b:1"\n[python]\nrequirements = ["requirements/r.txt"]\n')
    v = Versions(envs / "versions.toml")
    v.register(spec.load(f), image="r/e:h1", digest="sha256:1", registry="r")
    (envs / "requirements/r.txt").write_text("six==1.17.0\n")
    v.register(spec.load(f), image="r/e:h2", digest="sha256:2", registry="r")
    listed = json.loads(ml_env("list", "--all", "--json").stdout)["registered"]
    assert [(e["name"], e["version"]) for e in listed] == [("e", 1), ("e", 2)]
    assert [e["version"] for e in json.loads(ml_env("list", "--json").stdout)["registered"]] == [2]

    got = ml_env("get", "e:1", "-o", "out")
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out/requirements/r.txt").read_text() == "six==1.16.0\n"
    assert env_hash(spec.load(tmp_path / "out/e.toml")) == v.get("e:1").hash
    assert not (tmp_path / "requirements").exists()  # nothing lands in the current folder

    (tmp_path / "other/requirements").mkdir(parents=True)
    (tmp_path / "other/requirements/r.txt").write_text("mine\n")
    refused = ml_env("get", "e:2", "-o", "other")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [
        "ml-env: error: not overwriting other/requirements/r.txt (--force overwrites them)"
    ]
    assert not (tmp_path / "other/e.toml").exists() and (tmp_path / "other/requirements/r.txt").read_text() == "mine\n"
    (tmp_path / "afile").write_text("x")
    assert ml_env("get", "e:2", "-o", "afile").stderr.strip() == "ml-env: error: afile is a file; -o takes a folder"
    assert ml_env("get", "e:2", "-o", "other", "--force").returncode == 0
    assert (tmp_path / "other/requirements/r.txt").read_text() == "six==1.17.0\n"


def test_a_wheel_outside_the_environment_folder_is_not_registered(tmp_path: Path) -> None:
    """`get -o DIR` writes wheels only inside DIR, where the spec names them: a version naming
    ``../wheels/x.whl`` could never be restored, so it is not recorded."""
    (tmp_path / "pyproject.toml").write_text("")
    _wheel(tmp_path / "wheels/demo-1.0-py3-none-any.whl", b"V = 1\n")
    f = tmp_path / "envs/w.toml"
    f.parent.mkdir()
    f.write_text('name = "w"\n[base]\nimage = "a/b:1"\n[python]\nwheels = ["../wheels/demo-1.0-py3-none-any.whl"]\n')
    v = Versions(tmp_path / "envs/versions.toml")
    with pytest.raises(UsageError, match="outside the environment's directory"):
        v.register(spec.load(f), image="r/w:h", digest="sha256:1", registry="r")
    assert v.entries() == []


def test_list_shows_each_curated_environment_with_its_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As Azure's Environment.list: every curated environment with its base and packages, declared
    and (from its lock) installed; a build of it on this machine has the last word."""
    import json
    import subprocess
    import sys

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)

    def listing() -> dict:
        p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "list", "--json"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    got = {d["name"]: d for d in listing()["curated_environments"]}
    sk = got["curated/sklearn"]
    assert sk["base"] == "python:3.11-slim-bookworm" and "scikit-learn==1.5.2" in sk["packages"]
    assert sk["locked"]["scikit-learn"] == "1.5.2" and not sk["inference"]
    assert (
        got["curated/sklearn-inference"]["inference"] and "torch==2.5.1+cpu" in got["curated/pytorch-cpu"]["packages"]
    )
    own = tmp_path / "cache" / "ml-env" / "curated" / "sklearn.lock"
    own.parent.mkdir(parents=True)
    own.write_text("numpy==2.0.0\n")
    assert {d["name"]: d for d in listing()["curated_environments"]}["curated/sklearn"]["locked"] == {"numpy": "2.0.0"}
    text = subprocess.run([sys.executable, "-m", "ml_env_tasks", "list"], capture_output=True, text=True).stdout
    assert "curated/pytorch-cpu" in text and "packages  torch==2.5.1+cpu, numpy==2.1.3" in text


def test_a_hostile_lock_is_never_echoed_nor_waited_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user cache is outside text for list: escape sequences are no package, a FIFO or a
    device is no lock (it would hang, or never end), a huge file is skipped. A label that is not
    a lock ml-env wrote is not one either."""
    import os
    import subprocess
    import sys

    from ml_env_tasks.spec.pins import is_lock_text, lock_packages

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    own = tmp_path / "cache" / "ml-env" / "curated"
    own.mkdir(parents=True)
    (own / "sklearn.lock").write_text("evil\x1b]0;PWNED\x07\x1b[2J==1.0\nok-pkg==2.0\nfoo==$(id)\n")
    os.mkfifo(own / "minimal.lock")
    (own / "pytorch-cpu.lock").symlink_to("/dev/zero")
    with (own / "sklearn-inference.lock").open("wb") as f:
        f.truncate(64 * 2**20)
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "list"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "\x1b" not in p.stdout + p.stderr and "PWNED" not in p.stdout and "$(id)" not in p.stdout
    assert "installed ok-pkg==2.0" in p.stdout
    assert lock_packages("a==1\nb c==2\n# x\nd==3 ; x\n") == {"a": "1"}
    from ml_env_tasks.build.lockfile import LOCK_HEADER

    assert is_lock_text(LOCK_HEADER + "numpy==2.1.3\ntorch==2.5.1+cpu\n")
    assert not is_lock_text(LOCK_HEADER + "pkg==1\x1b[5m\n") and not is_lock_text("numpy==2.1.3\n")


def test_a_registered_version_names_its_registry_for_a_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`package --env NAME:VERSION` without --registry packages where the version's image is: the
    versions file entry says which registry. Anything else still needs --registry."""
    from ml_env_tasks.build import BuildOptions
    from ml_env_tasks.build.resolve import registered_location
    from ml_env_tasks.models.package import package

    monkeypatch.chdir(tmp_path)
    envs = tmp_path / "envs"
    envs.mkdir()
    f = envs / "e.toml"
    f.write_text('name = "e"\ninference = true\n[base]\nimage = "a/b:1"\n')
    versions = envs / "versions.toml"
    Versions(versions).register(spec.load(f), image="reg.example:5000/team/e:h1", digest="sha256:1",
                                registry="reg.example:5000")  # fmt: skip
    assert registered_location("e:1", versions) == ("reg.example:5000", "team/e")
    for other in ("e", "e:9x", "curated/minimal", "envs/e.toml", "reg.example:5000/team/e:1"):
        assert registered_location(other, versions) is None, other
    assert registered_location("e:1", tmp_path / "none.toml") is None
    said: list[str] = []
    with pytest.raises(UsageError, match="entry script"):  # past the registry: the entry is checked next
        package("e:1", tmp_path / "score.py", "m:1", build=BuildOptions(), versions=versions, info=said.append)
    assert said == ["package: into reg.example:5000, where e:1 is (the versions file says so)"]
    with pytest.raises(UsageError, match="give --registry"):
        package("envs/e.toml", tmp_path / "score.py", "m:1", build=BuildOptions(), versions=versions)
