"""Whole-string grammars for every name and value the project accepts from outside.

Each pattern is matched with ``fullmatch`` (never ``match`` with ``$``, which accepts a trailing
newline) and with ASCII classes (``\\w`` would otherwise admit any Unicode letter). A value that
passes one of these can never add a line to a Dockerfile, a header or a log.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "digits",
    "APT_PACKAGE",
    "ENV_NAME",
    "WHEEL_FILE",
    "LABEL_KEY",
    "NAME",
    "RUN_ID",
    "TAG",
    "INPUT_NAME",
    "CONDA_CHANNEL",
    "INTERPRETER",
    "SERVICE_NAME",
    "MODEL_NAME",
    "ENTRY_SCRIPT",
    "matches",
    "has_control",
    "printable",
    "parse_size",
    "bounded",
    "toml_error",
]

A: Final = re.ASCII
NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}", A)
APT_PACKAGE: Final = re.compile(r"[a-z0-9][a-z0-9+.-]*(=[A-Za-z0-9.+~:_-]+)?", A)
ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", A)
# a wheel's file name (the binary distribution format): name-version[-build]-python-abi-platform.whl,
# each part of letters, digits, '_' and '.' (a version also '!' and '+'; a build tag starts with a
# digit). Nothing a shell, a Dockerfile or a --mount option would read otherwise: no '$', ',', '='.
WHEEL_FILE: Final = re.compile(
    r"[A-Za-z0-9_.]+-[A-Za-z0-9_.!+]+(-[0-9][A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl", A
)
LABEL_KEY: Final = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?", A)
TAG: Final = re.compile(r"\w[\w.-]{0,127}", A)
INPUT_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}", A)
RUN_ID: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}", A)
CONDA_CHANNEL: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/+-]*", A)
INTERPRETER: Final = re.compile(r"(/[\w.+-]+)+|[\w.+-]+", A)
SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,60}", A)
MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", A)
ENTRY_SCRIPT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}\.py", A)  # a scoring entry script's file name
_SIZE: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([kmgtp]?)(?:i?b)?", re.ASCII | re.IGNORECASE)
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_LINE: Final = 2000


def matches(pattern: re.Pattern[str], value: object) -> bool:
    """True when ``value`` is a string the whole of which matches ``pattern``."""
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def has_control(value: str) -> bool:
    """CR, LF, NUL or another control character (a tab is allowed)."""
    return _CONTROL.search(value) is not None


def digits(text: str) -> bool:
    """ASCII decimal digits only: ``str.isdigit()`` also takes ``'¹'`` or ``'٣'``, which ``int()``
    then refuses (an exit 70 where bad input deserves one line)."""
    return text.isascii() and text.isdigit()


def printable(value: object, limit: int = 200) -> str:
    """``value`` safe to print on one line: control characters escaped, length bounded.

    For text that came from outside (a registry's labels, a ledger, a record file)."""
    s = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def bounded(text: str, limit: int = MAX_LINE) -> str:
    """One line of at most ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"… ({len(text) - limit} more characters)"


MAX_SIZE = 2**50  # a size (memory, shared memory, a body) above 1 PiB is a typing error, not a size


def parse_size(value: object) -> int | None:
    """Bytes from a Docker size (``512m``, ``4g``, ``2GiB``, ``1048576``); None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if not isinstance(value, str):
        return None
    m = _SIZE.fullmatch(value)
    if not m:
        return None
    factor = 1024 ** "kmgtp".find(m.group(2).lower()) * 1024 if m.group(2) else 1
    size = int(float(m.group(1)) * factor)
    return size if size <= MAX_SIZE else None  # no engine takes more; past it, a number is an error


def toml_error(e: ValueError) -> tuple[str, int | None]:
    """A ``tomllib`` error as ``("at line L, column C: reason", L)``, with anything the parser
    quotes from the file taken out (a file's content is never echoed)."""
    msg = str(e)
    at = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    what = re.sub(r"'[^']*'|\"[^\"]*\"|\(at .*\)", "", msg).strip().rstrip(".").lower() or "cannot parse"
    if at is None:
        return what, None
    return f"at line {at.group(1)}, column {at.group(2)}: {what}", int(at.group(1))
