"""The release ledger: TOML, appended atomically, answers 'which digest is prod, since when'."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import tomlkit

from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.ledger import Ledger, Promotion


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
    from ml_env_tasks.ledger_oci import RemoteLedger, is_remote, ledger_location

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
