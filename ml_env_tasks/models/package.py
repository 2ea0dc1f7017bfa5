"""Packaged scoring images: inference environment + entry script + model, as one image in a
registry (Azure's ``Model.package``), assembled over the registry API without a build.

The environment image's layers are reused as they are (mounted across repositories); two layers
go on top, both uncompressed tars owned by root with mtime 0: the entry script's folder (the
snapshot rules: ``.amlignore``, symlinks only inside) under ``/var/azureml-app``, and the model
under ``/var/azureml-models`` — for a registered model, the very blob ``ml-env model register``
stored. The image config is the environment's with those two diff_ids, two history entries,
the Azure variables (AML_APP_ROOT, AZUREML_ENTRY_SCRIPT, AZUREML_MODEL_DIR) and labels naming
all three parts; its ``created`` time is the environment's, so the same three parts always give
the same digest. The tag is a hash of the environment digest, the entry folder's hash and the
model layer's digest: an unchanged package is answered with one HEAD.

Several models (``--model NAME=MODEL`` or ``NAME=DIR`` each, as ``serve`` takes them) are one
layer each under ``/var/azureml-models/NAME``, in name order, as Azure's ``Model.deploy`` gives a
deployment of several models one folder each under ``AZUREML_MODEL_DIR``; a registered one is its
registered files laid out again under that folder. The key then names one digest over the
(name, layer digest) pairs, and ``ml-env.package.models`` lists them.

Everything that can be refused — the entry script, each model (a registered version read, a
folder made a layer), the repository — is, before the environment is built.

``serve``, ``smoke-test`` and ``promote`` take the packaged image as it is (nothing mounted), so
what was smoke-tested is byte for byte what is promoted.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RegistryError, UsageError
from ..registry import artifacts as art
from ..registry.reference import repository_named
from ..safe.grammar import ENTRY_SCRIPT, printable
from ..safe.untrusted import json_loads

if TYPE_CHECKING:
    from ..build.model import BuildOptions
    from ..registry import RegistryClient

__all__ = ["PackageResult", "package", "package_key", "APP_PREFIX", "PACKAGE_LABEL"]

APP_PREFIX = "var/azureml-app"
PACKAGE_LABEL = "ml-env.package.entry"
OCI_MANIFEST, OCI_CONFIG, LAYER_TAR = art.OCI_MANIFEST, art.OCI_CONFIG, art.LAYER_TAR


@dataclass(frozen=True)
class PackageResult:
    image: str  # host/repo:tag
    digest: str
    environment: str  # the environment image, by digest
    entry: str
    entry_hash: str
    model: str  # NAME:V or the folder given (several: MOUNT=... each, comma-separated)
    model_digest: str  # its layer (several: models_digest over them)
    reused: bool
    models: tuple[dict[str, str], ...] = ()  # several models: mount, model, digest each

    @property
    def ref(self) -> str:
        return f"{self.image.rsplit(':', 1)[0]}@{self.digest}"

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "models": list(self.models), "ref": self.ref}


@dataclass(frozen=True)
class _Model:
    """One model of a package: its layer, and where that layer's bytes come from."""

    mount: str  # "": AZUREML_MODEL_DIR itself
    label: str
    digest: str
    size: int
    path: Path | None  # a layer made here
    repo: str | None  # the repository of a registered layer used as it is (mounted from there)


def _from_registry(env: Any, build: BuildOptions) -> Any:
    """An environment image given by reference is found in the local engine first; a package is
    assembled in its registry, so the registry is asked (its digest is the one that counts)."""
    from ..registry import RegistryClient, parse_ref

    try:
        r = parse_ref(env.image)
    except UsageError:
        return env
    if r.host != build.registry:
        return env  # said below: one registry for the environment and the package
    found = RegistryClient(r.host, insecure=build.insecure).head_manifest(r.repository, r.reference)
    return dataclasses.replace(env, digest=found.digest, in_registry=True) if found is not None else env


def models_digest(layers: list[tuple[str, str]]) -> str:
    """Several models as one digest for the key: over (mount, layer digest) pairs, in mount order."""
    return "sha256:" + hashlib.sha256("".join(f"{m}\0{d}\n" for m, d in sorted(layers)).encode()).hexdigest()


def package_key(env_digest: str, entry_hash: str, entry: str, model_digest: str) -> str:
    """A packaged image's tag: the hash of its three parts (``verify`` recomputes it from the labels)."""
    return hashlib.sha256(f"{env_digest}\n{entry_hash}\n{entry}\n{model_digest}".encode()).hexdigest()


