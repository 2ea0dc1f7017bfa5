"""Curated environments, ``clone`` (an editable copy under your own name) and ``scaffold``."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any

from .. import spec
from ..errors import MlEnvError, UsageError
from ..safe.grammar import NAME, matches, printable
from ..spec import CURATED_DIR, RESERVED_PREFIX

__all__ = ["curated", "describe_curated", "resolve_curated", "clone", "scaffold", "DEFAULT_BASE"]

# the base image scaffolds and imports name when their source names none
# the official Python image (Debian bookworm slim): resolvable anywhere; the lab serves a
# locally built stand-in under this exact name as the engine's Docker Hub mirror
DEFAULT_BASE = "python:3.11-slim-bookworm"


def curated() -> list[Path]:
    return sorted(CURATED_DIR.glob("*.toml"))


def describe_curated(path: Path) -> dict[str, Any]:
    """What ``list`` shows of a curated environment, as Azure's ``Environment.list`` does: its
    name, description, base and packages (declared; and as installed, from the lock of a build of
    it on this machine, else the lock it ships with)."""
    from ..spec.pins import lock_packages, lock_to_read, read_lock_file

    env = spec.load(path)
    declared = list(env.packages)
    for ref in env.requirements:
        lines = (ref.data or b"").decode("utf-8", "replace").splitlines()
        declared += [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]
    lock = read_lock_file(lock_to_read(path))
    locked = lock_packages(lock) if lock is not None else {}
    return {
        "name": f"curated/{path.stem}",
        "environment": env.name,
        "version": env.version,
        "description": env.description,
        "base": env.base.image,
        "inference": env.inference,
        "apt": list(env.apt),
        "packages": declared,
        "locked": locked,
    }


def resolve_curated(ref: str) -> Path:
    """``curated/sklearn`` (or ``ml-env-sklearn``, or a path) -> the environment file."""
    name = ref.removeprefix("curated/").removeprefix(RESERVED_PREFIX).removesuffix(".toml")
    if ref.startswith("curated/") and not matches(NAME, name):  # a name, never a path out of the set
        raise UsageError(f"no curated environment '{printable(ref, 80)}'", hint=f"have: {_have()}")
    p = CURATED_DIR / f"{name}.toml"
    with contextlib.suppress(OSError):  # a name too long for a path is no curated environment either
        if p.exists():
            return p
        if Path(ref).exists():
            return Path(ref)
    raise UsageError(f"no curated environment '{printable(ref, 80)}'", hint=f"have: {_have()}")


def _have() -> str:
    return ", ".join(f"curated/{c.stem}" for c in curated())


def _check_name(name: str) -> None:
    if not matches(NAME, name) or name.startswith(RESERVED_PREFIX):
        raise MlEnvError(
            f"{name!r} is not a name you can give an environment",
            hint=f"lowercase, not starting with {RESERVED_PREFIX}",
        )


def clone(source: str, name: str, directory: Path) -> Path:
    """Copy an environment (curated or not) to ``directory/name.toml`` with the files it references."""
    _check_name(name)
    src = resolve_curated(source)
    env = spec.load(src)
    out = directory / f"{name}.toml"
    if out.exists():
        raise MlEnvError(f"{out} exists; not overwriting it")
    import tomlkit

    doc = tomlkit.parse(src.read_text(encoding="utf-8"))
    doc["name"] = name
    doc["version"] = "1"
    refs = [r.path for r in env.requirements] + [w.path for w in env.wheels]
    refs += [env.conda_file.path] if env.conda_file else []
    refs += [env.base.dockerfile.path] if env.base.dockerfile else []
    directory.mkdir(parents=True, exist_ok=True)
    for r in refs:
        rel = r.resolve().relative_to(src.parent.resolve())
        target = directory / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(r, target)
        elif target.read_bytes() != r.read_bytes():
            raise MlEnvError(f"{target} exists with other content; clone into another directory (-d)")
    text = tomlkit.dumps(doc).replace(
        f"Clone it: `ml-env clone curated/{src.stem} my-env`.", f"Cloned from curated/{src.stem}.", 1
    )
    out.write_text(text)
    spec.load(out)
    return out


SCAFFOLD_SPEC = """# {name}: an ML environment. Build: `ml-env build envs/{name}.toml --registry localhost:5000`
name = "{name}"
version = "1"
description = "{name} training environment"

[base]
image = "{base}"   # any image with python3 and venv

[python]
requirements = ["requirements/{name}.txt"]   # slow-changing pins: their own cached layer
packages = []                                  # small additions

[env]
PYTHONUNBUFFERED = "1"

[docker]
shm_size = "1g"                                # for data loaders in `ml-env train`
"""

SCAFFOLD_TRAIN = '''"""Starter training script for `ml-env train --env envs/{name}.toml --source src --script train.py`."""

import argparse
import json
import os
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    out = Path(os.environ.get("ML_ENV_OUTPUT_DIR", "outputs"))
    out.mkdir(parents=True, exist_ok=True)
    data = os.environ.get("ML_ENV_INPUT_DATA")  # from `--input data=PATH`, read-only
    print(f"training for {{args.epochs}} epoch(s); data: {{data or '(none)'}}")
    (out / "metrics.json").write_text(json.dumps({{"epochs": args.epochs}}))
    print("ML_ENV_METRIC done=1")


if __name__ == "__main__":
    main()
'''


def scaffold(name: str, directory: Path) -> list[Path]:
    _check_name(name)
    files = {
        directory / "envs" / f"{name}.toml": SCAFFOLD_SPEC.format(name=name, base=DEFAULT_BASE),
        directory / "envs" / "requirements" / f"{name}.txt": "# pinned requirements, e.g.\n# scikit-learn==1.5.2\n",
        directory / "src" / "train.py": SCAFFOLD_TRAIN.format(name=name),
    }
    clash = [str(p) for p in files if p.exists()]
    if clash:
        raise MlEnvError(f"not overwriting {', '.join(clash)}")
    for p, text in files.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    spec.load(directory / "envs" / f"{name}.toml")
    return list(files)
