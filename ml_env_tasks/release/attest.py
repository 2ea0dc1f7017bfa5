"""Records attached to an image in its registry: OCI artifacts whose ``subject`` is the image's
digest (OCI distribution 1.1 referrers). A smoke test's result is one: it names the exact digest
it tested, travels with the image when it is promoted (promotion copies referrers), and is what
``promote --require smoke-test`` and ``ml-env verify`` ask for. A record also names what ran on
the digest (the entry script's folder and the models mounted, or nothing for a packaged image);
which records a gate counts is ``tested``'s rule.

Registries without the referrers API get the spec's fallback: an image index under the tag
``sha256-<hex>`` listing the referrers, kept up to date by whoever attaches one (read, append,
write, verify; a lost race is retried). Everything read back is untrusted: descriptors are
checked, payloads are bounded and parsed strictly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError, UsageError
from ..registry import artifacts as art
from ..safe.digests import is_digest
from ..safe.grammar import printable
from ..safe.untrusted import json_loads
from .tested import Combination, of_record

if TYPE_CHECKING:
    from ..registry import RegistryClient

__all__ = [
    "GATES",
    "check_gates",
    "SMOKE_TYPE",
    "Attached",
    "attach",
    "referrers",
    "smoke_records",
    "record_smoke",
]

SMOKE_TYPE = "application/vnd.ml-env.smoke-test.v1+json"
MAX_PAYLOAD = 256 * 1024
ATTEMPTS = 5
GATES = ("smoke-test", "signed")  # what promote --require and verify --require can ask for


def check_gates(require: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """The gates named (``--require a,b`` or ``--require a --require b``), each one there is: a
    typo must not silently remove a gate."""
    named = tuple(dict.fromkeys(g.strip() for item in require for g in item.split(",") if g.strip()))
    unknown = [g for g in named if g not in GATES]
    if unknown:
        raise UsageError(f"--require {printable(unknown[0], 40)!r}: the gates are {', '.join(GATES)}")
    return named


def referrers(client: RegistryClient, repo: str, digest: str) -> list[dict[str, Any]]:
    """The referrers of ``digest``: the API's answer, else the fallback tag's index."""
    found = client.referrers(repo, digest)
    if found is None:
        got = client.get_manifest(repo, _fallback_tag(digest))
        if got is None:
            return []
        try:
            doc = json.loads(got[1])
        except ValueError:
            return []
        found = doc.get("manifests") if isinstance(doc, dict) else None
        if not isinstance(found, list):
            return []
    return [m for m in found if isinstance(m, dict) and is_digest(m.get("digest"))]


def _fallback_tag(digest: str) -> str:
    return digest.replace(":", "-", 1)


@dataclass(frozen=True)
class Attached:
    digest: str
    fallback_tag: str | None  # the tag index written, when the registry has no referrers API
    record: dict[str, Any] = field(default_factory=dict)  # what was attached (a smoke-test record)


def attach(
    client: RegistryClient, repo: str, subject: str, artifact_type: str, payload: bytes, annotations: dict[str, str]
) -> Attached:
    """Attach ``payload`` to the manifest ``subject`` (which must be in ``repo``)."""
    head = client.head_manifest(repo, subject)
    if head is None:
        raise RegistryError(f"{client.host}/{repo}@{subject[:19]} is not there to attach to")
    art.put_empty_config(client, repo)
    layer = {"mediaType": artifact_type, "digest": art.put_blob(client, repo, payload), "size": len(payload)}
    body = art.manifest(
        artifact_type, [layer], annotations=annotations,
        subject={"mediaType": head.media_type or art.OCI_MANIFEST, "digest": subject, "size": head.size},
    )  # fmt: skip
    digest = art.sha256(body)
    client.put_manifest(repo, digest, body, art.OCI_MANIFEST)
    if client.referrers(repo, subject) is not None:
        return Attached(digest, None)  # the registry indexes it itself
    descriptor = {"mediaType": art.OCI_MANIFEST, "digest": digest, "size": len(body), "artifactType": artifact_type,
                  "annotations": annotations}  # fmt: skip
    tag = _fallback_tag(subject)
    for _ in range(ATTEMPTS):
        listed = [m for m in referrers(client, repo, subject) if m.get("digest") != digest]
        ibody = art.canonical({"schemaVersion": 2, "mediaType": art.OCI_INDEX, "manifests": [*listed, descriptor]})
        client.put_manifest(repo, tag, ibody, art.OCI_INDEX)
        if any(m.get("digest") == digest for m in referrers(client, repo, subject)):
            return Attached(digest, tag)
    raise RegistryError(f"could not list the record in {client.host}/{repo}:{tag} (concurrent writers)")


def record_smoke(
    image: str, report: Any, cases_sha256: str, *, tested: Combination, insecure: bool = False
) -> Attached | None:
    """Attach a smoke test's result to the digest it tested (an image in a registry; None
    otherwise), naming what ran on it (``tested``; nothing mounted for a packaged image)."""
    from importlib.metadata import PackageNotFoundError, version

    from ..registry import RegistryClient, parse_ref

    try:
        tool = f"ml-env {version('ml-env-tasks')}"
    except PackageNotFoundError:  # pragma: no cover - a source checkout
        tool = "ml-env"

    if "@" not in image:
        return None
    ref = parse_ref(image)
    if not ref.digest:
        return None
    client = RegistryClient(ref.host, insecure=insecure)
    labels = ((client.image_config(ref.repository, ref.digest) or {}).get("config") or {}).get("Labels") or {}
    lock = labels.get("ml-env.lock") if isinstance(labels, dict) else None
    now = datetime.now(UTC).isoformat(timespec="milliseconds")  # two records in one second keep their order
    doc = {
        "tested": ref.digest,
        "time": now,
        "passed": report.passed,
        "failed": report.failed,
        "cases_sha256": cases_sha256,
        "lock_sha256": hashlib.sha256(lock.encode()).hexdigest() if isinstance(lock, str) else "",
        "p95_ms": round(report.p95_ms, 3),
        "tool": tool,
        **tested.fields(),
    }
    payload = json.dumps(doc, sort_keys=True).encode()
    annotations = {
        "org.opencontainers.image.created": now,
        "ml-env.smoke-test.passed": "true" if not report.failed else "false",
    }
    att = attach(client, ref.repository, ref.digest, SMOKE_TYPE, payload, annotations)
    return Attached(att.digest, att.fallback_tag, doc)


def smoke_records(client: RegistryClient, repo: str, digest: str) -> list[dict[str, Any]]:
    """The smoke-test records attached to ``digest``, newest first; malformed ones are left out."""
    out = []
    for m in referrers(client, repo, digest):
        if m.get("artifactType") != SMOKE_TYPE:
            continue
        got = client.get_manifest(repo, m["digest"])
        if got is None:
            continue
        try:
            doc = json.loads(got[1])
            layer = doc["layers"][0]
            subject = doc["subject"]["digest"]
        except (ValueError, KeyError, IndexError, TypeError):
            continue
        if subject != digest or not is_digest(layer.get("digest")) or not isinstance(layer.get("size"), int):
            continue
        if layer["size"] > MAX_PAYLOAD:
            continue
        try:
            blob = client.get_blob(repo, layer["digest"], limit=MAX_PAYLOAD)
            rec = json_loads(blob, error=RegistryError, file=f"{repo}@{layer['digest'][:19]}")
        except (ValueError, RegistryError):
            continue
        if not isinstance(rec, dict) or rec.get("tested") != digest:
            continue
        if not all(isinstance(rec.get(k), t) for k, t in (("time", str), ("passed", int), ("failed", int))):
            continue
        if of_record(rec) is None:  # names what it tested in a shape no record of ours has
            continue
        out.append(rec)
    return sorted(out, key=lambda r: str(r["time"]), reverse=True)
