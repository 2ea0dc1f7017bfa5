"""A training run as a Kubernetes ``batch/v1`` Job, written out (``train --runner kubernetes --emit``).

Nothing runs here: no cluster is contacted. The environment is built or reused in a registry
(the cluster pulls it, pinned by digest), the source is snapshotted with the same rules as a
local run (an ``outputs/`` folder left out), the arguments' ``${{inputs.NAME}}`` and
``${{outputs.NAME}}`` are resolved (or refused) by ``runs.placeholders`` as for a local run, and
one YAML file is written atomically: the snapshot as a gzipped tar cut into ConfigMaps of 180 KiB
(content-addressed: their names carry the archive's digest) and the Job.

The Job's pod:

- an init container ``code`` runs the environment image's own python (no other image, so no
  Docker Hub): it joins the archive's parts (one projected volume of all the ConfigMaps), checks
  its sha256, unpacks it into an ``emptyDir`` at ``/mnt/code`` and makes the run's folder in the
  outputs volume, with the named outputs' folders in it;
- the container ``train`` runs ``python SCRIPT ARGS...`` as a list (``args``, no shell; the
  image's entrypoint stays, as in a local run) in ``/mnt/code`` with the variables a local run
  gets (``ML_ENV_RUN_ID``, ``ML_ENV_OUTPUT_DIR``, ``ML_ENV_INPUT_<NAME>``, ``HOME=/tmp``); every
  ``$`` in its arguments and variables is written ``$$``, so Kubernetes' own ``$(VAR)``
  expansion leaves them as given;
- inputs are read-only PVC mounts (``--input NAME=pvc:CLAIM[/SUBPATH]``): a local path is
  refused, a cluster cannot see this machine's files; outputs go to ``--output-pvc
  CLAIM[/SUBPATH]``, else to an ``emptyDir`` that is gone with the pod: either way in a folder
  named after the run id, mounted at ``/mnt/outputs`` and at ``./outputs`` (``/mnt/code/outputs``),
  as in a local run;
- ``--secret NAME`` becomes a ``secretKeyRef`` to key ``NAME`` of the Secret named NAME in
  lower case with ``_`` as ``-`` (``API_TOKEN`` → Secret ``api-token``, key ``API_TOKEN``): the
  value is never read here, so it cannot end up in the file;
- it runs as a non-root uid (1000:1000, or ``--user UID:GID``; ``--user 0`` is the only way to
  root, and then ``runAsNonRoot`` is false), no privilege escalation, all capabilities dropped,
  the runtime's default seccomp profile, no service account token.

Only ConfigMaps deliver code. Each part stays small enough for client-side ``kubectl apply``
(which copies the whole object into a 256 KiB annotation); a compressed snapshot over 8 MiB is
refused with its size and the biggest files.
"""

from __future__ import annotations

from .emit import emit_job
from .manifest import check, manifests, names, to_yaml
from .model import (
    ANNOTATIONS_LIMIT,
    ARCHIVE_KEY,
    CODE_LIMIT,
    CONFIGMAP_LIMIT,
    INIT_SCRIPT,
    PART_BYTES,
    Emitted,
    KubeJob,
    KubeOptions,
    PvcRef,
    archive_parts,
    code_archive,
    dns_label,
    literal,
    new_run_id,
    parse_pvc,
    parse_user,
    secret_ref,
)

__all__ = [
    "ANNOTATIONS_LIMIT",
    "ARCHIVE_KEY",
    "CODE_LIMIT",
    "INIT_SCRIPT",
    "PART_BYTES",
    "archive_parts",
    "CONFIGMAP_LIMIT",
    "Emitted",
    "KubeJob",
    "KubeOptions",
    "PvcRef",
    "check",
    "code_archive",
    "dns_label",
    "emit_job",
    "literal",
    "manifests",
    "names",
    "new_run_id",
    "parse_pvc",
    "parse_user",
    "secret_ref",
    "to_yaml",
]
