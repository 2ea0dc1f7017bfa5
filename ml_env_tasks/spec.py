"""The Environment model: read our TOML environment files (tomlkit), validate them strictly.

Every error names the file and the key at fault (``envs/x.toml: python.packages[2]: ...``).
Referenced files (requirements, wheels, conda file, base Dockerfile, lock) are read here, once,
so that hashing and rendering work on contents, never on paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomlkit
import tomlkit.exceptions
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .errors import SpecError
from .refs import IMAGE_RE

__all__ = [
    "BaseImage",
    "BaseRegistry",
    "Environment",
    "FileRef",
    "IndexConfig",
    "load",
    "parse",
    "lock_packages",
    "lock_path_for",
]

RESERVED_PREFIX = "ml-env-"
CURATED_DIR = Path(__file__).parent / "curated"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:_-]+)?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
SHM_RE = re.compile(r"^[0-9]+[bkmgBKMG]?$")
MAX_FILE = 512 * 1024 * 1024

TOP_KEYS = {"name", "version", "description", "inference", "base", "python", "apt", "env", "labels", "docker"}
BASE_KEYS = {"image", "dockerfile", "dockerfile_text", "registry"}
REGISTRY_KEYS = {"address", "username", "password_env"}
PYTHON_KEYS = {
    "conda_installer",
    "user_managed_dependencies",
    "interpreter",
    "packages",
    "requirements",
    "conda_file",
    "wheels",
    "index_url",
    "index_url_env",
    "extra_index_urls",
    "extra_index_urls_env",
}
APT_KEYS = {"packages"}
DOCKER_KEYS = {"shm_size", "build_args"}
CONDA_ALLOWED = {"python", "pip"}
CONDA_INSTALLERS = ("pip", "conda")
# conda package name -> PyPI name, for conda files installed without conda (no channels reachable)
CONDA_TO_PYPI = {
    **{
        n: n
        for n in (
            "numpy scipy scikit-learn pandas matplotlib seaborn joblib threadpoolctl statsmodels sympy networkx "
            "pillow pyyaml requests tqdm click jinja2 h5py numba cython six protobuf pyarrow psutil lightgbm "
            "xgboost catboost scikit-image opencv-python-headless tabulate toolz cloudpickle dill fsspec "
            "mlflow optuna shap plotly bokeh nltk gensim spacy transformers tokenizers datasets onnx onnxruntime "
            "tensorflow keras pyspark dask distributed polars sqlalchemy typing-extensions packaging"
        ).split()
    },
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "torchvision": "torchvision",
    "py-xgboost": "xgboost",
    "opencv": "opencv-python-headless",
    "matplotlib-base": "matplotlib",
    "pytables": "tables",
}


@dataclass(frozen=True)
class FileRef:
    """A file the spec references: where it was, what it holds."""

    path: Path
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


@dataclass(frozen=True)
class BaseRegistry:
    address: str
    username: str | None = None
    password_env: str | None = None


@dataclass(frozen=True)
class BaseImage:
    image: str | None = None
    dockerfile: FileRef | None = None  # a path, read
    dockerfile_text: str | None = None  # inline text
    registry: BaseRegistry | None = None
    digest: str | None = None  # filled by --pin-base

    @property
    def dockerfile_source(self) -> str | None:
        if self.dockerfile is not None:
            return self.dockerfile.text
        return self.dockerfile_text


@dataclass(frozen=True)
class IndexConfig:
    """pip index settings. Values are either literal URLs (no credentials) or env var names."""

    index_url: str | None = None
    index_url_env: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    extra_index_urls_env: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.index_url or self.index_url_env or self.extra_index_urls or self.extra_index_urls_env)


@dataclass(frozen=True)
class Environment:
    path: Path
    name: str
    version: str | None = None
    description: str | None = None
    inference: bool = False  # add the scoring server (Azure's inferencing_stack_version)
    base: BaseImage = field(default_factory=BaseImage)
    user_managed: bool = False
    interpreter: str = "python3"
    packages: tuple[str, ...] = ()
    requirements: tuple[FileRef, ...] = ()
    conda_file: FileRef | None = None
    conda_pip: tuple[str, ...] = ()
    conda_python: str | None = None
    conda_installer: str = "pip"
    conda_packages: tuple[str, ...] = ()  # installed with the base image's conda (conda_installer = "conda")
    conda_channels: tuple[str, ...] = ()
    wheels: tuple[FileRef, ...] = ()
    index: IndexConfig = field(default_factory=IndexConfig)
    apt: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    lock: FileRef | None = None  # only set when building --locked
    warnings: tuple[str, ...] = ()  # things the user should know, e.g. conda packages taken from PyPI

    @property
    def has_python_deps(self) -> bool:
        return bool(self.packages or self.requirements or self.conda_pip or self.wheels or self.inference)

    @property
    def unpinned(self) -> list[str]:
        """Packages whose version is not fixed with ==/===: the lock is what tells their version."""
        out = []
        for p in self.packages + self.conda_pip:
            req = Requirement(p)
            if req.url:
                continue
            if not any(s.operator in ("==", "===") and "*" not in s.version for s in req.specifier):
                out.append(p)
        return out

    def with_lock(self, lock: FileRef | None) -> Environment:
        return dataclasses.replace(self, lock=lock)

    def with_base_digest(self, digest: str) -> Environment:
        return dataclasses.replace(self, base=dataclasses.replace(self.base, digest=digest))


def lock_packages(text: str) -> dict[str, str]:
    """``name -> version`` from a lock file, comments and blank lines ignored, names normalised."""
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, _, ver = line.partition("==")
            out[canonicalize_name(name)] = ver.strip()
    return dict(sorted(out.items()))


def lock_path_for(spec_path: Path) -> Path:
    """``envs/sklearn.toml`` → ``envs/sklearn.lock``."""
    return spec_path.with_suffix(".lock")


# --- loading -----------------------------------------------------------------------------


def load(path: str | Path, *, locked: bool = False) -> Environment:
    """Read and validate an environment file. ``locked`` also reads the lock file beside it."""
    p = Path(path)
    shown = str(path)
    if not p.exists():
        raise SpecError("environment file not found", file=shown)
    if p.is_dir():
        raise SpecError("is a directory, expected an environment .toml file", file=shown)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SpecError("not UTF-8 text", file=shown) from None
    except OSError as e:
        raise SpecError(f"cannot read: {e.strerror}", file=shown) from None
    env = parse(text, p, shown=shown)
    if locked:
        lp = lock_path_for(p)
        if not lp.exists():
            raise SpecError(
                f"--locked needs the lock file {lp}, which does not exist",
                file=shown,
                hint="build once without --locked to write it",
            )
        env = env.with_lock(FileRef(lp, lp.read_bytes()))
    return env


def parse(text: str, path: Path, *, shown: str | None = None) -> Environment:
    shown = shown or str(path)
    try:
        doc = tomlkit.parse(text).unwrap()
    except tomlkit.exceptions.ParseError as e:
        raise SpecError(f"invalid TOML: {e}", file=shown, line=getattr(e, "line", None)) from None
    return _Validator(doc, path, shown).environment()


class _Validator:
    def __init__(self, doc: dict[str, Any], path: Path, shown: str) -> None:
        self.warnings: list[str] = []
        self.doc = doc
        self.path = path
        self.dir = path.parent
        self.shown = shown

    def err(self, key: str, msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=self.shown, key=key, hint=hint)

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

    def string(self, d: dict[str, Any], key: str, where: str, *, required: bool = False) -> str | None:
        if key not in d:
            if required:
                raise self.err(where, "is required")
            return None
        v = d[key]
        if not isinstance(v, str):
            raise self.err(where, f"must be a string, got {_tname(v)}")
        if not v.strip():
            raise self.err(where, "must not be empty")
        return v

    def boolean(self, d: dict[str, Any], key: str, where: str, default: bool) -> bool:
        v = d.get(key, default)
        if not isinstance(v, bool):
            raise self.err(where, f"must be true or false, got {_tname(v)}")
        return v

    def strings(self, d: dict[str, Any], key: str, where: str) -> list[str]:
        v = d.get(key, [])
        if not isinstance(v, list):
            raise self.err(where, f"must be an array of strings, got {_tname(v)}")
        for i, item in enumerate(v):
            if not isinstance(item, str):
                raise self.err(f"{where}[{i}]", f"must be a string, got {_tname(item)}")
            if not item.strip():
                raise self.err(f"{where}[{i}]", "must not be empty")
        return list(v)

    def string_map(self, d: dict[str, Any], key: str, where: str) -> dict[str, str]:
        v = d.get(key, {})
        if not isinstance(v, dict):
            raise self.err(where, f"must be a table of strings, got {_tname(v)}")
        out = {}
        for k, val in v.items():
            if isinstance(val, bool) or not isinstance(val, (str, int, float)):
                raise self.err(f"{where}.{k}", f"must be a string, got {_tname(val)}")
            out[str(k)] = val if isinstance(val, str) else str(val)
        return out

    def file(self, rel: str, where: str, *, what: str) -> FileRef:
        p = (self.dir / rel) if not Path(rel).is_absolute() else Path(rel)
        try:
            if p.is_dir():
                raise self.err(where, f"{what} {rel!r} is a directory, expected a file")
            size = p.stat().st_size
            if size > MAX_FILE:
                raise self.err(where, f"{what} {rel!r} is larger than {MAX_FILE // 2**20} MiB")
            return FileRef(p, p.read_bytes())
        except FileNotFoundError:
            raise self.err(where, f"{what} {rel!r} not found (looked at {p})") from None
        except OSError as e:
            raise self.err(where, f"{what} {rel!r} cannot be read: {e.strerror}") from None

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
        if not NAME_RE.match(name):
            raise self.err(
                "name",
                f"{name!r} is not a valid environment name",
                hint="lowercase letters, digits, '.', '_', '-'; at most 63",
            )
        version = d.get("version")
        if version is not None:
            if isinstance(version, bool) or not isinstance(version, (str, int)):
                raise self.err("version", f"must be a string or integer, got {_tname(version)}")
            version = str(version)
            if not version.strip():
                raise self.err("version", "must not be empty")
        description = self.string(d, "description", "description")
        inference = self.boolean(d, "inference", "inference", False)

        base = self.base()
        py = self.table(d, "python", "python", PYTHON_KEYS)
        user_managed = self.boolean(py, "user_managed_dependencies", "python.user_managed_dependencies", False)
        interpreter = self.string(py, "interpreter", "python.interpreter") or "python3"
        if not re.match(r"^(/[\w.+-]+)+$|^[\w.+-]+$", interpreter):
            raise self.err("python.interpreter", f"{interpreter!r} is not an interpreter name or absolute path")
        packages = self.requirements_list(self.strings(py, "packages", "python.packages"), "python.packages")
        requirements = tuple(
            self.file(r, f"python.requirements[{i}]", what="requirements file")
            for i, r in enumerate(self.strings(py, "requirements", "python.requirements"))
        )
        for i, ref in enumerate(requirements):
            try:
                ref.data.decode("utf-8")
            except UnicodeDecodeError:
                raise self.err(f"python.requirements[{i}]", f"{ref.path} is not UTF-8 text") from None
        conda_installer = self.string(py, "conda_installer", "python.conda_installer") or "pip"
        if conda_installer not in CONDA_INSTALLERS:
            raise self.err(
                "python.conda_installer", f"{conda_installer!r}: choose one of {', '.join(CONDA_INSTALLERS)}"
            )
        conda_rel = self.string(py, "conda_file", "python.conda_file")
        conda_file, conda_pip, conda_python = None, (), None
        conda_packages: tuple[str, ...] = ()
        conda_channels: tuple[str, ...] = ()
        if conda_rel is not None:
            conda_file = self.file(conda_rel, "python.conda_file", what="conda file")
            conda_python, conda_pip, conda_packages, conda_channels = self.conda(conda_file, conda_installer)
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
            ref = self.file(w, where, what="wheel")
            if not ref.data.startswith(b"PK"):
                raise self.err(where, f"{w!r} is not a wheel (not a zip archive)")
            wheels.append(ref)
        names = [w.path.name for w in wheels]
        if len(set(names)) != len(names):
            raise self.err("python.wheels", "two wheels share a file name")
        index = self.index(py)
        apt_t = self.table(d, "apt", "apt", APT_KEYS)
        apt = self.strings(apt_t, "packages", "apt.packages")
        for i, a in enumerate(apt):
            if not APT_RE.match(a):
                raise self.err(f"apt.packages[{i}]", f"{a!r} is not a Debian package name")
        env = self.string_map(d, "env", "env")
        for k in env:
            if not ENV_NAME_RE.match(k):
                raise self.err(f"env.{k}", "is not a valid environment variable name")
        labels = self.string_map(d, "labels", "labels")
        for k in labels:
            if not LABEL_RE.match(k):
                raise self.err(f"labels.{k}", "is not a valid label key", hint="lowercase, digits, '.', '-'")
            if k.startswith("ml-env.") or k.startswith("org.opencontainers.image."):
                raise self.err(f"labels.{k}", "is reserved: the build sets it")
        docker = self.table(d, "docker", "docker", DOCKER_KEYS)
        shm = docker.get("shm_size")
        if shm is not None:
            if isinstance(shm, bool) or not isinstance(shm, (str, int)) or not SHM_RE.match(str(shm)):
                raise self.err("docker.shm_size", f"{shm!r} is not a size", hint='e.g. "2g" or "512m"')
            shm = str(shm)
        build_args = self.string_map(docker, "build_args", "docker.build_args")
        for k in build_args:
            if not ENV_NAME_RE.match(k):
                raise self.err(f"docker.build_args.{k}", "is not a valid build argument name")
        return Environment(
            path=self.path,
            name=name,
            version=version,
            description=description,
            inference=inference,
            base=base,
            user_managed=user_managed,
            interpreter=interpreter,
            packages=packages,
            requirements=requirements,
            conda_file=conda_file,
            conda_pip=conda_pip,
            conda_python=conda_python,
            conda_installer=conda_installer,
            conda_packages=conda_packages,
            conda_channels=conda_channels,
            warnings=tuple(self.warnings),
            wheels=tuple(wheels),
            index=index,
            apt=tuple(apt),
            env=env,
            labels=labels,
            shm_size=shm,
            build_args=build_args,
        )

    def base(self) -> BaseImage:
        if "base" not in self.doc:
            raise self.err("base", "is required", hint="set base.image, base.dockerfile or base.dockerfile_text")
        b = self.table(self.doc, "base", "base", BASE_KEYS)
        image = self.string(b, "image", "base.image")
        df_path = self.string(b, "dockerfile", "base.dockerfile")
        df_text = self.string(b, "dockerfile_text", "base.dockerfile_text")
        given = [k for k, v in (("image", image), ("dockerfile", df_path), ("dockerfile_text", df_text)) if v]
        if len(given) != 1:
            if not given:
                raise self.err("base", "needs exactly one of image, dockerfile, dockerfile_text")
            raise self.err("base", f"sets {' and '.join(given)}; exactly one of image, dockerfile, dockerfile_text")
        if image is not None:
            check_image_ref(image, self.shown, "base.image")
        df_ref = None
        if df_path is not None:
            df_ref = self.file(df_path, "base.dockerfile", what="Dockerfile")
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
            if "/" in address or " " in address:
                raise self.err("base.registry.address", f"{address!r} is not a registry host[:port]")
            username = self.string(r, "username", "base.registry.username")
            pw_env = self.string(r, "password_env", "base.registry.password_env")
            if pw_env is not None and not ENV_NAME_RE.match(pw_env):
                raise self.err("base.registry.password_env", f"{pw_env!r} is not an environment variable name")
            if (username is None) != (pw_env is None):
                raise self.err("base.registry", "username and password_env go together")
            registry = BaseRegistry(address, username, pw_env)
        return BaseImage(image=image, dockerfile=df_ref, dockerfile_text=df_text, registry=registry)

    def requirements_list(self, items: list[str], where: str) -> tuple[str, ...]:
        out: dict[str, str] = {}
        for i, item in enumerate(items):
            try:
                req = Requirement(item)
            except InvalidRequirement as e:
                reason = str(e).splitlines()[0]
                raise self.err(f"{where}[{i}]", f"{item!r} is not a valid requirement: {reason}") from None
            if req.url and ("@" in (urlsplit(req.url).netloc or "")):
                raise self.err(
                    f"{where}[{i}]",
                    "a URL with credentials must not be written here",
                    hint="use a private index via index_url_env or a local wheel",
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
                raise self.err(key, f"{u!r} is not an http(s) URL")
            if "@" in parts.netloc or parts.query:
                raise self.err(
                    key,
                    "credentials must not be written in the environment file",
                    hint="put the whole URL in an environment variable and name it in index_url_env / extra_index_urls_env",
                )
        for key, n in [("python.index_url_env", url_env)] + [
            (f"python.extra_index_urls_env[{i}]", n) for i, n in enumerate(extra_env)
        ]:
            if n is not None and not ENV_NAME_RE.match(n):
                raise self.err(key, f"{n!r} is not an environment variable name")
        return IndexConfig(url, url_env, tuple(extra), tuple(extra_env))

    def conda(
        self, ref: FileRef, installer: str
    ) -> tuple[str | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """(python version, pip requirements, conda packages, channels) of a conda environment file.

        With the pip installer, conda packages whose PyPI names are known become pip requirements
        (listed in a warning); any other conda package is an error naming it.
        """
        import yaml

        where = "python.conda_file"
        try:
            data = yaml.safe_load(ref.data)
        except yaml.YAMLError as e:
            raise self.err(where, f"{ref.path} is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise self.err(where, f"{ref.path} is not a conda environment file (expected a mapping)")
        deps = data.get("dependencies", [])
        if not isinstance(deps, list):
            raise self.err(where, f"{ref.path}: dependencies must be a list")
        channels = data.get("channels") or []
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise self.err(where, f"{ref.path}: channels must be a list of names")
        python_ver = None
        pip_items: list[str] = []
        mapped: list[str] = []
        conda_pkgs: list[str] = []
        unsupported = []
        for dep in deps:
            if isinstance(dep, dict):
                if set(dep) != {"pip"} or not isinstance(dep["pip"], list):
                    raise self.err(where, f"{ref.path}: only a 'pip:' list may appear as a mapping in dependencies")
                for item in dep["pip"]:
                    if not isinstance(item, str):
                        raise self.err(where, f"{ref.path}: pip entries must be strings, got {item!r}")
                    if item.startswith("-"):
                        raise self.err(where, f"{ref.path}: pip option {item!r} is not supported in a conda file")
                    pip_items.append(item)
                continue
            if not isinstance(dep, str):
                raise self.err(where, f"{ref.path}: dependency {dep!r} is not a string")
            m = re.match(r"^(?:([\w.-]+)::)?([A-Za-z0-9_.-]+)\s*(?:([=<>!~ ]+)\s*(.*))?$", dep.strip())
            if not m:
                raise self.err(where, f"{ref.path}: cannot read dependency {dep!r}")
            pkg, op, ver = m.group(2).lower(), (m.group(3) or "").strip(), (m.group(4) or "").strip() or None
            if pkg in CONDA_ALLOWED:
                if pkg == "python" and ver:
                    python_ver = ver.lstrip("=").split("=")[0]
                continue
            if installer == "conda":
                conda_pkgs.append(dep.strip())
            elif pkg in CONDA_TO_PYPI:
                pip_req = CONDA_TO_PYPI[pkg] + _conda_version_to_pep440(op, ver)
                pip_items.append(pip_req)
                mapped.append(f"{dep.strip()} -> {pip_req}")
            else:
                unsupported.append(dep.strip())
        if unsupported:
            raise self.err(
                where,
                f"{ref.path}: these conda packages have no known PyPI name and no conda can install them: "
                + ", ".join(unsupported),
                hint='move them to the pip: section, or set python.conda_installer = "conda" on a base image with conda',
            )
        if mapped:
            self.warnings.append(
                f"{ref.path}: conda packages installed from PyPI (no conda channels are used): " + "; ".join(mapped)
            )
        reqs = self.requirements_list(pip_items, f"{where}:pip")
        return python_ver, reqs, tuple(conda_pkgs), tuple(channels)


def _conda_version_to_pep440(op: str, ver: str | None) -> str:
    """conda ``numpy=1.26.4`` -> ``==1.26.4``; ``=1.26`` -> ``==1.26.*``; build strings dropped."""
    if not ver:
        return ""
    ver = ver.split("=")[0].strip() if op.strip() in ("=", "==", "") else ver
    op = op.strip()
    if op in ("", "="):
        return f"=={ver}" if ver.count(".") >= 2 or "*" in ver else f"=={ver}.*"
    return f"{op}{ver}"


def check_image_ref(ref: str, file: str | None, key: str) -> None:
    if ref != ref.strip() or not IMAGE_RE.match(ref):
        raise SpecError(
            f"{ref!r} is not a valid image reference", file=file, key=key, hint="e.g. registry:5000/team/image:tag"
        )


def check_base_dockerfile(text: str, file: str | None, key: str) -> None:
    """What we need of a base Dockerfile: a FROM, no context files, no frontend pulled from a hub."""
    lines = _logical_lines(text)
    if not lines:
        raise SpecError("the base Dockerfile is empty", file=file, key=key)
    first = text.lstrip().splitlines()[0] if text.strip() else ""
    if re.match(r"^#\s*syntax\s*=", first, re.I):
        raise SpecError(
            "a '# syntax=' line pulls a frontend image from a registry; remove it", file=file, key=key, line=1
        )
    stages: list[str] = []
    saw_from = False
    for lineno, instr, args in lines:
        if instr == "FROM":
            saw_from = True
            parts = [p for p in args.split() if not p.startswith("--")]
            if not parts:
                raise SpecError("FROM without an image", file=file, key=key, line=lineno)
            src = parts[0]
            if len(parts) >= 3 and parts[1].lower() == "as":
                alias = parts[2].lower()
                if alias == src.lower():
                    raise SpecError(f"stage {alias!r} is built FROM itself (a cycle)", file=file, key=key, line=lineno)
                stages.append(alias)
        elif not saw_from and instr not in ("ARG",):
            raise SpecError(f"{instr} before the first FROM", file=file, key=key, line=lineno)
        elif instr in ("COPY", "ADD"):
            opts = [p for p in args.split() if p.startswith("--")]
            if not any(o.startswith("--from=") for o in opts) and not re.search(r"https?://", args):
                raise SpecError(
                    f"{instr} from the build context is not supported in a base Dockerfile (it has no context)",
                    file=file,
                    key=key,
                    line=lineno,
                    hint="use COPY --from=<stage>, or put the files in a wheel",
                )
    if not saw_from:
        raise SpecError("the base Dockerfile has no FROM instruction", file=file, key=key)


def _logical_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out: list[tuple[int, str, str]] = []
    buf = ""
    start = 0
    for i, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if not buf:
            start = i
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        parts = buf.split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
        buf = ""
    if buf:
        parts = buf.split(None, 1)
        out.append((start, parts[0].upper(), parts[1] if len(parts) > 1 else ""))
    return out


def last_user(text: str) -> str | None:
    """The USER the base Dockerfile leaves in force, so our steps can run as root and restore it."""
    user = None
    for _, instr, args in _logical_lines(text):
        if instr == "FROM":
            user = None
        elif instr == "USER":
            user = args.strip()
    return user


def _tname(v: Any) -> str:
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(v), type(v).__name__)
