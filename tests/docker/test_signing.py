"""Signed releases, checked by the real ``cosign``: a packaged scoring image is built, signed,
smoke-tested (the record signed), promoted to the lab's other registry under the gates
``smoke-test`` and ``signed``, signed there with a second (release) key, and verified at its
destination by ``cosign verify`` and ``cosign verify-attestation --type``. Then what must fail
fails: the image with one label changed and re-pushed, an attestation tampered with, another
digest's signature and attestation copied onto an image, a signature by another key."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from ml_env_tasks.registry import RegistryClient, parse_ref
from ml_env_tasks.registry import artifacts as art

from .helpers import ml_env
from .test_models_package import SCORE  # the same scoring script: a model's factor times x

pytestmark = pytest.mark.docker

SMOKE_TYPE = "urn:ml-env:smoke-test:v1"


def cosign(*args: str) -> subprocess.CompletedProcess:
    """The real cosign, offline: a key pair, no transparency log, the lab's plain-HTTP registries
    (their credentials from the docker config the lab logged in with)."""
    return subprocess.run(["cosign", *args], capture_output=True, text=True, timeout=120)


def cosign_verify(pub: Path, ref: str, *, attestation: str | None = None) -> subprocess.CompletedProcess:
    kind = ["verify-attestation", "--type", attestation] if attestation else ["verify"]
    return cosign(*kind, "--key", str(pub), "--insecure-ignore-tlog", "--allow-http-registry", ref)


def _retag_with_label(ref: str, tag: str) -> str:
    """The image ``ref`` names, with one label changed, pushed again under ``tag``: the digest it now has."""
    r = parse_ref(ref)
    c = RegistryClient(r.host)
    head, body = c.get_manifest(r.repository, r.digest)
    doc = json.loads(body)
    if "manifests" in doc:  # an index: its image, alone
        m = next(m for m in doc["manifests"] if (m.get("platform") or {}).get("os") != "unknown")
        head, body = c.get_manifest(r.repository, m["digest"])
        doc = json.loads(body)
    config = json.loads(c.get_blob(r.repository, doc["config"]["digest"], limit=2**20))
    config["config"]["Labels"]["org.opencontainers.image.description"] = "changed after signing"
    data = json.dumps(config).encode()
    doc["config"] = {**doc["config"], "digest": art.put_blob(c, r.repository, data), "size": len(data)}
    new = json.dumps(doc).encode()
    c.put_manifest(r.repository, tag, new, doc.get("mediaType") or head.media_type)
    return art.sha256(new)


def test_a_signed_release_verifies_with_cosign_where_it_was_promoted(ws, cosign_keys, tmp_path: Path) -> None:
    lab = ws.lab
    reg, dest_reg = lab["registry"], lab["auth_registry"]
    pkg_repo, prod = f"{ws.repo}-pkg", f"{ws.repo}-prod"
    ws.extra_repos += [(reg, pkg_repo), (dest_reg, prod)]
    build_key, release_key = cosign_keys("build"), cosign_keys("release")
    env = ws.spec(f'name = "light"\ninference = true\n[base]\nimage = "{lab["base_image_python"]}"\n', name="l.toml")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "score.py").write_text(SCORE)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "factor.txt").write_text("2")
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"request": {"x": [1, 2]}, "expect_json": {"y": [2.0, 4.0]}}\n')
    said: list[str] = []

    def run(*args: str, key: dict, code: int = 0) -> dict | str:
        p = ml_env(*args, env={"COSIGN_PASSWORD": key["password"]})
        said.extend([p.stdout, p.stderr])
        assert p.returncode == code, (args[0], p.returncode, p.stderr[-2000:])
        return json.loads(p.stdout) if "--json" in args else p.stderr

    # package and sign: the image, its SBOM and its provenance
    out = run("package", "--env", str(env), "--entry", str(tmp_path / "app/score.py"), "--model",
              str(tmp_path / "model"), *ws.cli_args(), "--package-repository", pkg_repo,
              "--sign-key", build_key["key"], "--json", key=build_key)  # fmt: skip
    ref, digest = out["ref"], out["digest"]
    assert out["signed"]["signed"] == ["image", "sbom", "provenance"], out["signed"]
    assert out["signed"]["fingerprint"].startswith("sha256:")
    # signing again adds nothing: what verifies with the key is left as it is
    again = run("sign", ref, "--sign-key", build_key["key"], "--attest", "image,sbom", "--json", key=build_key)
    assert again["signed"] == [] and again["already"] == ["image", "sbom"]
    # the smoke test's record, signed
    smoke = run("smoke-test", "--env", ref, "--cases", str(cases), *ws.cli_args(), "--report-dir",
                str(tmp_path / "r"), "--sign-key", build_key["key"], "--json", key=build_key)  # fmt: skip
    assert smoke["passed"] == 1 and smoke["signed"]["signed"] == ["smoke-test"]

    # promote under both gates, trusting the build key; sign there with the release key
    ledger = tmp_path / "releases.toml"
    dest = f"{dest_reg}/{prod}"
    promoted = run("promote", ref, dest, "--tag", "1.0.0", "--require", "smoke-test,signed",
                   "--verify-key", build_key["pub"], "--sign-key", release_key["key"], "--ledger", str(ledger),
                   "--json", key=release_key)  # fmt: skip
    assert promoted["digest"] == digest and {".sig", ".att"} <= {r[-4:] for r in promoted["referrers"]}
    assert promoted["signed"]["signed"] == ["image", "sbom", "provenance", "smoke-test"]
    entry = json.loads(json.dumps(promoted["ledger_entry"]))
    assert entry["signed_by"] == promoted["signed"]["fingerprint"] and entry["signed"] == [
        "image", "sbom", "provenance", "smoke-test"]  # fmt: skip
    assert 'signed_by = "sha256:' in ledger.read_text()

    # at the destination the real cosign accepts both signers, the SBOM and the smoke-test record
    there = f"{dest}@{digest}"
    for k in (build_key, release_key):
        v = cosign_verify(k["pub"], there)
        assert v.returncode == 0, v.stderr
        assert json.loads(v.stdout)[0]["critical"]["image"]["docker-manifest-digest"] == digest
    for kind in ("spdxjson", "cyclonedx", "slsaprovenance1", SMOKE_TYPE):  # a package: SLSA v1
        v = cosign_verify(build_key["pub"], there, attestation=kind)
        assert v.returncode == 0, (kind, v.stderr)
    statement = json.loads(base64.b64decode(json.loads(
        cosign_verify(build_key["pub"], there, attestation=SMOKE_TYPE).stdout.splitlines()[0])["payload"]))  # fmt: skip
    assert statement["predicate"]["tested"] == digest and statement["predicate"]["passed"] == 1
    ok = run("verify", f"{dest}:1.0.0", "--key", str(build_key["pub"]), "--require", "smoke-test,signed",
             "--ledger", str(ledger), "--json", key=build_key)  # fmt: skip
    checks = {c["name"]: c["ok"] for c in ok["checks"]}
    assert checks["signature"] and checks["signed sbom"] and checks["signed provenance"] and checks["signed smoke-test"]

    # promoting again changes nothing and keeps every signature
    again = run("promote", ref, dest, "--tag", "1.0.0", "--ledger", str(ledger), "--json", key=release_key)
    assert again["no_op"]
    for k in (build_key, release_key):
        assert cosign_verify(k["pub"], there).returncode == 0

    # one label changed and pushed again under the same tag: not what was signed
    tag = out["image"].rsplit(":", 1)[1]
    changed = _retag_with_label(ref, tag)
    assert changed != digest
    p = ml_env("verify", f"{reg}/{pkg_repo}:{tag}", "--key", str(build_key["pub"]), "--json")
    assert p.returncode == 1 and not {c["name"]: c["ok"] for c in json.loads(p.stdout)["checks"]}["signature"]
    p = ml_env("promote", f"{reg}/{pkg_repo}:{tag}", dest, "--tag", "1.0.1", "--require", "signed",
               "--verify-key", str(build_key["pub"]), "--ledger", str(ledger))  # fmt: skip
    assert p.returncode == 5 and "is not signed by" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2, p.stderr  # the line, and its hint
    # another digest's signature and attestations copied onto that image prove nothing
    c = RegistryClient(reg)
    for suffix in (".sig", ".att"):
        _h, body = c.get_manifest(pkg_repo, digest.replace(":", "-") + suffix)
        c.put_manifest(pkg_repo, changed.replace(":", "-") + suffix, body, art.OCI_MANIFEST)
    copied = f"{reg}/{pkg_repo}@{changed}"
    assert cosign_verify(build_key["pub"], copied).returncode != 0
    assert cosign_verify(build_key["pub"], copied, attestation=SMOKE_TYPE).returncode != 0
    p = ml_env("verify", copied, "--key", str(build_key["pub"]), "--json")
    found = {c["name"]: c["ok"] for c in json.loads(p.stdout)["checks"]}
    assert p.returncode == 1 and not found["signature"] and not found["signed sbom"], found

    # an attestation tampered with (its predicate edited, its signature kept) fails
    att_tag = digest.replace(":", "-") + ".att"
    dc = RegistryClient(dest_reg)
    _h, body = dc.get_manifest(prod, att_tag)
    doc = json.loads(body)
    for layer in doc["layers"]:
        envelope = json.loads(dc.get_blob(prod, layer["digest"], limit=2**26))
        stmt = json.loads(base64.b64decode(envelope["payload"]))
        if stmt["predicateType"] == SMOKE_TYPE:
            stmt["predicate"]["passed"] = 99
        envelope["payload"] = base64.b64encode(json.dumps(stmt).encode()).decode()
        data = json.dumps(envelope).encode()
        layer.update(digest=art.put_blob(dc, prod, data), size=len(data))
    dc.put_manifest(prod, att_tag, json.dumps(doc).encode(), doc["mediaType"])
    assert cosign_verify(build_key["pub"], there, attestation=SMOKE_TYPE).returncode != 0
    p = ml_env("verify", there, "--key", str(build_key["pub"]), "--require", "smoke-test,signed", "--json")
    found = {c["name"]: c["ok"] for c in json.loads(p.stdout)["checks"]}
    assert p.returncode == 1 and found["signature"] and not found["signed smoke-test"], found
    p = ml_env("promote", there, f"{dest}-again", "--tag", "1", "--require", "smoke-test,signed",
               "--verify-key", str(build_key["pub"]), "--no-ledger")  # fmt: skip
    assert p.returncode == 5 and "no signed smoke-test record" in p.stderr, p.stderr

    # a key nobody signed with verifies nothing
    stranger = cosign_keys("stranger")
    p = ml_env("verify", there, "--key", str(stranger["pub"]), "--json")
    assert p.returncode == 1 and not {c["name"]: c["ok"] for c in json.loads(p.stdout)["checks"]}["signature"]

    # no secret anywhere: not the passwords, not a line of a private key
    secrets = [k["password"] for k in (build_key, release_key)]
    secrets += [ln for k in (build_key, release_key) for ln in Path(k["key"]).read_text().splitlines()[1:-1]]
    written = [*said, ledger.read_text(), *(f.read_text() for f in (tmp_path / "r").iterdir())]
    assert not [s for s in secrets if any(s in w for w in written)]


def test_signing_refuses_what_it_cannot_do_before_building(ws, cosign_keys, tmp_path: Path) -> None:
    """A key that is not there, a key in an unset variable, signing with no registry, keyless and
    a key at once: each one line and exit 2, before any build step."""
    env = ws.spec(f'name = "light"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n', name="l.toml")
    p = ml_env("build", str(env), *ws.cli_args(), "--sign-key", str(tmp_path / "nope.key"))
    assert p.returncode == 2 and "is not a key file" in p.stderr and "Traceback" not in p.stderr
    p = ml_env("build", str(env), *ws.cli_args(), "--sign-key", "env://ML_ENV_TEST_NO_SUCH_KEY")
    assert p.returncode == 2 and "the variable is not set" in p.stderr
    key = cosign_keys("k")
    p = ml_env("build", str(env), "--sign-key", key["key"], "--network", ws.lab["build_network"])
    assert p.returncode == 2 and "give --registry" in p.stderr
    p = ml_env("build", str(env), *ws.cli_args(), "--sign-key", key["key"], "--sign-keyless")
    assert p.returncode == 2 and "exclude each other" in p.stderr
    p = ml_env("verify", f"{ws.lab['registry']}/{ws.repo}:x", "--require", "signed")
    assert p.returncode == 2 and "--require signed needs who is trusted" in p.stderr
    assert not (ws.dir / "logs").exists() or not any((ws.dir / "logs").iterdir())  # nothing was built


def test_a_wrong_password_is_one_line_that_names_the_key_not_the_password(ws, cosign_keys) -> None:
    key = cosign_keys("pw")
    env = ws.spec(f'name = "tiny"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n', name="t.toml")
    built = ml_env("build", str(env), *ws.cli_args(), "--json")
    assert built.returncode == 0, built.stderr
    ref = json.loads(built.stdout)["pinned"] if "pinned" in json.loads(built.stdout) else None
    ref = ref or f"{json.loads(built.stdout)['image']}@{json.loads(built.stdout)['digest']}"
    wrong = "not-" + key["password"]
    p = ml_env("sign", ref, "--sign-key", key["key"], env={"COSIGN_PASSWORD": wrong})
    assert p.returncode == 2 and "cannot decrypt" in p.stderr and "COSIGN_PASSWORD" in p.stderr
    assert wrong not in p.stderr + p.stdout and key["password"] not in p.stderr + p.stdout
    # the key in a variable, as a CI secret holds it
    p = ml_env("sign", ref, "--sign-key", "env://ML_ENV_TEST_KEY", "--attest", "image", "--json",
               env={"ML_ENV_TEST_KEY": Path(key["key"]).read_text(), "COSIGN_PASSWORD": key["password"]})  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert cosign_verify(Path(key["pub"]), ref).returncode == 0
