"""Model versions: a model folder stored as a versioned OCI artifact in a registry (Azure's
``Model.register`` → ``mymodel:1``, without a workspace).

One artifact per version in ``<registry>/models/<name>`` (or ``--repository``): an OCI image
manifest with ``artifactType: application/vnd.ml-env.model.v1``, the empty config, and one
uncompressed tar layer holding the folder under ``var/azureml-models/``. That layer is therefore
also an image layer: ``ml-env package`` puts the very same blob on top of an inference image, so
a packaged image carries the registered bytes, not a copy made later.

Content-addressed: the tar is deterministic (sorted, mtime 0, owner 0:0, the snapshot rules:
symlinks only inside the folder), and each version is also tagged ``layer-<sha256>``; registering
the same bytes again answers the existing version. Versions are 1, 2, 3... (tags); a version
number taken by a concurrent registration is skipped, and the tag is verified after writing.

What the registry answers is untrusted: the artifact must be exactly that shape, annotations are
printed escaped, and a download is verified against its digest and extracted by ``safetar``
(files, folders and links that resolve inside the FINAL folder only; no stdlib filter relied
on), only below the model prefix, into a new or empty folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError, UsageError
from ..registry import artifacts as art
from ..safe.grammar import MODEL_NAME, digits, matches, printable
from ..safe.tars import Extracted, Refuse, check_links, extract
from .refs import ModelArg, ModelRef, parse_model_args, parse_model_ref

if TYPE_CHECKING:
    from ..registry import RegistryClient

__all__ = [
    "ModelVersion",
    "MODEL_PREFIX",
    "register",
    "list_versions",
    "get",
    "download",
    "parse_model_ref",
    "parse_model_args",
    "ModelRef",
    "ModelArg",
    "locate",
    "fetch",
    "check_access",
    "model_layer",
    "model_digest",
    "run_metadata",
]

ARTIFACT_TYPE = "application/vnd.ml-env.model.v1"
LAYER_TYPE = art.LAYER_TAR  # a model layer is also an image layer (``package``)
MODEL_PREFIX = "var/azureml-models"
MAX_MODEL_MB = 200_000.0
NUMBER_TRIES = 20
_A = "ml-env.model."


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    repository: str  # host/repository
    digest: str  # the artifact manifest's
    layer: str  # the tar layer's digest (the model's content address)
    size: int
    framework: str = ""
    run_id: str = ""
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    reused: bool = False  # register found these bytes already registered

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.version}"

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["ref"] = self.ref
        return d


def locate(registry: str | None, ref: ModelRef | str, repository: str | None = None) -> tuple[Any, str, str, ModelRef]:
    """(client, registry, repository, reference) of a model: the registry and repository the
    reference names, else ``registry`` and ``repository`` (``{name}``: the name), else ``models/NAME``."""
    from ..registry import RegistryClient, check_registry_host, parse_ref
    from ..registry.reference import repository_named

    ref = parse_model_ref(ref) if isinstance(ref, str) else ref
    host = ref.registry or registry
    if not host:
        raise UsageError(
            "models live in a registry: give --registry (or set registry in the config)",
            hint="or name it in the reference, HOST/REPOSITORY/NAME:VERSION",
        )
    check_registry_host(host)
    repo = ref.repository or repository_named(repository, "models/{name}", ref.name.lower())
    parse_ref(f"{host}/{repo}")  # a repository name the distribution spec accepts
    return RegistryClient(host), host, repo, ref


def model_layer(folder: Path, out: Path, *, warn: Callable[[str], None] = print, under: str = "") -> tuple[str, int]:
    """Write the folder's deterministic tar (under MODEL_PREFIX, or its subfolder ``under``: a
    named model, as ``serve --model NAME=DIR`` mounts it) to ``out``: (digest, size)."""
    with open(out, "wb") as f:
        return _layer(_model_snapshot(folder, warn), f.write, under)


def model_digest(folder: Path, *, warn: Callable[[str], None] = print, under: str = "") -> tuple[str, list[str]]:
    """The digest ``model_layer`` gives the folder (a registered version's layer, what ``package``
    puts in an image), written nowhere; and the files of the folder it leaves out (its ignore
    rules, the names no snapshot takes): a folder mounted whole shows them, the digest does not."""
    from ..runs.snapshot import folder_snapshot

    snap = _model_snapshot(folder, warn, empty=True)  # an empty folder mounted is a model too, here
    digest, _ = _layer(snap, lambda _chunk: 0, under)
    listed = {e.rel for e in folder_snapshot(folder, warn=lambda _m: None).files}
    return digest, sorted(listed - {e.rel for e in snap.files})


def _model_snapshot(folder: Path, warn: Callable[[str], None], *, empty: bool = False) -> Any:
    from ..runs.snapshot import snapshot

    snap = snapshot(folder, warn_mb=MAX_MODEL_MB, max_mb=MAX_MODEL_MB, warn=warn)
    if not snap.files and not empty:
        raise UsageError(f"model folder {folder} has no files")
    return snap


def _layer(snap: Any, write: Callable[[bytes], Any], under: str = "") -> tuple[str, int]:
    from ..runs.snapshot import tar_chunks

    h = hashlib.sha256()
    size = 0
    for chunk in tar_chunks(snap, f"{MODEL_PREFIX}/{under}" if under else MODEL_PREFIX):
        h.update(chunk)
        size += len(chunk)
        write(chunk)
    return "sha256:" + h.hexdigest(), size


def run_metadata(folder: Path) -> dict[str, Any]:
    """The run that produced a model folder under ``runs/<id>/outputs/``: its id, metrics and
    environment (empty when the folder is not a run's output or the record does not read)."""
    from ..errors import MlEnvError
    from ..runs.record import RunRecord

    real = folder.resolve()
    for parent in real.parents:
        if parent.name == "outputs" and (parent.parent / "run.json").is_file():
            try:
                rec = RunRecord.read(parent.parent / "run.json")
            except MlEnvError:
                return {}
            return {
                "run_id": rec.run_id,
                "metrics": {k: v for k, v in (rec.metrics or {}).items() if isinstance(v, (int, float, str))},
                "environment": rec.environment.name or "",
            }
    return {}


def register(
    registry: str,
    name: str,
    folder: Path,
    *,
    repository: str | None = None,
    framework: str = "",
    run_id: str = "",
    metrics: dict[str, Any] | None = None,
    info: Callable[[str], None] = lambda _m: None,
) -> ModelVersion:
    """Store ``folder`` as the next version of ``name`` (or answer the version that holds these bytes)."""
    if parse_model_ref(name).version is not None:
        raise UsageError("model register takes a NAME; versions are numbered by the registry (1, 2, ...)")
    if framework and (not matches(MODEL_NAME, framework)):
        raise UsageError(f"--framework {printable(framework, 40)!r}: letters, digits, '_', '.', '-'")
    if not folder.is_dir():
        raise UsageError(f"model folder {folder} not found")
    client, registry, repo, where = locate(registry, name, repository)
    name = where.name
    meta = run_metadata(folder)
    run_id = run_id or meta.get("run_id", "")
    metrics = metrics if metrics is not None else meta.get("metrics", {})
    with tempfile.TemporaryDirectory(prefix="ml-env-model-") as tmp:
        layer_path = Path(tmp) / "layer.tar"
        layer, size = model_layer(folder, layer_path, warn=lambda m: info(f"warning: {m}"))
        content_tag = f"layer-{layer.split(':', 1)[1]}"
        found = client.head_manifest(repo, content_tag)
        if found is not None:
            existing = _read(client, registry, repo, found.digest)
            info(f"{name}:{existing.version} already holds these bytes ({layer[:19]}): reused")
            return ModelVersion(**{**existing.__dict__, "reused": True})
        art.put_empty_config(client, repo)
        if not client.blob_exists(repo, layer):
            client.upload_stream(repo, layer, art.file_chunks(layer_path), size)
    number = max([int(t) for t in client.tags(repo) if digits(t) and len(t) < 10], default=0) + 1
    created = datetime.now(UTC).isoformat(timespec="seconds")
    for _ in range(NUMBER_TRIES):
        annotations = {
            f"{_A}name": name,
            f"{_A}version": str(number),
            f"{_A}framework": framework,
            f"{_A}run_id": run_id,
            f"{_A}metrics": json.dumps(metrics or {}, sort_keys=True),
            "org.opencontainers.image.created": created,
        }
        body = _manifest(layer, size, annotations)
        if client.head_manifest(repo, str(number)) is not None:
            number += 1  # taken by a concurrent registration
            continue
        digest = client.put_manifest(repo, str(number), body, art.OCI_MANIFEST) or art.sha256(body)
        after = client.head_manifest(repo, str(number))
        if after is None or after.digest != digest:
            number += 1  # lost the race for this number: the other writer keeps it
            continue
        client.put_manifest(repo, content_tag, body, art.OCI_MANIFEST)
        info(f"registered {name}:{number} ({size / 2**20:.1f} MiB) in {registry}/{repo}")
        return _version(registry, repo, digest, annotations, layer, size)
    raise RegistryError(
        f"could not claim a version number for {name} in {registry}/{repo} (too many concurrent writers)"
    )


def _manifest(layer: str, size: int, annotations: dict[str, str]) -> bytes:
    return art.manifest(
        ARTIFACT_TYPE, [{"mediaType": LAYER_TYPE, "digest": layer, "size": size}], annotations=annotations
    )


def _version(registry: str, repo: str, digest: str, ann: dict[str, Any], layer: str, size: int) -> ModelVersion:
    try:
        metrics = json.loads(ann.get(f"{_A}metrics") or "{}")
    except ValueError:
        metrics = {}
    version = str(ann.get(f"{_A}version", ""))
    return ModelVersion(
        name=printable(ann.get(f"{_A}name", ""), 63),
        version=int(version) if digits(version) and len(version) < 10 else 0,
        repository=f"{registry}/{repo}",
        digest=digest,
        layer=layer,
        size=size,
        framework=printable(ann.get(f"{_A}framework", ""), 63),
        run_id=printable(ann.get(f"{_A}run_id", ""), 200),
        created=printable(ann.get("org.opencontainers.image.created", ""), 40),
        metrics=metrics if isinstance(metrics, dict) else {},
    )


def _read(client: RegistryClient, registry: str, repo: str, reference: str) -> ModelVersion:
    got = client.get_manifest(repo, reference)
    if got is None:
        raise UsageError(f"model {registry}/{repo}:{printable(reference, 80)} not found")
    info, body = got
    doc = art.single_layer(body, LAYER_TYPE, 2**50, artifact_type=ARTIFACT_TYPE)
    if doc is None:
        raise RegistryError(f"{registry}/{repo}@{info.digest[:19]} is not an ml-env model artifact")
    layers = doc["layers"]
    got_ann = doc.get("annotations")
    ann: dict[str, Any] = got_ann if isinstance(got_ann, dict) else {}
    return _version(registry, repo, info.digest, ann, layers[0]["digest"], layers[0]["size"])


def get(registry: str | None, ref: ModelRef | str, *, repository: str | None = None) -> ModelVersion:
    """One version (``NAME:V``; no version: the latest) of any reference the grammar takes."""
    client, registry, repo, where = locate(registry, ref, repository)
    version = where.version
    if version is None:
        numbers = sorted(int(t) for t in client.tags(repo) if digits(t) and len(t) < 10)
        if not numbers:
            raise UsageError(f"model {where.name} has no versions in {registry}/{repo}")
        version = numbers[-1]
    return _read(client, registry, repo, str(version))


def list_versions(registry: str | None, name: str, *, repository: str | None = None) -> list[ModelVersion]:
    if parse_model_ref(name).version is not None:
        raise UsageError("model list takes a NAME (or REPOSITORY/NAME): it lists every version")
    client, registry, repo, _ = locate(registry, name, repository)
    try:
        tags = client.tags(repo)
    except RegistryError:
        tags = []
    numbers = sorted(int(t) for t in tags if digits(t) and len(t) < 10)
    return [_read(client, registry, repo, str(n)) for n in numbers]


def download(
    registry: str | None, ref: ModelRef | str, dest: Path, *, repository: str | None = None, force: bool = False
) -> ModelVersion:
    """The version's files into ``dest`` (new or empty, unless ``force``), verified and contained."""
    _check_destination(dest, force)
    client, registry, repo, where = locate(registry, ref, repository)
    mv = get(registry, where, repository=repository)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        tmp_dir = tempfile.TemporaryDirectory(prefix="ml-env-model-", dir=dest.parent)
    except OSError as e:
        raise UsageError(f"{dest}: cannot make the folder ({e.strerror or type(e).__name__})") from None
    with tmp_dir as tmp:
        blob = Path(tmp) / "layer.tar"
        with open(blob, "wb") as f:
            for chunk in client.blob_chunks(repo, mv.layer):  # hashed as it passes; a mismatch raises
                f.write(chunk)
        staging = Path(tmp) / "files"
        staging.mkdir()
        what = f"{registry}/{repo}:{mv.version}"
        # the staging folder holds the model's own tree (the prefix taken off): what resolves
        # inside it resolves inside dest once moved, and is checked again there after the move
        got = _extract(blob, staging, what)
        for item in sorted(staging.iterdir()):
            target = dest / item.name
            if target.exists() or target.is_symlink():
                if not force:
                    raise UsageError(f"{target} exists", hint="--force replaces it")
                _remove(target)
            os.replace(item, target)
        check_links(dest, got.links, _refusal(what))
    return mv


def _check_destination(dest: Path, force: bool) -> None:
    """``dest`` is a new or empty folder (or, with ``force``, a folder), under folders: one clear
    error before anything is fetched, never an OSError."""
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or (any(dest.iterdir()) and not force))):
        raise UsageError(f"{dest} must be a new or empty folder", hint="--force writes into a folder with files")
    for parent in dest.absolute().parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UsageError(f"{dest}: {parent} is not a folder", hint="download into a folder path")
            break


