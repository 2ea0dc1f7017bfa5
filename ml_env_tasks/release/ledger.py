"""The release ledger: which digest was promoted where, under which tags, when, by whom.

A TOML file (``releases.toml`` by default), one ``[[promotion]]`` per promotion, appended
atomically (see ``tomllog``). Entries are read strictly into :class:`Promotion`; a value that
came from a registry (the environment name in an image label) is checked against its grammar
when recorded and escaped when printed, so a forged label cannot forge a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..safe.grammar import NAME, TAG, matches
from ..safe.tomllog import TomlLog

__all__ = ["Promotion", "Current", "Ledger", "LEDGER_DEFAULT"]

LEDGER_DEFAULT = "releases.toml"
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_HASH = re.compile(r"[0-9a-f]{64}", re.ASCII)


@dataclass(frozen=True)
class Promotion:
    time: str
    digest: str
    destination: str
    tags: tuple[str, ...]
    environment: str = ""
    environment_hash: str = ""
    source: str = ""
    git_revision: str = ""
    actor: str = ""
    ci_run_url: str | None = None
    moved_tags: tuple[str, ...] = ()
    found: bool = False  # recorded from what the registry already held, not copied by this run
    signed_by: str = ""  # the signing key's fingerprint (sha256 of its public PEM), or "keyless (OIDC)"
    signed: tuple[str, ...] = ()  # what carries that signature at the destination: image, sbom, ...
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # fields of later versions, kept

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "time": self.time,
            "environment": self.environment,
            "environment_hash": self.environment_hash,
            "digest": self.digest,
            "source": self.source,
            "destination": self.destination,
            "tags": list(self.tags),
            "git_revision": self.git_revision,
            "actor": self.actor,
        }
        if self.ci_run_url:
            d["ci_run_url"] = self.ci_run_url
        if self.moved_tags:
            d["moved_tags"] = list(self.moved_tags)
        if self.found:
            d["found"] = True
        if self.signed_by:
            d["signed_by"] = self.signed_by
            d["signed"] = list(self.signed)
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Promotion:
        def s(key: str, default: str = "") -> str:
            v = d.get(key, default)
            if not isinstance(v, str):
                raise ValueError(f"{key} must be a string")
            return v

        tags = d.get("tags")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("tags must be an array of strings")
        moved = d.get("moved_tags", [])
        if not isinstance(moved, list):
            raise ValueError("moved_tags must be an array")
        if not isinstance(d.get("found", False), bool):
            raise ValueError("found must be true or false")
        signed = d.get("signed", [])
        if not isinstance(signed, list) or not all(isinstance(x, str) for x in signed):
            raise ValueError("signed must be an array of strings")
        known = {"time", "environment", "environment_hash", "digest", "source", "destination", "tags",
                 "git_revision", "actor", "ci_run_url", "moved_tags", "found", "signed_by", "signed"}  # fmt: skip
        return cls(
            time=s("time"),
            digest=s("digest"),
            destination=s("destination"),
            tags=tuple(tags),
            environment=s("environment"),
            environment_hash=s("environment_hash"),
            source=s("source"),
            git_revision=s("git_revision"),
            actor=s("actor"),
            ci_run_url=d.get("ci_run_url") if isinstance(d.get("ci_run_url"), str) else None,
            moved_tags=tuple(str(x) for x in moved),
            found=bool(d.get("found", False)),
            signed_by=s("signed_by"),
            signed=tuple(signed),
            extra={k: v for k, v in d.items() if k not in known},
        )


@dataclass(frozen=True)
class Current:
    """What a tag is now, by the ledger: the digest and the promotion that first set it."""

    environment: str
    tag: str
    digest: str
    since: str
    destination: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def environment_name(value: Any) -> str:
    """An environment name read from a registry (a label): kept only if it is one."""
    return value if matches(NAME, value) else ""


def environment_hash(value: Any) -> str:
    return value if isinstance(value, str) and _HASH.fullmatch(value) else ""


class Ledger(TomlLog):
    table = "promotion"
    header = (
        "Release ledger: one [[promotion]] per promotion, appended by `ml-env promote`.",
        "Do not edit by hand; `ml-env ledger show` reads it.",
    )

    def entries(self, env: str | None = None) -> list[Promotion]:
        return [p for p in self.typed_entries(Promotion.from_dict) if env is None or p.environment == env]

    def check(self) -> None:
        """Read the whole ledger: a corrupt one stops a promotion before any registry is touched."""
        self.entries()

    def append(self, entry: Promotion) -> Promotion:
        for t in entry.tags:
            if not matches(TAG, t):
                raise ValueError(f"tag {t!r} is not a tag")
        if not _DIGEST.fullmatch(entry.digest):
            raise ValueError("not a digest")
        self.append_raw(entry.to_dict())
        return entry

    def recorded(self, destination: str, digest: str, tags: tuple[str, ...]) -> Promotion | None:
        """The last promotion of ``digest`` to ``destination``, when by the ledger every one of
        ``tags`` there is ``digest`` now (the last entry naming the tag names this digest); None
        otherwise. A tag the ledger saw move to another digest since is not recorded as this one:
        the registry holding it here again is a finding the ledger has to add, or it would keep
        naming the other digest."""
        now: dict[str, str] = {}
        last: Promotion | None = None
        for e in self.entries():
            if e.destination != destination:
                continue
            for t in e.tags:
                now[t] = e.digest
            if e.digest == digest:
                last = e
        return last if all(now.get(t) == digest for t in tags) else None

    def current(self, env: str | None, tag: str) -> Current | None:
        """Which digest ``tag`` is for ``env`` now, and since when (the promotion that set it)."""
        found: Current | None = None
        for e in self.entries(env):
            if tag in e.tags and (found is None or e.digest != found.digest):
                found = Current(e.environment, tag, e.digest, e.time, e.destination)
        return found
