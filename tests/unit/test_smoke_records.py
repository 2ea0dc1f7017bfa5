"""A smoke-test record names what was tested (the entry folder, each model, or nothing for a
packaged image), and the gate counts the records of the combination that runs: a failing test of
another entry script against the same environment image no longer blocks a promotion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

import ml_env_tasks.release.attest as attest
import ml_env_tasks.release.signing as signing
from ml_env_tasks.errors import GateRefused, UsageError
from ml_env_tasks.registry import Reference
from ml_env_tasks.release.promote import PromoteOptions, _check_gates
from ml_env_tasks.release.tested import Combination, entry_of, from_files, gate, model_digests, of_record

DIGEST = "sha256:" + "d" * 64
MODEL_A, MODEL_B = "sha256:" + "a" * 64, "sha256:" + "b" * 64
SCORE = Combination("score.py", "1" * 64, (("", MODEL_A),))
OTHER = Combination("score_bad.py", "1" * 64, (("", MODEL_A),))  # another script of the same folder


def record(t: Combination | None, *, ok: bool, time: str, lock: str = "") -> dict[str, Any]:
    """A record as ml-env writes it (``t`` None: as the code before records named what ran)."""
    rec = {"tested": DIGEST, "time": time, "passed": 2 if ok else 1, "failed": 0 if ok else 1, "cases_sha256": "c",
           "lock_sha256": lock, "p95_ms": 1.0, "tool": "ml-env"}  # fmt: skip
    return {**rec, **t.fields()} if t is not None else rec


def newest_first(*records: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: r["time"], reverse=True)


def test_a_failing_test_of_another_entry_does_not_block_the_entry_that_runs() -> None:
    """The issue: workflow B's passing test of score.py, then workflow A's deliberately failing test
    of score_bad.py on the same environment digest. Promoting with score.py named passes."""
    records = newest_first(record(SCORE, ok=True, time="2026-01-01T10:00:00"),
                           record(OTHER, ok=False, time="2026-01-01T10:05:00"))  # fmt: skip
    assert gate(records, SCORE, "img").ok
    assert "passed 2 cases" in gate(records, SCORE, "img").line
    refused = gate(records, OTHER, "img")
    assert not refused.ok and "failed: 1 of 2 cases" in refused.line and "score_bad.py" in refused.line
    # none named: the image is what runs, so every combination tested against it counts
    unnamed = gate(records, None, "img")
    assert not unnamed.ok and "--entry/--model" in unnamed.line
    # a model, the script name or the folder make another combination: its records are not this one's
    for other in (Combination("score.py", "1" * 64, (("", MODEL_B),)), Combination("score.py", "2" * 64, (("", MODEL_A),)),
                  Combination("score.py", "1" * 64, (("digits", MODEL_A),)), Combination("score.py", "1" * 64)):  # fmt: skip
        got = gate(records, other, "img")
        assert not got.ok and "no smoke test of" in got.line and "2 other from_files(s)" in got.line


def test_the_newest_record_of_a_combination_decides_it() -> None:
    failed_then_fixed = newest_first(record(SCORE, ok=False, time="2026-01-01T10:00:00"),
                                     record(SCORE, ok=True, time="2026-01-01T11:00:00"))  # fmt: skip
    assert gate(failed_then_fixed, SCORE, "img").ok and gate(failed_then_fixed, None, "img").ok
    passed_then_broken = newest_first(record(SCORE, ok=True, time="2026-01-01T10:00:00"),
                                      record(SCORE, ok=False, time="2026-01-01T11:00:00"))  # fmt: skip
    assert not gate(passed_then_broken, SCORE, "img").ok and not gate(passed_then_broken, None, "img").ok
    both_green = newest_first(record(SCORE, ok=True, time="2026-01-01T10:00:00"),
                              record(OTHER, ok=True, time="2026-01-01T11:00:00"))  # fmt: skip
    got = gate(both_green, None, "img")
    assert got.ok and "each of the 2 combinations" in got.line and len(got.counted) == 2
    assert not gate([], None, "img").ok and "no smoke test recorded" in gate([], None, "img").line


def test_records_written_before_they_named_what_ran_are_still_read() -> None:
    """An old record names nothing mounted: on a packaged image that is exactly what it tested, so
    it counts as before; it never stands for a combination someone names."""
    old = record(None, ok=True, time="2026-01-01T09:00:00")
    assert of_record(old) == Combination()
    assert gate([old], None, "img").ok  # the old rule, unchanged: the newest record passed
    assert gate([old], Combination(), "img").ok
    assert not gate([old], SCORE, "img").ok
    old_failed = record(None, ok=False, time="2026-01-01T09:00:00")
    assert not gate([old_failed], None, "img").ok
    # a new passing record of a packaged image (nothing mounted) supersedes an old failing one
    assert gate(newest_first(old_failed, record(Combination(), ok=True, time="2026-01-01T10:00:00")), None, "img").ok


@pytest.mark.parametrize(
    "fields",
    [
        {"entry": "score.py", "entry_folder_sha256": "", "models": {}},  # an entry without its folder
        {"entry": "", "entry_folder_sha256": "1" * 64, "models": {}},
        {"entry": "../x.py", "entry_folder_sha256": "1" * 64, "models": {}},
        {"entry": "score.py", "entry_folder_sha256": "1" * 64, "models": {"": "sha256:short"}},
        {"entry": "score.py", "entry_folder_sha256": "1" * 64, "models": {"a/b": MODEL_A}},
        {"entry": "score.py", "entry_folder_sha256": "1" * 64, "models": {"": MODEL_A, "x": MODEL_B}},
        {"entry": "score.py", "entry_folder_sha256": "1" * 64, "models": [MODEL_A]},
        {"entry": 7, "entry_folder_sha256": "1" * 64, "models": {}},
        {"models": {}},  # some of the fields only
    ],
)
def test_a_record_naming_a_malformed_combination_is_left_out(fields: dict[str, Any]) -> None:
    rec = {**record(None, ok=True, time="2026-01-01T10:00:00"), **fields}
    assert of_record(rec) is None
    assert not gate([rec], None, "img").ok  # left out: no record at all


# --- the records in a registry ---------------------------------------------------------------


class Referrers:
    """A registry holding smoke-test records as referrers of DIGEST."""

    def __init__(self) -> None:
        self.listed: list[dict[str, Any]] = []
        self.bodies: dict[str, bytes] = {}

    def add(self, rec: dict[str, Any]) -> None:
        blob = json.dumps(rec).encode()
        bd = "sha256:" + hashlib.sha256(blob).hexdigest()
        self.bodies[bd] = blob
        manifest = json.dumps({"layers": [{"digest": bd, "size": len(blob)}], "subject": {"digest": DIGEST}}).encode()
        md = "sha256:" + hashlib.sha256(manifest).hexdigest()
        self.bodies[md] = manifest
        self.listed.append({"digest": md, "artifactType": attest.SMOKE_TYPE})

    def referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        return list(self.listed)

    def get_manifest(self, repo: str, ref: str) -> tuple[Any, bytes] | None:
        return (None, self.bodies[ref]) if ref in self.bodies else None

    def get_blob(self, repo: str, digest: str, limit: int = 0) -> bytes:
        return self.bodies[digest]


def test_promote_counts_the_named_combination_and_keeps_the_lock_check() -> None:
    reg = Referrers()
    reg.add(record(SCORE, ok=True, time="2026-01-01T10:00:00.000+00:00", lock="L"))
    reg.add(record(OTHER, ok=False, time="2026-01-01T10:00:00.500+00:00", lock="L"))  # same second, later
    reg.add(record(None, ok=True, time="2026-01-01T09:00:00+00:00", lock="L") | {"entry": 3})  # malformed
    src = Reference("127.0.0.1:5000", "envs/x")
    opts = PromoteOptions(source="s", destination="d", require=("smoke-test",), tested=SCORE)
    assert _check_gates(reg, src, DIGEST, opts, "L").startswith("gate smoke-test: passed 2 cases")  # type: ignore[arg-type]
    with pytest.raises(GateRefused, match="another lock"):
        _check_gates(reg, src, DIGEST, opts, "M")  # type: ignore[arg-type]
    with pytest.raises(GateRefused, match="score_bad.py.*failed: 1 of 2 cases"):
        _check_gates(reg, src, DIGEST, PromoteOptions(source="s", destination="d", require=("smoke-test",)), None)  # type: ignore[arg-type]


def test_the_entry_and_models_go_with_the_smoke_test_gate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from ml_env_tasks.fronts.cli import run

    (tmp_path / "score.py").write_text("def init(): pass\n")
    assert (
        run(["promote", "127.0.0.1:9/a:1", "127.0.0.1:9/b", "--tag", "x", "--entry", str(tmp_path / "score.py")]) == 2
    )
    assert "go with --require smoke-test" in capsys.readouterr().err
    assert run(["verify", "127.0.0.1:9/a:1", "--require", "smoke-test", "--model", str(tmp_path)]) == 2
    assert "give --entry too" in capsys.readouterr().err


# --- the combination, hashed as smoke-test, serve and package hash it -------------------------


def test_a_combination_is_hashed_as_package_and_model_register_hash_it(tmp_path: Path) -> None:
    from ml_env_tasks.models import model_layer
    from ml_env_tasks.runs.snapshot import snapshot

    app, model = tmp_path / "app", tmp_path / "model"
    app.mkdir()
    model.mkdir()
    (app / "score.py").write_text("def init(): pass\n")
    (app / "score_bad.py").write_text("def init(): raise SystemExit(1)\n")
    (model / "weights.bin").write_bytes(b"\x01" * 1000)
    t = from_files(app / "score.py", {"": model})
    assert t.entry == "score.py" and t.entry_folder == snapshot(app).hash  # package's entry_hash
    assert t.models == (("", model_layer(model, tmp_path / "layer.tar")[0]),)  # a registered version's layer
    assert from_files(app / "score_bad.py", {"": model}) != t  # one folder, two entries: two combinations
    (model / "weights.bin").write_bytes(b"\x02" * 1000)
    assert from_files(app / "score.py", {"": model}) != t
    with pytest.raises(UsageError, match="give --entry too"):
        from_files(None, {"": model})
    with pytest.raises(UsageError, match="not found"):
        entry_of(app / "missing.py")


def test_a_model_folder_whose_digest_would_not_cover_what_is_mounted_is_refused(tmp_path: Path) -> None:
    """A .gitignore in the model folder keeps *.bin out of its digest, but the mount shows them:
    two different weights would give one record. The smoke test refuses to record that."""
    model = tmp_path / "model"
    model.mkdir()
    (model / ".gitignore").write_text("*.bin\n")
    (model / "config.json").write_text("{}")
    (model / "weights.bin").write_bytes(b"\x01")
    with pytest.raises(UsageError, match=r"1 file\(s\) are mounted but left out of its digest.*weights.bin"):
        model_digests({"": model}, complete=True, warn=lambda _m: None)
    assert model_digests({"": model}, warn=lambda _m: None)  # naming it at promote: just its digest
    (tmp_path / "empty").mkdir()  # an empty folder mounted is a model too (a script that needs none)
    assert model_digests({"": tmp_path / "empty"}, complete=True)[0][1].startswith("sha256:")


# --- signing follows the same rule --------------------------------------------------------------


class FakeCosign:
    statements: list[dict[str, Any]] = []

    def __init__(self, *_a: Any, **_k: Any) -> None:
        pass

    def verify(self, ref: str, trust: Any) -> list[dict[str, Any]]:
        return [{}]

    def verify_attestations(self, ref: str, trust: Any, predicate_type: str) -> list[dict[str, Any]]:
        return self.statements


def signed(rec: dict[str, Any]) -> dict[str, Any]:
    return {"subject": [{"digest": {"sha256": DIGEST.split(":", 1)[1]}}], "predicate": rec}


def test_the_signed_gate_counts_the_signed_records_of_the_named_combination(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml_env_tasks.release.cosign import Trust

    monkeypatch.setattr(signing, "Cosign", FakeCosign)
    FakeCosign.statements = [signed(record(OTHER, ok=False, time="2026-01-01T11:00:00")),
                             signed(record(SCORE, ok=True, time="2026-01-01T10:00:00"))]  # fmt: skip
    ref, trust = f"127.0.0.1:5000/envs/x@{DIGEST}", Trust(key="k.pub")
    assert "signed smoke test passed" in signing.check_signed(ref, trust, smoke_test=True, tested=SCORE)
    with pytest.raises(GateRefused, match="no signed smoke-test record of a pass"):
        signing.check_signed(ref, trust, smoke_test=True)  # every combination counts: one failed
    with pytest.raises(GateRefused, match="no signed smoke-test record of a pass"):
        signing.check_signed(ref, trust, smoke_test=True, tested=Combination("x.py", "3" * 64))


def test_signing_an_image_attests_the_newest_record_of_each_combination(monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Referrers()
    for rec in (record(SCORE, ok=False, time="2026-01-01T09:00:00"), record(SCORE, ok=True, time="2026-01-01T10:00:00"),
                record(OTHER, ok=False, time="2026-01-01T11:00:00")):  # fmt: skip
        reg.add(rec)
    got = signing._predicates(reg, "envs/x", DIGEST, ("smoke-test",), None)  # type: ignore[arg-type]
    assert [(p["entry"], p["passed"]) for _, p in got["smoke-test"]] == [("score_bad.py", 1), ("score.py", 2)]
    mine = record(SCORE, ok=True, time="2026-01-01T12:00:00")
    assert signing._predicates(reg, "envs/x", DIGEST, ("smoke-test",), mine)["smoke-test"] == [  # type: ignore[arg-type]
        (signing.SMOKE_PREDICATE, mine)
    ]
