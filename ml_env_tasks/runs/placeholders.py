"""``${{inputs.NAME}}`` and ``${{outputs.NAME}}`` in a run's arguments, as Azure ML v2 command jobs
write them: each becomes the in-container path of that input or output.

Arguments stay a list (no shell ever sees them) and the substitution is one pass with fixed
values — ``/mnt/inputs/NAME`` or ``/mnt/outputs/NAME`` with NAME from a closed grammar — so a
placeholder can never inject anything, and a value is never expanded again. Whatever looks like a
placeholder and is not one of these (an unknown input, ``${{parent.inputs.x}}``, an unclosed
``${{``) is one usage error naming it, never passed to the script literally.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..errors import UsageError
from ..safe.grammar import printable
from .runner import INPUTS_DIR, OUTPUT_DIR

__all__ = ["expand"]

PLACEHOLDER = re.compile(r"\$\{\{(.*?)\}\}", re.S)
REFERENCE = re.compile(r"\s*(inputs|outputs)\.([A-Za-z][A-Za-z0-9_]{0,62})\s*", re.A)


def expand(args: Iterable[str], inputs: Iterable[str], *, given_as: str = "PATH") -> tuple[list[str], list[str]]:
    """(the arguments with every placeholder replaced, the output names they refer to, in order).

    The same for every runner: a local run and a Kubernetes Job resolve (or refuse) alike;
    ``given_as`` is what the hint says an input is given as (``pvc:CLAIM`` for a Job)."""
    known = set(inputs)
    outputs: list[str] = []

    def value(m: re.Match[str]) -> str:
        ref = REFERENCE.fullmatch(m.group(1))
        shown = printable(m.group(0), 80)
        if ref is None:
            raise UsageError(
                f"argument placeholder {shown} is not ${{{{inputs.NAME}}}} or ${{{{outputs.NAME}}}}",
                hint="NAME: a letter, then letters, digits or _",
            )
        kind, name = ref.groups()
        if kind == "inputs":
            if name not in known:
                have = ", ".join(sorted(known)) or "none"
                raise UsageError(
                    f"argument placeholder {shown}: no input named {name!r} (inputs: {have})",
                    hint=f"add --input {name}={given_as}",
                )
            return f"{INPUTS_DIR}/{name}"
        if name not in outputs:
            outputs.append(name)
        return f"{OUTPUT_DIR}/{name}"

    out = []
    for arg in args:
        expanded = PLACEHOLDER.sub(value, arg)
        # what is left of "${{" after the substitution is a placeholder without its "}}"
        rest = PLACEHOLDER.sub("", arg)
        if "${{" in rest:
            raise UsageError(f"argument {printable(arg, 80)!r} has a ${{{{ placeholder without its closing }}}}")
        out.append(expanded)
    return out, outputs
