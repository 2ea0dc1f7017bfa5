"""``promote``, ``ledger show`` and ``verify``."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..settings.groups import PROMOTE, SIGN, TESTED, TRUST
from ..settings.options import Option, Source
from . import Action, Command, Console, Outcome, Session, Values
from .common import cell, code, parse_models, signing_key, trusted

if TYPE_CHECKING:
    from ..release.tested import Combination

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
    from ..release.attest import check_gates
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
        require=check_gates(v.require),
        spec=Path(v.spec) if v.spec else None,
        tested=tested(v, io),
        sign=signing_key(v),
        trust=trusted(v),
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
        + (
            f"| signed | {cell(', '.join(r.signed['signed'] + r.signed['already']))} by {code(r.signed['by'])} |\n"
            if r.signed
            else ""
        )
        + (f"| ledger | {code(where)}{' (recorded)' if r.ledger_entry else ' (already recorded)'} |\n" if where else "")
    )
    outputs = {
        "digest": r.digest, "refs": "\n".join(r.refs), "ref": f"{r.destination}@{r.digest}",
        "no-op": "true" if r.no_op else "false", "ledger": where,
    }  # fmt: skip
    return Outcome(r.to_json(), text, 0, outputs, summary)


def tested(v: Values, io: Console) -> Combination | None:
    """The combination --entry/--model name, hashed as a smoke test of them hashes it (None: none named)."""
    if not v.entry and not v.model:
        return None
    from ..errors import UsageError
    from ..release.attest import check_gates
    from ..release.tested import from_files

    if "smoke-test" not in check_gates(v.require):  # before hashing anything
        raise UsageError("--entry/--model name what a smoke test must have tested: they go with --require smoke-test")

    return from_files(
        Path(v.entry) if v.entry else None, parse_models(v.model), warn=lambda m: io.info(f"warning: {m}")
    )


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


def run_sign(v: Values, io: Console) -> Outcome:
    """Sign an image by digest and attest what it carries; exit 0 when all is signed."""
    from ..errors import UsageError
    from ..registry import RegistryClient, check_registry_host, parse_ref
    from ..release.signing import sign_release

    key = signing_key(v)
    kinds = tuple(dict.fromkeys(k.strip() for item in v.attest or () for k in item.split(",") if k.strip()))
    if bad := [k for k in kinds if k not in KINDS]:
        raise UsageError(f"--attest {bad[0][:40]!r}: the kinds are {', '.join(KINDS)}")
    if key is None:
        raise UsageError("ml-env sign needs a key: --sign-key KEY (or ML_ENV_SIGN_KEY), or --sign-keyless")
    check_registry_host(v.image.split("/", 1)[0], "image registry")
    ref = parse_ref(v.image)
    head = RegistryClient(ref.host, insecure=v.insecure).head_manifest(ref.repository, ref.reference)
    if head is None:
        raise UsageError(f"{v.image} is not in its registry")
    with io.section(f"ml-env sign {v.image}"):
        done = sign_release(ref.pinned(head.digest), key, kinds=kinds or KINDS, insecure=v.insecure,
                            say=io.info)  # fmt: skip
    text = (
        f"{done.ref}  signed by {done.by}: "
        + ", ".join(f"{k} ({'new' if k in done.signed else 'already'})" for k in done.covered)
        + (f"; nothing to attest for {', '.join(done.absent)}" if done.absent else "")
    )
    summary = (f"### ml-env sign\n\n| field | value |\n|---|---|\n| image | {code(done.ref)} |\n"
               f"| key | {code(done.by)} {code(done.fingerprint[:23])} |\n| signed | {cell(', '.join(done.covered))} |\n")  # fmt: skip
    return Outcome(done.to_json(), text, 0, {"ref": done.ref, "fingerprint": done.fingerprint}, summary)


def run_verify(v: Values, io: Console) -> Outcome:
    """One line per check; exit 1 when any fails (0 when all pass or do not apply)."""
    from ..release.attest import check_gates
    from ..release.verify import verify

    given = v.origin("ledger").source is not Source.DEFAULT
    checks = verify(v.image, ledger=v.ledger, require=check_gates(v.require), insecure=v.insecure, ledger_given=given,
                    trust=trusted(v), tested=tested(v, io))  # fmt: skip
    failed = [c for c in checks if c.ok is False]
    return Outcome(
        {"image": v.image, "ok": not failed, "checks": [c.to_json() for c in checks]},
        "\n".join(c.line() for c in checks),
        1 if failed else 0,
    )


KINDS = ("image", "sbom", "provenance", "smoke-test")  # release.signing.KINDS, without loading it
# verify names the key as cosign does (--key); the other commands say which key (--verify-key)
VERIFY_TRUST = tuple(replace(o, flags=("--key", "--verify-key"), gha="verify-key") if o.name == "verify_key" else o
                     for o in TRUST)  # fmt: skip

COMMANDS = {
    "promote": Command(
        "promote", "copy an image by digest to another registry/repository and record it in the ledger",
        WHAT + PROMOTE + TESTED + SIGN + TRUST, run_promote,
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
        "verify", "check an image: content hash, tag, SBOM, provenance, ledger record, smoke test, signatures",
        (Option("image", ("image",), help="host/repository:tag or @digest"),)
        + tuple(o for o in PROMOTE if o.name in ("ledger", "require", "insecure")) + TESTED + VERIFY_TRUST,
        run_verify,
        usage="ml-env verify IMAGE [--key cosign.pub] [--ledger FILE|oci://...] [--require smoke-test "
              "[--entry score.py --model DIR]] [--json]",
    ),
    "sign": Command(
        "sign", "sign an image by digest with cosign, and attest its SBOM, provenance and smoke-test record",
        (Option("image", ("image",), help="host/repository:tag or @digest (a tag is resolved to its digest once)"),
         Option("attest", ("--attest",), kind="list", metavar="KIND",
                help=f"what to sign: {', '.join(KINDS)} (default: all there is)"),
         *(o for o in PROMOTE if o.name == "insecure"), *SIGN),
        run_sign, usage="ml-env sign IMAGE --sign-key cosign.key [--attest image,sbom] [--json]",
        action=Action(
            "ml-env sign",
            "Sign an image by digest with cosign (a key from a secret, or keyless with the workflow's OIDC identity) "
            "and attest its SBOM, provenance and smoke-test record, so `cosign verify` and `cosign "
            "verify-attestation` accept it anywhere.",
            {"ref": "host/repository@digest signed", "fingerprint": "sha256 of the signing key's public PEM"},
            required=("image",),
        ),
    ),
}  # fmt: skip
