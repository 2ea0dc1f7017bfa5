"""What travels to and from an engine that cannot see this machine: the tar a remote run gets,
archives coming back (untrusted), engine addresses and ``--input NAME=volume:VOLUME``."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from ml_env_tasks.engine.archive import receive_tar
from ml_env_tasks.engine.context import endpoint_address
from ml_env_tasks.engine.resources import Resources
from ml_env_tasks.errors import EngineError, UsageError
from ml_env_tasks.runs.runner import Job, _remote_parts
from ml_env_tasks.runs.snapshot import folder_snapshot, snapshot, tar_parts
from ml_env_tasks.runs.train import RunOptions, _validate, split_inputs


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for ti, data in members:
            if data is not None:
                ti.size = len(data)
            t.addfile(ti, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, mode
    return ti


def test_an_archive_comes_back_byte_identical_under_dest(tmp_path: Path) -> None:
    blob = os.urandom(300_000)
    src = tar_of(
        (member("outputs", tarfile.DIRTYPE, mode=0o755), None),
        (member("outputs/a/b.bin"), blob),
        (member("outputs/link", tarfile.SYMTYPE, "a/b.bin"), None),
    )
    files, size = receive_tar(src, "outputs", tmp_path / "out", what="outputs")
    assert (files, size) == (1, len(blob))
    assert (tmp_path / "out/a/b.bin").read_bytes() == blob
    assert os.readlink(tmp_path / "out/link") == "a/b.bin"


@pytest.mark.parametrize(
    "bad",
    [
        member("elsewhere/x"),  # not under the folder asked for
        member("outputs/../../x"),
        member("/outputs/x"),
        member("outputs/up", tarfile.SYMTYPE, "../run.json"),  # a link out of the folder (still in dest's parent)
        member("outputs/abs", tarfile.SYMTYPE, "/etc/passwd"),
        member("outputs/hard", tarfile.LNKTYPE, "outputs/x"),
        member("outputs/dev", tarfile.CHRTYPE),
        member("outputs/fifo", tarfile.FIFOTYPE),
    ],
)
def test_a_hostile_archive_writes_nothing_outside(tmp_path: Path, bad: tarfile.TarInfo) -> None:
    dest = tmp_path / "run" / "outputs"
    (tmp_path / "run" / "run.json").parent.mkdir(parents=True)
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(EngineError) as e:
        receive_tar(tar_of((bad, b"x" if bad.isreg() else None)), "outputs", dest, what="outputs")
    assert "\n" not in str(e.value)
    assert (tmp_path / "run" / "run.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["outputs", "run", "run.json"]


def test_an_archive_is_bounded(tmp_path: Path) -> None:
    big = tar_of((member("outputs/a"), b"x" * 1000), (member("outputs/b"), b"y" * 1000))
    with pytest.raises(EngineError, match="over"):
        receive_tar(big, "outputs", tmp_path / "o", what="outputs", max_bytes=1500)
    many = tar_of(*[(member(f"outputs/f{i}"), b"") for i in range(5)])
    with pytest.raises(EngineError, match="over 3 entries"):
        receive_tar(many, "outputs", tmp_path / "p", what="outputs", max_members=3)
    with pytest.raises(EngineError, match="not a valid tar"):
        receive_tar(io.BytesIO(b"not a tar" * 100), "outputs", tmp_path / "q", what="outputs")


def test_the_tar_of_a_remote_run(tmp_path: Path) -> None:
    code = tmp_path / "src"
    code.mkdir()
    (code / "job.py").write_text("print(1)")
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "sub" / "rows.csv").write_text("a,b\n")
    (data / ".gitignore").write_text("*.csv\n")  # inputs are data: no ignore rules
    os.symlink("/etc/passwd", data / "outside")  # pointing out: left out
    single = tmp_path / "weights.bin"
    single.write_bytes(b"\0" * 10)
    outputs = tmp_path / "run" / "outputs"
    (outputs / "named").mkdir(parents=True)
    job = Job(
        run_id="r", image="i", command=[], snapshot=snapshot(code, warn=lambda m: None), inputs={"data": data, "w": single},
        outputs=outputs, env_vars={}, secret_names=(), user="1000:1001", resources=Resources(), timeout=None,
    )  # fmt: skip
    raw = b"".join(tar_parts(_remote_parts(job, 1000, 1001)))
    with tarfile.open(fileobj=io.BytesIO(raw)) as t:
        got = {m.name: m for m in t.getmembers()}
        assert t.extractfile("mnt/inputs/w").read() == b"\0" * 10  # type: ignore[union-attr]
        assert t.extractfile("mnt/inputs/data/sub/rows.csv").read() == b"a,b\n"  # type: ignore[union-attr]
    assert got["mnt/code/outputs"].issym() and got["mnt/code/outputs"].linkname == "../outputs"
    assert (got["mnt/code/job.py"].uid, got["mnt/code"].uid) == (1000, 1000)
    assert got["mnt"].uid == 0 and got["mnt/inputs/data/sub/rows.csv"].uid == 0
    assert "mnt/inputs/data/outside" not in got and "mnt/inputs/data/.gitignore" in got
    assert got["mnt/outputs"].isdir() and (got["mnt/outputs"].uid, got["mnt/outputs"].gid) == (1000, 1001)
    assert got["mnt/outputs/named"].isdir() and got["mnt/outputs/named"].uid == 1000


def test_a_file_changed_while_it_is_sent_fails_the_upload(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "x"
    f.write_bytes(b"12345")
    snap = folder_snapshot(tmp_path / "d")
    f.write_bytes(b"123")
    from ml_env_tasks.runs.snapshot import TarPart

    with pytest.raises((UsageError, OSError, tarfile.TarError)):
        b"".join(tar_parts([TarPart("mnt/inputs/d", snap)]))


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("unix:///var/run/docker.sock", "127.0.0.1"),
        ("tcp://10.87.213.2:2376", "10.87.213.2"),
        ("tcp://gpu-box.example:2376", "gpu-box.example"),
        ("ssh://me@gpu-box.example:2222", "gpu-box.example"),
        ("tcp://[fd00::5]:2376", "[fd00::5]"),
    ],
)
def test_the_address_of_an_engine(host: str, address: str) -> None:
    assert endpoint_address(host) == address


def test_an_engine_url_without_a_host_is_one_error() -> None:
    with pytest.raises(EngineError):
        endpoint_address("tcp://")


def test_volume_inputs_are_told_apart_and_checked(tmp_path: Path) -> None:
    paths, volumes = split_inputs({"a": "data", "b": "volume:shared-data", "c": "./volume:x"})
    assert paths == {"a": Path("data"), "c": Path("./volume:x")} and volumes == {"b": "shared-data"}
    base = dict(environment="e", source=tmp_path, script="s.py")
    _validate(RunOptions(**base, input_volumes={"b": "shared-data"}))  # type: ignore[arg-type]
    for bad in ("", "-x", "a/b", "a b"):
        with pytest.raises(UsageError, match="not a volume name"):
            _validate(RunOptions(**base, input_volumes={"b": bad}))  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="given twice"):
        _validate(RunOptions(**base, inputs={"b": tmp_path}, input_volumes={"b": "v"}))  # type: ignore[arg-type]
