"""``promote``, ``ledger show`` and ``verify``."""

from __future__ import annotations

from pathlib import Path

from ..settings.options import PROMOTE, Option, Source
from . import Action, Command, Console, Outcome, Session, Values
from .common import cell, code

__all__ = ["COMMANDS"]

WHAT = (
    Option("source", ("source",), gha="source",
           help="image by tag or digest (the digest is resolved once; e.g. the build action's ref output)"),
    Option("destination", ("destination",), gha="destination", help="host[:port]/repository, optionally :tag"),
)  # fmt: skip
LEDGER = tuple(o for o in PROMOTE if o.name == "ledger")
OUTPUTS = {
    "digest": "The promoted digest (identical at source and destination)",
    "refs": "Destination references, one per line",
    "ref": "destination@digest",
    "no-op": "'true' when every tag already pointed at the digest",
    "ledger": "Where the promotion is recorded (default here: oci://<destination>:ml-env-ledger)",
}


def run_promote(v: Values, io: Console) -> Outcome:
    from ..release.ledger_oci import ledger_location
    from ..release.promote import PromoteOptions, promote

    opts = PromoteOptions(
        source=v.source,
        destination=v.destination,
        tags=tuple(v.tags),
        allow_overwrite=v.allow_overwrite,
        dry_run=v.dry_run,
        insecure=v.insecure,
        ledger=None if v.no_ledger else v.ledger,
        copy_referrers=not v.no_referrers,
        jobs=v.jobs,
        require=tuple(v.require),
        spec=Path(v.spec) if v.spec else None,
    )
    with io.section(f"ml-env promote {opts.source}"):
        r = promote(opts, info=io.info, progress=io.progress())

    def text() -> str:
        if r.dry_run:
            return "\n".join([f"dry run: {r.source} -> {', '.join(r.refs)}", *(f"  {x}" for x in r.plan)])
        state = "already there, nothing changed" if r.no_op else "promoted"
        if r.recorded_found:
            state += " (recorded in the ledger as found)"
        return f"{r.digest}  {state}: {', '.join(r.refs)}"

    where = "" if opts.ledger is None or r.dry_run else ledger_location(opts.ledger, r.destination)
    state = "dry run" if r.dry_run else ("already promoted (no change)" if r.no_op else "promoted")
    if r.recorded_found:
        state += "; recorded in the ledger as found"
    tags_md = ", ".join(code(ref.rsplit(":", 1)[1]) for ref in r.refs)
    summary = (
        f"### ml-env promote: {state}\n\n| field | value |\n|---|---|\n"
        f"| environment | {cell(str(r.environment.get('name') or '-'))} |\n| digest | {code(r.digest)} |\n"
        f"| source | {code(r.source)} |\n| destination | {code(r.destination)} |\n| tags | {tags_md} |\n"
        f"| blobs | {r.copied_blobs} copied ({r.copied_bytes / 2**20:.1f} MiB), {r.mounted_blobs} mounted, "
        f"{r.skipped_blobs} present |\n"
        + (f"| moved tags | {cell(', '.join(r.moved_tags), 2000)} |\n" if r.moved_tags else "")
        + (f"| referrers | {cell(', '.join(r.referrers), 2000)} |\n" if r.referrers else "")
        + (f"| ledger | {code(where)}{' (recorded)' if r.ledger_entry else ' (already recorded)'} |\n" if where else "")
    )
    outputs = {
        "digest": r.digest, "refs": "\n".join(r.refs), "ref": f"{r.destination}@{r.digest}",
        "no-op": "true" if r.no_op else "false", "ledger": where,
    }  # fmt: skip
    return Outcome(r.to_json(), text, 0, outputs, summary)


def run_show(v: Values, io: Console) -> Outcome:
    from ..errors import UsageError
    from ..release.ledger_oci import open_ledger
    from ..safe.grammar import printable as pr

    with open_ledger(v.ledger) as ledger:
        if v.tag:
            cur = ledger.current(v.env, v.tag)
            if cur is None:
                raise UsageError(
                    f"no promotion to tag {pr(v.tag, 130)}" + (f" for {pr(v.env, 70)}" if v.env else ""),
                    file=ledger.where,
                )
            text = f"{pr(cur.environment or '-')} {pr(v.tag)}: {pr(cur.digest)} since {pr(cur.since)} ({pr(cur.destination)})"
            return Outcome(cur.to_dict(), text)
        entries = ledger.entries(v.env)
    rows = [
        f"{pr(e.time, 30)}  {pr(e.environment or '-', 20):20} {pr(e.digest[:19])}  "
        f"{pr(e.destination)}:{pr(','.join(e.tags))}  by {pr(e.actor or '-', 60)}" + ("  (found)" if e.found else "")
        for e in entries
    ]
    return Outcome([e.to_dict() for e in entries], "\n".join(rows))


def run_verify(v: Values, io: Console) -> Outcome:
    """One line per check; exit 1 when any fails (0 when all pass or do not apply)."""
    from ..release.verify import verify

    given = v.origin("ledger").source is not Source.DEFAULT
    checks = verify(v.image, ledger=v.ledger, require=tuple(v.require), insecure=v.insecure, ledger_given=given)
    failed = [c for c in checks if c.ok is False]
    return Outcome(
        {"image": v.image, "ok": not failed, "checks": [c.to_json() for c in checks]},
        "\n".join(c.line() for c in checks),
        1 if failed else 0,
    )


COMMANDS = {
    "promote": Command(
        "promote", "copy an image by digest to another registry/repository and record it in the ledger",
        WHAT + PROMOTE, run_promote,
        usage="ml-env promote SOURCE DEST[:TAG] --tag T [--tag T2] [--allow-overwrite] [--dry-run]",
        action=Action(
            "ml-env promote",
            "Promote exactly the tested image, by digest, from one registry or repository to another, without a "
            "Docker daemon: the destination digest equals the source digest. Refuses to move a tag that points at "
            "another image unless allowed; records the promotion in the release ledger, kept by default in the "
            "destination repository (ledger: registry) so every fresh clone and re-run sees the same history.",
            OUTPUTS, required=("source", "destination"),
            # a CI job starts from a fresh clone: by default the ledger lives next to the images
            defaults={"ledger": "registry"},
        ),
        session=Session("promote", "Promote an image by digest to another registry: -- SOURCE DEST --tag T."),
    ),
    "ledger show": Command(
        "ledger show", "print promotions; with --tag, which digest the tag is now and since when",
        (Option("env", ("--env",), help="only this environment"),
         Option("tag", ("--tag",), help="answer: which digest is this tag now, since when")) + LEDGER,
        run_show, session=Session("ledger", "Show the release ledger: -- show [--env NAME] [--tag prod]."),
    ),
    "verify": Command(
        "verify", "check an image: content hash, tag, SBOM, provenance, ledger record, smoke test",
        (Option("image", ("image",), help="host/repository:tag or @digest"),)
        + tuple(o for o in PROMOTE if o.name in ("ledger", "require", "insecure")),
        run_verify, usage="ml-env verify IMAGE [--ledger FILE|oci://...] [--require smoke-test] [--json]",
    ),
}  # fmt: skip
