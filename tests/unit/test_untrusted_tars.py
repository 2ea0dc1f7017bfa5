"""Untrusted tars (a model's layer, a remote run's outputs) and what a run leaves in its outputs:
nothing resolves outside the final folder, on any Python (this machine's 3.11.7 predates the fix
of CVE-2025-4517), no setuid bit, device or FIFO survives."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from ml_env_tasks import models
from ml_env_tasks.engine.archive import receive_tar
from ml_env_tasks.errors import EngineError, RegistryError
from ml_env_tasks.safe.tars import size_text, strip_privileges

PREFIX = models.MODEL_PREFIX + "/"


def add(t: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, *, link: str = "", data: bytes = b"") -> None:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode = kind, link, 0o755 if kind == tarfile.DIRTYPE else 0o644
    if kind == tarfile.REGTYPE:
        ti.size = len(data)
    t.addfile(ti, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def path_max_chain(t: tarfile.TarFile, into: Path | int, prefix: str, escape_to: str, *, hard: bool = True) -> None:
    """CVE-2025-4517's archive (as cpython's own regression test builds it): folders with long
    names behind a chain of short links, so a path written with the links stays short while its
    resolved form nears PATH_MAX; a last link past PATH_MAX that os.path.realpath (before the
    fix) stops resolving; a link through it to ``escape_to``; files written through that link.
    Also used by tests/docker/test_hostile_models.py."""
    steps = "abcdefghijklmnop"
    into_len = into if isinstance(into, int) else len(str(into))  # the folder extracted into (its length)
    room = os.pathconf("/", "PC_PATH_MAX") - into_len - len(prefix) - 1
    comp = "d" * (room // (len(steps) + 1))
    path = ""
    for step in steps:
        add(t, f"{prefix}{path}{comp}", tarfile.DIRTYPE)
        add(t, f"{prefix}{path}{step}", tarfile.SYMTYPE, link=comp)
        path += comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    add(t, prefix + linkpath, tarfile.SYMTYPE, link="/".join([".."] * len(steps)))  # back to the prefix's folder
    add(t, prefix + "escape", tarfile.SYMTYPE, link=f"{linkpath}/{escape_to}")
    add(t, prefix + "escape/pwned", data=b"written outside\n")
    if hard:  # a model's layer has no hard links (refused as such): the file above is the attack
        add(t, prefix + "flaglink", tarfile.LNKTYPE, link=prefix + "escape/victim")
        add(t, prefix + "flaglink", data=b"overwritten through a hard link\n")


def outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "mine\n"


def test_the_path_max_link_chain_of_cve_2025_4517_writes_nothing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("mine\n")
    staging = tmp_path / "staging"
    staging.mkdir()
    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w", format=tarfile.PAX_FORMAT) as t:
        # the chain's top is staging/var/azureml-models: three folders up is tmp_path
        path_max_chain(t, staging, PREFIX, "../../../outside", hard=False)
    with pytest.raises(RegistryError) as e:
        models._extract(blob, staging, "127.0.0.1:5000/models/m:1")
    assert "\n" not in str(e.value)
    outside_untouched(outside)
    for p in staging.rglob("*"):  # and no link left behind leads out
        if p.is_symlink():
            real = os.path.realpath(p)
            assert real.startswith(str(staging.resolve()) + "/") or real == str(staging.resolve())


def test_the_same_chain_from_a_remote_engine_writes_nothing_outside(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("mine\n")
    dest = tmp_path / "run" / "outputs"
    dest.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        path_max_chain(t, dest, "outputs/", "../../outside")  # outputs -> run -> tmp_path
    buf.seek(0)
    with pytest.raises(EngineError):
        receive_tar(buf, "outputs", dest, what="bringing the outputs back")
    outside_untouched(outside)


@pytest.mark.parametrize(
    "links",
    [
        [("up", "..")],  # inside the staging folder (var/), outside the model once moved
        [("sub/up", "../..")],
        [("sub/x", "../sub/../..")],
    ],
)
def test_a_model_link_that_leaves_the_final_folder_is_refused(tmp_path: Path, links: list[tuple[str, str]]) -> None:
    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w") as t:
        add(t, PREFIX + "sub", tarfile.DIRTYPE)
        add(t, PREFIX + "weights.bin", data=b"w")
        for name, target in links:
            add(t, PREFIX + name, tarfile.SYMTYPE, link=target)
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(RegistryError, match="resolves outside"):
        models._extract(blob, staging, "m:1")
    assert not any(p.is_symlink() for p in staging.rglob("*"))


def test_a_model_keeps_its_links_inside(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar"
    with tarfile.open(blob, "w") as t:
        add(t, "var", tarfile.DIRTYPE)
        add(t, PREFIX.rstrip("/"), tarfile.DIRTYPE)
        add(t, PREFIX + "sub", tarfile.DIRTYPE)
        add(t, PREFIX + "sub/w.bin", data=b"w" * 10)
        add(t, PREFIX + "latest", tarfile.SYMTYPE, link="sub/w.bin")
        add(t, PREFIX + "sub/self", tarfile.SYMTYPE, link="../sub")
    staging = tmp_path / "staging"
    staging.mkdir()
    got = models._extract(blob, staging, "m:1")
    assert (got.files, got.bytes, sorted(got.links)) == (1, 10, ["latest", "sub/self"])
    assert (staging / "latest").read_bytes() == b"w" * 10 and (staging / "sub/self/w.bin").is_file()


def test_a_link_chain_built_out_of_stream_order_is_refused(tmp_path: Path) -> None:
    """Each link, checked lexically when it arrives (and by realpath, its later parts not yet
    there), stays inside; once all are written, z -> x/.. -> (y/..)/.. -> (.)/../.. leaves."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        add(t, "outputs", tarfile.DIRTYPE)
        add(t, "outputs/z", tarfile.SYMTYPE, link="x/..")
        add(t, "outputs/x", tarfile.SYMTYPE, link="y/..")
        add(t, "outputs/y", tarfile.SYMTYPE, link=".")
    buf.seek(0)
    dest = tmp_path / "runs" / "r1" / "outputs"
    with pytest.raises(EngineError, match="resolves outside"):
        receive_tar(buf, "outputs", dest, what="outputs")
    for p in dest.iterdir():
        assert not p.is_symlink() or os.path.realpath(p).startswith(str(dest.resolve()))


