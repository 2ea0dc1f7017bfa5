"""Signing's pure logic, without a registry or cosign: which keys and trust a user can name, how
gates are named, what the ledger keeps of a signer, how a destination's signatures are merged
with the source's (the real registry and the real cosign: tests/docker/test_signing.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks.errors import UsageError
from ml_env_tasks.release.attest import check_gates
from ml_env_tasks.release.copy import _merged
from ml_env_tasks.release.cosign import Key, Trust, _json_lines, _no_signature
from ml_env_tasks.release.ledger import Promotion
from ml_env_tasks.release.signing import fingerprint


def test_keys_a_user_can_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = tmp_path / "cosign.key"
    key.write_text("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nx\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n")
    assert Key.parse(str(key)) == Key(str(key)) and Key.parse(str(key)).args()[:1] == ["--tlog-upload=false"]
    assert Key.parse("awskms:///alias/release").ref == "awskms:///alias/release"  # handed to cosign as it is
    assert Key.parse(None) is None and Key.parse("", keyless=True) == Key(None) and Key(None).args() == []
    monkeypatch.setenv("RELEASE_KEY", "pem")
    assert Key.parse("env://RELEASE_KEY").describe() == "env://RELEASE_KEY"  # the name, never the value
    for bad, why in [
        (str(tmp_path / "missing.key"), "is not a key file"),
        (str(tmp_path), "is not a key file"),
        ("env://UNSET_FOR_THIS_TEST", "the variable is not set"),
        ("env://A;B", "is not a variable name"),
        ("https://evil.example/key", "neither a key file"),
    ]:
        with pytest.raises(UsageError, match=why):
            Key.parse(bad)
    with pytest.raises(UsageError, match="exclude each other"):
        Key.parse(str(key), keyless=True)


def test_trust_is_a_key_or_a_whole_keyless_identity(tmp_path: Path) -> None:
    pub = tmp_path / "cosign.pub"
    pub.write_text("pem")
    assert Trust.parse(str(pub)).args() == ["--key", str(pub), "--insecure-ignore-tlog"]
    t = Trust.parse(None, "https://github.com/o/r/.github/workflows/release.yml@refs/heads/main",
                    "https://token.actions.githubusercontent.com")  # fmt: skip
    assert t.args()[0] == "--certificate-identity" and "--insecure-ignore-tlog" not in t.args()
    assert Trust.parse(None) is None
    with pytest.raises(UsageError, match="needs both"):
        Trust.parse(None, "someone", None)
    with pytest.raises(UsageError, match="exclude each other"):
        Trust.parse(str(pub), "someone", "issuer")


def test_gates_are_named_either_way_and_a_typo_is_refused() -> None:
    assert check_gates(["smoke-test,signed"]) == ("smoke-test", "signed")
    assert check_gates(["signed", "smoke-test", "signed"]) == ("signed", "smoke-test")
    with pytest.raises(UsageError, match="the gates are smoke-test, signed"):
        check_gates(["smoke-test,sigend"])


def test_the_ledger_keeps_who_signed_what() -> None:
    p = Promotion("2026-12-03T00:00:00+00:00", "sha256:" + "a" * 64, "r.example/prod", ("1",),
                  signed_by="sha256:" + "b" * 64, signed=("image", "sbom"))  # fmt: skip
    d = p.to_dict()
    assert d["signed_by"] == "sha256:" + "b" * 64 and d["signed"] == ["image", "sbom"]
    assert Promotion.from_dict(d) == p
    old = Promotion("t", "sha256:" + "a" * 64, "r/p", ("1",))
    assert "signed_by" not in old.to_dict()  # an entry without a signer is written as before
    with pytest.raises(ValueError, match="signed must be an array of strings"):
        Promotion.from_dict({**d, "signed": "image"})
    assert fingerprint(b"  \n") == "" and fingerprint(b"pem\n") == fingerprint(b"pem")


class Blobs:
    """A registry's blob store, in memory: what ``_merged`` writes a new config to."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}

    def blob_exists(self, repo: str, digest: str) -> bool:
        return digest in self.blobs

    def upload_stream(self, repo: str, digest: str, chunks, size) -> None:
        self.blobs[digest] = b"".join(chunks)


def _sig(*layers: str) -> bytes:
    return json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + "c" * 64, "size": 1},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": d, "size": 1,
                    "annotations": {"dev.cosignproject.cosign/signature": d[-4:]}} for d in layers],
    }).encode()  # fmt: skip


def test_a_destinations_signatures_are_kept_when_the_sources_arrive() -> None:
    a, b, c = ("sha256:" + x * 64 for x in "abc")
    store = Blobs()
    body, _mt = _merged(store, "prod", _sig(a, b), _sig(b, c), "application/vnd.oci.image.manifest.v1+json")
    doc = json.loads(body)
    assert [m["digest"] for m in doc["layers"]] == [a, b, c]  # the destination's first, none twice
    config = json.loads(store.blobs[doc["config"]["digest"]])
    assert config["rootfs"]["diff_ids"] == [a, b, c] and len(config["history"]) == 3
    same, _ = _merged(store, "prod", _sig(a, b), _sig(b), "application/vnd.oci.image.manifest.v1+json")
    assert same == _sig(a, b)  # nothing new: the destination's manifest as it is
    index = "application/vnd.oci.image.index.v1+json"
    old = json.dumps({"schemaVersion": 2, "manifests": [{"digest": a}]}).encode()
    new = json.dumps({"schemaVersion": 2, "manifests": [{"digest": b}, {"digest": a}]}).encode()
    assert [m["digest"] for m in json.loads(_merged(store, "prod", old, new, index)[0])["manifests"]] == [a, b]
    assert _merged(store, "prod", b"not json", new, index)[0] == new  # a broken one is replaced


def test_cosigns_answers_are_read_as_cosign_writes_them() -> None:
    assert _json_lines(b'[{"critical": {}}]\n', "r") == [{"critical": {}}]
    assert _json_lines(b'{"payload": "a"}\n{"payload": "b"}\n', "r") == [{"payload": "a"}, {"payload": "b"}]
    assert _json_lines(b"", "r") == []
    assert _no_signature(b"Error: no matching signatures: invalid signature when validating ASN.1 encoded signature")
    assert _no_signature(b"Error: none of the attestations matched the predicate type: spdxjson, found: x")
    assert not _no_signature(b"Error: GET http://r/v2/: connection refused")


def test_a_relative_key_path_does_not_leave_through_a_committed_link(tmp_path: Path, monkeypatch) -> None:
    outside = tmp_path / "outside.key"
    outside.write_text("secret")
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "cosign.key").symlink_to(outside)
    monkeypatch.chdir(checkout)
    with pytest.raises(UsageError, match="leads out of the working folder through a symlink"):
        Key.parse("cosign.key")
    with pytest.raises(UsageError, match="leads out of the working folder"):
        Trust.parse("cosign.key")
    assert Key.parse(str(outside)).ref == str(outside)  # a path the user writes absolute is theirs
