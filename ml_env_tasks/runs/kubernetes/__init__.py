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

from .emit import emit_job
from .manifest import check, manifests, names, to_yaml
from .model import (
    ARCHIVE_KEY,
    CONFIGMAP_LIMIT,
    INIT_SCRIPT,
    Emitted,
    KubeJob,
    KubeOptions,
    PvcRef,
    archive_limit,
    code_archive,
    dns_label,
    new_run_id,
    parse_pvc,
    parse_user,
    secret_ref,
)

__all__ = [
    "ARCHIVE_KEY",
    "INIT_SCRIPT",
    "archive_limit",
    "CONFIGMAP_LIMIT",
    "Emitted",
    "KubeJob",
    "KubeOptions",
    "PvcRef",
    "check",
    "code_archive",
    "dns_label",
    "emit_job",
    "manifests",
    "names",
    "new_run_id",
    "parse_pvc",
    "parse_user",
    "secret_ref",
    "to_yaml",
]
