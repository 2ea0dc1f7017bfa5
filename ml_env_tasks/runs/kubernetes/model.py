"""What a Kubernetes run is made of: its options, the Job to write, references to claims and
Secrets, the code archive and its parts; each value checked before it reaches a manifest."""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...engine.resources import Resources
from ...errors import UsageError
from ...safe.grammar import ENV_NAME, has_control, matches, printable
from ..snapshot import Snapshot, tar_chunks

# The code travels as a gzipped tar cut into parts, one ConfigMap each. The API server takes up to
# 1 MiB of data in a ConfigMap, but `kubectl apply` (client side) also copies the whole object, as
# JSON with the data base64-encoded, into its `last-applied-configuration` annotation, and all of
# an object's annotations hold 256 KiB: a part of PART_BYTES (240 KiB base64) leaves room for the
# metadata, so the file applies with plain `kubectl apply`, `--server-side` or `kubectl create`.
CONFIGMAP_LIMIT = 2**20  # what the API server accepts as one ConfigMap's data
ANNOTATIONS_LIMIT = 2**18  # what it accepts as one object's annotations, kubectl's copy included
PART_BYTES = 180 * 1024
CODE_LIMIT = 8 * 2**20  # the compressed code a Job carries at most: 46 ConfigMaps
ARCHIVE_KEY = "code.tar.gz"  # the parts' keys: code.tar.gz.000, code.tar.gz.001, ...
ARCHIVE_DIR = "/mnt/ml-env-code-archive"
OUTPUT_ROOT = "/mnt/ml-env-output-root"
DEFAULT_USER = (1000, 1000)
DEFAULT_TTL = 7 * 86400
LABEL_RUN = "ml-env.run-id"
LABEL_HASH = "ml-env.env-hash"
LABEL_CODE = "ml-env.code"  # on the ConfigMaps: the archive's digest (40 hex digits), one per code

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", re.ASCII)
_SUBPATH_PART = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_GPU_COUNT = re.compile(r"[0-9]{1,3}", re.ASCII)

# Run by the init container with the environment image's python (standard library only):
# argv[1] the archive's sha256, argv[2] the run's output folder, argv[3] the folder of the
# archive's parts, argv[4] how many, argv[5] where to unpack, argv[6:] the named outputs
# (${{outputs.NAME}}) to make in the output folder before the script starts.
INIT_SCRIPT = """\
import hashlib, io, os, sys, tarfile
want, out, parts, count, code = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
data = b"".join(open(os.path.join(parts, "code.tar.gz.%03d" % i), "rb").read() for i in range(count))
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit("ml-env: the code archive is not the one the Job was written for: sha256 %s, expected %s" % (got, want))
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
    tar.extractall(code, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
for name in [""] + sys.argv[6:]:
    os.makedirs(os.path.join(out, name), exist_ok=True)
print("ml-env: code unpacked (%d bytes in %d parts, sha256 %s)" % (len(data), count, got[:16]))
"""


@dataclass(frozen=True)
class PvcRef:
    claim: str
    sub_path: str = ""  # a relative path inside the claim, "" for its root

    def __str__(self) -> str:
        return f"pvc:{self.claim}" + (f"/{self.sub_path}" if self.sub_path else "")


@dataclass(frozen=True)
class KubeOptions:
    """What a Job needs beyond a local run's options."""

    emit: Path
    inputs: dict[str, str] = field(default_factory=dict)  # NAME -> pvc:CLAIM[/SUBPATH]
    output_pvc: str | None = None  # CLAIM[/SUBPATH]
    namespace: str | None = None
    backoff_limit: int = 0
    ttl_after_finished: int = DEFAULT_TTL


@dataclass(frozen=True)
class KubeJob:
    """Everything the manifests are made of, already checked."""

    run_id: str
    image: str  # repository@sha256:...
    command: list[str]  # as run: placeholders replaced
    archive: bytes  # the snapshot as a gzipped tar
    snapshot_hash: str
    env_hash: str | None = None
    inputs: dict[str, PvcRef] = field(default_factory=dict)
    output: PvcRef | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    secret_names: tuple[str, ...] = ()
    resources: Resources = field(default_factory=Resources)
    timeout: float | None = None
    user: tuple[int, int] = DEFAULT_USER
    namespace: str | None = None
    backoff_limit: int = 0
    ttl_after_finished: int = DEFAULT_TTL
    python: str = "python3"  # the image's interpreter, for the init container
    output_names: tuple[str, ...] = ()  # ${{outputs.NAME}} in the arguments: folders made first


@dataclass(frozen=True)
class Emitted:
    run_id: str
    job: str
    configmaps: list[str]
    file: Path
    image: str
    archive_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "file": str(self.file), "runner": "kubernetes"}


# --- names ---------------------------------------------------------------------------------


