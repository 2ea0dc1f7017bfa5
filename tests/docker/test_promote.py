"""Promotion by digest between the lab's registries (plain :5000, htpasswd :5001)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ml_env_tasks import RegistryError
from ml_env_tasks.build import build
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.release.ledger import Ledger
from ml_env_tasks.release.promote import PromoteOptions, TagConflict, promote

from .helpers import fault_proxy, ml_env, push_single_image
from .test_models_package import SCORE  # the same scoring script: a model's factor times x

pytestmark = pytest.mark.docker


@pytest.fixture
def regs(ws):
    lab = ws.lab
    plain = RegistryClient(lab["registry"])
    auth = RegistryClient(lab["auth_registry"], credentials=(lab["auth_user"], lab["auth_password"]))
    return plain, auth


def manifest(client: RegistryClient, repo: str, ref: str) -> tuple[str, dict]:
    info, body = client.get_manifest(repo, ref)
    return info.digest, json.loads(body)


def test_single_manifest_stays_single_across_registries_with_auth(ws, regs) -> None:
    plain, auth = regs
    digest = push_single_image(plain, ws.repo, "v1")
    src = f"{ws.lab['registry']}/{ws.repo}:v1"
    r = promote(
        PromoteOptions(
            src, f"{ws.lab['auth_registry']}/{ws.repo}", tags=("1.0", "prod"), ledger=ws.dir / "releases.toml"
        )
    )
    assert r.digest == digest and r.copied_blobs == 2 and r.manifests == 1
    for tag in ("1.0", "prod"):
        got, doc = manifest(auth, ws.repo, tag)
        assert got == digest and doc["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    entry = Ledger(ws.dir / "releases.toml").entries()[-1]
    assert entry.digest == digest and entry.tags == ("1.0", "prod") and entry.source.endswith(f"@{digest}")


def test_buildx_index_with_attestations_is_copied_whole(ws, regs) -> None:
    plain, auth = regs
    f = ws.spec(f'name = "promo"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nP = "1"\n')
    b = build(f, ws.opts())
    src_digest, src_doc = manifest(plain, ws.repo, b.hash)
    assert "manifests" in src_doc
    platforms = sorted(json.dumps(m.get("platform"), sort_keys=True) for m in src_doc["manifests"])
    assert any('"unknown"' in p for p in platforms)  # the provenance attestation
    r = promote(
        PromoteOptions(b.image, f"{ws.lab['auth_registry']}/{ws.repo}", tags=("rel",), ledger=ws.dir / "l.toml")
    )
    assert r.digest == src_digest == b.digest
    got, doc = manifest(auth, ws.repo, "rel")
    assert got == src_digest and doc == src_doc
    for m in doc["manifests"]:
        assert auth.head_manifest(ws.repo, m["digest"]) is not None
    entry = Ledger(ws.dir / "l.toml").entries(env="promo")[-1]
    assert entry.environment_hash == b.hash


def test_two_platform_index_from_imagetools(ws, regs) -> None:
    plain, auth = regs
    push_single_image(plain, ws.repo, "amd", arch="amd64", payload=b"x86")
    push_single_image(plain, ws.repo, "arm", arch="arm64", payload=b"arm")
    base = f"{ws.lab['registry']}/{ws.repo}"
    subprocess.run(
        ["docker", "buildx", "imagetools", "create", "-t", f"{base}:multi", f"{base}:amd", f"{base}:arm"],
        check=True, capture_output=True,
    )  # fmt: skip
    src_digest, src_doc = manifest(plain, ws.repo, "multi")
    archs = sorted(m["platform"]["architecture"] for m in src_doc["manifests"])
    assert archs == ["amd64", "arm64"]
    r = promote(PromoteOptions(f"{base}:multi", f"{ws.lab['auth_registry']}/{ws.repo}:multi", ledger=None))
    assert r.digest == src_digest and r.manifests == 3
    assert manifest(auth, ws.repo, "multi")[0] == src_digest


def test_same_registry_mounts_blobs(ws, regs) -> None:
    plain, _ = regs
    digest = push_single_image(plain, ws.repo, "v1", payload=b"mount me")
    dst = f"{ws.repo}-prod"
    ws.extra_repos.append((ws.lab["registry"], dst))
    r = promote(
        PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:v1", f"{ws.lab['registry']}/{dst}", tags=("prod",), ledger=None)
    )
    assert r.mounted_blobs == 2 and r.copied_blobs == 0 and r.digest == digest
    assert plain.head_manifest(dst, "prod").digest == digest


def test_overwrite_refused_then_allowed_and_idempotent(ws, regs) -> None:
    plain, auth = regs
    one = push_single_image(plain, ws.repo, "one", payload=b"1")
    two = push_single_image(plain, ws.repo, "two", payload=b"2")
    dst = f"{ws.lab['auth_registry']}/{ws.repo}"
    ledger = ws.dir / "releases.toml"
    promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:one", dst, tags=("prod",), ledger=ledger))
    again = promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:one", dst, tags=("prod",), ledger=ledger))
    assert again.no_op and len(Ledger(ledger).entries()) == 1  # a no-op records nothing
    with pytest.raises(TagConflict) as exc:
        promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:two", dst, tags=("prod",), ledger=ledger))
    assert one in str(exc.value) and exc.value.exit_code == 5
    assert auth.head_manifest(ws.repo, "prod").digest == one
    p = ml_env("promote", f"{ws.lab['registry']}/{ws.repo}:two", dst, "--tag", "prod", "--ledger", str(ledger))
    assert p.returncode == 5 and "--allow-overwrite" in p.stderr
    dry = ml_env(
        "promote",
        f"{ws.lab['registry']}/{ws.repo}:two",
        dst,
        "--tag",
        "prod",
        "--allow-overwrite",
        "--dry-run",
        "--ledger",
        str(ledger),
    )
    assert dry.returncode == 0 and "move from" in dry.stdout
    assert auth.head_manifest(ws.repo, "prod").digest == one and len(Ledger(ledger).entries()) == 1
    r = promote(
        PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:two", dst, tags=("prod",), allow_overwrite=True, ledger=ledger)
    )
    assert r.digest == two and auth.head_manifest(ws.repo, "prod").digest == two
    entries = Ledger(ledger).entries()
    assert len(entries) == 2 and entries[-1].moved_tags == (f"prod (was {one})",)
    cur = Ledger(ledger).current(None, "prod")
    assert cur.digest == two and cur.since == entries[-1].time


def test_transient_faults_are_retried(ws, regs) -> None:
    plain, auth = regs
    digest = push_single_image(plain, ws.repo, "v1", payload=b"x" * 200_000)
    # the source drops the connection halfway through the first two blob downloads
    with fault_proxy(ws.lab["registry"], truncate_blobs=2) as (src_proxy, seen):
        r = promote(
            PromoteOptions(
                f"{src_proxy}/{ws.repo}:v1", f"{ws.lab['auth_registry']}/{ws.repo}", tags=("a",), ledger=None
            )
        )
    assert r.digest == digest and seen.count(-1) == 2
    assert auth.head_manifest(ws.repo, "a").digest == digest
    # the destination answers 503 three times
    dst_repo = f"{ws.repo}-dst"
    ws.extra_repos.append((ws.lab["registry"], dst_repo))
    with fault_proxy(ws.lab["registry"], fail_first=3) as (dst_proxy, seen):
        r = promote(
            PromoteOptions(
                f"{ws.lab['auth_registry']}/{ws.repo}:a", f"{dst_proxy}/{dst_repo}", tags=("b",), ledger=None
            )
        )
    assert r.digest == digest and seen[:3] == [503, 503, 503]
    assert plain.head_manifest(dst_repo, "b").digest == digest


def test_persistent_faults_leave_the_tag_unchanged(ws, regs) -> None:
    plain, auth = regs
    old = push_single_image(plain, ws.repo, "old", payload=b"old")
    new = push_single_image(plain, ws.repo, "new", payload=b"n" * 100_000)
    dst = f"{ws.lab['auth_registry']}/{ws.repo}"
    promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:old", dst, tags=("prod",), ledger=None))
    with fault_proxy(ws.lab["registry"], truncate_blobs=100) as (src_proxy, _seen):
        with pytest.raises(RegistryError, match="failed 3 times"):
            promote(
                PromoteOptions(
                    f"{src_proxy}/{ws.repo}:new", dst, tags=("prod",), allow_overwrite=True, ledger=ws.dir / "l.toml"
                )
            )
    assert auth.head_manifest(ws.repo, "prod").digest == old
    assert auth.head_manifest(ws.repo, new) is None
    assert not (ws.dir / "l.toml").exists()


def test_digest_tag_referrers_are_copied(ws, regs) -> None:
    plain, auth = regs
    digest = push_single_image(plain, ws.repo, "v1", payload=b"signed")
    sig_tag = "sha256-" + digest.split(":")[1] + ".sig"
    sig = push_single_image(plain, ws.repo, sig_tag, payload=b"a signature")
    r = promote(
        PromoteOptions(
            f"{ws.lab['registry']}/{ws.repo}@{digest}",
            f"{ws.lab['auth_registry']}/{ws.repo}",
            tags=("prod",),
            ledger=None,
        )
    )
    assert r.referrers == [sig_tag]
    assert auth.head_manifest(ws.repo, sig_tag).digest == sig


def test_credentials_never_printed(ws, regs, tmp_path: Path) -> None:
    plain, _ = regs
    push_single_image(plain, ws.repo, "v1")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    import base64

    auth = base64.b64encode(f"{ws.lab['auth_user']}:{ws.lab['auth_password']}".encode()).decode()
    (cfg / "config.json").write_text(json.dumps({"auths": {ws.lab["auth_registry"]: {"auth": auth}}}))
    p = ml_env("promote", f"{ws.lab['registry']}/{ws.repo}:v1", f"{ws.lab['auth_registry']}/{ws.repo}", "--tag", "x", "--json",
               "--ledger", str(tmp_path / "l.toml"), env={"DOCKER_CONFIG": str(cfg)})  # fmt: skip
    assert p.returncode == 0, p.stderr
    everything = p.stdout + p.stderr + (tmp_path / "l.toml").read_text()
    assert ws.lab["auth_password"] not in everything and auth not in everything
    (cfg / "config.json").write_text("{}")
    p = ml_env("promote", f"{ws.lab['registry']}/{ws.repo}:v1", f"{ws.lab['auth_registry']}/{ws.repo}", "--tag", "y",
               "--no-ledger", env={"DOCKER_CONFIG": str(cfg)})  # fmt: skip
    assert p.returncode == 4 and "refused access anonymously" in p.stderr


def test_rerun_from_a_fresh_clone_records_what_it_finds(ws, regs) -> None:
    """A re-run in a fresh checkout: the registry already holds the promotion, the ledger file
    does not. It is recorded once, as found; a further re-run changes nothing."""
    plain, _ = regs
    one = push_single_image(plain, ws.repo, "one", payload=b"rerun")
    src, dst = f"{ws.lab['registry']}/{ws.repo}:one", f"{ws.lab['auth_registry']}/{ws.repo}"
    first = ws.dir / "clone1" / "releases.toml"
    second = ws.dir / "clone2" / "releases.toml"
    promote(PromoteOptions(src, dst, tags=("1.0.0", "prod"), ledger=first))
    r = promote(PromoteOptions(src, dst, tags=("1.0.0", "prod"), ledger=second))
    assert r.no_op and r.recorded_found
    [found] = Ledger(second).entries()
    assert found.found and found.digest == one and found.tags == ("1.0.0", "prod") and found.actor
    again = promote(PromoteOptions(src, dst, tags=("1.0.0", "prod"), ledger=second))
    assert again.no_op and not again.recorded_found and len(Ledger(second).entries()) == 1
    p = ml_env("ledger", "show", "--ledger", str(second), "--tag", "prod")
    assert p.returncode == 0 and one in p.stdout


def test_ledger_kept_in_the_registry_is_shared_by_every_clone(ws, regs) -> None:
    from ml_env_tasks.release.ledger_oci import ARTIFACT_TYPE, RemoteLedger, open_ledger

    plain, auth = regs
    one = push_single_image(plain, ws.repo, "one", payload=b"oci-1")
    two = push_single_image(plain, ws.repo, "two", payload=b"oci-2")
    dst = f"{ws.lab['auth_registry']}/{ws.repo}"
    location = f"oci://{dst}:ml-env-ledger"
    r = promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:one", dst, tags=("1.0.0",), ledger="registry"))
    assert r.ledger_entry and not r.no_op
    # a second clone, a re-run: nothing to copy, nothing to record
    again = promote(PromoteOptions(f"{ws.lab['registry']}/{ws.repo}:one", dst, tags=("1.0.0",), ledger="registry"))
    assert again.no_op and not again.recorded_found
    with open_ledger(location) as led:
        assert [(e.digest, e.tags, e.found) for e in led.entries()] == [(one, ("1.0.0",), False)]
    info, body = auth.get_manifest(ws.repo, "ml-env-ledger")
    assert json.loads(body)["artifactType"] == ARTIFACT_TYPE

    # two writers read the same ledger; the second one's write merges instead of losing the first
    a, b = RemoteLedger(location), RemoteLedger(location)
    try:
        a.append_raw({"time": "t-a", "digest": two, "destination": dst, "tags": ["a"], "environment": "e"})
        b.append_raw({"time": "t-b", "digest": two, "destination": dst, "tags": ["b"], "environment": "e"})
        a.push()
        b.push()
    finally:
        a.close()
        b.close()
    p = ml_env("ledger", "show", "--ledger", location, "--json")
    assert p.returncode == 0, p.stderr
    assert [e["time"] for e in json.loads(p.stdout)][-2:] == ["t-a", "t-b"]
    p = ml_env("ledger", "show", "--ledger", location, "--tag", "a")
    assert p.returncode == 0 and two in p.stdout

    # what the registry serves there is untrusted: not a ledger is one line naming the location
    push_single_image(auth, ws.repo, "ml-env-ledger", payload=b"not a ledger")
    p = ml_env("promote", f"{ws.lab['registry']}/{ws.repo}:two", dst, "--tag", "2.0.0", "--ledger", "registry")
    assert p.returncode == 2 and location in p.stderr and "not an ml-env ledger" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and auth.head_manifest(ws.repo, "2.0.0") is None  # nothing copied


def test_a_smoke_record_names_what_ran_and_the_gate_counts_that_combination(ws, tmp_path: Path) -> None:
    """Two workflows smoke-test one environment image: one its real entry script (it passes), one
    another script on purpose (it fails). The record names entry folder and model; promoting with
    the real entry named passes, and the failing test of the other entry does not block it."""
    from ml_env_tasks.release.attest import smoke_records

    lab = ws.lab
    reg, prod = lab["registry"], f"{ws.repo}-prod"
    ws.extra_repos.append((reg, prod))
    env = ws.spec(f'name = "light"\ninference = true\n[base]\nimage = "{lab["base_image_python"]}"\n', name="l.toml")
    app, model = tmp_path / "app", tmp_path / "model"
    app.mkdir()
    model.mkdir()
    (app / "score.py").write_text(SCORE)
    (app / "score_bad.py").write_text(SCORE.replace("x * factor", "x * factor + 1"))  # another entry, wrong answers
    (model / "factor.txt").write_text("2")
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"request": {"x": [1]}, "expect_json": {"y": [2.0]}}\n')
    image = build(str(env), ws.opts()).pinned

    def smoke(entry: str, code: int) -> dict:
        p = ml_env("smoke-test", "--env", image, "--entry", str(app / entry), "--model", str(model), "--cases",
                   str(cases), *ws.cli_args(), "--report-dir", str(tmp_path / entry), "--json")  # fmt: skip
        assert p.returncode == code, p.stderr[-2000:]
        return json.loads(p.stdout)

    good = smoke("score.py", 0)
    bad = smoke("score_bad.py", 1)  # the other workflow's deliberate failure, recorded last
    assert good["tested"]["entry"] == "score.py" and bad["tested"]["entry"] == "score_bad.py"
    assert good["tested"]["entry_folder_sha256"] == bad["tested"]["entry_folder_sha256"]  # one folder
    assert good["tested"]["models"][""].startswith("sha256:") and "score.py" in good["tested"]["entry"]
    records = smoke_records(RegistryClient(reg), ws.repo, image.rsplit("@", 1)[1])
    assert [(r["entry"], r["failed"]) for r in records] == [("score_bad.py", 1), ("score.py", 0)]
    assert records[1]["models"] == good["tested"]["models"]

    def promote_cli(*named: str) -> subprocess.CompletedProcess:
        return ml_env("promote", image, f"{reg}/{prod}", "--tag", "1.0.0", "--require", "smoke-test", "--ledger",
                      str(tmp_path / "r.toml"), *named)  # fmt: skip

    # nothing named: every combination tested against the image counts, and one failed
    p = promote_cli()
    assert p.returncode == 5 and "score_bad.py" in p.stderr and "--entry/--model" in p.stderr, p.stderr
    p = promote_cli("--entry", str(app / "score_bad.py"), "--model", str(model))
    assert p.returncode == 5 and "failed: 1 of 1 cases" in p.stderr, p.stderr
    (tmp_path / "other-model").mkdir()
    (tmp_path / "other-model" / "factor.txt").write_text("3")
    p = promote_cli("--entry", str(app / "score.py"), "--model", str(tmp_path / "other-model"))
    assert p.returncode == 5 and "no smoke test of entry score.py" in p.stderr, p.stderr
    # the combination that runs: its own newest record passed
    p = promote_cli("--entry", str(app / "score.py"), "--model", str(model))
    assert p.returncode == 0 and "gate smoke-test: passed 1 cases" in p.stderr, p.stderr
    v = ml_env("verify", f"{reg}/{prod}:1.0.0", "--require", "smoke-test", "--entry", str(app / "score.py"),
               "--model", str(model), "--ledger", str(tmp_path / "r.toml"), "--json")  # fmt: skip
    checks = {c["name"]: c for c in json.loads(v.stdout)["checks"]}
    assert checks["smoke-test"]["ok"], checks["smoke-test"]
    v = ml_env("verify", f"{reg}/{prod}:1.0.0", "--require", "smoke-test", "--json")
    assert v.returncode == 1 and "score_bad.py" in v.stdout
