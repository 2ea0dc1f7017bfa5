"""Conda environment files, read without conda: what they ask for, and PyPI names for the rest.

Conda channels are often unreachable. A conda file's ``python``/``pip`` entries and ``pip:``
list are installed with pip; other conda packages whose PyPI names are known are installed from
PyPI with the version translated (listed in a warning); anything else is an error naming the
packages, unless ``python.conda_installer = "conda"`` hands them to the base image's conda.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import SpecError
from ..safe.grammar import CONDA_CHANNEL, matches

__all__ = ["CondaParts", "parse_conda", "CONDA_TO_PYPI", "INSTALLERS"]

INSTALLERS = ("pip", "conda")
ALLOWED = {"python", "pip"}
MAX_LISTED = 10  # names shown in one error or warning line
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
# `conda env export` lists every package of the environment with its build string (_libgcc_mutex,
# openssl, ...): what was asked for is what --from-history exports
EXPORTED = (
    "this is `conda env export` output (every package, with build strings): export again with "
    '`conda env export --from-history` (the packages you asked for), or set python.conda_installer = "conda" '
    "on a base image with conda"
)
# [channel::]name [op version]; spaces only (never a newline), so a package can be rendered safely
_DEP = re.compile(r"(?:([\w.-]+)::)?([A-Za-z0-9_.-]+) *(?:([=<>!~ ]+) *([A-Za-z0-9_.*+!,|<>=~ -]*))?", re.ASCII)


@dataclass(frozen=True)
class CondaParts:
    python: str | None  # the python pin, e.g. "3.11"
    pip: tuple[str, ...]  # requirements for pip (the pip: list and translated conda packages)
    packages: tuple[str, ...]  # conda packages for the base image's conda (installer "conda")
    channels: tuple[str, ...]
    mapped: tuple[str, ...]  # "numpy=1.26.4 -> numpy==1.26.4", for the warning


def listed(items: list[str]) -> str:
    """A bounded, comma-separated list for one message line."""
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def parse_conda(data: bytes, installer: str, *, file: str | None, key: str) -> CondaParts:
    """What a conda environment file installs. Errors name the file and key, and the entry's
    position, never the file's raw text."""

    def err(msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=file, key=key, hint=hint)

    from ..safe.yamlsafe import load_yaml

    doc = load_yaml(data, file=file, key=key)
    if not isinstance(doc, dict):
        raise err("not a conda environment file (expected a mapping)")
    deps = doc.get("dependencies", [])
    if not isinstance(deps, list):
        raise err("dependencies must be a list")
    channels = doc.get("channels") or []
    if not isinstance(channels, list) or not all(matches(CONDA_CHANNEL, c) for c in channels):
        raise err("channels must be a list of channel names")
    python_ver = None
    pip_items: list[str] = []
    mapped: list[str] = []
    conda_pkgs: list[str] = []
    unsupported: list[str] = []
    for i, dep in enumerate(deps):
        if isinstance(dep, dict):
            if set(dep) != {"pip"} or not isinstance(dep["pip"], list):
                raise err(f"dependencies[{i}]: only a 'pip:' list may appear as a mapping")
            for j, item in enumerate(dep["pip"]):
                if not isinstance(item, str):
                    raise err(f"dependencies[{i}].pip[{j}] is not a string")
                if item.startswith("-"):
                    raise err(f"dependencies[{i}].pip[{j}]: pip options are not supported in a conda file")
                pip_items.append(item)
            continue
        if not isinstance(dep, str):
            raise err(f"dependencies[{i}] is not a string")
        m = _DEP.fullmatch(dep.strip())
        if not m:
            raise err(f"dependencies[{i}] is not a conda package specification")
        pkg, op, ver = m.group(2).lower(), (m.group(3) or "").strip(), (m.group(4) or "").strip() or None
        if pkg in ALLOWED:
            if pkg == "python" and ver:
                python_ver = ver.lstrip("=").split("=")[0]
            continue
        if installer == "conda":
            conda_pkgs.append(m.group(0).strip())
        elif pkg in CONDA_TO_PYPI:
            pip_req = CONDA_TO_PYPI[pkg] + _version_to_pep440(op, ver)
            pip_items.append(pip_req)
            mapped.append(f"{m.group(0).strip()} -> {pip_req}")
        else:
            unsupported.append(m.group(0).strip())
    if unsupported:
        exported = "prefix" in doc or any(d.startswith("_") or d.count("=") >= 2 for d in unsupported)
        raise err(
            f"these conda packages have no known PyPI name and no conda can install them: {listed(unsupported)}",
            hint=EXPORTED
            if exported
            else 'move them to the pip: section, or set python.conda_installer = "conda" on a base image with conda',
        )
    return CondaParts(python_ver, tuple(pip_items), tuple(conda_pkgs), tuple(channels), tuple(mapped))


def _version_to_pep440(op: str, ver: str | None) -> str:
    """conda ``numpy=1.26.4`` -> ``==1.26.4``; ``=1.26`` -> ``==1.26.*``; build strings dropped."""
    if not ver:
        return ""
    ver = ver.split("=")[0].strip() if op.strip() in ("=", "==", "") else ver
    op = op.strip()
    if op in ("", "="):
        return f"=={ver}" if ver.count(".") >= 2 or "*" in ver else f"=={ver}.*"
    return f"{op}{ver}"