def dns_label(text: str, max_len: int = 63) -> str:
    """``text`` as an RFC 1123 label: lower case, anything else a ``-``, at most ``max_len``
    characters; when it must be cut, the end (the unique part of a run id) is kept."""
    s = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")
    if len(s) > max_len:
        s = s[len(s) - max_len :].strip("-")
    if not s:
        raise UsageError(f"{printable(text, 60)!r} has nothing a Kubernetes name can be made of")
    return s


def literal(text: str) -> str:
    """``text`` as Kubernetes passes it on: it expands ``$(VAR)`` in a container's command, args
    and env values and turns ``$$`` into ``$``; every ``$`` doubled, it is taken as written."""
    return text.replace("$", "$$")


def secret_ref(name: str) -> tuple[str, str]:
    """``--secret NAME`` → (Secret name, key): the name in lower case with ``_`` as ``-``, key NAME."""
    if not matches(ENV_NAME, name):
        raise UsageError(f"secret name {printable(name, 60)!r} is not an environment variable name")
    secret = name.lower().replace("_", "-").strip("-")
    if not secret or len(secret) > 253 or not _DNS_SUBDOMAIN.fullmatch(secret):
        raise UsageError(
            f"secret {printable(name, 60)}: {secret!r} is not a Kubernetes Secret name",
            hint="--secret NAME reads key NAME of the Secret named NAME in lower case, '_' as '-'",
        )
    return secret, name


def _check_sub_path(sub: str, what: str) -> str:
    parts = [p for p in sub.split("/") if p]
    if sub.startswith("/") or any(p in (".", "..") or not _SUBPATH_PART.fullmatch(p) for p in parts):
        raise UsageError(
            f"{what}: the sub-path {printable(sub, 80)!r} must be a relative path (letters, digits, '_', '.', '-'; no '..')"
        )
    return "/".join(parts)


def parse_pvc(text: str, what: str, *, prefix: bool = True) -> PvcRef:
    """``pvc:CLAIM[/SUBPATH]`` (``CLAIM[/SUBPATH]`` when ``prefix`` is False)."""
    if has_control(text):
        raise UsageError(f"{what}: the value contains control characters")
    if prefix:
        if not text.startswith("pvc:"):
            raise UsageError(
                f"{what}: {printable(text, 80)!r} is not on the cluster: a Job cannot read this machine's files",
                hint="give data the cluster has, as pvc:CLAIM[/SUBPATH]",
            )
        text = text[4:]
    claim, _, sub = text.partition("/")
    if len(claim) > 253 or not _DNS_SUBDOMAIN.fullmatch(claim):
        raise UsageError(
            f"{what}: {printable(claim, 80)!r} is not a PersistentVolumeClaim name (lower case, digits, '-', '.')"
        )
    return PvcRef(claim, _check_sub_path(sub, what))


def parse_user(user: str | None) -> tuple[int, int]:
    if user is None:
        return DEFAULT_USER
    m = re.fullmatch(r"([0-9]{1,9})(?::([0-9]{1,9}))?", user, re.ASCII)
    if not m:
        raise UsageError(f"--user {printable(user, 40)!r}: a Job needs a numeric UID or UID:GID")
    return int(m.group(1)), int(m.group(2) or m.group(1))


def new_run_id(experiment: str) -> str:
    """A run id that is also a valid label value: the experiment cut to 30 characters."""
    exp = re.sub(r"[^A-Za-z0-9_.-]", "-", experiment)[:30].strip("-_.") or "run"
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{exp}_{stamp}_{os.urandom(4).hex()}"


# --- the code archive ----------------------------------------------------------------------


def code_archive(snap: Snapshot, *, limit: int = CODE_LIMIT) -> bytes:
    """The snapshot as a gzipped tar (the same stream a local run gets, reproducible: no
    timestamps), refused as soon as it outgrows what a Job carries."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper, mtime 0
    out = bytearray()
    for chunk in tar_chunks(snap):
        out += z.compress(chunk)
        if len(out) > limit:
            break
    else:
        out += z.flush()
    if len(out) > limit:
        biggest = ", ".join(
            f"{e.rel} ({e.size / 2**20:.1f} MiB)" for e in sorted(snap.files, key=lambda e: -e.size)[:3]
        )
        raise UsageError(
            f"the source snapshot ({len(snap.files)} files, {snap.size / 2**20:.1f} MiB) is too big for a Job: "
            f"compressed it is over {limit // 1024} KiB (the code travels in ConfigMaps of "
            f"{PART_BYTES // 1024} KiB); biggest files: {biggest}",
            hint="leave data out of --source (.amlignore) and pass it as --input NAME=pvc:CLAIM",
        )
    return bytes(out)


def archive_parts(archive: bytes) -> list[bytes]:
    """The archive cut into the parts the ConfigMaps hold, in order."""
    return [archive[i : i + PART_BYTES] for i in range(0, len(archive), PART_BYTES)] or [b""]


# --- the manifests -------------------------------------------------------------------------
