"""What a release signs, and what the ``signed`` gate checks.

Signing a digest (``sign_release``) puts, with cosign, a signature on the image and in-toto
attestations about it: the SBOM (SPDX, and CycloneDX when there is one) and the provenance the
image already carries in BuildKit's layout, and its smoke-test records: the record a smoke test
just wrote, or (signing an image as it is) the newest record of each combination tested against
it (``tested``). Each is signed once per key: what already verifies with the key is left as it
is (cosign would add a second signature). The gate (``check_signed``) asks cosign whether the
digest's signature verifies with the trusted key or keyless identity, and, with ``smoke-test``
also required, applies the smoke-test gate's rule (``tested.gate``) to the signed records alone.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

from ..errors import GateRefused, RegistryError, UsageError
from ..registry import RegistryClient, parse_ref
from ..safe.grammar import printable
from .attest import smoke_records
from .cosign import Cosign, Key, SignatureMissing, Trust
from .sbom import CYCLONEDX, SLSA_V1, SPDX, attested
from .tested import Combination, gate, newest_each

__all__ = ["KINDS", "SMOKE_PREDICATE", "PREDICATES", "Signed", "sign_release", "check_signed", "fingerprint"]

SMOKE_PREDICATE = "urn:ml-env:smoke-test:v1"  # `cosign verify-attestation --type urn:ml-env:smoke-test:v1`
PROVENANCE_V02 = "https://slsa.dev/provenance/v0.2"
# what a signature covers, each with the predicate types it is attested as
PREDICATES: dict[str, tuple[str, ...]] = {
    "sbom": (SPDX, CYCLONEDX),
    "provenance": (PROVENANCE_V02, SLSA_V1),
    "smoke-test": (SMOKE_PREDICATE,),
}
KINDS = ("image", *PREDICATES)


@dataclass
class Signed:
    """What one ``sign_release`` did: by whom, what it signed now, what was already signed."""

    ref: str
    by: str
    fingerprint: str
    signed: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # nothing of that kind to attest

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def covered(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.signed or k in self.already)


def fingerprint(public_pem: bytes) -> str:
    """``sha256:<hex>`` of a public key's PEM text, trimmed: the name the ledger gives a signer."""
    return "sha256:" + hashlib.sha256(public_pem.strip()).hexdigest() if public_pem.strip() else ""


def sign_release(
    ref: str,
    key: Key,
    *,
    kinds: tuple[str, ...] = KINDS,
    insecure: bool = False,
    ca_bundle: str | Path | None = None,
    smoke_record: dict[str, Any] | None = None,
    say: Callable[[str], None] = lambda _m: None,
) -> Signed:
    """Sign ``ref`` (``host/repository@digest``) and attest what it carries, once per key."""
    r = parse_ref(ref)
    if not r.digest:
        raise UsageError(f"{printable(ref, 160)}: signing needs an image by digest (host/repository@sha256:...)")
    cs = Cosign(r.host, insecure=insecure, ca_bundle=ca_bundle)
    client = RegistryClient(r.host, insecure=insecure)
    pinned = f"{r.host}/{r.repository}@{r.digest}"
    with tempfile.TemporaryDirectory(prefix="ml-env-sign-") as d:
        trust = None
        pem = cs.public_key(key)
        if pem:
            pub = Path(d) / "signer.pub"
            pub.write_bytes(pem)
            trust = Trust(key=str(pub))
        done = Signed(pinned, key.describe(), fingerprint(pem))
        predicates = _predicates(client, r.repository, r.digest, kinds, smoke_record)
        if "image" in kinds:
            if trust is not None and _verifies(lambda: cs.verify(pinned, trust)):
                done.already.append("image")
            else:
                cs.sign(pinned, key)
                done.signed.append("image")
        for kind in kinds:
            if kind == "image":
                continue
            found = predicates.get(kind, [])
            if not found:
                done.absent.append(kind)
                continue
            fresh = False
            for predicate_type, predicate in found:
                if trust is not None and _attested(cs, pinned, trust, predicate_type, predicate):
                    continue
                cs.attest(pinned, key, predicate_type, json.dumps(predicate, sort_keys=True).encode())
                fresh = True
            (done.signed if fresh else done.already).append(kind)
    say(
        f"signed {pinned[:80]} with {done.by}: "
        + ", ".join(f"{k} ({'new' if k in done.signed else 'already'})" for k in done.covered)
    )
    return done


def _predicates(
    client: RegistryClient, repo: str, digest: str, kinds: tuple[str, ...], smoke: dict[str, Any] | None
) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    if "sbom" in kinds or "provenance" in kinds:
        found = attested(client, repo, digest)
        for kind in ("sbom", "provenance"):
            for pt in PREDICATES[kind]:
                if found.get(pt) and kind in kinds:
                    out.setdefault(kind, []).append((pt, found[pt][0][1]["predicate"]))
    if "smoke-test" in kinds:
        # the record just written, else the newest of each combination: what the gate counts
        records = [smoke] if smoke is not None else [r for _, r in newest_each(smoke_records(client, repo, digest))]
        if records:
            out["smoke-test"] = [(SMOKE_PREDICATE, r) for r in records]
    return out


