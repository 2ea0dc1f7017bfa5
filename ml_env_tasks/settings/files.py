"""Configuration files, as the ecosystem does them: the project's ``[tool.ml-env]`` table in
``pyproject.toml``, the user's ``config.toml`` and the machine's, in platformdirs' places.

Precedence, highest first: a command-line flag, an environment variable, the project, the user,
the machine (``site``), the built-in default. ``ml-env config`` shows every effective value and
where it came from. Files are read with ``tomllib``; an unknown key or a wrong type is one error
naming the file and the key. The lab writes the machine's file (network, CA bundle, registry),
so commands run on it need no preamble.

**Trust.** The project's table is repository content: in CI a pull request writes it while the
job holds the runner's secrets. So the project may not turn TLS off (``insecure``), choose where
the build and its secrets run (``builder``), put the build on the host's network
(``network = "host"``) or allow an environment file to read a variable (``spec_env``), and every
path it names (``ca_bundle``, ``runs_dir``, ``log_dir``, ``versions``, a ledger file, an
environment file) must resolve, symlinks included, inside the project. Those settings come only
from the invoking user: a flag, the environment, the user's or the machine's config.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..safe.grammar import printable, toml_error

__all__ = [
    "ConfigFile",
    "Layers",
    "load_layers",
    "user_layers",
    "USER_ONLY",
    "user_config_path",
    "site_config_path",
    "KEYS",
]

MAX_CONFIG = 1 * 2**20
# the keys a config file may set, and the type each must have
KEYS: dict[str, type] = {
    "registry": str,
    "repository": str,  # where environment images go; {name}: the environment's name
    "model_repository": str,
    "package_repository": str,
    "cache": str,
    "network": str,
    "ca_bundle": str,
    "runs_dir": str,
    "ledger": str,
    "versions": str,
    "log_dir": str,
    "builder": str,
    "insecure": bool,
    "train_env": str,
    "inference_env": str,
    "require": list,  # of strings: the gates a promotion needs
    "spec_env": list,  # of NAME or NAME@HOST: the variables an environment file may read
    "sign_key": str,
    "sign_keyless": bool,
    "verify_key": str,
    "certificate_identity": str,
    "certificate_oidc_issuer": str,
    "compute": dict,  # [compute.NAME] tables: settings.compute
    "default_compute": str,  # the target train uses without --compute
}

# what only the invoking user may set (never the project's table), and why
USER_ONLY = {
    "insecure": "turns TLS off",
    "builder": "chooses where the build, and the secrets it is given, run",
    "spec_env": "allows an environment file to read the runner's environment variables",
    "sign_key": "chooses the key (a host file, a variable) releases are signed with",
    "sign_keyless": "signs with the workflow's identity",
    "verify_key": "chooses whose signature a gate trusts",
    "certificate_identity": "chooses whose signature a gate trusts",
    "certificate_oidc_issuer": "chooses whose signature a gate trusts",
}
# host paths the project may name, but only inside itself
PROJECT_PATHS = ("ca_bundle", "runs_dir", "log_dir", "versions", "ledger", "train_env", "inference_env")


@dataclass(frozen=True)
class ConfigFile:
    path: Path | None
    values: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        return self.values.get(key)


@dataclass(frozen=True)
class Layers:
    """The config files that apply, highest precedence first."""

    project: ConfigFile
    user: ConfigFile
    site: ConfigFile

    def find(self, key: str) -> tuple[Any, str, Path | None] | None:
        """(value, layer: project, user or site, its file) from the files, or None."""
        for name, f in (("project", self.project), ("user", self.user), ("site", self.site)):
            v = f.get(key)
            if v is not None:
                return v, name, f.path
        return None

    def lookup(self, key: str) -> tuple[Any, str] | None:
        """(value, where it came from, as text) from the files, or None."""
        found = self.find(key)
        return None if found is None else (found[0], f"{found[1]} ({found[2]})")


def user_config_path() -> Path:
    if os.environ.get("ML_ENV_CONFIG"):
        return Path(os.environ["ML_ENV_CONFIG"])
    import platformdirs

    return Path(platformdirs.user_config_dir("ml-env")) / "config.toml"


def site_config_path() -> Path:
    if os.environ.get("ML_ENV_SITE_CONFIG"):
        return Path(os.environ["ML_ENV_SITE_CONFIG"])
    import platformdirs

    return Path(platformdirs.site_config_dir("ml-env")) / "config.toml"


def _read(path: Path, *, table: tuple[str, ...] = (), project: bool = False) -> ConfigFile:
    from ..safe.fsutil import read_text_bounded
    from ..safe.untrusted import toml_loads

    try:
        if not path.exists() or path.is_dir():
            return ConfigFile(None)
        text = read_text_bounded(path, MAX_CONFIG, error=UsageError, what="config file")
        if table and table[-1] not in text:
            return ConfigFile(None)  # a pyproject.toml without our table: no need to parse it
        doc: Any = toml_loads(text, error=UsageError, file=str(path))
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot be read: {getattr(e, 'strerror', None) or 'not UTF-8'}", file=str(path)) from None
    except ValueError as e:  # tomllib.TOMLDecodeError (UnicodeDecodeError is caught above)
        what, line = toml_error(e)
        raise UsageError(
            f"invalid TOML {what}" if line else f"invalid TOML: {what}", file=str(path), line=line
        ) from None
    for part in table:
        doc = doc.get(part) if isinstance(doc, dict) else None
        if doc is None:
            return ConfigFile(None)
    where = ".".join(table)
    if not isinstance(doc, dict):
        raise UsageError("must be a table", file=str(path), key=where or None)
    for k, v in doc.items():
        key = f"{where}.{k}" if where else k
        if k not in KEYS:
            raise UsageError(
                "unknown key", file=str(path), key=printable(key, 80), hint=f"known keys: {', '.join(sorted(KEYS))}"
            )
        if not isinstance(v, KEYS[k]):
            kind = "an array of strings" if KEYS[k] is list else f"a {KEYS[k].__name__}"
            raise UsageError(f"must be {kind}", file=str(path), key=key)
        if isinstance(v, dict) and not all(isinstance(t, dict) for t in v.values()):
            raise UsageError("must hold [compute.NAME] tables", file=str(path), key=key)
        texts = v if isinstance(v, list) else [v] if isinstance(v, str) else []
        if not all(isinstance(t, str) and t.isprintable() and len(t) <= 4096 for t in texts):
            what = "strings without" if isinstance(v, list) else "a string without"
            raise UsageError(f"must be {what} control characters (at most 4096 characters)", file=str(path), key=key)
        if project:
            _check_project_value(path, k, v, key)
    return ConfigFile(path, dict(doc))


def _check_project_value(path: Path, k: str, v: Any, key: str) -> None:
    """The project's table may not reach secrets, TLS or host files (see the module's docstring)."""
    user_only = "; set it with a flag, an environment variable, or the user's or machine's config"
    if k in USER_ONLY and (v is not False):
        raise UsageError(
            f"the project's config cannot set this: it {USER_ONLY[k]}",
            file=str(path),
            key=key,
            hint=f"repository content is untrusted{user_only}",
        )
    if k == "network" and v not in ("default", "none"):
        raise UsageError(
            "the project's config can only set the build network to default or none",
            file=str(path),
            key=key,
            hint=f"another network (host) reaches the runner's own services{user_only}",
        )
    if k not in PROJECT_PATHS or not isinstance(v, str):
        return
    if k == "ledger" and (v == "registry" or v.startswith("oci://")):
        return
    p = Path(v).expanduser()
    if k in ("train_env", "inference_env") and not (p.is_absolute() or p.exists() or p.is_symlink()):
        return  # curated/NAME, NAME:VERSION or an image: not a host path
    root = path.parent.resolve()
    try:
        real = (Path.cwd() / p).resolve()
    except (OSError, RuntimeError):
        real = None
    if real is None or not real.is_relative_to(root):
        raise UsageError(
            "the project's config names a path outside the project",
            file=str(path),
            key=key,
            hint=f"paths in [tool.ml-env] must resolve (symlinks included) inside {root}{user_only}",
        )


def project_file(start: Path | None = None) -> Path | None:
    """The nearest ``pyproject.toml`` at or above ``start`` (default: the working directory)."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").is_file():
            return d / "pyproject.toml"
    return None


def load_layers(start: Path | None = None) -> Layers:
    pyproject = project_file(start)
    project = _read(pyproject, table=("tool", "ml-env"), project=True) if pyproject else ConfigFile(None)
    return Layers(project, _read(user_config_path()), _read(site_config_path()))


def user_layers() -> Layers:
    """The invoking user's and the machine's config only: for what the project may not set."""
    return Layers(ConfigFile(None), _read(user_config_path()), _read(site_config_path()))
