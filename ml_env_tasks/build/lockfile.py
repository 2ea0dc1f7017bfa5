"""The lock: what pip reports installed in the image, read from it, checked against ``--locked``,
and brought into a fresh checkout from the image's label."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import BuildError, MlEnvError, RegistryError
from ..safe.fsutil import write_atomic
from ..spec.pins import LOCK_HEADER, is_lock_text, lock_packages, lock_path_for, lock_to_read, read_lock_file
from .model import BuildOptions, Reporter

if TYPE_CHECKING:
    from ..engine import Engine
    from ..spec.environment import Environment

__all__ = [
    "LOCK_HEADER",
    "lock_hash",
    "read_lock",
    "check_python_version",
    "check_locked",
    "lock_from_registry_if_missing",
]


# what `pip list --format=freeze` says, without needing pip: every distribution the interpreter sees
_DISTRIBUTIONS = (
    "import importlib.metadata as m\n"
    "for d in m.distributions():\n"
    "    n = d.metadata['Name']\n"
    "    if n and d.version: print(f'{n}=={d.version}')\n"
)


def read_lock(engine: Engine, env: Environment, python: str | None, ref: str, env_hash: str) -> str:
    """The image's lock: what its Python has installed, and the environment hash it was built for
    (a comment line: the packages alone are hashed, with --locked)."""
    body = ""
    if python is not None:
        out = engine.run_capture(
            ref, [python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"], entrypoint=""
        )
        body = _freeze(out)
    elif env.user_managed:
        # nothing installed by ml-env: the packages are the base's own, as its interpreter sees them
        try:
            body = _freeze(engine.run_capture(ref, [env.interpreter, "-c", _DISTRIBUTIONS], entrypoint=""))
        except MlEnvError:
            body = ""  # a base without that interpreter (or too old a Python): nothing to list
    return LOCK_HEADER + f"# environment: {env.name}\n{HASH_LINE}{env_hash}\n" + body


HASH_LINE = "# hash: "


def lock_hash(path: Path) -> str | None:
    """The environment hash a lock file says it was written for (its first lines); None when it
    says none (written before locks named it, or not by ml-env), or is no regular file."""
    text = read_lock_file(path)
    for line in (text or "").splitlines()[:3]:
        if line.startswith(HASH_LINE):
            value = line[len(HASH_LINE) :].strip()
            return value if len(value) == 64 and all(c in "0123456789abcdef" for c in value) else None
    return None


def _freeze(out: str) -> str:
    return "".join(
        sorted({line.strip() + "\n" for line in out.splitlines() if "==" in line and " " not in line.strip()})
    )


def check_python_version(engine: Engine, env: Environment, python: str | None, ref: str, rep: Reporter) -> None:
    """A conda file that pins python is installed with the base's Python: say when they differ."""
    if not env.conda_python or python is None:
        return
    got = engine.run_capture(ref, [python, "-c", "import platform; print(platform.python_version())"], entrypoint="")
    got = got.strip()
    want = env.conda_python.rstrip(".*")
    if not (got == want or got.startswith(want + ".")):
        rep.warn(
            f"the conda file asks for python {env.conda_python}; the base image has {got}, which is what the image uses"
        )


def check_locked(env: Environment, got: str) -> None:
    assert env.lock is not None
    want = lock_packages(env.lock.text)
    have = lock_packages(got)
    extra = sorted(f"{n}=={v}" for n, v in have.items() if n not in want)
    moved = sorted(f"{n} {want[n]} -> {v}" for n, v in have.items() if n in want and want[n] != v)
    if extra or moved:
        raise BuildError(
            "the image does not match the lock: "
            + "; ".join(
                ([f"not in the lock: {', '.join(extra)}"] if extra else [])
                + ([f"changed: {', '.join(moved)}"] if moved else [])
            ),
            file=str(env.lock.path),
            hint="the spec changed since the lock was written; build without --locked to refresh it",
        )


def lock_from_registry_if_missing(spec_path: Path, ref: str, opts: BuildOptions, rep: Reporter) -> str | None:
    """A fresh checkout reuses an image built elsewhere: bring its lock file along from the label.
    So does a reuse whose lock file names another hash (the environment was changed back to one
    whose image exists, or to one built elsewhere): the lock is the reused image's, else it would
    list what another image installed. Under --locked the lock is the build's input: left as is."""
    have = lock_to_read(spec_path)
    stale = None
    if have.exists() and not opts.locked and have == lock_path_for(spec_path):
        written_for = lock_hash(have)
        stale = written_for if written_for not in (None, ref.rsplit(":", 1)[-1]) else None
    if (have.exists() and stale is None) or not opts.registry:
        if stale is not None:
            rep.warn(f"{have} is the lock of another hash ({stale[:12]}), not of {ref}; give a registry to bring "
                     "the image's lock, or build to write it")  # fmt: skip
        return str(have) if have.exists() else None
    lp = lock_path_for(spec_path)
    from ..registry import RegistryClient, parse_ref

    r = parse_ref(ref)
    try:
        cfg = RegistryClient(r.host, insecure=opts.insecure).image_config(r.repository, r.reference)
    except RegistryError as e:
        rep.warn(f"could not read the lock label of {ref}: {e.message}")
        return None
    labels = ((cfg or {}).get("config") or {}).get("Labels") or {}
    text = labels.get("ml-env.lock") if isinstance(labels, dict) else None
    if isinstance(text, str) and is_lock_text(text):
        write_atomic(lp, text)
        why = f" (it held the lock of another hash, {stale[:12]})" if stale else ""
        rep.info(f"wrote {lp} from the image's label{why}")
        return str(lp)
    if text is not None:
        rep.warn(f"{ref}: its ml-env.lock label is not a lock ml-env wrote; no lock file written from it")
    if stale:
        rep.warn(f"{lp} is the lock of another hash ({stale[:12]}), and {ref} carries no lock to replace it")
        return str(lp)
    return None
