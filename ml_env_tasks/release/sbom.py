"""A software bill of materials of what is really in an image, attached the way BuildKit attaches
its own attestations.

What is listed: the Python packages of the lock (what ``pip list`` reported in the built image),
the Debian packages ``dpkg-query`` reports in it (none for an image without dpkg), and the base
image. Two documents say the same thing: CycloneDX 1.5 (cyclonedx-python-lib) and SPDX 2.3
(spdx-tools) — ``docker buildx imagetools inspect --format '{{json .SBOM}}'`` shows SPDX only.
Both are deterministic: ids and the serial number derive from the image, the time is
SOURCE_DATE_EPOCH (or 0), so the same image gives the same SBOM, byte for byte.

Where: an attestation manifest in the image's index (platform ``unknown/unknown``, annotations
``vnd.docker.reference.digest`` = the image manifest and ``vnd.docker.reference.type`` =
``attestation-manifest``), whose layers are in-toto statements (``application/vnd.in-toto+json``,
annotation ``in-toto.io/predicate-type``) about that manifest — BuildKit's own layout, beside
its provenance. Promotion copies the index whole, so the SBOM travels with the image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError
from ..registry import artifacts as art
from ..safe.digests import is_digest
from ..safe.grammar import digits
from ..safe.untrusted import json_loads

if TYPE_CHECKING:
    from ..engine import Engine
    from ..registry import RegistryClient

__all__ = [
    "Contents",
    "attested",
    "attestations",
    "debian_listed",
    "cyclonedx_json",
    "spdx_json",
    "statement",
    "attach_attestations",
    "deb_packages",
    "source_date",
]

INTOTO = "application/vnd.in-toto+json"
CYCLONEDX = "https://cyclonedx.org/bom"
SPDX = "https://spdx.dev/Document"
SLSA_V1 = "https://slsa.dev/provenance/v1"
OCI_MANIFEST, OCI_INDEX, OCI_CONFIG = art.OCI_MANIFEST, art.OCI_INDEX, art.OCI_CONFIG
MAX_DPKG = 8 * 2**20


@dataclass(frozen=True)
class Contents:
    name: str  # the image's repository
    version: str  # its content hash (or package hash)
    python: dict[str, str]  # name -> version
    debian: list[tuple[str, str, str]]  # (name, version, arch)
    base: str | None  # the base image reference (with its digest when known)
    extra: list[tuple[str, str, str]] = ()  # type: ignore[assignment]  # (name, version, sha256) of other parts


def source_date() -> datetime:
    """SOURCE_DATE_EPOCH when set (reproducible builds' convention), else the epoch."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    seconds = int(raw) if digits(raw) and len(raw) < 12 else 0
    return datetime.fromtimestamp(seconds, UTC)


def deb_packages(engine: Engine, ref: str) -> list[tuple[str, str, str]]:
    """What dpkg says is installed in the image (empty when it has no dpkg)."""
    from ..errors import MlEnvError

    try:
        # an image without dpkg (or without a shell) has no Debian packages to list: no error line
        script = "command -v dpkg-query >/dev/null 2>&1 && dpkg-query -W -f '${Package}\\t${Version}\\t${Architecture}\\n' || true"
        out = engine.run_capture(ref, ["sh", "-c", script], entrypoint="")
    except MlEnvError:
        return []
    rows = []
    for line in str(out)[:MAX_DPKG].splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and all(p and p.isprintable() and len(p) < 200 for p in parts):
            rows.append((parts[0], parts[1], parts[2]))
    return sorted(set(rows))


def debian_listed(cyclonedx: Any) -> list[tuple[str, str, str]]:
    """The Debian packages a CycloneDX document lists (by their ``pkg:deb/debian/...`` purls), as
    ``deb_packages`` gives them: what a packaged image takes over from its environment's SBOM."""
    from packageurl import PackageURL

    rows = []
    components = cyclonedx.get("components") if isinstance(cyclonedx, dict) else None
    for c in components if isinstance(components, list) else []:
        purl = c.get("purl") if isinstance(c, dict) else None
        if not isinstance(purl, str) or not purl.startswith("pkg:deb/debian/") or len(purl) > 600:
            continue
        try:
            p = PackageURL.from_string(purl)
        except ValueError:
            continue
        arch = (p.qualifiers or {}).get("arch", "") if isinstance(p.qualifiers, dict) else ""
        row = (p.name, p.version or "", arch)
        if all(x and x.isprintable() and len(x) < 200 for x in row):
            rows.append(row)
    return sorted(set(rows))


def _uuid(c: Contents) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"ml-env:{c.name}:{c.version}")


