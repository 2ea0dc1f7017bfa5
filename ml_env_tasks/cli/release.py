"""``promote`` and ``ledger show``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from ..options import PROMOTE, Option
from .common import command, output

WHAT = (
    Option("source", ("source",), help="image by tag or digest (the digest is resolved once)"),
    Option("destination", ("destination",), help="host[:port]/repository, optionally :tag"),
)
LEDGER = [o for o in PROMOTE if o.name == "ledger"]


def configure(name: str, p: argparse.ArgumentParser) -> None:
    if name == "verify":
        p.usage = "ml-env verify IMAGE [--ledger FILE|oci://...] [--require smoke-test] [--json]"
        command(
            p, cmd_verify, (Option("image", ("image",), help="host/repository:tag or @digest"),),
            [o for o in PROMOTE if o.name in ("ledger", "require", "insecure")],
        )  # fmt: skip
        return
    if name == "promote":
        p.usage = "ml-env promote SOURCE DEST[:TAG] --tag T [--tag T2] [--allow-overwrite] [--dry-run]"
        command(p, cmd_promote, WHAT, PROMOTE)
        return
    sub = p.add_subparsers(dest="ledger_command", metavar="{show}", parser_class=type(p))
    show = sub.add_parser("show", help="print promotions; with --tag, which digest the tag is now and since when")
    command(
        show,
        cmd_show,
        (
            Option("env", ("--env",), help="only this environment"),
            Option("tag", ("--tag",), help="answer: which digest is this tag now, since when"),
        ),
        LEDGER,
    )
    p.set_defaults(func=lambda args: _usage(p))


def cmd_promote(args: argparse.Namespace) -> int:
    from ..promote import PromoteOptions, promote

    out = output(args)
    result = promote(
        PromoteOptions(
            source=args.source,
            destination=args.destination,
            tags=tuple(args.tags),
            allow_overwrite=args.allow_overwrite,
            dry_run=args.dry_run,
            insecure=args.insecure,
            ledger=None if args.no_ledger else args.ledger,
            copy_referrers=not args.no_referrers,
            jobs=args.jobs,
            require=tuple(args.require),
            spec=args.spec,
        ),
        info=out.info,
        progress=_progress(out) if not out.json_mode else None,
    )

    def text() -> str:
        if result.dry_run:
            return "\n".join(
                [f"dry run: {result.source} -> {', '.join(result.refs)}", *(f"  {x}" for x in result.plan)]
            )
        state = "already there, nothing changed" if result.no_op else "promoted"
        if result.recorded_found:
            state += " (recorded in the ledger as found)"
        return f"{result.digest}  {state}: {', '.join(result.refs)}"

    out.result(result.to_json(), text)
    return 0


def _progress(out: object) -> Callable[[Any], None] | None:
    """A progress bar on a terminal (nothing otherwise)."""
    from .progress import copy_progress

    return copy_progress()


def cmd_show(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..grammar import printable as pr
    from ..ledger_oci import open_ledger

    out = output(args)
    with open_ledger(args.ledger) as ledger:
        if args.tag:
            cur = ledger.current(args.env, args.tag)
            if cur is None:
                raise UsageError(
                    f"no promotion to tag {pr(args.tag, 130)}" + (f" for {pr(args.env, 70)}" if args.env else ""),
                    file=ledger.where,
                )
            text = (
                f"{pr(cur.environment or '-')} {pr(args.tag)}: {pr(cur.digest)} since {pr(cur.since)} "
                f"({pr(cur.destination)})"
            )
            out.result(cur.to_dict(), text)
            return 0
        entries = ledger.entries(args.env)
    rows = [
        f"{pr(e.time, 30)}  {pr(e.environment or '-', 20):20} {pr(e.digest[:19])}  "
        f"{pr(e.destination)}:{pr(','.join(e.tags))}  by {pr(e.actor or '-', 60)}" + ("  (found)" if e.found else "")
        for e in entries
    ]
    out.result([e.to_dict() for e in entries], "\n".join(rows))
    return 0


def _usage(p: argparse.ArgumentParser) -> int:
    """A group without its subcommand: the group's own help, exit 2."""
    p.print_help(sys.stderr)
    return 2


def cmd_verify(args: argparse.Namespace) -> int:
    """One line per check; exit 1 when any fails (0 when all pass or do not apply)."""
    from ..verify import verify

    out = output(args)
    given = getattr(args, "o", None) is None or args.o.sources.get("ledger", "default") != "default"
    checks = verify(
        args.image, ledger=args.ledger, require=tuple(args.require), insecure=args.insecure, ledger_given=given
    )
    failed = [c for c in checks if c.ok is False]
    out.result(
        {"image": args.image, "ok": not failed, "checks": [c.to_json() for c in checks]},
        "\n".join(c.line() for c in checks),
    )
    return 1 if failed else 0