def _tar_to(chunks: Iterator[bytes], out: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(out, "wb") as f:
        for c in chunks:
            h.update(c)
            n += len(c)
            f.write(c)
    return "sha256:" + h.hexdigest(), n


def package(
    environment: str,
    entry: Path,
    model: str | list[str],
    *,
    build: BuildOptions,
    repository: str | None = None,
    versions: Path | None = None,
    model_repository: str | None = None,
    info: Callable[[str], None] = lambda _m: None,
) -> PackageResult:
    from ..build import Reporter
    from ..build.resolve import registered_location, resolve_environment
    from ..registry import RegistryClient, parse_ref
    from ..runs.snapshot import snapshot, tar_chunks
    from .refs import parse_model_args

    registry = build.registry
    if not registry:  # a registered NAME:VERSION: its registry, where the package must go anyway
        where = registered_location(environment, versions)
        if where is None:
            raise UsageError("a packaged image lives in a registry: give --registry (or set registry in the config)")
        registry = where[0]
        build = dataclasses.replace(build, registry=registry)
        info(f"package: into {registry}, where {environment} is (the versions file says so)")
    if not ENTRY_SCRIPT.fullmatch(entry.name) or not entry.is_file():
        raise UsageError(f"entry script {printable(entry, 120)} not found (a NAME.py file)")
    given = parse_model_args([model] if isinstance(model, str) else model)
    if not given:
        raise UsageError("--model is required: a registered model or a folder")
    for m in given:
        if m.ref is not None and m.ref.registry not in (None, registry):
            raise UsageError(f"--model {m.given} is in {m.ref.registry}, the package would go to {registry}: "
                             "use one registry")  # fmt: skip
    parse_ref(f"{registry}/{repository_named(repository, 'ml-packages/{name}', 'name')}")  # --package-repository

    class _Say(Reporter):
        def info(self, msg: str) -> None:
            info(msg)

    with tempfile.TemporaryDirectory(prefix="ml-env-package-") as tmp:
        # the entry folder, as a run's snapshot, and the models: refused now, not after a build
        snap = snapshot(entry.parent, warn=lambda m: info(f"warning: {m}"))
        if not snap.has(entry.name):
            raise UsageError(f"entry script {entry.name} is excluded by the folder's ignore file")
        app_path = Path(tmp) / "app.tar"
        app_digest, app_size = _tar_to(tar_chunks(snap, APP_PREFIX), app_path)
        parts = _models(given, registry, model_repository, Path(tmp), info)
        env = resolve_environment(environment, build, reporter=_Say(stream_logs=False), need_inference=True,
                                  versions=versions)  # fmt: skip
        if not env.in_registry and env.spec is None:
            env = _from_registry(env, build)  # an image given by reference that the engine also has
        if not env.in_registry or not env.digest:
            raise UsageError(f"environment image {env.image} is not in a registry")
        src = parse_ref(env.pinned)
        if src.host != registry:
            raise UsageError(
                f"the environment image is in {src.host}, the package would go to {registry}: use one registry"
            )
        client = RegistryClient(registry, insecure=build.insecure)
        name = env.name or src.repository.rsplit("/", 1)[-1]
        repo = repository_named(repository, "ml-packages/{name}", name)
        parse_ref(f"{registry}/{repo}")
        several = len(parts) > 1 or parts[0].mount != ""
        listed = tuple({"mount": p.mount, "model": p.label, "digest": p.digest} for p in parts) if several else ()
        model_label = ", ".join(p.label for p in parts)
        model_digest = models_digest([(p.mount, p.digest) for p in parts]) if several else parts[0].digest
        key = package_key(env.digest, snap.hash, entry.name, model_digest)
        image = f"{registry}/{repo}:{key}"
        found = client.head_manifest(repo, key)
        if found is not None:
            info(f"package {image} exists: reused")
            return PackageResult(image, found.digest, env.pinned, entry.name, snap.hash, model_label, model_digest,
                                 True, listed)  # fmt: skip

        manifest, config = _platform_image(client, src.repository, env.digest)
        labels = {
            PACKAGE_LABEL: entry.name,
            "ml-env.package.entry_hash": snap.hash,
            "ml-env.package.model": model_label,
            "ml-env.package.model_digest": model_digest,
            "ml-env.package.environment": env.pinned,
            "ml-env.package.hash": key,
        }
        if several:
            labels["ml-env.package.models"] = json.dumps(list(listed), sort_keys=True, separators=(",", ":"))
        cfg = _config(config, entry.name, app_digest, [(p.mount, p.digest) for p in parts], labels)
        cfg_bytes = json.dumps(cfg, separators=(",", ":"), sort_keys=True).encode()
        cfg_digest = "sha256:" + hashlib.sha256(cfg_bytes).hexdigest()

        # blobs: the environment's layers mounted, ours uploaded (or mounted from the model repository)
        for layer in manifest["layers"]:
            _ensure(client, repo, layer["digest"], src.repository, None, layer.get("size"))
        _ensure(client, repo, app_digest, None, app_path, app_size)
        for p in parts:
            _ensure(client, repo, p.digest, p.repo, p.path, p.size)
        art.put_blob(client, repo, cfg_bytes)
        layers = [*manifest["layers"], {"mediaType": LAYER_TAR, "digest": app_digest, "size": app_size},
                  *({"mediaType": LAYER_TAR, "digest": p.digest, "size": p.size} for p in parts)]  # fmt: skip
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
             "config": {"mediaType": OCI_CONFIG, "digest": cfg_digest, "size": len(cfg_bytes)}, "layers": layers},
            separators=(",", ":"), sort_keys=True,
        ).encode()  # fmt: skip
        # by digest first: the tag names the image only once its SBOM and provenance are beside it
        image_digest = client.put_manifest(repo, art.sha256(body), body, OCI_MANIFEST) or art.sha256(body)
        digest = _attest(client, repo, key, image_digest, src.repository, env.digest, env.pinned, config,
                         (entry.name, snap.hash), [(p.label, p.digest) for p in parts])  # fmt: skip
    info(f"packaged {image}@{digest[:19]}: {env.pinned} + {entry.name} + model {model_label}")
    return PackageResult(image, digest, env.pinned, entry.name, snap.hash, model_label, model_digest, False, listed)


