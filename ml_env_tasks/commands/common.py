"""What the commands share: the build options every environment-naming command takes, a build
reporter speaking through the command's console, ``curated/NAME`` as a path, markdown cells."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..safe.grammar import bounded, printable
from ..settings.groups import BUILD_HOW, BUILD_ONLY, BUILD_WHERE, REBUILD
from ..settings.options import Option
from . import Console, Values

if TYPE_CHECKING:
    from ..build import BuildOptions, Reporter
    from ..release.cosign import Key, Trust
    from ..release.signing import Signed

__all__ = [
    "BUILD_NAMES",
    "signing_key",
    "trusted",
    "build_options",
    "reporter",
    "spec_path",
    "cell",
    "code",
    "rows",
    "visible",
    "SPEC",
    "parse_models",
]

BUILD_NAMES = tuple(dict.fromkeys(o.name for o in BUILD_WHERE + BUILD_HOW + BUILD_ONLY + (REBUILD,)))
SPEC = (Option("spec", ("spec",), help="environment file (envs/NAME.toml) or curated/NAME", gha="spec"),)


def build_options(v: Values, *, where: str = "--registry") -> BuildOptions:
    """BuildOptions from the build options this command took: every one it declares, by name (a
    name BuildOptions lacks is a TypeError, which the test over every command catches)."""
    from ..build import BuildOptions
    from ..registry import check_registry_host

    given: dict[str, Any] = {}
    for name in BUILD_NAMES:
        value = v.values.get(name)
        if value is not None:
            given[name] = tuple(value) if isinstance(value, list) else value
    opts = BuildOptions(**given)
    if opts.registry:
        check_registry_host(opts.registry, where)
    return opts


def signing_key(v: Values) -> Key | None:
    """The key the SIGN options name (None: sign nothing), and cosign to sign with it: both checked
    when the command starts, never after the build or the test they would sign."""
    if not v.sign_key and not v.sign_keyless:
        return None  # the no-op build loads nothing of signing
    from ..release.cosign import Key, cosign_binary

    key = Key.parse(v.sign_key, keyless=bool(v.sign_keyless))
    cosign_binary()
    return key


def trusted(v: Values) -> Trust | None:
    """Who the TRUST options name (None: nobody)."""
    from ..release.cosign import Trust

    return Trust.parse(v.verify_key, v.certificate_identity, v.certificate_oidc_issuer)


def sign_pushed(
    pinned: str | None,
    key: Key | None,
    kinds: tuple[str, ...],
    v: Values,
    io: Console,
    smoke_record: dict[str, Any] | None = None,
) -> Signed | None:
    """With a key: ``pinned`` (host/repository@digest) signed, and what it carries attested (with
    ``smoke_record``, that smoke-test record rather than the newest of each combination)."""
    if key is None or not pinned or "@" not in pinned:
        return None
    from ..release.signing import sign_release

    ca = v.values.get("ca_bundle")
    return sign_release(pinned, key, kinds=kinds, insecure=bool(v.values.get("insecure")), ca_bundle=ca,
                        smoke_record=smoke_record, say=io.info)  # fmt: skip


def parse_models(items: list[str]) -> dict[str, Path]:
    """``--model`` as model folders by mount name ("": AZUREML_MODEL_DIR itself), read with the one
    model grammar (models/refs.py): ``FOLDER`` or several ``NAME=FOLDER``. Where only folders are
    hashed (promote/verify --model), a registered model is refused with the way to name it."""
    from ..errors import UsageError
    from ..models.refs import parse_model_args

    out: dict[str, Path] = {}
    for m in parse_model_args(items):
        if m.folder is None:
            raise UsageError(
                f"--model {printable(m.given, 120)!r}: no such folder here",
                hint="name the model folder the smoke test mounted (a registered model: model download it first)",
            )
        out[m.mount] = m.folder
    return out


def reporter(io: Console, *, stream_logs: bool) -> Reporter:
    """A build Reporter that speaks through the command's console."""
    from ..build import Reporter

    class _Rep(Reporter):
        def info(self, msg: str) -> None:
            io.info(msg)

        def warn(self, msg: str) -> None:
            io.warn(msg)

        def log(self, line: str) -> None:
            if self.stream_logs:
                io.log(line)

    return _Rep(stream_logs=stream_logs)


def spec_path(spec: str) -> str:
    """An environment file's path; ``curated/NAME`` is the curated file of that name."""
    if not spec.startswith("curated/"):
        return spec
    from ..catalog import resolve_curated

    return str(resolve_curated(spec))


# characters that break a line or a table, or read as something else (bidi overrides)
LINES = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")
MAX_ROWS = 200


def visible(s: str, pattern: re.Pattern[str] = LINES) -> str:
    """Characters ``pattern`` matches shown as ``\\xNN`` / ``\\uNNNN``: nothing invisible gets through."""
    return pattern.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", s)


def cell(text: str, limit: int = 300) -> str:
    """Text from outside as plain text in a job summary's markdown (a table cell, a heading): no
    line break, no HTML, no markup (links, images, emphasis, headings), at most ``limit`` characters."""
    text = visible(bounded(text, limit))
    return _PUNCT.sub(lambda m: _HTML.get(m.group(), "\\" + m.group()), text)


def code(text: str, limit: int = 300) -> str:
    """Text from outside as a markdown code span (inside a table: ``|`` escaped, as GitHub's
    tables need even there): fenced by more backticks than any run in it."""
    text = visible(bounded(text, limit)).replace("|", "\\|")
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def rows(cells: list[str]) -> str:
    """Table rows, at most MAX_ROWS of them (a row that says how many were left out)."""
    out = "".join(cells[:MAX_ROWS])
    if len(cells) > MAX_ROWS:
        out += f"| … {len(cells) - MAX_ROWS} more | |\n"
    return out
