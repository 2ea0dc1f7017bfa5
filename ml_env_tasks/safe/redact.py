"""Keep secrets out of logs: every line the build prints or saves passes through a Redactor."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

__all__ = ["Redactor", "MASK", "redact_userinfo"]

MASK = "***"
# credentials inside any URL (pip prints "https://user:****@host/"): the user part is secret too
_USERINFO = re.compile(r"(?<=://)[^/\s@]+@")


class Redactor:
    def __init__(self, secrets: list[str] | None = None) -> None:
        self._secrets: set[str] = set()
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4:
            self._secrets.add(secret)
            for line in secret.splitlines():  # a log is masked line by line: each line of a key is secret
                if len(line.strip()) >= 4:
                    self._secrets.add(line.strip())

    def add_url(self, url: str) -> None:
        """A private index URL: the URL, its host and any credentials in it are all secret."""
        self.add(url)
        self.add(url.rstrip("/"))
        parts = urlsplit(url)
        self.add(parts.netloc)
        hostport = parts.netloc.rpartition("@")[2]
        self.add(hostport)
        self.add(f"{parts.scheme}://{hostport}{parts.path}".rstrip("/"))
        # a bare host name is secret too, unless it is an address that says nothing (127.0.0.1)
        if parts.hostname and not re.fullmatch(r"[0-9.:\[\]a-f]+", parts.hostname):
            self.add(parts.hostname)
        if parts.password:
            self.add(parts.password)
        if parts.username:
            self.add(parts.username)

    @property
    def secrets(self) -> frozenset[str]:
        return frozenset(self._secrets)

    def __call__(self, text: str) -> str:
        # longest first, so a URL is masked whole before its host is
        for s in sorted(self._secrets, key=len, reverse=True):
            if s in text:
                text = text.replace(s, MASK)
        return _USERINFO.sub(MASK + "@", text)


def redact_userinfo(text: str) -> str:
    """Credentials written into a URL or a registry address (``alice:pw@host``) are masked."""
    text = _USERINFO.sub(MASK + "@", text)
    return _BARE_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)


# "alice:pw@host" without a scheme: a word with a colon right before an @ and a host
_BARE_USERINFO = re.compile(r"(^|[\s'\"(=])[^\s/@'\"]+:[^\s/@'\"]*@(?=[A-Za-z0-9\[])")
