"""The release ledger: TOML, appended atomically, answers 'which digest is prod, since when'."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import tomlkit

from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.promote import Ledger


def entry(n: int, digest: str, tags: list[str], env: str = "sklearn") -> dict:
    return {
        "time": f"2026-11-0{n}T00:00:00+00:00",
        "environment": env,
        "digest": digest,
        "tags": tags,
        "destination": "r/prod/sklearn",
    }


def test_append_keeps_comments_and_answers_since_when(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "releases.toml")
    ledger.append(entry(1, "sha256:aaa", ["1.0", "prod"]))
    ledger.append(entry(2, "sha256:bbb", ["1.1"]))
    ledger.append(entry(3, "sha256:bbb", ["prod"]))
    ledger.append(entry(4, "sha256:bbb", ["prod", "1.1"]))  # the same digest again: still since day 3
    ledger.append(entry(5, "sha256:zzz", ["prod"], env="pytorch"))
    text = (tmp_path / "releases.toml").read_text()
    assert text.startswith("# Release ledger")
    assert len(tomlkit.parse(text)["promotion"]) == 5
    cur = ledger.current("sklearn", "prod")
    assert cur["digest"] == "sha256:bbb" and cur["since"] == "2026-11-03T00:00:00+00:00"
    assert ledger.current("sklearn", "1.0")["digest"] == "sha256:aaa"
    assert ledger.current("pytorch", "prod")["digest"] == "sha256:zzz"
    assert ledger.current("sklearn", "nope") is None
    assert [e["digest"] for e in ledger.entries("pytorch")] == ["sha256:zzz"]


def _append_many(path: str, start: int) -> None:
    ledger = Ledger(Path(path))
    for i in range(start, start + 20):
        ledger.append({"time": str(i), "environment": "e", "digest": f"sha256:{i}", "tags": ["t"]})


def test_concurrent_appends_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "releases.toml")
    procs = [multiprocessing.Process(target=_append_many, args=(path, k * 100)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    digests = {e["digest"] for e in Ledger(Path(path)).entries()}
    assert len(digests) == 60
    assert not list(tmp_path.glob(".releases.toml.*.tmp"))


def test_malformed_ledger_is_a_clear_error_and_is_not_overwritten(tmp_path: Path) -> None:
    f = tmp_path / "releases.toml"
    f.write_text("[[promotion]\nbroken")
    with pytest.raises(MlEnvError, match="not valid TOML") as exc:
        Ledger(f).append(entry(1, "sha256:a", ["x"]))
    assert exc.value.file == str(f)
    assert f.read_text() == "[[promotion]\nbroken"
