"""JSON and TOML from outside (files a user or a repository names, registry answers), parsed
with their nesting bounded.

``json`` and ``tomllib`` recurse once per nested array, table or object: a few thousand ``[`` in
a ledger, a config file or a registry's token answer ended in RecursionError, which the fronts
report as a bug (exit 70). ``check_depth`` counts the nesting before any parser sees the text
(strings and TOML comments skipped; a cheap count skips the scan when there are too few brackets
to matter) and refuses past ``MAX_DEPTH`` with one error naming the file, of the class the caller
gives (so its exit code is the one documented for that input). ``json_loads`` and ``toml_loads``
check, then parse, and map a RecursionError the scan did not foresee to the same error; a
document that is not valid stays the caller's ``ValueError`` (``TOMLDecodeError`` is one).
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import MlEnvError

__all__ = ["MAX_DEPTH", "check_depth", "json_loads", "toml_loads"]

MAX_DEPTH = 64  # a manifest, a ledger or a config file nests a handful deep

_JSON = r'"(?:[^"\\]|\\.)*"|[\[\]{}]'
_TOML = r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}]'
_TOKENS = {False: re.compile(_JSON, re.S), True: re.compile(_TOML, re.S)}


def check_depth(
    text: str | bytes, *, toml: bool, error: type[MlEnvError], file: str | None, limit: int = MAX_DEPTH
) -> None:
    """Refuse ``text`` whose arrays, tables or objects nest more than ``limit`` deep."""
    if isinstance(text, bytes):
        # byte for byte (UTF-8 never puts an ASCII byte inside a multi-byte character)
        text = text.decode("latin-1")
    if text.count("[") + text.count("{") <= limit:
        return
    depth = 0
    for m in _TOKENS[toml].finditer(text):
        tok = m.group()
        if tok in ("[", "{"):
            depth += 1
            if depth > limit:
                raise error(
                    f"nested more than {limit} deep (arrays, tables or objects): refused",
                    file=file,
                    hint="no file or answer this tool reads nests that deep",
                )
        elif tok in ("]", "}"):
            depth = max(depth - 1, 0)


def _too_deep(error: type[MlEnvError], file: str | None) -> MlEnvError:
    return error("nested too deep to parse: refused", file=file)


def json_loads(data: str | bytes, *, error: type[MlEnvError], file: str | None) -> Any:
    """``json.loads`` of ``data`` whose nesting was checked first (ValueError when not JSON)."""
    import json

    check_depth(data, toml=False, error=error, file=file)
    try:
        return json.loads(data)
    except RecursionError:
        raise _too_deep(error, file) from None


def toml_loads(text: str, *, error: type[MlEnvError], file: str | None) -> dict[str, Any]:
    """``tomllib.loads`` of ``text`` whose nesting was checked first (TOMLDecodeError when not TOML)."""
    import tomllib

    check_depth(text, toml=True, error=error, file=file)
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise _too_deep(error, file) from None
