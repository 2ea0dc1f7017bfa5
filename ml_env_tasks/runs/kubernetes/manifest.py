"""The ConfigMaps and the Job of a run, as Kubernetes objects, and YAML that a cluster reads the same way."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Iterable
from typing import Any

from ...engine.resources import Resources
from ...errors import UsageError
from ...safe.grammar import ENV_NAME, INPUT_NAME, matches, printable
from ..runner import CODE_DIR, INPUTS_DIR, OUTPUT_DIR, WORKDIR_OUTPUTS
from .model import (
    _DNS_LABEL,
    _GPU_COUNT,
    _LABEL_VALUE,
    ARCHIVE_DIR,
    ARCHIVE_KEY,
    INIT_SCRIPT,
    LABEL_CODE,
    LABEL_HASH,
    LABEL_RUN,
    OUTPUT_ROOT,
    KubeJob,
    archive_parts,
    dns_label,
    literal,
    secret_ref,
)


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
    env: list[dict[str, Any]] = [{"name": k, "value": literal(v)} for k, v in values.items()]
    for n in job.secret_names:
        secret, key = secret_ref(n)
        env.append({"name": n, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return env


def names(job: KubeJob) -> tuple[str, list[str]]:
    """(Job name, ConfigMap names): the Job's from the run id, the ConfigMaps' from the archive
    (its digest, then the part's number)."""
    digest = hashlib.sha256(job.archive).hexdigest()
    return dns_label(job.run_id), [f"ml-env-code-{digest[:40]}-{i}" for i in range(len(archive_parts(job.archive)))]


def manifests(job: KubeJob) -> list[dict[str, Any]]:
    """The ConfigMaps with the code, then the Job, as dicts in the order ``kubectl apply`` needs them."""
    job_name, cm_names = names(job)
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
    # the outputs volume (the claim, or an emptyDir gone with the pod): the init container makes
    # the run's folder in it; the script sees that folder at /mnt/outputs and, as in a local run
    # and on Azure ML, as ./outputs in its working folder (the code has no outputs/ of its own)
    root_mount: dict[str, Any] = {"name": "outputs", "mountPath": OUTPUT_ROOT}
    run_path = job.run_id
    if job.output is not None and job.output.sub_path:
        root_mount["subPath"] = job.output.sub_path
        run_path = f"{job.output.sub_path}/{job.run_id}"
    init_mounts: list[dict[str, Any]] = [
        {"name": "code-archive", "mountPath": ARCHIVE_DIR, "readOnly": True},
        code_mount,
        root_mount,
    ]
    archive = {"name": "code-archive", "projected": {"sources": [{"configMap": {"name": n}} for n in cm_names]}}
    volumes: list[dict[str, Any]] = [archive, {"name": "code", "emptyDir": {}}]
    if job.output is not None:
        volumes.append({"name": "outputs", "persistentVolumeClaim": {"claimName": job.output.claim}})
    else:
        volumes.append({"name": "outputs", "emptyDir": {}})
    mounts: list[dict[str, Any]] = [
        code_mount,
        {"name": "outputs", "mountPath": OUTPUT_DIR, "subPath": run_path},
        {"name": "outputs", "mountPath": WORKDIR_OUTPUTS, "subPath": run_path},
    ]
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
    parts = archive_parts(job.archive)
    init_command = [job.python, "-c", INIT_SCRIPT, digest, f"{OUTPUT_ROOT}/{job.run_id}", ARCHIVE_DIR,
                    str(len(parts)), CODE_DIR, *job.output_names]  # fmt: skip
    init = {
        "name": "code",
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [literal(x) for x in init_command],
        "volumeMounts": init_mounts,
        "securityContext": container_sc,
        **({"resources": r} if (r := _resources(job.resources, gpus=False)) else {}),
    }
    train = {
        "name": "train",
        "image": job.image,
        "imagePullPolicy": "IfNotPresent",
        "args": [literal(x) for x in job.command],
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
    code_labels = {**labels, LABEL_CODE: digest[:40]}
    configmaps = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": cm_name,
                **meta,
                "labels": code_labels,
                "annotations": {"ml-env/code-archive-sha256": digest, "ml-env/code-part": f"{i + 1}/{len(parts)}"},
            },
            "immutable": True,
            "binaryData": {f"{ARCHIVE_KEY}.{i:03d}": base64.b64encode(part).decode("ascii")},
        }
        for i, (cm_name, part) in enumerate(zip(cm_names, parts, strict=True))
    ]
    job_doc = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, **meta, "annotations": annotations},
        "spec": spec,
    }
    return [*configmaps, job_doc]


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