def cyclonedx_json(c: Contents) -> dict[str, Any]:
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot5
    from packageurl import PackageURL

    bom = Bom(serial_number=_uuid(c))
    bom.metadata.timestamp = source_date()
    bom.metadata.component = Component(
        name=c.name, version=c.version, type=ComponentType.CONTAINER, bom_ref=f"image:{c.name}@{c.version}"
    )
    for name, version in sorted(c.python.items()):
        purl = PackageURL(type="pypi", name=name.lower(), version=version)
        bom.components.add(Component(name=name, version=version, purl=purl, bom_ref=str(purl)))
    for name, version, arch in c.debian:
        purl = PackageURL(type="deb", namespace="debian", name=name, version=version, qualifiers={"arch": arch})
        bom.components.add(Component(name=name, version=version, purl=purl, bom_ref=str(purl)))
    if c.base:
        bom.components.add(Component(name=c.base, type=ComponentType.CONTAINER, bom_ref=f"base:{c.base}"))
    for name, version, sha in c.extra:
        bom.components.add(Component(name=name, version=version, type=ComponentType.DATA, bom_ref=f"part:{name}:{sha}"))
    bom.register_dependency(bom.metadata.component, list(bom.components))  # the image contains each
    doc: dict[str, Any] = json.loads(JsonV1Dot5(bom).output_as_string())
    return doc


def spdx_json(c: Contents) -> dict[str, Any]:
    from spdx_tools.spdx.model.actor import Actor, ActorType
    from spdx_tools.spdx.model.document import CreationInfo, Document
    from spdx_tools.spdx.model.package import ExternalPackageRef, ExternalPackageRefCategory, Package
    from spdx_tools.spdx.model.relationship import Relationship, RelationshipType
    from spdx_tools.spdx.model.spdx_no_assertion import SpdxNoAssertion
    from spdx_tools.spdx.writer.json.json_writer import write_document_to_stream

    def spdx_id(kind: str, *parts: str) -> str:
        return f"SPDXRef-{kind}-" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{c.name}@{c.version}",
        document_namespace=f"https://ml-env.invalid/spdx/{_uuid(c)}",
        creators=[Actor(ActorType.TOOL, "ml-env")], created=source_date(),
    )  # fmt: skip
    image_id = spdx_id("image", c.name, c.version)
    packages = [Package(image_id, c.name, SpdxNoAssertion(), version=c.version, files_analyzed=False)]
    rels = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, image_id)]

    def add(kind: str, name: str, version: str, purl: str | None) -> None:
        pid = spdx_id(kind, name, version)
        refs = [ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", purl)] if purl else []
        packages.append(Package(pid, name, SpdxNoAssertion(), version=version or None, files_analyzed=False,
                                external_references=refs))  # fmt: skip
        rels.append(Relationship(image_id, RelationshipType.CONTAINS, pid))

    from packageurl import PackageURL

    for name, version in sorted(c.python.items()):
        add("pypi", name, version, str(PackageURL(type="pypi", name=name.lower(), version=version)))
    for name, version, arch in c.debian:
        add("deb", name, version, str(PackageURL(type="deb", namespace="debian", name=name, version=version,
                                                 qualifiers={"arch": arch})))  # fmt: skip
    if c.base:
        add("base", c.base, "", None)
    for name, version, _sha in c.extra:
        add("part", name, version, None)
    doc = Document(info, packages=packages, relationships=rels)
    out = io.StringIO()
    write_document_to_stream(doc, out, validate=False)
    parsed: dict[str, Any] = json.loads(out.getvalue())
    return parsed


def statement(predicate_type: str, predicate: dict[str, Any], subject_name: str, subject_digest: str) -> bytes:
    """An in-toto statement (v0.1, as BuildKit writes them) about one manifest."""
    doc = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": predicate_type,
        "subject": [{"name": subject_name, "digest": {"sha256": subject_digest.split(":", 1)[1]}}],
        "predicate": predicate,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def attach_attestations(
    client: RegistryClient,
    repo: str,
    tag: str,
    top: str,
    make: Any,
    *,
    replace_types: tuple[str, ...] = (CYCLONEDX, SPDX),
) -> str:
    """Add an attestation manifest (from ``make(image_manifest_digest) -> [(predicate type, statement)]``)
    to the index ``top`` and write it under ``tag``; the new index digest. A single manifest is
    first wrapped in an index. Attestation manifests of ``replace_types`` already there are dropped."""
    got = client.get_manifest(repo, top)
    if got is None:
        raise RegistryError(f"{client.host}/{repo}@{top[:19]} vanished before its SBOM could be attached")
    info, body = got
    doc = json.loads(body)
    if "manifests" in doc:
        entries = [m for m in doc["manifests"] if isinstance(m, dict)]
    else:
        cfg = json_loads(client.get_blob(repo, doc["config"]["digest"]), error=RegistryError, file=f"{repo} config")
        platform = {"architecture": cfg.get("architecture", "amd64"), "os": cfg.get("os", "linux")}
        entries = [
            {"mediaType": info.media_type or OCI_MANIFEST, "digest": top, "size": len(body), "platform": platform}
        ]
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    images = [m for m in entries if (m.get("platform") or {}).get("os") != "unknown"]
    keep = []
    for m in entries:
        ann = m.get("annotations") or {}
        if ann.get("vnd.docker.reference.type") == "attestation-manifest" and _carries(client, repo, m, replace_types):
            continue
        keep.append(m)
    for image in images:
        layers = []
        for ptype, data in make(image["digest"]):
            layers.append({"mediaType": INTOTO, "digest": art.put_blob(client, repo, data), "size": len(data),
                           "annotations": {"in-toto.io/predicate-type": ptype}})  # fmt: skip
        config = json.dumps({"architecture": "unknown", "os": "unknown", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": [x["digest"] for x in layers]}},
                            sort_keys=True, separators=(",", ":")).encode()  # fmt: skip
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                               "config": {"mediaType": OCI_CONFIG, "digest": art.put_blob(client, repo, config),
                                          "size": len(config)}, "layers": layers},
                              sort_keys=True, separators=(",", ":")).encode()  # fmt: skip
        md = art.sha256(manifest)
        client.put_manifest(repo, md, manifest, OCI_MANIFEST)
        keep.append({"mediaType": OCI_MANIFEST, "digest": md, "size": len(manifest),
                     "annotations": {"vnd.docker.reference.digest": image["digest"],
                                     "vnd.docker.reference.type": "attestation-manifest"},
                     "platform": {"architecture": "unknown", "os": "unknown"}})  # fmt: skip
    doc["manifests"] = keep
    doc.setdefault("mediaType", OCI_INDEX)
    new = json.dumps(doc, separators=(",", ":")).encode()
    put = client.put_manifest(repo, tag, new, OCI_INDEX) or art.sha256(new)
    return str(put)


