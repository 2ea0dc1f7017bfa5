"""``train --runner kubernetes --emit FILE``: resolve, snapshot, check, write the YAML atomically."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import UsageError
from ...safe.grammar import printable
from ..placeholders import expand
from ..train import check_script, without_outputs
from .manifest import check, manifests, names, to_yaml
from .model import Emitted, KubeJob, KubeOptions, code_archive, new_run_id, parse_pvc, parse_user

if TYPE_CHECKING:
    from ...build.model import BuildOptions


def _pinned_in_registry(resolved: Any, insecure: bool) -> str:
    """``repository@sha256:...`` of an image the registry holds (a cluster pulls from there)."""
    from ...registry import RegistryClient, parse_ref

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
    check_script(run.script)
    script = Path(run.script)
    if run.build is not None and not run.build.registry and _built_here(run.environment, run.versions, run.build):
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
    # ${{inputs.NAME}} and ${{outputs.NAME}}: resolved (or refused) exactly as for a local run
    args, output_names = expand(run.args, inputs, given_as="pvc:CLAIM")
    if kube.emit.is_dir():
        raise UsageError(f"--emit {printable(kube.emit)} is a directory: give a file name, e.g. job.yaml")
    if not kube.emit.absolute().parent.is_dir():  # written after the build: its folder is asked for now
        raise UsageError(f"--emit {printable(kube.emit)}: the folder {printable(kube.emit.parent)} does not exist")
    from ..snapshot import snapshot

    def warn(m: str) -> None:
        say("warning: " + m)

    # ./outputs in the pod is the run's outputs folder: an outputs/ left in the source by a local
    # run is not code, as for a local run
    snap = without_outputs(snapshot(run.source, max_mb=run.snapshot_max_mb, warn=warn), warn=warn)
    if not snap.has(script.as_posix()):
        raise UsageError(
            f"script {run.script} is not in the source snapshot of {run.source}", hint="is it ignored, or misspelt?"
        )
    archive = code_archive(snap)
    from ...build import Reporter
    from ...build.resolve import resolve_environment

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
        command=[resolved.python, run.script, *args],
        output_names=tuple(output_names),
        archive=archive,
        snapshot_hash=snap.hash,
        env_hash=resolved.hash,
        python=resolved.python,
        resources=run.resources.with_default_shm(resolved.shm_size),
    )
    check(job)
    docs = manifests(job)
    from ...safe.fsutil import write_atomic

    try:
        write_atomic(kube.emit, to_yaml(docs))
    except OSError as e:
        raise UsageError(f"--emit {printable(kube.emit)}: cannot write it ({e.strerror or type(e).__name__})") from None
    job_name, cm_names = names(job)
    if output is None:
        say("warning: no --output-pvc: the run's outputs are in an emptyDir, gone with the pod")
    say(f"run {run_id}: Job {job_name} written to {kube.emit} (image {image}; not submitted)")
    return Emitted(run_id, job_name, cm_names, kube.emit, image, len(archive))


def _built_here(ref: str, versions: Path | None, build: BuildOptions) -> bool:
    """An environment ml-env builds (a file, curated, a registered version with --rebuild or kept in
    no registry), not an image reference nor a registered version's image in its registry."""
    from ...build.resolve import _looks_registered, is_environment_file

    if ref.startswith("curated/") or is_environment_file(ref):
        return True
    if not (versions and _looks_registered(ref, versions)):
        return False
    from ...catalog.versions import Versions

    return bool(build.rebuild) or not Versions(versions).get(ref).registry