def _refusal(what: str) -> Refuse:
    def refuse(name: str | None, why: str) -> RegistryError:
        if name is None:
            return RegistryError(f"model {what}: its layer {why}")
        return RegistryError(f"model {what}: its layer holds {printable(name, 80)!r}: {why}; refused")

    return refuse


def _extract(blob: Path, into: Path, what: str) -> Extracted:
    """The layer's files under MODEL_PREFIX into ``into`` (the prefix taken off), by the one
    extraction for untrusted tars (``safetar``): files, folders and links inside only."""
    prefix = MODEL_PREFIX + "/"
    refuse = _refusal(what)

    def under_prefix(name: str) -> str | None:
        name = name.removeprefix("./")
        if name.rstrip("/") in ("var", "azureml-models", MODEL_PREFIX):
            return None
        if not name.startswith(prefix):
            raise refuse(name, "outside the model")
        return name[len(prefix) :]

    try:
        with tarfile.open(blob, mode="r:") as tar:
            return extract(tar, into, name=under_prefix, refuse=refuse, max_bytes=2**50, max_members=10_000_000)
    except tarfile.TarError as e:
        raise refuse(None, f"is not a valid tar ({printable(str(e), 120)})") from None


def _remove(p: Path) -> None:
    import shutil

    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink()


