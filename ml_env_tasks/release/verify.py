"""``ml-env verify IMAGE``: is this image what it says it is?

One line per check, from what the registry holds (untrusted: every value is checked, and
printed escaped): the image's embedded canonical environment hashes to its ``ml-env.hash``
label; a hash tag names that hash (a packaged image's tag, its package hash); an SBOM and a
provenance attestation are attached in BuildKit's layout (attestation manifests in the index);
the release ledger (when one is given or found) records this digest; with ``--require
smoke-test``, the smoke-test gate (``tested.gate``) holds for its records.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.digests import is_digest
from ..safe.grammar import printable
from .cosign import Trust
from .sbom import CYCLONEDX, SLSA_V1, SPDX, attestations, attested
from .tested import Combination

__all__ = ["Check", "verify", "attestations", "attested", "SBOM_TYPES", "PROVENANCE_TYPES"]

SBOM_TYPES = (SPDX, CYCLONEDX)
PROVENANCE_TYPES = ("https://slsa.dev/provenance/v0.2", SLSA_V1)  # BuildKit's (v0.2 or v1), ml-env package's (v1)
HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not applicable (said why)
    detail: str

    def line(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "skip"}[self.ok]
        return f"{mark} {self.name:11} {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def verify(
    image: str,
    *,
    ledger: str | Path | None = None,
    require: tuple[str, ...] = (),
    insecure: bool = False,
    ledger_given: bool = True,
    trust: Trust | None = None,
    tested: Combination | None = None,
) -> list[Check]:
    """``ledger_given``: the ledger was named (flag, variable, config), so a missing one fails;
    False for the default ``releases.toml``, which may simply not exist here (a skip).
    ``trust``: whose cosign signatures count; with it the signature and each kind of signed
    attestation are checked (``--require signed`` without it is a usage error). ``tested``: the
    combination that runs on the image, whose records alone the smoke-test checks count."""
    from ..registry import RegistryClient, check_registry_host, parse_ref
    from .attest import check_gates, smoke_records

    check_gates(require)
    if tested is not None and "smoke-test" not in require:
        raise UsageError("--entry/--model name what a smoke test must have tested: they go with --require smoke-test")
    if "signed" in require and trust is None:
        raise UsageError("--require signed needs who is trusted: --key (a public key file, env://NAME or a KMS URI), "
                         "or --certificate-identity with --certificate-oidc-issuer")  # fmt: skip
    first = image.split("/", 1)[0]
    if "://" in image or "/" not in image or not ("." in first or ":" in first or first == "localhost"):
        # docker's rule: without a host first it would be Docker Hub, which verify never guesses
        raise UsageError(f"IMAGE {printable(image, 120)!r} is not host[:port]/repository[:tag|@digest]")
    check_registry_host(image.split("/", 1)[0], "image registry")
    ref = parse_ref(image)
    client = RegistryClient(ref.host, insecure=insecure)
    checks: list[Check] = []
    head = client.head_manifest(ref.repository, ref.reference)
    if head is None:
        return [Check("image", False, f"{image} is not in its registry")]
    digest = head.digest
    where = f"{ref.host}/{ref.repository}@{digest}"
    checks.append(Check("image", True, where))
    cfg = client.image_config(ref.repository, digest) or {}
    inner = cfg.get("config")  # untrusted: any JSON at all
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    labels = {str(k): v for k, v in labels.items() if isinstance(v, str)} if isinstance(labels, dict) else {}
    spec, claimed = labels.get("ml-env.spec"), labels.get("ml-env.hash", "")
    if spec is None or not HEX64.fullmatch(claimed):
        checks.append(Check("hash", False, "no ml-env.spec / ml-env.hash labels: not an image ml-env built"))
    else:
        actual = hashlib.sha256(spec.encode()).hexdigest()
        ok = actual == claimed
        checks.append(Check("hash", ok, f"embedded environment hashes to {actual[:16]}…" + ("" if ok else
                                          f", the label says {printable(claimed, 70)}")))  # fmt: skip
    package = labels.get("ml-env.package.hash")
    expect = claimed
    if package is not None:
        # a packaged image's tag is its package hash: recomputed from the parts its labels name
        # (environment digest, entry folder hash, entry name, model digest), never taken on trust
        ok = package_hash(labels) == package
        checks.append(Check("package", ok, f"package parts hash to {package[:16]}…" if ok else
                            "the ml-env.package.* labels do not hash to ml-env.package.hash"))  # fmt: skip
        expect = package if ok else ""
    if ref.tag and HEX64.fullmatch(ref.tag):
        checks.append(Check("tag", ref.tag == expect, f"tag {ref.tag[:16]}… " +
                            ("is the content hash" if ref.tag == expect else "is not the content hash")))  # fmt: skip
    else:
        checks.append(Check("tag", None, "not given by its content-hash tag"))
    found = attestations(client, ref.repository, digest)
    sbom = [t for t in found if t in SBOM_TYPES]
    prov = [t for t in found if t in PROVENANCE_TYPES]
    checks.append(Check("sbom", bool(sbom), ", ".join(sbom) if sbom else "no SBOM attestation attached"))
    checks.append(Check("provenance", bool(prov), ", ".join(prov) if prov else "no provenance attestation attached"))
    checks.append(_ledger_check(ledger, digest, f"{ref.host}/{ref.repository}", insecure=insecure, given=ledger_given))
    if trust is not None:
        from .signing import signed_checks

        for name, ok, detail in signed_checks(where, trust, tested=tested, insecure=insecure):
            if name == "signed smoke-test":
                if not ok and "smoke-test" not in require:
                    checks.append(Check(name, None, detail + " (not required)"))
                    continue
            checks.append(Check(name, ok, detail))
    if "smoke-test" in require:
        from .tested import gate

        verdict = gate(smoke_records(client, ref.repository, digest), tested, "this digest")
        checks.append(Check("smoke-test", verdict.ok, verdict.line))
    return checks


def package_hash(labels: dict[str, str]) -> str | None:
    """The package hash the ``ml-env.package.*`` labels make (``package.py``'s key), None when one is malformed."""
    env, entry_hash = labels.get("ml-env.package.environment", ""), labels.get("ml-env.package.entry_hash", "")
    entry, model = labels.get("ml-env.package.entry", ""), labels.get("ml-env.package.model_digest", "")
    env_digest = env.rpartition("@")[2]
    if not (is_digest(env_digest) and is_digest(model) and entry and HEX64.fullmatch(entry_hash)):
        return None
    from ..models.package import models_digest, package_key

    listed = labels.get("ml-env.package.models")
    if listed is not None:  # several models: the digest they hash to, from the layers the label lists
        from ..safe.untrusted import json_loads

        try:
            got = json_loads(listed, error=UsageError, file="ml-env.package.models")
        except (ValueError, UsageError):
            return None
        pairs: list[tuple[str, str]] = []
        for m in got if isinstance(got, list) else []:
            mount, digest = (m.get("mount"), m.get("digest")) if isinstance(m, dict) else (None, None)
            if not (isinstance(mount, str) and isinstance(digest, str) and is_digest(digest)):
                return None
            pairs.append((mount, digest))
        if not pairs or models_digest(pairs) != model:
            return None
    return package_key(env_digest, entry_hash, entry, model)


def _ledger_check(
    ledger: str | Path | None, digest: str, repository: str, *, insecure: bool = False, given: bool = True
) -> Check:
    """``registry`` is the ledger kept in the image's own repository, as promote keeps it."""
    from ..errors import MlEnvError
    from .ledger_oci import is_remote, ledger_location, open_ledger

    if ledger is None:
        return Check("ledger", None, "no ledger given")
    ledger = ledger_location(ledger, repository)
    if not is_remote(ledger) and not Path(ledger).exists():
        # a ledger named on purpose that is not there records nothing: that is a failed check
        return Check("ledger", False if given else None, f"{printable(str(ledger))} does not exist")
    try:
        with open_ledger(ledger, insecure=insecure) as led:
            hits = [e for e in led.entries() if e.digest == digest]
            where = led.where
    except MlEnvError as e:
        return Check("ledger", False, f"{e.message}")
    if not hits:
        return Check("ledger", False, f"{where} has no promotion of this digest")
    last = hits[-1]
    return Check("ledger", True, f"promoted to {printable(last.destination)}:{printable(','.join(last.tags))} "
                                 f"at {printable(last.time, 40)}")  # fmt: skip
