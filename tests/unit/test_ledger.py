"""The release ledger: TOML, appended atomically, answers 'which digest is prod, since when'."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import tomlkit

from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.release.ledger import Ledger, Promotion


def d(c: str) -> str:
    return "sha256:" + c * 64


def entry(n: int, digest: str, tags: list[str], env: str = "sklearn") -> Promotion:
    return Promotion(
        time=f"2026-11-0{n}T00:00:00+00:00",
        environment=env,
        digest=digest,
        tags=tuple(tags),
        destination="r/prod/sklearn",
    )


def test_append_keeps_comments_and_answers_since_when(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "releases.toml")
    ledger.append(entry(1, d("a"), ["1.0", "prod"]))
    ledger.append(entry(2, d("b"), ["1.1"]))
    ledger.append(entry(3, d("b"), ["prod"]))
    ledger.append(entry(4, d("b"), ["prod", "1.1"]))  # the same digest again: still since day 3
    ledger.append(entry(5, d("f"), ["prod"], env="pytorch"))
    text = (tmp_path / "releases.toml").read_text()
    assert text.startswith("# Release ledger")
    assert len(tomlkit.parse(text)["promotion"]) == 5
    cur = ledger.current("sklearn", "prod")
    assert cur.digest == d("b") and cur.since == "2026-11-03T00:00:00+00:00"
    assert ledger.current("sklearn", "1.0").digest == d("a")
    assert ledger.current("pytorch", "prod").digest == d("f")
    assert ledger.current("sklearn", "nope") is None
    assert [e.digest for e in ledger.entries("pytorch")] == [d("f")]


def _append_many(path: str, start: int) -> None:
    ledger = Ledger(Path(path))
    for i in range(start, start + 20):
        ledger.append(Promotion(time=str(i), environment="e", digest=f"sha256:{i:064x}", tags=("t",), destination="x"))


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "releases.toml")
    procs = [multiprocessing.Process(target=_append_many, args=(path, k * 100)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    digests = {e.digest for e in Ledger(Path(path)).entries()}
    assert len(digests) == 60
    assert not list(tmp_path.glob(".releases.toml.*")), "no lock or temp file is left beside the ledger"


def test_malformed_ledger_is_a_clear_error_and_is_not_overwritten(tmp_path: Path) -> None:
    f = tmp_path / "releases.toml"
    f.write_text("[[promotion]\nbroken")
    with pytest.raises(MlEnvError, match="not valid TOML") as exc:
        Ledger(f).append(entry(1, d("a"), ["x"]))
    assert exc.value.file == str(f)
    assert f.read_text() == "[[promotion]\nbroken"


def test_registry_ledger_locations_are_checked_without_echoing_them() -> None:
    import pytest

    from ml_env_tasks.errors import UsageError
    from ml_env_tasks.release.ledger_oci import RemoteLedger, is_remote, ledger_location

    assert ledger_location("registry", "h:5000/prod/x") == "oci://h:5000/prod/x:ml-env-ledger"
    assert ledger_location("releases.toml", "h/x") == "releases.toml" and not is_remote("releases.toml")
    with pytest.raises(UsageError, match="destination"):
        ledger_location("registry", None)
    for bad in ("oci://user:s3cret@h/x", "oci://h/x@sha256:" + "0" * 64, "oci://", "oci://hostonly",
                "oci://h/x:bad tag", "oci://h\n/x"):  # fmt: skip
        with pytest.raises(UsageError) as e:
            RemoteLedger(bad)
        assert "s3cret" not in str(e.value) and "\n" not in str(e.value)


def test_a_tag_moved_away_and_back_is_not_taken_as_recorded(tmp_path: Path) -> None:
    """prod: a, then b (moved, recorded), then back to a outside ml-env. A re-run promoting a as
    prod finds it in the registry: the ledger's record of a at prod is stale (b came after), so it
    must not count as recorded, or the ledger keeps saying b while the registry says a."""
    ledger = Ledger(tmp_path / "releases.toml")
    ledger.append(entry(1, d("a"), ["1.0", "prod"]))
    ledger.append(entry(2, d("b"), ["prod"]))
    assert ledger.recorded("r/prod/sklearn", d("a"), ("prod",)) is None
    assert ledger.recorded("r/prod/sklearn", d("a"), ("1.0",)) is not None  # 1.0 never moved
    assert ledger.recorded("r/prod/sklearn", d("b"), ("prod",)) is not None
    assert ledger.recorded("r/prod/sklearn", d("a"), ("1.0", "prod")) is None
    assert ledger.recorded("elsewhere", d("b"), ("prod",)) is None
    ledger.append(entry(3, d("a"), ["prod"]))  # what the re-run records (found)
    assert ledger.recorded("r/prod/sklearn", d("a"), ("1.0", "prod")) is not None
    assert ledger.current("sklearn", "prod").digest == d("a")


def test_appending_to_a_ledger_without_a_final_newline_keeps_it_readable(tmp_path: Path) -> None:
    """A ledger whose last line has no newline (hand-edited, merged, written by another tool, or a
    registry-kept one someone else pushed): the append must not glue its [[promotion]] header to
    that line, which wrote (and, for a registry ledger, pushed) a ledger nobody could read."""
    f = tmp_path / "releases.toml"
    f.write_text('[[promotion]]\ntime = "t"\ndigest = "' + d("a") + '"\ndestination = "x"\ntags = ["prod"]')
    ledger = Ledger(f)
    ledger.append(entry(2, d("b"), ["prod"]))
    assert [e.digest for e in Ledger(f).entries()] == [d("a"), d("b")]
    assert ledger.current(None, "prod").digest == d("b")


class _Registry:
    """An in-memory registry for a registry-kept ledger: manifests by tag and digest, blobs; a
    hook runs when a HEAD of the tag comes, to put another writer exactly there."""

    def __init__(self) -> None:
        import hashlib

        self._sha = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, bytes] = {}
        self.on_head: list = []

    def _info(self, body: bytes):
        from ml_env_tasks.registry.reference import ManifestInfo

        return ManifestInfo(self._sha(body), "application/vnd.oci.image.manifest.v1+json", len(body))

    def head_manifest(self, repo: str, ref: str):
        if self.on_head:
            self.on_head.pop(0)()
        body = self.tags.get(ref)
        return self._info(body) if body is not None else None

    def get_manifest(self, repo: str, ref: str):
        body = self.tags.get(ref)
        return (self._info(body), body) if body is not None else None

    def get_blob(self, repo: str, digest: str, limit: int = 0) -> bytes:
        return self.blobs[digest]

    def blob_exists(self, repo: str, digest: str) -> bool:
        return digest in self.blobs

    def upload_stream(self, repo: str, digest: str, chunks, size=None) -> None:
        self.blobs[digest] = b"".join(chunks)

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        self.tags[ref] = body
        return self._sha(body)


class _Client:
    """One writer's view of the shared registry; ``stale`` answers its next HEADs of the tag with
    what the tag named before (a writer whose check came just before another's write)."""

    def __init__(self, reg: _Registry) -> None:
        self.reg, self.stale = reg, []

    def head_manifest(self, repo: str, ref: str):
        if self.stale:
            return self.stale.pop(0)
        return self.reg.head_manifest(repo, ref)

    def __getattr__(self, name: str):
        return getattr(self.reg, name)


def test_a_registry_ledger_write_overwritten_by_a_stale_writer_is_written_again(monkeypatch) -> None:
    """Writers a and b read the same ledger. a writes and sees the tag name its write; b, whose
    check of the tag came before a's write, then writes its copy (without a's entry) over it. Both
    said "recorded"; the ledger had lost a's promotion (8 promotions from 8 machines at once left
    4 entries). a must look again after its write and put its entry back."""
    import ml_env_tasks.release.ledger_oci as lo

    monkeypatch.setattr(lo, "SETTLE_MIN", 0.0, raising=False)
    reg = _Registry()
    ca, cb = _Client(reg), _Client(reg)
    a = lo.RemoteLedger("oci://127.0.0.1:5000/prod/x", client=ca)
    b = lo.RemoteLedger("oci://127.0.0.1:5000/prod/x", client=cb)
    a.append(entry(1, d("a"), ["a"]))
    b.append(entry(2, d("b"), ["b"]))

    def b_writes_its_stale_copy() -> None:
        cb.stale = [None]  # b's check came before a's write: no ledger yet, as b read it
        b.push()

    # a: HEAD (check), put, HEAD (verify: its write), HEAD (a moment later): b wrote in between
    reg.on_head = [lambda: None, lambda: None, b_writes_its_stale_copy]
    try:
        a.push()
        while reg.on_head:  # b's write comes now if a did not wait for it
            reg.on_head.pop(0)()
    finally:
        a.close()
        b.close()
    final = lo.RemoteLedger("oci://127.0.0.1:5000/prod/x", client=_Client(reg))
    try:
        assert sorted(e.digest for e in final.entries()) == [d("a"), d("b")]
    finally:
        final.close()


def test_a_promotion_over_the_ledger_tag_is_refused_before_any_registry_is_touched(tmp_path: Path) -> None:
    """`promote SRC DEST --tag ml-env-ledger --allow-overwrite` wrote the image over the registry
    ledger (the whole history), then failed with exit 2, and so did every later promotion there."""
    from ml_env_tasks.errors import UsageError
    from ml_env_tasks.release.promote import PromoteOptions, promote

    src, dst = "127.0.0.1:9/src/x:1", "127.0.0.1:9/prod/x"  # nothing listens: no registry is asked
    cases = [
        (("ml-env-ledger",), "registry"),
        (("ml-env-ledger",), None),
        (("ok", "custom"), "oci://127.0.0.1:9/prod/x:custom"),
    ]
    for tags, ledger in cases:
        with pytest.raises(UsageError, match="holds the release ledger"):
            promote(PromoteOptions(src, dst, tags=tags, ledger=ledger, allow_overwrite=True))
    with pytest.raises(UsageError, match="holds the release ledger"):
        promote(PromoteOptions(src, f"{dst}:ml-env-ledger", ledger=tmp_path / "l.toml", allow_overwrite=True))


def test_verify_reads_the_registry_ledger_when_told_registry(monkeypatch) -> None:
    """`verify IMAGE --ledger registry` (the value CI's config uses, as promote reads it) looked for
    a file named 'registry', said 'skip: registry does not exist' and exited 0: the ledger was
    never checked. It is the ledger in the image's own repository."""
    import contextlib

    import ml_env_tasks.release.ledger_oci as lo
    from ml_env_tasks.release.verify import _ledger_check

    asked = []

    @contextlib.contextmanager
    def fake_open(location, **_kw):
        asked.append(str(location))
        yield Ledger(Path("/nonexistent/none.toml"))

    monkeypatch.setattr(lo, "open_ledger", fake_open)
    c = _ledger_check("registry", d("a"), "127.0.0.1:5000/prod/x")
    assert asked == ["oci://127.0.0.1:5000/prod/x:ml-env-ledger"]
    assert c.ok is False and "no promotion of this digest" in c.line()