def _carries(client: RegistryClient, repo: str, m: dict[str, Any], types: tuple[str, ...]) -> bool:
    got = client.get_manifest(repo, m.get("digest", ""))
    if got is None:
        return False
    try:
        layers = json.loads(got[1]).get("layers") or []
    except (ValueError, AttributeError):
        return False
    return any(isinstance(x, dict) and (x.get("annotations") or {}).get("in-toto.io/predicate-type") in types
               for x in layers)  # fmt: skip


# --- reading attestations back (verify, package) ------------------------------------------


def attestations(client: RegistryClient, repo: str, digest: str) -> dict[str, list[str]]:
    """predicate type -> the attestation manifests carrying it, for the images of an index (``attested``)."""
    return {pt: [m for m, _ in found] for pt, found in attested(client, repo, digest).items()}


def attested(client: RegistryClient, repo: str, digest: str) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """predicate type -> (attestation manifest, in-toto statement) for the images of an index.

    An attestation counts only when it is about an image of this very index: its manifest's
    ``vnd.docker.reference.digest`` names an image manifest listed beside it, and the in-toto
    statement it carries (read, checked against its digest, bounded) has that predicate type, a
    predicate, and that manifest among its subjects. An annotation alone proves nothing: anyone
    can write one over an empty layer, or copy another image's attestations into an index.
    """
    got = client.get_manifest(repo, digest)
    out: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    if got is None:
        return out
    try:
        doc = json.loads(got[1])
    except ValueError:
        return out
    listed = doc.get("manifests") if isinstance(doc, dict) else None
    entries = (
        [m for m in listed if isinstance(m, dict) and is_digest(m.get("digest"))] if isinstance(listed, list) else []
    )
    kinds: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for m in entries:
        ann = m.get("annotations")
        kinds.append((m, ann if isinstance(ann, dict) else {}))
    images = {m["digest"] for m, ann in kinds if ann.get("vnd.docker.reference.type") != "attestation-manifest"}
    for m, ann in kinds:
        target = ann.get("vnd.docker.reference.digest")
        if ann.get("vnd.docker.reference.type") != "attestation-manifest" or not isinstance(target, str):
            continue
        if target not in images:
            continue
        att = client.get_manifest(repo, m["digest"])
        if att is None:
            continue
        try:
            layers = json.loads(att[1]).get("layers") or []
        except (ValueError, AttributeError):
            continue
        for layer in layers if isinstance(layers, list) else []:
            la = layer.get("annotations") if isinstance(layer, dict) else None
            pt = la.get("in-toto.io/predicate-type") if isinstance(la, dict) else None
            if not isinstance(pt, str) or not is_digest(layer.get("digest")):
                continue
            size = layer.get("size")
            if not isinstance(size, int) or not 0 < size <= MAX_STATEMENT:
                continue
            try:
                blob = client.get_blob(repo, layer["digest"], limit=MAX_STATEMENT)
                statement = json_loads(blob, error=RegistryError, file=f"{repo}@{layer['digest'][:19]}")
            except (ValueError, RegistryError):
                continue
            if _about(statement, pt, target):
                out.setdefault(pt, []).append((m["digest"], statement))
    return out


MAX_STATEMENT = 64 * 2**20


def _about(statement: Any, predicate_type: str, manifest: str) -> bool:
    """An in-toto statement of this predicate type whose subjects include this manifest."""
    if not isinstance(statement, dict) or statement.get("predicateType") != predicate_type:
        return False
    if not isinstance(statement.get("predicate"), dict) or not statement["predicate"]:
        return False
    subjects = statement.get("subject")
    return isinstance(subjects, list) and any(
        isinstance(s, dict) and isinstance(s.get("digest"), dict) and f"sha256:{s['digest'].get('sha256')}" == manifest
        for s in subjects
    )
