"""A training run as a Kubernetes ``batch/v1`` Job, written out (``train --runner kubernetes --emit``).

Nothing runs here: no cluster is contacted. The environment is built or reused in a registry
(the cluster pulls it, pinned by digest), the source is snapshotted with the same rules as a
local run, and one YAML file is written atomically: a ConfigMap holding the snapshot as a
gzipped tar (content-addressed: its name carries the archive's digest) and the Job.

The Job's pod:

- an init container ``code`` runs the environment image's own python (no other image, so no
  Docker Hub): it checks the archive's sha256, unpacks it into an ``emptyDir`` at ``/mnt/code``
  and, with ``--output-pvc``, creates the run's own folder on the claim;
- the container ``train`` runs ``python SCRIPT ARGS...`` as a list (``args``, no shell; the
  image's entrypoint stays, as in a local run) in ``/mnt/code`` with the variables a local run
  gets (``ML_ENV_RUN_ID``, ``ML_ENV_OUTPUT_DIR``, ``ML_ENV_INPUT_<NAME>``, ``HOME=/tmp``);
- inputs are read-only PVC mounts (``--input NAME=pvc:CLAIM[/SUBPATH]``): a local path is
  refused, a cluster cannot see this machine's files; outputs go to ``--output-pvc
  CLAIM[/SUBPATH]``, in a folder named after the run id, else to an ``emptyDir`` that is gone
  with the pod;
- ``--secret NAME`` becomes a ``secretKeyRef`` to key ``NAME`` of the Secret named NAME in
  lower case with ``_`` as ``-`` (``API_TOKEN`` → Secret ``api-token``, key ``API_TOKEN``): the
  value is never read here, so it cannot end up in the file;
- it runs as a non-root uid (1000:1000, or ``--user UID:GID``; ``--user 0`` is the only way to
  root, and then ``runAsNonRoot`` is false), no privilege escalation, all capabilities dropped,
  the runtime's default seccomp profile, no service account token.

Only the ConfigMap route delivers code: a ConfigMap holds at most 1 MiB, so a bigger snapshot
is refused with its size and the biggest files.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import math
import os
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..grammar import ENV_NAME, INPUT_NAME, has_control, matches, printable
from ..resources import Resources
from ..snapshot import Snapshot, tar_chunks
from .runner import CODE_DIR, INPUTS_DIR, OUTPUT_DIR

__all__ = [
    "KubeOptions",
    "KubeJob",
    "PvcRef",
    "Emitted",
    "CONFIGMAP_LIMIT",
    "dns_label",
    "secret_ref",
    "parse_pvc",
    "parse_user",
    "new_run_id",
    "code_archive",
    "manifests",
    "to_yaml",
    "emit_job",
    "check",
    "names",
]

CONFIGMAP_LIMIT = 2**20  # what the API server accepts for one ConfigMap (etcd's object limit)
_CONFIGMAP_OVERHEAD = 4096  # metadata and key names, with room to spare
ARCHIVE_KEY = "code.tar.gz"
ARCHIVE_DIR = "/mnt/ml-env-code-archive"
OUTPUT_ROOT = "/mnt/ml-env-output-root"
DEFAULT_USER = (1000, 1000)
DEFAULT_TTL = 7 * 86400
LABEL_RUN = "ml-env.run-id"
LABEL_HASH = "ml-env.env-hash"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?", re.ASCII)
_SUBPATH_PART = re.compile(r"[A-Za-z0-9_.-]+", re.ASCII)
_GPU_COUNT = re.compile(r"[0-9]{1,3}", re.ASCII)

# Run by the init container with the environment image's python: argv[1] the archive's sha256,
# argv[2] the run's output folder to create ("" for none). Standard library only.
INIT_SCRIPT = """\
import hashlib, io, os, sys, tarfile
want, out = sys.argv[1], sys.argv[2]
data = open(sys.argv[3], "rb").read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit("ml-env: the code archive is not the one the Job was written for: sha256 %s, expected %s" % (got, want))
with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
    tar.extractall(sys.argv[4], **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
if out:
    os.makedirs(out, exist_ok=True)
print("ml-env: code unpacked (%d bytes, sha256 %s)" % (len(data), got[:16]))
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
    command: list[str]
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


@dataclass(frozen=True)
class Emitted:
    run_id: str
    job: str
    configmap: str
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


def archive_limit() -> int:
    """The largest gzipped snapshot whose base64 still fits a ConfigMap."""
    return (CONFIGMAP_LIMIT - _CONFIGMAP_OVERHEAD) // 4 * 3


def code_archive(snap: Snapshot, *, limit: int | None = None) -> bytes:
    """The snapshot as a gzipped tar (the same stream a local run gets, reproducible: no
    timestamps), refused as soon as it outgrows a ConfigMap."""
    limit = archive_limit() if limit is None else limit
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip wrapper, mtime 0
    out = bytearray()
    for chunk in tar_chunks(snap):
        out += z.compress(chunk)
        if len(out) > limit:
            break
    else:
        out += z.flush()
    if len(out) > limit:
        biggest = ", ".join(f"{e.rel} ({e.size / 2**20:.1f} MB)" for e in sorted(snap.files, key=lambda e: -e.size)[:3])
        raise UsageError(
            f"the source snapshot ({len(snap.files)} files, {snap.size / 2**20:.1f} MB) does not fit a ConfigMap: "
            f"compressed it is over {limit // 1024} KiB (ConfigMaps hold 1 MiB, base64-encoded); biggest files: {biggest}",
            hint="leave data out of --source (.amlignore) and pass it as --input NAME=pvc:CLAIM",
        )
    return bytes(out)


# --- the manifests -------------------------------------------------------------------------


def _quantity_cpu(cpus: float) -> str:
    return f"{max(1, round(cpus * 1000))}m"


def _resources(r: Resources, *, gpus: bool) -> dict[str, Any]:
    limits: dict[str, str] = {}
    if r.cpus is not None:
        limits["cpu"] = _quantity_cpu(r.cpus)
    if r.memory is not None:
        limits["memory"] = str(r.memory)
    out: dict[str, Any] = {"requests": dict(limits)} if limits else {}
    if gpus and r.gpus is not None:
        limits["nvidia.com/gpu"] = r.gpus
    if limits:
        out["limits"] = limits
    return out


def _env(job: KubeJob) -> list[dict[str, Any]]:
    values = {
        **job.env_vars,
        "ML_ENV_RUN_ID": job.run_id,
        "ML_ENV_OUTPUT_DIR": OUTPUT_DIR,
        "HOME": "/tmp",
        **{f"ML_ENV_INPUT_{name.upper()}": f"{INPUTS_DIR}/{name}" for name in job.inputs},
    }
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in values.items()]
    for n in job.secret_names:
        secret, key = secret_ref(n)
        env.append({"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def names(job: KubeJob) -> tuple[str, str]:
    """(Job name, ConfigMap name): the Job's from the run id, the ConfigMap's from the archive."""
    digest = hashlib.sha256(job.archive).hexdigest()
    return dns_label(job.run_id), f"ml-env-code-{digest[:40]}"


def manifests(job: KubeJob) -> list[dict[str, Any]]:
    """The ConfigMap and the Job, as dicts in the order ``kubectl apply`` needs them."""
    job_name, cm_name = names(job)
    digest = hashlib.sha256(job.archive).hexdigest()
    labels = {LABEL_RUN: job.run_id, "app.kubernetes.io/managed-by": "ml-env"}
    if job.env_hash:
        labels[LABEL_HASH] = job.env_hash[:63]  # a label value holds 63 characters
    for v in labels.values():
        if not _LABEL_VALUE.fullmatch(v):
            raise UsageError(f"{printable(v, 80)!r} is not a valid Kubernetes label value")
    annotations = {
        "ml-env/image": job.image,
        "ml-env/source-snapshot": job.snapshot_hash,
        "ml-env/code-archive-sha256": digest,
    }
    if job.env_hash:
        annotations["ml-env/env-hash"] = job.env_hash
    meta: dict[str, Any] = {"labels": labels}
    if job.namespace:
        meta["namespace"] = job.namespace
    uid, gid = job.user
    as_root = uid == 0
    container_sc = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    code_mount = {"name": "code", "mountPath": CODE_DIR}
    out_mount: dict[str, Any] = {"name": "outputs", "mountPath": OUTPUT_DIR}
    init_mounts: list[dict[str, Any]] = [
        {"name": "code-archive", "mountPath": ARCHIVE_DIR, "readOnly": True},
        code_mount,
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "code-archive", "configMap": {"name": cm_name}},
        {"name": "code", "emptyDir": {}},
    ]
    out_dir = ""
    if job.output is not None:
        root_mount: dict[str, Any] = {"name": "outputs", "mountPath": OUTPUT_ROOT}
        if job.output.sub_path:
            root_mount["subPath"] = job.output.sub_path
        init_mounts.append(root_mount)
        out_dir = f"{OUTPUT_ROOT}/{job.run_id}"
        out_mount["subPath"] = "/".join(p for p in (job.output.sub_path, job.run_id) if p)
        volumes.append({"name": "outputs", "persistentVolumeClaim": {"claimName": job.output.claim}})
    else:
        volumes.append({"name": "outputs", "emptyDir": {}})
    mounts: list[dict[str, Any]] = [code_mount, out_mount]
    for i, (name, ref) in enumerate(job.inputs.items()):
        vol = f"input-{i}"
        m: dict[str, Any] = {"name": vol, "mountPath": f"{INPUTS_DIR}/{name}", "readOnly": True}
        if ref.sub_path:
            m["subPath"] = ref.sub_path
        mounts.append(m)
        volumes.append({"name": vol, "persistentVolumeClaim": {"claimName": ref.claim, "readOnly": True}})
    if job.resources.shm_size:
        mounts.append({"name": "shm", "mountPath": "/dev/shm"})
        volumes.append({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": str(job.resources.shm_size)}})
    init = {
        "name": "code",
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [job.python, "-c", INIT_SCRIPT, digest, out_dir, f"{ARCHIVE_DIR}/{ARCHIVE_KEY}", CODE_DIR],
        "volumeMounts": init_mounts,
        "securityContext": container_sc,
        **({"resources": r} if (r := _resources(job.resources, gpus=False)) else {}),
    }
    train = {
        "name": "train",
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "args": list(job.command),
        "workingDir": CODE_DIR,
        "env": _env(job),
        "volumeMounts": mounts,
        "securityContext": container_sc,
        **({"resources": r} if (r := _resources(job.resources, gpus=True)) else {}),
    }
    pod_sc: dict[str, Any] = {
        "runAsNonRoot": not as_root,
        "runAsUser": uid,
        "runAsGroup": gid,
        "fsGroup": gid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    spec: dict[str, Any] = {
        "backoffLimit": job.backoff_limit,
        "ttlSecondsAfterFinished": job.ttl_after_finished,
        "template": {
            "metadata": {"labels": dict(labels), "annotations": dict(annotations)},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "securityContext": pod_sc,
                "initContainers": [init],
                "containers": [train],
                "volumes": volumes,
            },
        },
    }
    if job.timeout is not None:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(job.timeout))
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": cm_name, **meta, "annotations": {"ml-env/code-archive-sha256": digest}},
        "immutable": True,
        "binaryData": {ARCHIVE_KEY: base64.b64encode(job.archive).decode("ascii")},
    }
    job_doc = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, **meta, "annotations": annotations},
        "spec": spec,
    }
    return [configmap, job_doc]


