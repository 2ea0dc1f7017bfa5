"""``ml-env build --check-reproducible``: build the environment a second time with no cache and
say whether the image is the same — and, when it is not, which files differ.

"The same" is the image itself: its layers (by diff id) and its config. The index a registry
holds around it also carries BuildKit's provenance, which records when and how each build ran
(start time, invocation id): that part differs by design and is not compared.

When layers differ, both images' filesystems are read (``docker export`` of a container that is
created, never started) in fixed memory, and every path whose content, mode, owner, link target
or modification time differs is named (the first ``MAX_NAMED``).
"""

from __future__ import annotations

import hashlib
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["Reproducibility", "compare_images", "differing_files"]

MAX_NAMED = 50


@dataclass(frozen=True)
class Reproducibility:
    same: bool
    layers: int
    differing_layers: tuple[int, ...] = ()
    config_differs: tuple[str, ...] = ()  # config keys that differ
    files: tuple[str, ...] = ()  # differing paths (the first MAX_NAMED)

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "differing_layers": list(self.differing_layers), "files": list(self.files),
                "config_differs": list(self.config_differs)}  # fmt: skip


def _inspect(engine: Engine, ref: str) -> dict[str, Any]:
    found = engine.containers.image(ref)
    if not isinstance(found, dict):
        from ..errors import EngineError

        raise EngineError(f"{ref} is not in the engine to compare")
    return found


def compare_images(engine: Engine, a: str, b: str) -> Reproducibility:
    ia, ib = _inspect(engine, a), _inspect(engine, b)
    la = list((ia.get("RootFS") or {}).get("Layers") or [])
    lb = list((ib.get("RootFS") or {}).get("Layers") or [])
    differing = tuple(i for i in range(max(len(la), len(lb))) if la[i : i + 1] != lb[i : i + 1])
    ca, cb = ia.get("Config") or {}, ib.get("Config") or {}
    keys = tuple(sorted(k for k in set(ca) | set(cb) if ca.get(k) != cb.get(k)))
    if ia.get("Created") != ib.get("Created"):
        keys += ("Created",)
    same = not differing and not keys
    files: tuple[str, ...] = ()
    if differing:
        files = tuple(differing_files(engine, a, b))
    return Reproducibility(same, len(la), differing, keys, files)


def _fingerprint(engine: Engine, image: str, workdir: Path) -> dict[str, tuple[Any, ...]]:
    """path -> (kind, sha256 or link target, mode, uid, gid, mtime) of an image's filesystem."""
    d = engine.docker
    box = d.container.create(image, entrypoint="", command=["/"])
    try:
        out = workdir / f"{box.id}.tar"
        d.container.export(box, out)
        found: dict[str, tuple[Any, ...]] = {}
        with tarfile.open(out, mode="r|") as tar:
            for m in tar:
                if m.isfile():
                    h = hashlib.sha256()
                    f = tar.extractfile(m)
                    if f is not None:
                        while chunk := f.read(1 << 20):
                            h.update(chunk)
                    what = h.hexdigest()
                else:
                    what = m.linkname
                found[m.name] = (m.type, what, m.mode, m.uid, m.gid, int(m.mtime))
        out.unlink()
        return found
    finally:
        d.container.remove(box, force=True)


def differing_files(engine: Engine, a: str, b: str, warn: Callable[[str], None] | None = None) -> list[str]:
    with tempfile.TemporaryDirectory(prefix="ml-env-repro-") as tmp:
        fa = _fingerprint(engine, a, Path(tmp))
        fb = _fingerprint(engine, b, Path(tmp))
    # /etc/hostname and friends are the container's, not the image's
    skip = {"etc/hostname", "etc/hosts", "etc/resolv.conf", ".dockerenv", "etc/mtab"}
    names = sorted(n for n in set(fa) | set(fb) if fa.get(n) != fb.get(n) and n.rstrip("/") not in skip)
    out = []
    for n in names[:MAX_NAMED]:
        x, y = fa.get(n), fb.get(n)
        if x is None or y is None:
            out.append(f"/{n} (only in the {'second' if x is None else 'first'} build)")
        else:
            what = [k for k, i in (("content", 1), ("mode", 2), ("owner", 3), ("mtime", 5)) if x[i] != y[i]]
            out.append(f"/{n} ({', '.join(what) or 'type'})")
    if len(names) > MAX_NAMED:
        out.append(f"... and {len(names) - MAX_NAMED} more")
    return out