def fetch(
    registry: str | None, ref: ModelRef, *, repository: str | None = None, info: Callable[[str], None] = lambda _m: None
) -> Path:
    """A registered version as a folder to mount (``serve --model NAME:VERSION``): downloaded once
    into the user cache under its layer's digest, verified; read-only from then on."""
    from ..safe.digests import cache_dir

    mv = get(registry, ref, repository=repository)
    root = cache_dir() / "models"
    folder = root / mv.layer.split(":", 1)[1]
    if folder.is_dir():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=root) as tmp:
        download(registry, ref, Path(tmp) / "model", repository=repository)
        try:
            os.replace(Path(tmp) / "model", folder)
        except OSError:
            if not folder.is_dir():  # a concurrent fetch of the same bytes won the rename
                raise
    info(f"model {mv.name}:{mv.version} ({mv.layer[:19]}) fetched into {folder}")
    return folder


def parse_register_model(
    value: str | None, registry: str | None, where: str = "--register-model"
) -> tuple[str, str] | None:
    """``NAME=outputs/PATH`` (a folder of a run's outputs to register after the run), checked
    before the run starts: (name, path inside the outputs), or None when not asked."""
    if not value:
        return None
    name, sep, rel = value.partition("=")
    if not sep:
        raise UsageError(f"{where} NAME=outputs/PATH")
    rel = rel.removeprefix("./").removeprefix("outputs/").removeprefix("outputs") or "."
    if parse_model_ref(name, what=where).version is not None:
        raise UsageError(f"{where} takes a NAME; the registry numbers the versions")
    if not registry:
        raise UsageError(f"{where} needs a registry: models are kept in one")
    if rel.startswith("/") or ".." in Path(rel).parts:
        raise UsageError(f"{where}: the folder is a path inside the run's outputs (no '..', not absolute)")
    return name, rel


def check_access(registry: str | None, name: str, repository: str | None = None) -> None:
    """The repository a model will be registered in answers, with the credentials there are (a
    registry that is down, or that refuses them, says so now): asked before a run that registers
    its model at its end, so that hours of training do not end in that error."""
    client, _, repo, _ = locate(registry, name, repository)
    client.tags(repo)


def register_run_output(
    registry: str,
    asked: tuple[str, str],
    outputs: Path,
    run_id: str,
    info: Callable[[str], None],
    *,
    repository: str | None = None,
) -> ModelVersion:
    """After a completed run: register the asked folder of its outputs (contained in them), in
    ``repository`` (``model_repository``: where package and serve look for NAME:VERSION too)."""
    from ..safe.paths import resolve_inside

    name, rel = asked
    folder = resolve_inside(outputs, rel, outputs, file=None, key=None, what="the model folder")
    return register(registry, name, folder, run_id=run_id, info=info, repository=repository)