def _verifies(call: Callable[[], Any]) -> bool:
    try:
        return bool(call())
    except SignatureMissing:
        return False


def _attested(cs: Cosign, ref: str, trust: Trust, predicate_type: str, predicate: dict[str, Any]) -> bool:
    try:
        statements = cs.verify_attestations(ref, trust, predicate_type)
    except SignatureMissing:
        return False
    return any(s.get("predicate") == predicate for s in statements)


def check_signed(
    ref: str,
    trust: Trust | None,
    *,
    smoke_test: bool = False,
    tested: Combination | None = None,
    insecure: bool = False,
    ca_bundle: str | Path | None = None,
) -> str:
    """The ``signed`` gate: the digest's signature verifies with ``trust``; with ``smoke_test``, the
    smoke-test gate (``tested.gate``, for the combination ``tested`` or every one) holds over the
    signed records alone. One line saying so, else ``GateRefused``."""
    if trust is None:
        raise UsageError(
            "--require signed needs who is trusted: --verify-key (a public key file, env://NAME or a KMS URI), "
            "or --certificate-identity with --certificate-oidc-issuer"
        )
    r = parse_ref(ref)
    digest = r.digest or ""
    cs = Cosign(r.host, insecure=insecure, ca_bundle=ca_bundle)
    try:
        cs.verify(ref, trust)
    except SignatureMissing as e:
        raise GateRefused(
            f"{printable(ref, 160)} is not signed by {trust.describe()}: {e.message}",
            hint="sign it (ml-env sign, or --sign-key on build/package/promote) with the key the gate trusts",
        ) from None
    line = f"signature of {digest[:19]} verifies with {trust.describe()}"
    if smoke_test:
        try:
            statements = cs.verify_attestations(ref, trust, SMOKE_PREDICATE)
        except SignatureMissing:
            statements = []
        verdict = gate(
            _signed_records(statements, digest), tested, f"{printable(ref, 160)}, signed by {trust.describe()},"
        )
        if not verdict.ok:
            raise GateRefused(
                f"no signed smoke-test record of a pass: {verdict.line}",
                hint="run ml-env smoke-test on this digest with --sign-key",
            )
        line += f"; signed smoke test {verdict.line}"
    return line


def signed_checks(
    ref: str,
    trust: Trust,
    *,
    tested: Combination | None = None,
    insecure: bool = False,
    ca_bundle: str | Path | None = None,
) -> list[tuple[str, bool, str]]:
    """For ``verify``: (check, passed, detail) for the signature and each kind of attestation."""
    r = parse_ref(ref)
    cs = Cosign(r.host, insecure=insecure, ca_bundle=ca_bundle)
    out: list[tuple[str, bool, str]] = []
    try:
        n = len(cs.verify(ref, trust))
        out.append(("signature", True, f"{n} signature(s) verify with {trust.describe()}"))
    except SignatureMissing as e:
        out.append(("signature", False, f"no signature verifies with {trust.describe()}: {e.message}"))
    for kind, types in PREDICATES.items():
        hits: list[tuple[str, dict[str, Any]]] = []
        for pt in types:
            try:
                hits += [(pt, st) for st in cs.verify_attestations(ref, trust, pt) if _about(st, r.digest or "")]
            except (SignatureMissing, RegistryError):
                continue
        if kind == "smoke-test":
            verdict = gate(_signed_records([st for _, st in hits], r.digest or ""), tested, "this digest")
            out.append((f"signed {kind}", verdict.ok, f"signed record: {verdict.line}" if verdict.ok
                        else f"no signed smoke-test record of a pass: {verdict.line}"))  # fmt: skip
            continue
        names = sorted({pt for pt, _ in hits})
        out.append((f"signed {kind}", bool(hits), ", ".join(names) if hits else f"no signed {kind} attestation"))
    return out


def _about(statement: dict[str, Any], digest: str) -> bool:
    subjects = statement.get("subject")
    return isinstance(subjects, list) and any(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) and f"sha256:{s['digest'].get('sha256')}" == digest
        for s in subjects
    )


def _signed_records(statements: list[dict[str, Any]], digest: str) -> list[dict[str, Any]]:
    """The smoke-test records of signed statements about ``digest``, newest first (cosign lists
    them in no particular order)."""
    found: list[dict[str, Any]] = []
    for statement in statements:
        p = statement.get("predicate")
        if _about(statement, digest) and _record(p, digest):
            found.append(p)
    return sorted(found, key=lambda r: str(r["time"]), reverse=True)


def _record(p: Any, digest: str) -> TypeGuard[dict[str, Any]]:
    return (
        isinstance(p, dict)
        and p.get("tested") == digest
        and isinstance(p.get("passed"), int)
        and isinstance(p.get("failed"), int)
        and isinstance(p.get("time"), str)
    )