def to_yaml(docs: Iterable[dict[str, Any]]) -> str:
    """Plain YAML: no anchors or aliases (a shared mount stays written out twice), multi-line
    strings (the init script) as literal blocks."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def _str(dumper: yaml.SafeDumper, s: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(list(docs), Dumper=_Dumper, sort_keys=False, explicit_start=True, width=120)


# --- checking and emitting -----------------------------------------------------------------


def check(job: KubeJob) -> None:
    """Refuse, with one line, anything the API server would refuse or a Job could not honour."""
    for name in job.inputs:
        if not matches(INPUT_NAME, name):
            raise UsageError(f"input name {printable(name, 60)!r} must be a letter then letters, digits or _")
    upper = [n.upper() for n in job.inputs]
    if len(set(upper)) != len(upper):
        raise UsageError("two inputs differ only in case: both would be $ML_ENV_INPUT_" + upper[0])
    for k, v in job.env_vars.items():
        if not matches(ENV_NAME, k):
            raise UsageError(f"--env-var {printable(k, 60)!r} is not a variable name")
        if "\0" in v:
            raise UsageError(f"--env-var {k}: the value contains a NUL character")
    for n in job.secret_names:
        secret_ref(n)
        if n in job.env_vars:
            raise UsageError(f"{n} is both --env-var and --secret")
    g = job.resources.gpus
    if g is not None and not _GPU_COUNT.fullmatch(g):
        raise UsageError(f"--gpus {printable(g, 40)}: a Job asks for a number of GPUs (nvidia.com/gpu), e.g. --gpus 1")
    if job.timeout is not None and not 0 < job.timeout < 10**8:
        raise UsageError("--timeout must be positive (seconds)")
    if job.namespace is not None and not _DNS_LABEL.fullmatch(job.namespace):
        raise UsageError(f"--namespace {printable(job.namespace, 80)!r} is not a namespace name")
    if not 0 <= job.backoff_limit <= 1000:
        raise UsageError("--backoff-limit must be between 0 and 1000")
    if not 0 <= job.ttl_after_finished <= 10**8:
        raise UsageError("--ttl-after-finished must be a number of seconds")
    if "@sha256:" not in job.image:
        raise UsageError(f"image {printable(job.image, 120)} is not pinned by digest")
    if not _LABEL_VALUE.fullmatch(job.run_id) or len(job.run_id) > 63:
        raise UsageError(f"run id {printable(job.run_id, 80)!r} is not a valid label value")


def _pinned_in_registry(resolved: Any, insecure: bool) -> str:
    """``repository@sha256:...`` of an image the registry holds (a cluster pulls from there)."""
    from ..registry import RegistryClient, parse_ref

    ref = resolved.pinned
    try:
        r = parse_ref(ref)
    except UsageError:
        r = None
    if r is None or r.host == "docker.io" or r.host.endswith("docker.io"):
        raise UsageError(
            f"image {printable(ref, 120)} is not in a registry of yours",
            hint="a Job pulls its image: build with --registry HOST[:PORT]",
        )
    found = RegistryClient(r.host, insecure=insecure).head_manifest(r.repository, r.digest or r.tag or "latest")
    if found is None:
        raise UsageError(
            f"image {printable(ref, 120)} is not in its registry {r.host}",
            hint="a Job pulls its image: build with --registry HOST[:PORT], or push it",
        )
    if r.digest and r.digest != found.digest:
        raise UsageError(f"the registry answers {found.digest} for {printable(ref, 120)}")
    return f"{r.host}/{r.repository}@{found.digest}"


def emit_job(run: Any, kube: KubeOptions, *, info: Callable[[str], None] | None = None) -> Emitted:
    """Build or reuse the environment in its registry, snapshot the source, write the YAML.

    ``run`` is the local run's ``RunOptions`` (its ``inputs`` unused: ``kube.inputs`` are PVCs)."""
    say = info or (lambda m: print(m, flush=True))
    inputs = {name: parse_pvc(text, f"input {printable(name, 60)}") for name, text in kube.inputs.items()}
    output = parse_pvc(kube.output_pvc, "--output-pvc", prefix=False) if kube.output_pvc is not None else None
    script = Path(run.script)
    if "\0" in run.script or script.is_absolute() or ".." in script.parts:
        raise UsageError(f"--script {printable(run.script)} must be a path inside --source")
    if run.build is not None and not run.build.registry and _built_here(run.environment, run.versions):
        raise UsageError("--runner kubernetes needs --registry: the cluster pulls the environment's image from it")
    experiment = run.experiment or Path(run.script).stem
    run_id = new_run_id(experiment)
    pre = KubeJob(
        run_id=run_id, image="x@sha256:" + "0" * 64, command=[], archive=b"", snapshot_hash="", inputs=inputs,
        output=output, env_vars=dict(run.env_vars), secret_names=tuple(run.secrets), resources=run.resources,
        timeout=run.timeout, user=parse_user(run.user), namespace=kube.namespace, backoff_limit=kube.backoff_limit,
        ttl_after_finished=kube.ttl_after_finished,
    )  # fmt: skip
    check(pre)  # every user mistake before anything is built
    if kube.emit.is_dir():
        raise UsageError(f"--emit {printable(kube.emit)} is a directory: give a file name, e.g. job.yaml")
    from ..snapshot import snapshot

    snap = snapshot(run.source, max_mb=run.snapshot_max_mb, warn=lambda m: say("warning: " + m))
    if not snap.has(script.as_posix()):
        raise UsageError(
            f"script {run.script} is not in the source snapshot of {run.source}", hint="is it ignored, or misspelt?"
        )
    archive = code_archive(snap)
    from ..build import Reporter
    from ..resolve import resolve_environment

    class _Say(Reporter):
        def info(self, msg: str) -> None:
            say(msg)

        def warn(self, msg: str) -> None:
            say("warning: " + msg)

    resolved = resolve_environment(run.environment, run.build, reporter=_Say(stream_logs=False), versions=run.versions)
    image = _pinned_in_registry(resolved, bool(run.build and run.build.insecure))
    job = dataclasses.replace(
        pre,
        image=image,
        command=[resolved.python, run.script, *run.args],
        archive=archive,
        snapshot_hash=snap.hash,
        env_hash=resolved.hash,
        python=resolved.python,
        resources=run.resources.with_default_shm(resolved.shm_size),
    )
    check(job)
    docs = manifests(job)
    from ..fsutil import write_atomic

    try:
        write_atomic(kube.emit, to_yaml(docs))
    except OSError as e:
        raise UsageError(f"--emit {printable(kube.emit)}: cannot write it ({e.strerror or type(e).__name__})") from None
    job_name, cm_name = names(job)
    if output is None:
        say("warning: no --output-pvc: the run's outputs are in an emptyDir, gone with the pod")
    say(f"run {run_id}: Job {job_name} written to {kube.emit} (image {image}; not submitted)")
    return Emitted(run_id, job_name, cm_name, kube.emit, image, len(archive))


def _built_here(ref: str, versions: Path | None) -> bool:
    """An environment ml-env builds (a file, curated, a registered version), not an image reference."""
    from ..resolve import _looks_registered, is_environment_file

    return ref.startswith("curated/") or is_environment_file(ref) or bool(versions and _looks_registered(ref, versions))