def _models(
    given: list[Any], registry: str, repository: str | None, tmp: Path, info: Callable[[str], None]
) -> list[_Model]:
    """Each ``--model`` as a layer, in mount order: one unnamed registered model is its registered
    blob itself; a folder, or a named model (laid out under its own folder), a layer made here."""
    from .. import models

    out = []
    for i, m in enumerate(sorted(given, key=lambda m: m.mount)):
        folder = m.folder
        label = str(folder)
        if m.ref is not None:
            mv = models.get(registry, m.ref, repository=repository)
            label = f"{mv.name}:{mv.version}"
            if not m.mount:
                out.append(_Model("", label, mv.layer, mv.size, None, mv.repository.split("/", 1)[1]))
                continue
            folder = tmp / f"model-{i}"
            models.download(registry, dataclasses.replace(m.ref, version=mv.version), folder, repository=repository)
        assert folder is not None
        made = tmp / f"model-{i}.tar"
        digest, size = models.model_layer(folder, made, warn=lambda w: info(f"warning: {w}"), under=m.mount)
        out.append(_Model(m.mount, f"{m.mount}={label}" if m.mount else label, digest, size, made, None))
    return out


PACKAGE_BUILD_TYPE = "https://ml-env.invalid/package/v1"


def _attest(client: RegistryClient, repo: str, tag: str, image_digest: str, env_repo: str, env_digest: str, env_ref: str,
            env_config: dict[str, Any], entry: tuple[str, str], models: list[tuple[str, str]]) -> str:  # fmt: skip
    """Attach the package's SBOM and provenance in BuildKit's layout, as a build does, and tag the
    index ``tag``: the index digest. The SBOM is the environment's (the lock's Python packages, the
    Debian packages its own SBOM lists) plus the two parts on top; the provenance (SLSA v1) names
    the three inputs by digest. Both are deterministic, so the same parts give the same digest."""
    from ..release.sbom import (
        CYCLONEDX,
        SLSA_V1,
        SPDX,
        Contents,
        attach_attestations,
        attested,
        cyclonedx_json,
        debian_listed,
        spdx_json,
    )
    from ..release.sbom import statement as in_toto
    from ..spec.pins import lock_packages

    inner = env_config.get("config")
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    lock = labels.get("ml-env.lock") if isinstance(labels, dict) else None
    env_sboms = attested(client, env_repo, env_digest).get(CYCLONEDX, [])
    name, (entry_name, entry_hash) = f"{client.host}/{repo}", entry
    contents = Contents(
        name, tag, lock_packages(lock) if isinstance(lock, str) else {},
        debian_listed(env_sboms[0][1].get("predicate")) if env_sboms else [], env_ref,
        extra=[(f"entry {entry_name}", "", entry_hash), *((f"model {m}", "", d.split(":", 1)[1]) for m, d in models)],
    )  # fmt: skip
    cdx, spdx = cyclonedx_json(contents), spdx_json(contents)
    provenance = {
        "buildDefinition": {
            "buildType": PACKAGE_BUILD_TYPE,
            "externalParameters": {
                "environment": env_ref,
                "entry": entry_name,
                "model": ", ".join(m for m, _ in models),
            },
            "internalParameters": {},
            "resolvedDependencies": [
                {"uri": f"oci://{env_ref}", "digest": {"sha256": env_digest.split(":", 1)[1]}},
                {"name": f"entry {entry_name}", "digest": {"sha256": entry_hash}},
                *({"name": f"model {m}", "digest": {"sha256": d.split(":", 1)[1]}} for m, d in models),
            ],
        },
        "runDetails": {"builder": {"id": "https://ml-env.invalid/package"}, "metadata": {}},
    }

    def make(manifest: str) -> list[tuple[str, bytes]]:
        return [(CYCLONEDX, in_toto(CYCLONEDX, cdx, name, manifest)), (SPDX, in_toto(SPDX, spdx, name, manifest)),
                (SLSA_V1, in_toto(SLSA_V1, provenance, name, manifest))]  # fmt: skip

    return attach_attestations(client, repo, tag, image_digest, make, replace_types=(CYCLONEDX, SPDX, SLSA_V1))


