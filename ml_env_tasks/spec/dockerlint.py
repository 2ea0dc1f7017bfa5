"""What a base Dockerfile may hold, and how its instructions are read.

A base Dockerfile comes first in the rendered Dockerfile and ml-env's own steps follow it, so
nothing in it may reach past its end: no parser directive (``# escape=`` would change how our
steps parse, ``# syntax=`` pulls a frontend image), no trailing line continuation, no heredoc
left open. It has no build context, so ``COPY``/``ADD`` from the context are refused. The build's
secrets (a CA bundle, pip's config with index tokens) are ml-env's own: no ``RUN --mount`` of type
``secret`` or ``ssh`` (nor one in an ``ONBUILD`` trigger) may read them. Errors
name the line and, when it is a Dockerfile keyword, the instruction; never other text of the file.
"""

from __future__ import annotations

import re

from ..errors import SpecError

__all__ = ["check_base_dockerfile", "logical_lines", "last_user", "INSTRUCTIONS"]

INSTRUCTIONS = frozenset(
    "FROM RUN CMD LABEL MAINTAINER EXPOSE ENV ADD COPY ENTRYPOINT VOLUME USER WORKDIR ARG ONBUILD "
    "STOPSIGNAL HEALTHCHECK SHELL".split()
)
_DIRECTIVE = re.compile(r"#\s*([a-zA-Z]+)\s*=", re.ASCII)
_HEREDOC = re.compile(r"<<(-?)(['\"]?)([A-Za-z_][A-Za-z0-9_]*)\2", re.ASCII)


class _Unterminated(Exception):
    def __init__(self, line: int, what: str) -> None:
        self.line = line
        self.what = what


def logical_lines(text: str) -> list[tuple[int, str, str]]:
    """(line number, INSTRUCTION, arguments): continuations joined, comments dropped, heredoc
    bodies consumed. Raises _Unterminated for a continuation or heredoc open at the end."""
    out: list[tuple[int, str, str]] = []
    lines = text.replace("\r\n", "\n").split("\n")
    buf = ""
    start = 0
    i = 0
    while i < len(lines):
        raw = lines[i]
        i += 1
        s = raw.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if buf and (not s or s.startswith("#")):
            continue  # comments and empty lines inside a continuation are skipped, as BuildKit does
        if not buf:
            start = i
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        parts = buf.split(None, 1)
        instr, args = parts[0].upper(), (parts[1] if len(parts) > 1 else "")
        buf = ""
        for strip_tabs, _quote, word in _HEREDOC.findall(args) if instr in ("RUN", "COPY", "ADD") else ():
            while True:
                if i >= len(lines):
                    raise _Unterminated(start, f"heredoc <<{word} is never closed")
                body = lines[i].lstrip("\t") if strip_tabs else lines[i]
                i += 1
                if body == word:
                    break
        out.append((start, instr, args))
    if buf:
        raise _Unterminated(start, "the last instruction ends with a line continuation")
    return out


def check_base_dockerfile(text: str, file: str | None, key: str) -> None:
    """A FROM first, known instructions, no context files, nothing that reaches past its end."""
    for n, raw in enumerate(text.replace("\r\n", "\n").split("\n"), 1):
        s = raw.strip()
        if not s:
            continue
        m = _DIRECTIVE.match(s)
        if not m:
            break  # directives can only come first
        name = m.group(1).lower()
        if name in ("syntax", "escape", "check"):
            why = (
                "pulls a frontend image from a registry" if name == "syntax" else "changes how ml-env's own steps parse"
            )
            raise SpecError(f"a '# {name}=' parser directive {why}; remove it", file=file, key=key, line=n)
    try:
        lines = logical_lines(text)
    except _Unterminated as e:
        raise SpecError(e.what, file=file, key=key, line=e.line) from None
    if not lines:
        raise SpecError("the base Dockerfile is empty", file=file, key=key)
    stages: list[str] = []
    saw_from = False
    for lineno, instr, args in lines:
        if instr not in INSTRUCTIONS:
            raise SpecError(f"line {lineno} is not a Dockerfile instruction", file=file, key=key, line=lineno)
        if instr == "FROM":
            saw_from = True
            parts = [p for p in args.split() if not p.startswith("--")]
            if not parts:
                raise SpecError("FROM without an image", file=file, key=key, line=lineno)
            src = parts[0]
            if len(parts) >= 3 and parts[1].lower() == "as":
                alias = parts[2].lower()
                if alias == src.lower():
                    raise SpecError("a stage is built FROM itself (a cycle)", file=file, key=key, line=lineno)
                stages.append(alias)
        elif not saw_from and instr != "ARG":
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
        if instr in ("RUN", "ONBUILD") and _reads_secrets(args):
            raise SpecError(
                f"line {lineno}: a {instr} that mounts a build secret or the SSH agent",
                file=file,
                key=key,
                line=lineno,
                hint="the build's secrets are ml-env's own (CA bundle, index credentials); a base Dockerfile cannot read them",
            )
    if not saw_from:
        raise SpecError("the base Dockerfile has no FROM instruction", file=file, key=key)


_MOUNT = re.compile(r"--mount(?:=|\s+)(\S+)", re.IGNORECASE)


def _reads_secrets(args: str) -> bool:
    """A ``--mount`` of type secret or ssh anywhere in a RUN's flags (or an ONBUILD's RUN), however
    it is quoted or ordered: its CSV fields are read without quotes, as BuildKit does."""
    for spec in _MOUNT.findall(args):
        fields = [f.strip().strip("'\"").lower() for f in spec.strip("'\"").split(",")]
        for f in fields:
            name, _, value = f.partition("=")
            kind = value.strip().strip("'\"")
            if name.strip() == "type" and (kind in ("secret", "ssh") or "$" in kind):
                return True  # a variable in the type could expand to either
    return False


def last_user(text: str) -> str | None:
    """The USER the base Dockerfile leaves in force, so our steps can run as root and restore it."""
    user = None
    for _, instr, args in logical_lines(text):
        if instr == "FROM":
            user = None
        elif instr == "USER":
            user = args.strip()
    return user
