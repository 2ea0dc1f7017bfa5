"""``ml-env verify`` against an in-memory registry that answers whatever a hostile pusher put there:
every check is one line, nothing raises, and a check that cannot be made is never an ``ok``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import ml_env_tasks.registry as registry_mod
from ml_env_tasks.errors import UsageError
from ml_env_tasks.release.verify import verify

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
HOST, REPO = "127.0.0.1:5000", "h16/verify"


def sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


@dataclass
class Info:
    digest: str
    media_type: str
    size: int


class FakeRegistry:
    """manifests and blobs by digest, tags to digests."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.tags: dict[str, str] = {}

    def blob(self, data: bytes) -> str:
        self.blobs[sha(data)] = data
        return sha(data)

    def manifest(self, doc: dict[str, Any], tag: str | None = None) -> str:
        body = json.dumps(doc).encode()
        self.manifests[sha(body)] = body
        if tag:
            self.tags[tag] = sha(body)
        return sha(body)

    def image(self, config: Any, tag: str | None = None, layers: list[dict[str, Any]] | None = None) -> str:
        c = json.dumps(config).encode()
        doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": self.blob(c),
                          "size": len(c)}, "layers": layers or []}  # fmt: skip
        return self.manifest(doc, tag)

    # the client's interface, as verify uses it
    def _digest(self, ref: str) -> str | None:
        return ref if ref in self.manifests else self.tags.get(ref)

    def head_manifest(self, repo: str, ref: str) -> Info | None:
        d = self._digest(ref)
        return None if d is None else Info(d, OCI_MANIFEST, len(self.manifests[d]))

    def get_manifest(self, repo: str, ref: str) -> tuple[Info, bytes] | None:
        d = self._digest(ref)
        return None if d is None else (Info(d, OCI_MANIFEST, len(self.manifests[d])), self.manifests[d])

    def get_blob(self, repo: str, digest: str, limit: int = 0) -> bytes:
        return self.blobs[digest]

    def image_config(self, repo: str, ref: str) -> Any:
        d = self._digest(ref)
        if d is None:
            return None
        doc = json.loads(self.manifests[d])
        for m in doc.get("manifests") or []:
            if (m.get("platform") or {}).get("os") != "unknown":
                return self.image_config(repo, m["digest"])
        return json.loads(self.blobs[doc["config"]["digest"]])

    def referrers(self, repo: str, digest: str) -> list[dict[str, Any]]:
        return []


@pytest.fixture
def reg(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()
    monkeypatch.setattr(registry_mod, "RegistryClient", lambda host, insecure=False: fake)
    return fake


def spec_labels(spec: str = '{"base":{"image":"x"}}') -> dict[str, str]:
    return {"ml-env.spec": spec, "ml-env.hash": hashlib.sha256(spec.encode()).hexdigest()}


def checks(image: str, **kw: Any) -> dict[str, Any]:
    return {c.name: c for c in verify(image, **kw)}


def test_an_unknown_gate_is_a_usage_error_not_a_silently_skipped_check(reg: FakeRegistry) -> None:
    reg.image({"config": {"Labels": spec_labels()}}, tag="t")
    with pytest.raises(UsageError, match="smok-test"):
        verify(f"{HOST}/{REPO}:t", require=("smok-test",))


@pytest.mark.parametrize("inner", ["nope", 7, ["Labels"], None, {"Labels": "x"}, {"Labels": [1]}])
def test_an_image_config_of_any_shape_is_a_failed_hash_check(reg: FakeRegistry, inner: Any) -> None:
    reg.image({"architecture": "amd64", "os": "linux", "config": inner}, tag="odd")
    got = checks(f"{HOST}/{REPO}:odd", ledger=None)
    assert got["hash"].ok is False and "not an image ml-env built" in got["hash"].detail


def test_a_named_ledger_that_does_not_exist_fails_the_check(reg: FakeRegistry, tmp_path: Path) -> None:
    reg.image({"config": {"Labels": spec_labels()}}, tag="t")
    missing = tmp_path / "releases.toml"
    assert checks(f"{HOST}/{REPO}:t", ledger=missing)["ledger"].ok is False
    # the default releases.toml, not named by anyone: nothing to check here
    assert checks(f"{HOST}/{REPO}:t", ledger=missing, ledger_given=False)["ledger"].ok is None


def attested_index(reg: FakeRegistry, *, refers_to: str | None = None, subject: str | None = None,
                   statement: dict[str, Any] | None = None, tag: str = "idx") -> str:  # fmt: skip
    """An index of one image and one attestation manifest carrying an SBOM and a provenance statement."""
    image = reg.image({"config": {"Labels": spec_labels()}})
    layers = []
    for pt in ("https://cyclonedx.org/bom", "https://slsa.dev/provenance/v0.2"):
        st = statement if statement is not None else {
            "_type": "https://in-toto.io/Statement/v0.1", "predicateType": pt, "predicate": {"any": "thing"},
            "subject": [{"name": "x", "digest": {"sha256": (subject or image).split(":", 1)[1]}}],
        }  # fmt: skip
        body = json.dumps(st).encode()
        layers.append({"mediaType": "application/vnd.in-toto+json", "digest": reg.blob(body), "size": len(body),
                       "annotations": {"in-toto.io/predicate-type": pt}})  # fmt: skip
    att = reg.manifest({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {}, "layers": layers})
    return reg.manifest({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": image, "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": att, "size": 1, "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": refers_to or image}},
    ]}, tag=tag)  # fmt: skip