def test_nothing_is_written_through_a_link(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        add(t, "outputs/d", tarfile.SYMTYPE, link=".")  # inside, but a path through it is refused
        add(t, "outputs/d/f", data=b"x")
    buf.seek(0)
    with pytest.raises(EngineError, match="through a link"):
        receive_tar(buf, "outputs", tmp_path / "o", what="outputs")
    assert not (tmp_path / "o" / "f").exists()


def gnu_sparse(name: str, realsize: int, regions: list[tuple[int, bytes]]) -> bytes:
    """An old-GNU sparse member (type S): its map in the header, only the regions' bytes stored."""
    data = b"".join(d for _, d in regions)
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.mode = tarfile.GNUTYPE_SPARSE, len(data), 0o644
    head = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    for i, (offset, d) in enumerate(regions):
        head[386 + 24 * i : 398 + 24 * i] = tarfile.itn(offset, 12, tarfile.GNU_FORMAT)
        head[398 + 24 * i : 410 + 24 * i] = tarfile.itn(len(d), 12, tarfile.GNU_FORMAT)
    head[483:495] = tarfile.itn(realsize, 12, tarfile.GNU_FORMAT)
    head[148:156] = b" " * 8
    head[148:156] = b"%06o\0 " % sum(head[:512])
    return bytes(head) + data + b"\0" * (-len(data) % 512)


def test_a_sparse_file_counts_its_full_length_and_stays_sparse(tmp_path: Path) -> None:
    big = gnu_sparse("outputs/big", 8 * 2**20, [(7 * 2**20, b"tail")]) + b"\0" * 1024
    with pytest.raises(EngineError, match=r"over 1 MiB$"):  # 8 MiB from 1.5 KiB of archive; the unit said
        receive_tar(io.BytesIO(big), "outputs", tmp_path / "a", what="outputs", max_bytes=2**20)
    files, size = receive_tar(io.BytesIO(big), "outputs", tmp_path / "b", what="outputs", max_bytes=16 * 2**20)
    f = tmp_path / "b" / "big"
    assert (files, size, f.stat().st_size) == (1, 8 * 2**20, 8 * 2**20)
    with open(f, "rb") as r:
        r.seek(7 * 2**20)
        assert r.read(4) == b"tail"
    assert f.stat().st_blocks * 512 < 2**20  # holes were not written as zeros
    bad = gnu_sparse("outputs/bad", 10, [(8, b"abcd")]) + b"\0" * 1024  # a region past the end
    with pytest.raises(EngineError, match="sparse map"):
        receive_tar(io.BytesIO(bad), "outputs", tmp_path / "c", what="outputs")


def test_the_archive_limit_is_said_in_its_unit() -> None:
    assert size_text(64 * 2**30) == "64 GiB"
    assert size_text(1500) == "1.46 KiB" and size_text(100) == "100 bytes"
    assert size_text(3 * 2**19) == "1.5 MiB"


def test_modes_lose_setuid_and_hard_links_stay_inside(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        ti = tarfile.TarInfo("outputs/suid")
        ti.mode, ti.size = 0o6777, 2
        t.addfile(ti, io.BytesIO(b"#!"))
        add(t, "outputs/again", tarfile.LNKTYPE, link="outputs/suid")
    buf.seek(0)
    receive_tar(buf, "outputs", tmp_path / "o", what="outputs")
    assert stat.S_IMODE((tmp_path / "o/suid").stat().st_mode) == 0o755
    assert (tmp_path / "o/again").stat().st_ino == (tmp_path / "o/suid").stat().st_ino


def test_a_run_cannot_leave_setuid_files_devices_or_fifos(tmp_path: Path) -> None:
    out = tmp_path / "outputs"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(out / "sub" / "sh", 0o6755)
    (out / "model.bin").write_bytes(b"m")
    os.mkfifo(out / "pipe")
    os.symlink("/etc/passwd", out / "link")  # never followed, left as it is
    said: list[str] = []
    touched = strip_privileges(out, said.append, label="outputs/")
    assert sorted(touched) == ["pipe", "sub/sh"]
    assert stat.S_IMODE((out / "sub" / "sh").stat().st_mode) == 0o755
    assert not (out / "pipe").exists() and os.readlink(out / "link") == "/etc/passwd"
    assert said == ["outputs/pipe: a FIFO left by the run: removed",
                    "outputs/sub/sh: setuid/setgid bit left by the run: cleared"]  # fmt: skip
