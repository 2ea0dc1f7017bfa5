"""The steps that run the Python installer (pip or uv) in a build: their mounts, the shell lines
that read the build's secrets, and the installer's own command line. The renderer
(``build.dockerfile``) and the layer stages (``build.layering``) both write them."""

from __future__ import annotations

import re

from .stack import UV_VERSION

__all__ = ["installer_parts", "variables_first", "run_line", "MOUNT_ROOT", "CACHE_ROOT", "UV_HOME"]

MOUNT_ROOT = "/tmp/ml-env"
SECRET_CA = "ml-env-ca"
SECRET_PIP = "ml-env-pip"
SECRET_UV = "ml-env-uv"  # a shell snippet exporting UV_INDEX_URL / UV_EXTRA_INDEX_URL for a private index
CACHE_ROOT = "/tmp/ml-env-cache"  # installers' download caches (BuildKit cache mounts)
UV_HOME = "/tmp/ml-env-uv"  # uv itself, in a cache mount: never part of the image


def installer_parts(python: str, installer: str, *, user_managed: bool) -> tuple[list[str], str, str]:
    """What every step running the installer shares: its mounts (the CA and the private index as
    secrets, the download cache), the shell lines that read those secrets, and the command that
    installs (``pip install`` or ``uv pip install`` for ``python``, options included).

    The installers' download caches are BuildKit cache mounts: a rebuilt layer does not download
    every wheel again, and nothing of the cache lands in a layer. uv itself lives in a cache mount
    too (installed there with pip once), so it is never part of the image."""
    mounts = [
        f"--mount=type=secret,id={SECRET_CA},required=false",
        f"--mount=type=secret,id={SECRET_PIP},required=false",
    ]
    if installer == "uv":
        mounts += [
            f"--mount=type=secret,id={SECRET_UV},required=false",
            f"--mount=type=cache,id=ml-env-uv-{UV_VERSION},target={UV_HOME},sharing=locked",
            f"--mount=type=cache,id=ml-env-uv-cache,target={CACHE_ROOT}/uv,sharing=locked",
        ]
    else:
        mounts.append(f"--mount=type=cache,id=ml-env-pip-cache,target={CACHE_ROOT}/pip,sharing=locked")
    setup = (
        f"if [ -s /run/secrets/{SECRET_CA} ]; then export PIP_CERT=/run/secrets/{SECRET_CA} "
        f"SSL_CERT_FILE=/run/secrets/{SECRET_CA}; fi; \\\n"
        f"    if [ -s /run/secrets/{SECRET_PIP} ]; then export PIP_CONFIG_FILE=/run/secrets/{SECRET_PIP}; fi; \\\n"
    )
    if installer == "uv":
        setup += (
            f"    if [ -s /run/secrets/{SECRET_UV} ]; then . /run/secrets/{SECRET_UV}; fi; \\\n"
            f"    if [ ! -x {UV_HOME}/bin/uv ]; then PIP_BREAK_SYSTEM_PACKAGES=1 {python} -m pip install -q "
            f"--no-cache-dir --disable-pip-version-check --no-input --target {UV_HOME} uv=={UV_VERSION}; fi; \\\n"
        )
        command = f"UV_LINK_MODE=copy {UV_HOME}/bin/uv pip install --python {python} --cache-dir {CACHE_ROOT}/uv" + (
            " --break-system-packages" if user_managed else ""
        )
    else:
        prefix = "PIP_BREAK_SYSTEM_PACKAGES=1 " if user_managed else ""
        command = f"{prefix}{python} -m pip install --cache-dir {CACHE_ROOT}/pip --disable-pip-version-check --no-input"
    return mounts, setup, command


def variables_first(command: str) -> tuple[str, str]:
    """``VAR=value ... program args`` as (the variables, the rest): the variables go before
    split.py, which passes its environment on to the command it runs."""
    m = re.fullmatch(r"((?:[A-Z_]+=\S+ )*)(.*)", command, re.S)
    assert m is not None  # the pattern matches every string
    return m.group(1), m.group(2)


def run_line(mounts: list[str], body: str) -> str:
    return "RUN " + " \\\n    ".join(mounts) + " \\\n    " + body
