"""Strict validation of an environment file's TOML into an :class:`Environment`.

Every value is checked whole (``fullmatch`` grammars, no control characters where a value is
rendered), every path resolves inside the environment's project, every error is one SpecError
naming the file and the key. Nothing quotes the text of a file the spec points at.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import SpecError
from ..registry.refs import check_image_ref
from ..safe.digests import file_sha256
from ..safe.grammar import (
    APT_PACKAGE,
    ENV_NAME,
    INTERPRETER,
    LABEL_KEY,
    NAME,
    WHEEL_FILE,
    has_control,
    matches,
    parse_size,
    printable,
    toml_error,
)
from ..safe.paths import check_path_text, project_root, read_inside, resolve_inside
from .conda import INSTALLERS, listed, parse_conda
from .dockerlint import check_base_dockerfile
from .environment import (
    CURATED_DIR,
    INFERENCE_SERVERS,
    RESERVED_PREFIX,
    BaseImage,
    BaseRegistry,
    Environment,
    FileRef,
    IndexConfig,
)

__all__ = ["parse_document"]

TOP_KEYS = {"name", "version", "description", "inference", "base", "python", "apt", "env", "labels", "docker"}
BASE_KEYS = {"image", "dockerfile", "dockerfile_text", "registry"}
REGISTRY_KEYS = {"address", "username", "password_env"}
INSTALLERS_PY = ("pip", "uv")
LAYERS = ("one", "split")
PYTHON_KEYS = {
    "installer", "layers", "conda_installer", "user_managed_dependencies", "interpreter", "packages", "requirements",
    "conda_file", "wheels", "index_url", "index_url_env", "extra_index_urls", "extra_index_urls_env",
}  # fmt: skip
APT_KEYS = {"packages"}
DOCKER_KEYS = {"shm_size", "build_args"}
INFERENCE_KEYS = {"server"}
MAX_VALUE = 4096  # one string value in an environment file (a base Dockerfile's text aside)
MAX_ITEMS = 2000  # one array in an environment file
LARGE_WHEEL = 2 * 2**30


def parse_document(
    text: str, path: Path, shown: str, *, recorded_wheels: Mapping[str, str] | None = None
) -> Environment:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        what, line = toml_error(e)
        raise SpecError(f"invalid TOML {what}" if line else f"invalid TOML: {what}", file=shown, line=line) from None
    except RecursionError:
        raise SpecError("invalid TOML (nested too deeply)", file=shown) from None
    return _Validator(doc, path, shown, recorded_wheels).environment()


class _Validator:
    def __init__(
        self, doc: dict[str, Any], path: Path, shown: str, recorded_wheels: Mapping[str, str] | None = None
    ) -> None:
        self.warnings: list[str] = []
        self.recorded_wheels = recorded_wheels or {}
        self.doc = doc
        self.path = path
        self.dir = path.parent
        self.root = project_root(path.parent)
        self.shown = shown

    def err(self, key: str, msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=self.shown, key=printable(key, 120), hint=hint)

    # typed getters
    def table(self, d: dict[str, Any], key: str, where: str, allowed: set[str]) -> dict[str, Any]:
        v = d.get(key, {})
        if not isinstance(v, dict):
            raise self.err(where, f"must be a table, got {_tname(v)}")
        self.known(v, where, allowed)
        return v

    def known(self, d: dict[str, Any], where: str, allowed: set[str]) -> None:
        for k in d:
            if k not in allowed:
                near = ", ".join(sorted(allowed))
                raise self.err(f"{where}.{k}" if where else k, "unknown key", hint=f"known keys: {near}")

    def choice(self, d: dict[str, Any], key: str, table: str, choices: tuple[str, ...]) -> str:
        """One of ``choices`` (the first when the key is absent)."""
        value = self.string(d, key, f"{table}.{key}") or choices[0]
        if value not in choices:
            raise self.err(f"{table}.{key}", f"choose one of {', '.join(choices)}")
        return value

    def string(
        self, d: dict[str, Any], key: str, where: str, *, required: bool = False, multiline: bool = False
    ) -> str | None:
        if key not in d:
            if required:
                raise self.err(where, "is required")
            return None
        v = d[key]
        if not isinstance(v, str):
            raise self.err(where, f"must be a string, got {_tname(v)}")
        if not v.strip():
            raise self.err(where, "must not be empty")
        self.one_value(v, where, multiline=multiline)
        return v

    def one_value(self, v: str, where: str, *, multiline: bool = False) -> None:
        if len(v) > MAX_VALUE and not multiline:
            raise self.err(where, f"is {len(v)} characters long, over the {MAX_VALUE} limit")
        if "\0" in v or (not multiline and has_control(v)):
            raise self.err(where, "must not contain control characters (newline, carriage return, NUL, ...)")

    def boolean(self, d: dict[str, Any], key: str, where: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            raise self.err(where, f"must be true or false, got {_tname(v)}")
        return v

    def strings(self, d: dict[str, Any], key: str, where: str) -> list[str]:
        v = d.get(key, [])
        if not isinstance(v, list):
            raise self.err(where, f"must be an array of strings, got {_tname(v)}")
        if len(v) > MAX_ITEMS:
            raise self.err(where, f"has {len(v)} entries, over the {MAX_ITEMS} limit")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.err(f"{where}[{i}]", f"must be a string, got {_tname(item)}")
            if not item.strip():
                raise self.err(f"{where}[{i}]", "must not be empty")
            self.one_value(item, f"{where}[{i}]")
        return list(v)

    def string_map(
        self, d: dict[str, Any], key: str, where: str, key_grammar: re.Pattern[str], what: str
    ) -> dict[str, str]:
        v = d.get(key, {})
        if not isinstance(v, dict):
            raise self.err(where, f"must be a table of strings, got {_tname(v)}")
        if len(v) > MAX_ITEMS:
            raise self.err(where, f"has {len(v)} entries, over the {MAX_ITEMS} limit")
        out = {}
        for k, val in v.items():
            if not matches(key_grammar, k):
                raise self.err(f"{where}.{k}", f"is not a valid {what}")
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.err(f"{where}.{k}", f"must be a string, got {_tname(val)}")
            text = val if isinstance(val, str) else str(val)
            self.one_value(text, f"{where}.{k}")
            out[str(k)] = text
        return out

    def text_file(self, rel: str, where: str, *, what: str) -> FileRef:
        real, data = read_inside(self.dir, rel, self.root, file=self.shown, key=where, what=what)
        return FileRef(self.dir / rel, real, hashlib.sha256(data).hexdigest(), len(data), data)

    def wheel_file(self, rel: str, where: str) -> FileRef:
        recorded = self.recorded_wheels.get(Path(rel).name)
        if recorded is not None and not (self.dir / rel).exists():
            # a registered version read back to compare it: the digest it was registered with
            # stands in for the bytes, which are never read
            check_path_text(rel, file=self.shown, key=where, what="wheel")
            return FileRef(self.dir / rel, self.dir / rel, recorded, 0)
        real = resolve_inside(self.dir, rel, self.root, file=self.shown, key=where, what="wheel")
        if not real.is_file():
            raise self.err(where, f"wheel {rel!r} is not a regular file")
        with open(real, "rb") as f:
            if f.read(2) != b"PK":
                raise self.err(where, f"{rel!r} is not a wheel (not a zip archive)")
        size = real.stat().st_size
        if size > LARGE_WHEEL:
            self.warnings.append(f"{where}: {rel} is {size / 2**30:.1f} GiB; it is copied into every build context")
        return FileRef(self.dir / rel, real, file_sha256(real), size)

    # sections
    def environment(self) -> Environment:
        d = self.doc
        self.known(d, "", TOP_KEYS)
        name = self.string(d, "name", "name", required=True)
        assert name is not None
        if name.startswith(RESERVED_PREFIX) and self.path.resolve().parent != CURATED_DIR.resolve():
            raise self.err(
                "name",
                f"the prefix {RESERVED_PREFIX!r} is reserved for curated environments",
                hint="`ml-env clone curated/NAME my-env` makes an editable copy under your own name",
            )
        if not matches(NAME, name):
            raise self.err(
                "name",
                f"{printable(name)!r} is not a valid environment name",
                hint="lowercase letters, digits, '.', '_', '-'; at most 63",
            )
        version = d.get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                raise self.err("version", f"must be a string or integer, got {_tname(version)}")
            version = str(version)
            if not version.strip():
                raise self.err("version", "must not be empty")
            self.one_value(version, "version")
        description = self.string(d, "description", "description", multiline=True)
        inference, inference_server = self.inference(d)

        base = self.base()
        py = self.table(d, "python", "python", PYTHON_KEYS)
        user_managed = self.boolean(py, "user_managed_dependencies", "python.user_managed_dependencies", False)
        interpreter = self.string(py, "interpreter", "python.interpreter") or "python3"
        if not matches(INTERPRETER, interpreter):
            raise self.err(
                "python.interpreter", f"{printable(interpreter)!r} is not an interpreter name or absolute path"
            )
        packages = self.requirements_list(self.strings(py, "packages", "python.packages"), "python.packages")
        requirements = tuple(
            self.text_file(r, f"python.requirements[{i}]", what="requirements file")
            for i, r in enumerate(self.strings(py, "requirements", "python.requirements"))
        )
        for i, ref in enumerate(requirements):
            try:
                ref.read().decode("utf-8")
            except UnicodeDecodeError:
                raise self.err(f"python.requirements[{i}]", "is not UTF-8 text") from None
        installer = self.choice(py, "installer", "python", INSTALLERS_PY)
        layers = self.choice(py, "layers", "python", LAYERS)
        conda_installer = self.choice(py, "conda_installer", "python", INSTALLERS)
        conda_rel = self.string(py, "conda_file", "python.conda_file")
        conda_file, conda_python = None, None
        conda_pip: tuple[str, ...] = ()
        conda_packages: tuple[str, ...] = ()
        conda_channels: tuple[str, ...] = ()
        if conda_rel is not None:
            conda_file = self.text_file(conda_rel, "python.conda_file", what="conda file")
            parts = parse_conda(conda_file.read(), conda_installer, file=self.shown, key="python.conda_file")
            if parts.mapped:
                self.warnings.append(
                    f"{conda_rel}: conda packages installed from PyPI (no conda channels are used): "
                    + listed(list(parts.mapped))
                )
            conda_python, conda_packages, conda_channels = parts.python, parts.packages, parts.channels
            conda_pip = self.requirements_list(list(parts.pip), "python.conda_file:pip")
        wheels = []
        for i, w in enumerate(self.strings(py, "wheels", "python.wheels")):
            where = f"python.wheels[{i}]"
            if "://" in w:
                raise self.err(
                    where,
                    "must be a local wheel file, not a URL",
                    hint="private wheels are copied into the build context",
                )
            if not w.endswith(".whl"):
                raise self.err(where, f"{w!r} is not a .whl file")
            wheels.append(self.wheel_file(w, where))  # inside the project first, then its name
            if not matches(WHEEL_FILE, Path(w).name):
                raise self.err(where, f"{printable(Path(w).name)!r} is not a wheel's file name (name-version"
                               "[-build]-python-abi-platform.whl, as pip and build write them)")  # fmt: skip
        names = [w.path.name for w in wheels]
        if len(set(names)) != len(names):
            raise self.err("python.wheels", "two wheels share a file name")
        index = self.index(py)
        apt_t = self.table(d, "apt", "apt", APT_KEYS)
        apt = self.strings(apt_t, "packages", "apt.packages")
        for i, a in enumerate(apt):
            if not matches(APT_PACKAGE, a):
                raise self.err(f"apt.packages[{i}]", f"{printable(a)!r} is not a Debian package name")
        variables = self.string_map(d, "env", "env", ENV_NAME, "environment variable name")
        labels = self.string_map(d, "labels", "labels", LABEL_KEY, "label key (lowercase, digits, '.', '-')")
        for k in labels:
            if k.startswith("ml-env.") or k.startswith("org.opencontainers.image."):
                raise self.err(f"labels.{k}", "is reserved: the build sets it")
        docker = self.table(d, "docker", "docker", DOCKER_KEYS)
        shm = docker.get("shm_size")
        if shm is not None:
            if parse_size(shm) is None or isinstance(shm, float):
                raise self.err("docker.shm_size", "is not a size", hint='e.g. "2g" or "512m"')
            shm = str(shm)
        build_args = self.string_map(docker, "build_args", "docker.build_args", ENV_NAME, "build argument name")
        return Environment(
            path=self.path,
            name=name,
            version=version,
            description=description,
            inference=inference,
            inference_server=inference_server,
            base=base,
            user_managed=user_managed,
            interpreter=interpreter,
            packages=packages,
            requirements=requirements,
            conda_file=conda_file,
            conda_pip=conda_pip,
            conda_python=conda_python,
            conda_installer=conda_installer,
            installer=installer,
            layers=layers,
            conda_packages=conda_packages,
            conda_channels=conda_channels,
            warnings=tuple(self.warnings),
            wheels=tuple(wheels),
            index=index,
            apt=tuple(apt),
            variables=variables,
            labels=labels,
            shm_size=shm,
            build_args=build_args,
        )

    def inference(self, d: dict[str, Any]) -> tuple[bool, str]:
        """``inference = true`` (ml-env's server) or an ``[inference]`` table choosing the server:
        ``server = "azureml"`` runs Microsoft's azmlinfsrv for scripts written against it."""
        v = d.get("inference", False)
        if isinstance(v, bool):
            return v, "builtin"
        if not isinstance(v, dict):
            raise self.err(
                "inference",
                f"must be true, false or a table, got {_tname(v)}",
                hint='e.g. [inference] server = "azureml"',
            )
        self.known(v, "inference", INFERENCE_KEYS)
        server = self.string(v, "server", "inference.server") or "builtin"
        if server not in INFERENCE_SERVERS:
            raise self.err(
                "inference.server",
                f"{printable(server, 60)!r} is not a scoring server; choose one of {', '.join(INFERENCE_SERVERS)}",
            )
        return True, server

    def base(self) -> BaseImage:
        if "base" not in self.doc:
            raise self.err("base", "is required", hint="set base.image, base.dockerfile or base.dockerfile_text")
        b = self.table(self.doc, "base", "base", BASE_KEYS)
        image = self.string(b, "image", "base.image")
        df_path = self.string(b, "dockerfile", "base.dockerfile")
        df_text = self.string(b, "dockerfile_text", "base.dockerfile_text", multiline=True)
        given = [k for k, v in (("image", image), ("dockerfile", df_path), ("dockerfile_text", df_text)) if v]
        if len(given) != 1:
            if not given:
                raise self.err("base", "needs exactly one of image, dockerfile, dockerfile_text")
            raise self.err("base", f"sets {' and '.join(given)}; exactly one of image, dockerfile, dockerfile_text")
        if image is not None:
            check_image_ref(image, self.shown, "base.image")
        df_ref = None
        if df_path is not None:
            df_ref = self.text_file(df_path, "base.dockerfile", what="Dockerfile")
            try:
                source = df_ref.text
            except UnicodeDecodeError:
                raise self.err("base.dockerfile", "is not UTF-8 text") from None
            check_base_dockerfile(source, self.shown, "base.dockerfile")
        if df_text is not None:
            check_base_dockerfile(df_text, self.shown, "base.dockerfile_text")
        registry = None
        if "registry" in b:
            r = self.table(b, "registry", "base.registry", REGISTRY_KEYS | {"password"})
            if "password" in r:
                raise self.err(
                    "base.registry.password",
                    "a password must not be written in the environment file",
                    hint="set base.registry.password_env to the name of an environment variable that holds it",
                )
            address = self.string(r, "address", "base.registry.address", required=True)
            assert address is not None
            if "/" in address or " " in address or "@" in address:
                raise self.err("base.registry.address", "is not a registry host[:port]")
            username = self.string(r, "username", "base.registry.username")
            pw_env = self.string(r, "password_env", "base.registry.password_env")
            if pw_env is not None and not matches(ENV_NAME, pw_env):
                raise self.err("base.registry.password_env", f"{pw_env!r} is not an environment variable name")
            if (username is None) != (pw_env is None):
                raise self.err("base.registry", "username and password_env go together")
            registry = BaseRegistry(address, username, pw_env)
        return BaseImage(image=image, dockerfile=df_ref, dockerfile_text=df_text, registry=registry)

    def requirements_list(self, items: list[str], where: str) -> tuple[str, ...]:
        out: dict[str, str] = {}
        for i, item in enumerate(items):
            if has_control(item):
                raise self.err(f"{where}[{i}]", "must not contain control characters (newline, NUL, ...)")
            try:
                req = Requirement(item)
            except InvalidRequirement:
                raise self.err(f"{where}[{i}]", f"{printable(item)!r} is not a valid requirement (PEP 508)") from None
            if req.url:
                parts = urlsplit(req.url)
                if "@" in parts.netloc or parts.query or parts.password:
                    # the canonical spec is stored as an image label: a token here would be published
                    raise self.err(
                        f"{where}[{i}]",
                        "a URL with credentials or a query string must not be written here",
                        hint="use a private index via index_url_env, or a local wheel in python.wheels",
                    )
            name = canonicalize_name(req.name)
            req.name = name
            text = str(req)
            if name in out and out[name] != text:
                raise self.err(f"{where}[{i}]", f"{name} is listed twice with different versions")
            out[name] = text
        return tuple(out.values())

    def index(self, py: dict[str, Any]) -> IndexConfig:
        url = self.string(py, "index_url", "python.index_url")
        url_env = self.string(py, "index_url_env", "python.index_url_env")
        if url and url_env:
            raise self.err("python.index_url", "set index_url or index_url_env, not both")
        extra = self.strings(py, "extra_index_urls", "python.extra_index_urls")
        extra_env = self.strings(py, "extra_index_urls_env", "python.extra_index_urls_env")
        for key, u in [("python.index_url", url)] + [(f"python.extra_index_urls[{i}]", u) for i, u in enumerate(extra)]:
            if u is None:
                continue
            parts = urlsplit(u)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise self.err(key, "is not an http(s) URL")
            if "@" in parts.netloc or parts.query:
                raise self.err(
                    key,
                    "credentials must not be written in the environment file",
                    hint="put the whole URL in an environment variable and name it in index_url_env / extra_index_urls_env",
                )
        for key, n in [("python.index_url_env", url_env)] + [
            (f"python.extra_index_urls_env[{i}]", n) for i, n in enumerate(extra_env)
        ]:
            if n is not None and not matches(ENV_NAME, n):
                raise self.err(key, f"{printable(n)!r} is not an environment variable name")
        return IndexConfig(url, url_env, tuple(extra), tuple(extra_env))


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)