def test_attestations_about_this_image_pass(reg: FakeRegistry) -> None:
    attested_index(reg)
    got = checks(f"{HOST}/{REPO}:idx", ledger=None)
    assert got["sbom"].ok and got["provenance"].ok


@pytest.mark.parametrize(
    "forgery",
    [
        {"statement": {}},  # an annotation over an empty statement
        {"statement": {"predicateType": "https://cyclonedx.org/bom"}},  # no predicate, no subject
        {"subject": "sha256:" + "1" * 64},  # a statement about another image, copied into this index
        {"refers_to": "sha256:" + "2" * 64},  # an attestation manifest of an image not in this index
    ],
)
def test_an_attestation_that_is_not_about_this_image_is_not_counted(reg: FakeRegistry, forgery: dict[str, Any]) -> None:
    attested_index(reg, **forgery)
    got = checks(f"{HOST}/{REPO}:idx", ledger=None)
    assert got["sbom"].ok is False and got["provenance"].ok is False


def package_labels() -> dict[str, str]:
    env_digest, entry_hash, model = "sha256:" + "e" * 64, "a" * 64, "sha256:" + "b" * 64
    key = hashlib.sha256(f"{env_digest}\n{entry_hash}\nscore.py\n{model}".encode()).hexdigest()
    return {**spec_labels(), "ml-env.package.environment": f"{HOST}/envs/x@{env_digest}",
            "ml-env.package.entry": "score.py", "ml-env.package.entry_hash": entry_hash,
            "ml-env.package.model_digest": model, "ml-env.package.hash": key}  # fmt: skip


def test_a_packaged_image_tag_is_checked_against_its_recomputed_package_hash(reg: FakeRegistry) -> None:
    labels = package_labels()
    reg.image({"config": {"Labels": labels}}, tag=labels["ml-env.package.hash"])
    got = checks(f"{HOST}/{REPO}:{labels['ml-env.package.hash']}", ledger=None)
    assert got["package"].ok and got["tag"].ok


def test_a_forged_package_hash_label_does_not_make_any_tag_pass(reg: FakeRegistry) -> None:
    """One label used to decide what the tag is checked against: set it to the tag, and an image
    with any content (and any tag) was 'the content hash'."""
    anything = hashlib.sha256(b"evil").hexdigest()
    reg.image({"config": {"Labels": {**spec_labels(), "ml-env.package.hash": anything}}}, tag=anything)
    got = checks(f"{HOST}/{REPO}:{anything}", ledger=None)
    assert got["package"].ok is False and got["tag"].ok is False
    labels = {**package_labels(), "ml-env.package.entry": "other.py"}  # a part changed, the hash kept
    reg.image({"config": {"Labels": labels}}, tag=labels["ml-env.package.hash"])
    got = checks(f"{HOST}/{REPO}:{labels['ml-env.package.hash']}", ledger=None)
    assert got["package"].ok is False and got["tag"].ok is False


@pytest.mark.parametrize("image", ["team/x:y", "x", "docker.io", "http://127.0.0.1:5000/a/b:1"])
def test_verify_never_guesses_docker_hub(image: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An image without a registry host first is bad input (exit 2), not five tries at Docker Hub."""
    from ml_env_tasks.fronts.cli import run

    assert run(["verify", image]) == 2
    assert "is not host[:port]/repository" in capsys.readouterr().err


def test_promote_spec_goes_with_the_smoke_test_gate(capsys: pytest.CaptureFixture[str]) -> None:
    """--spec without --require smoke-test would be silently ignored: it is a usage error."""
    from ml_env_tasks.fronts.cli import run

    assert run(["promote", "127.0.0.1:9/a:1", "127.0.0.1:9/b", "--tag", "x", "--spec", "envs/sklearn.toml"]) == 2
    assert "--require smoke-test" in capsys.readouterr().err