def _platform_image(client: RegistryClient, repo: str, digest: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The environment's image manifest (for an index: its image for a real platform) and config."""
    got = client.get_manifest(repo, digest)
    if got is None:
        raise UsageError(f"environment image {repo}@{digest[:19]} is gone from its registry")
    doc = _obj(got[1], "environment manifest")
    if "manifests" in doc:
        child = next(
            (m for m in doc.get("manifests") or [] if isinstance(m, dict)
             and (m.get("platform") or {}).get("os") not in (None, "unknown") and isinstance(m.get("digest"), str)),
            None,
        )  # fmt: skip
        if child is None:
            raise RegistryError(f"environment image {repo}@{digest[:19]} has no image for a platform")
        return _platform_image(client, repo, child["digest"])
    layers, cfg = doc.get("layers"), doc.get("config")
    if not isinstance(layers, list) or not isinstance(cfg, dict) or not isinstance(cfg.get("digest"), str):
        raise RegistryError(f"environment image {repo}@{digest[:19]} is not an image manifest")
    for layer in layers:
        if not (
            isinstance(layer, dict) and isinstance(layer.get("digest"), str) and isinstance(layer.get("size"), int)
        ):
            raise RegistryError(f"environment image {repo}@{digest[:19]} has a malformed layer")
    return doc, _obj(client.get_blob(repo, cfg["digest"]), "environment config")


def _obj(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json_loads(data, error=RegistryError, file=f"the {what}")
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise RegistryError(f"the {what} is not a JSON object")
    return doc


def _config(
    config: dict[str, Any], entry: str, app: str, models: list[tuple[str, str]], labels: dict[str, str]
) -> dict[str, Any]:
    cfg = copy.deepcopy(config)
    rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    if not isinstance(rootfs.get("diff_ids"), list):
        raise RegistryError("the environment config has no rootfs.diff_ids")
    # uncompressed layers: diff_id == digest
    rootfs["diff_ids"] = [*rootfs["diff_ids"], app, *(d for _, d in models)]
    created = cfg.get("created") if isinstance(cfg.get("created"), str) else "1970-01-01T00:00:00Z"
    got_history = cfg.get("history")
    history: list[Any] = got_history if isinstance(got_history, list) else []
    cfg["history"] = [*history,
                      {"created": created, "created_by": f"ml-env package: entry {entry}"},
                      *({"created": created, "created_by": f"ml-env package: model {m}".rstrip()} for m, _ in models)]  # fmt: skip
    c = cfg.setdefault("config", {})
    if not isinstance(c, dict):
        raise RegistryError("the environment config's config is not an object")
    azure = {
        "AML_APP_ROOT": "/" + APP_PREFIX,
        "AZUREML_ENTRY_SCRIPT": entry,
        "AZUREML_MODEL_DIR": "/var/azureml-models",
    }
    env = [e for e in (c.get("Env") or []) if isinstance(e, str) and e.split("=", 1)[0] not in azure]
    c["Env"] = env + [f"{k}={v}" for k, v in azure.items()]
    c["WorkingDir"] = "/" + APP_PREFIX
    got_labels = c.get("Labels")
    old: dict[str, Any] = got_labels if isinstance(got_labels, dict) else {}
    c["Labels"] = {**{k: v for k, v in old.items() if not str(k).startswith("ml-env.package.")}, **labels}
    return cfg


def _ensure(
    client: RegistryClient, repo: str, digest: str, from_repo: str | None, path: Path | None, size: int | None
) -> None:
    if client.blob_exists(repo, digest):
        return
    if from_repo and client.mount_blob(repo, digest, from_repo):
        return
    if path is not None:
        client.upload_stream(repo, digest, art.file_chunks(path), size)
        return
    if from_repo:  # the registry would not mount: stream it across, verified as it passes
        client.upload_stream(repo, digest, client.blob_chunks(from_repo, digest), size)
        return
    raise RegistryError(f"blob {digest[:19]} is nowhere to be copied from")
