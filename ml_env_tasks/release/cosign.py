"""cosign, the tool the ecosystem verifies with, run as a program: a signature on a digest, an
in-toto attestation (DSSE) about a digest, and their verification.

Signatures and attestations land where cosign puts them (the ``sha256-<hex>.sig`` and ``.att``
tags beside the image), so ``cosign verify`` and ``cosign verify-attestation`` accept them with
no ml-env installed. What this module adds is the edge around the program:

- **Credentials go home only.** cosign reads registry credentials from a docker config; it gets
  a private one (mode 0700, removed after) that holds the credentials for the one registry it
  talks to, resolved as every other registry call resolves them (``registry.credentials``).
- **TLS stays on.** Plain HTTP only to a loopback registry or when the user said ``insecure``;
  the user's CA bundle (``ca_bundle``) is given as ``SSL_CERT_FILE``.
- **Secrets stay out.** The key's password is cosign's own ``COSIGN_PASSWORD`` from the
  invoking user's environment; a key held in a variable (``env://NAME``) is read by cosign
  itself. Neither is ever in an argument, and every line cosign prints is passed through a
  redactor that knows both before it reaches an error.
- **Reads are bounded**: what cosign prints back (verified payloads) is read up to a limit.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EngineError, RegistryError, UsageError
from ..registry.credentials import credentials_for
from ..registry.reference import is_loopback
from ..safe.grammar import printable
from ..safe.paths import no_link_out
from ..safe.redact import Redactor

__all__ = ["Key", "Trust", "Cosign", "SignatureMissing", "cosign_binary", "KMS_SCHEMES"]

KMS_SCHEMES = ("awskms://", "gcpkms://", "azurekms://", "hashivault://", "k8s://", "pkcs11:")
TIMEOUT = 300.0
MAX_OUTPUT = 80 * 2**20  # verified attestations are printed whole: an SBOM can be tens of MiB


class SignatureMissing(RegistryError):
    """cosign found no signature (or attestation of the type asked) that verifies."""


def cosign_binary() -> str:
    found = shutil.which(os.environ.get("ML_ENV_COSIGN", "cosign"))
    if not found:
        raise EngineError(
            "cosign is not installed: signing and checking signatures use it "
            "(Debian 13: apt-get install cosign; or a release from github.com/sigstore/cosign)"
        )
    return found


@dataclass(frozen=True)
class Key:
    """What signs: a key file, ``env://NAME`` (the PEM in a variable), a KMS URI as cosign names
    them, or keyless (``ref`` None: OIDC, Fulcio and Rekor, as in GitHub Actions)."""

    ref: str | None

    @classmethod
    def parse(cls, value: str | None, *, keyless: bool = False, what: str = "--sign-key") -> Key | None:
        if keyless and value:
            raise UsageError(f"{what} and keyless signing exclude each other: give one")
        if keyless:
            return cls(None)
        if not value:
            return None
        return cls(_key_ref(value, what))

    @property
    def keyless(self) -> bool:
        return self.ref is None

    def args(self) -> list[str]:
        # a key signs offline: nothing goes to a transparency log (keyless needs Rekor)
        return ["--tlog-upload=false", "--key", self.ref] if self.ref else []

    def describe(self) -> str:
        return "keyless (OIDC)" if self.ref is None else _describe(self.ref)


@dataclass(frozen=True)
class Trust:
    """Who is trusted: a public key (file, ``env://NAME``, KMS URI), or a keyless signer's
    certificate identity and OIDC issuer."""

    key: str | None = None
    identity: str | None = None
    issuer: str | None = None

    @classmethod
    def parse(cls, key: str | None, identity: str | None = None, issuer: str | None = None) -> Trust | None:
        if key and (identity or issuer):
            raise UsageError("--verify-key and --certificate-identity/--certificate-oidc-issuer exclude each other")
        if key:
            return cls(key=_key_ref(key, "--verify-key"))
        if identity or issuer:
            if not (identity and issuer):
                raise UsageError("keyless verification needs both --certificate-identity and --certificate-oidc-issuer")
            return cls(identity=identity, issuer=issuer)
        return None

    def args(self) -> list[str]:
        if self.key:
            return ["--key", self.key, "--insecure-ignore-tlog"]
        return ["--certificate-identity", str(self.identity), "--certificate-oidc-issuer", str(self.issuer)]

    def describe(self) -> str:
        return (
            _describe(self.key)
            if self.key
            else f"{printable(str(self.identity), 120)} ({printable(str(self.issuer), 80)})"
        )


def _key_ref(value: str, what: str) -> str:
    value = value.strip()
    if value.startswith("env://"):
        name = value[len("env://") :]
        if not name or not (name.replace("_", "").isalnum() and name.isascii()):
            raise UsageError(f"{what} env://NAME: {printable(name, 60)!r} is not a variable name")
        if not os.environ.get(name):
            raise UsageError(f"{what} env://{name}: the variable is not set")
        return value
    if value.startswith(KMS_SCHEMES):
        return value
    if "://" in value:
        raise UsageError(
            f"{what}: {printable(value, 80)!r} is neither a key file, env://NAME nor a KMS URI cosign knows"
        )
    path = no_link_out(Path(value).expanduser(), what)  # a committed link must not pick a host file
    if not path.is_file():
        raise UsageError(f"{what}: {printable(value, 120)} is not a key file")
    return str(path)


def _describe(ref: str) -> str:
    return printable(ref, 160) if not ref.startswith("/") else printable(Path(ref).name, 80)


class Cosign:
    """cosign for one registry host: ``sign``, ``attest``, ``verify``, ``verify_attestations``."""

    def __init__(self, host: str, *, insecure: bool = False, ca_bundle: str | Path | None = None) -> None:
        self.host = host
        self.insecure = insecure
        self.ca_bundle = ca_bundle
        self.exe = cosign_binary()
        self.redact = Redactor()
        self.redact.add(os.environ.get("COSIGN_PASSWORD"))

    def _registry_args(self) -> list[str]:
        out = []
        if self.insecure or is_loopback(self.host):
            out.append("--allow-http-registry")
        if self.insecure:
            out.append("--allow-insecure-registry")
        return out

    def sign(self, ref: str, key: Key) -> None:
        self._run(["sign", "--yes", *key.args(), *self._registry_args(), ref], what=f"signing {ref}", key=key)

    def attest(self, ref: str, key: Key, predicate_type: str, predicate: bytes) -> None:
        with tempfile.TemporaryDirectory(prefix="ml-env-attest-") as d:
            path = Path(d) / "predicate.json"
            path.write_bytes(predicate)
            self._run(
                ["attest", "--yes", *key.args(), *self._registry_args(), "--type", predicate_type,
                 "--predicate", str(path), ref],
                what=f"attesting {ref}", key=key,
            )  # fmt: skip

    def verify(self, ref: str, trust: Trust) -> list[dict[str, Any]]:
        """The verified signature payloads (cosign's simple-signing JSON) of ``ref``'s digest."""
        out = self._run(["verify", *trust.args(), *self._registry_args(), "--output", "json", ref],
                        what=f"verifying {ref}", verifying=True)  # fmt: skip
        return _json_lines(out, ref)

    def verify_attestations(self, ref: str, trust: Trust, predicate_type: str) -> list[dict[str, Any]]:
        """The in-toto statements of ``predicate_type`` about ``ref``'s digest whose signatures
        verify (cosign checks the subject is that digest)."""
        out = self._run(
            ["verify-attestation", *trust.args(), *self._registry_args(), "--type", predicate_type, ref],
            what=f"verifying the {predicate_type} attestation of {ref}", verifying=True,
        )  # fmt: skip
        statements = []
        for envelope in _json_lines(out, ref):
            try:
                statement = json.loads(base64.b64decode(str(envelope.get("payload", ""))))
            except ValueError:
                continue
            if isinstance(statement, dict):
                statements.append(statement)
        return statements

    def public_key(self, key: Key) -> bytes:
        """The public half of a signing key (for its fingerprint in the ledger)."""
        if key.ref is None:
            return b""
        return self._run(["public-key", "--key", key.ref], what="reading the signing key's public key", key=key)

    def _run(self, args: list[str], *, what: str, key: Key | None = None, verifying: bool = False) -> bytes:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env.setdefault("COSIGN_PASSWORD", "")  # an unencrypted key, or the user's: never a prompt
        if self.ca_bundle:
            env["SSL_CERT_FILE"] = str(self.ca_bundle)
        with self._docker_config() as config:
            env["DOCKER_CONFIG"] = str(config)
            try:
                p = subprocess.Popen([self.exe, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=env)  # fmt: skip
            except OSError as e:
                raise EngineError(f"cannot start cosign: {e.strerror}") from None
            try:
                out, err = _bounded(p, MAX_OUTPUT)
            except subprocess.TimeoutExpired:
                raise RegistryError(f"cosign did not finish {what} in {TIMEOUT:.0f}s") from None
        if p.returncode == 0:
            return out
        line = self._last_line(err)
        if verifying and _no_signature(err):
            raise SignatureMissing(f"{what}: {line}")
        if key is not None and "decrypt" in err.decode(errors="replace").lower():
            raise UsageError(f"{what}: cannot decrypt {key.describe()}: is COSIGN_PASSWORD its password?")
        if "unauthorized" in err.decode(errors="replace").lower() or "denied" in err.decode(errors="replace").lower():
            raise RegistryError(f"{what}: the registry refused cosign's credentials ({line})")
        raise RegistryError(f"{what}: {line}")

    def _last_line(self, err: bytes) -> str:
        lines = [ln.strip() for ln in err.decode(errors="replace").splitlines() if ln.strip()]
        lines = [ln for ln in lines if not ln.startswith(("WARNING", "Usage:", "main.go"))] or lines or ["no message"]
        text = lines[-1].removeprefix("Error: ")
        return printable(self.redact(text), 300)

    @contextmanager
    def _docker_config(self) -> Iterator[Path]:
        """A docker config holding credentials for ``self.host`` only, removed after."""
        with tempfile.TemporaryDirectory(prefix="ml-env-cosign-") as d:
            os.chmod(d, 0o700)
            cfg: dict[str, Any] = {"auths": {}}
            found = credentials_for(self.host)
            if found is not None:
                user, secret = found
                self.redact.add(secret)
                if user == "<token>":
                    cfg["auths"][self.host] = {"identitytoken": secret}
                else:
                    cfg["auths"][self.host] = {"auth": base64.b64encode(f"{user}:{secret}".encode()).decode()}
            fd = os.open(Path(d) / "config.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(cfg, fh)
            yield Path(d)


def _bounded(p: subprocess.Popen[bytes], limit: int) -> tuple[bytes, bytes]:
    """stdout up to ``limit`` (beyond it cosign is stopped: an error), stderr's last 64 KiB; a
    cosign that has not finished in ``TIMEOUT`` is killed (``TimeoutExpired``)."""
    import threading

    stdout, stderr = p.stdout, p.stderr
    assert stdout is not None and stderr is not None
    err = bytearray()
    late = threading.Event()

    def drain() -> None:
        for chunk in iter(lambda: stderr.read(65536), b""):
            err.extend(chunk)
            del err[: max(0, len(err) - 65536)]

    def kill() -> None:
        late.set()
        p.kill()

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    timer = threading.Timer(TIMEOUT, kill)
    timer.start()
    out = bytearray()
    try:
        for chunk in iter(lambda: stdout.read(1 << 20), b""):
            out.extend(chunk)
            if len(out) > limit:
                p.kill()
                p.wait()
                raise RegistryError(f"cosign printed more than {limit // 2**20} MiB: the registry holds too much")
        p.wait()
    finally:
        timer.cancel()
    t.join(timeout=5)
    if late.is_set():
        raise subprocess.TimeoutExpired(p.args, TIMEOUT)
    return bytes(out), bytes(err)


def _no_signature(err: bytes) -> bool:
    text = err.decode(errors="replace").lower()
    return any(
        s in text
        for s in (
            "no matching signatures",
            "no signatures found",
            "no matching attestations",
            "none of the attestations matched",
            "invalid signature",
            "signature mismatch",
            "failed to verify signature",
            "no certificate found",
            "expected identities",
        )
    )


def _json_lines(out: bytes, ref: str) -> list[dict[str, Any]]:
    """cosign prints a JSON array (verify --output json) or one JSON object per line."""
    text = out.decode(errors="replace").strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
        items = doc if isinstance(doc, list) else [doc]
    except ValueError:
        items = []
        for line in text.splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                raise RegistryError(f"cosign printed something that is not JSON verifying {ref}") from None
    return [x for x in items if isinstance(x, dict)]
