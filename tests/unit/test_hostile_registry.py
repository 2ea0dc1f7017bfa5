"""A hostile registry on loopback: lies about digests, corrupts blobs, redirects elsewhere, names
token realms it should not, storms with 429/503, reflects our headers back. The client detects
each, and no credential leaves for a place it should not go. (No Docker needed: the client
speaks HTTP to a real server.)"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from ml_env_tasks.errors import BlobIntegrityError, RegistryAuthError, RegistryError, RegistryTransient
from ml_env_tasks.registry import RegistryClient

USER, PASSWORD = "alice", "hunter2-very-secret"
BASIC = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
MANIFEST = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"digest": "sha256:" + "c" * 64, "size": 2}, "layers": []}).encode()  # fmt: skip
M_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
BLOB = b"real layer bytes" * 1000
B_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()


@dataclass
class Seen:
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Authorization)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str, auth: str) -> None:
        with self.lock:
            self.requests.append((method, path, auth))

    def auths(self) -> list[str]:
        return [a for _, _, a in self.requests if a]


@contextmanager
def server(handle) -> Iterator[tuple[int, Seen]]:
    seen = Seen()

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _any(self):
            seen.add(self.command, self.path, self.headers.get("Authorization", ""))
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            status, headers, body = handle(self)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield srv.server_address[1], seen
    finally:
        srv.shutdown()
        srv.server_close()


def client(port: int, **kw) -> RegistryClient:
    return RegistryClient(f"127.0.0.1:{port}", credentials=(USER, PASSWORD), retries=3, backoff=0.01, **kw)


def test_a_manifest_that_does_not_hash_to_its_digest_is_refused() -> None:
    other = MANIFEST.replace(b'"layers": []', b'"layers": [ ]')

    def handle(h):
        if "/manifests/" in h.path:
            return (
                200,
                {"Docker-Content-Digest": M_DIGEST, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
                other,
            )
        return 404, {}, b""

    with server(handle) as (port, _):
        with pytest.raises(RegistryError, match="digest"):
            client(port).get_manifest("r", M_DIGEST)


def test_a_head_that_names_another_digest_is_refused() -> None:
    def handle(h):
        return 200, {"Docker-Content-Digest": "sha256:" + "e" * 64}, b""

    with server(handle) as (port, _):
        with pytest.raises(RegistryError, match="says"):
            client(port).head_manifest("r", M_DIGEST)


def test_a_corrupted_blob_is_detected_streamed_or_whole() -> None:
    def handle(h):
        return 200, {}, BLOB[:-3] + b"xyz"

    with server(handle) as (port, _):
        with pytest.raises(BlobIntegrityError):
            b"".join(client(port).blob_chunks("r", B_DIGEST, size=4096))
        with pytest.raises(BlobIntegrityError):
            client(port).get_blob("r", B_DIGEST)


def test_a_redirect_to_another_port_carries_no_credentials() -> None:
    with server(lambda h: (200, {}, BLOB)) as (elsewhere, seen_elsewhere):

        def handle(h):
            if h.headers.get("Authorization") != BASIC:
                return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
            return 307, {"Location": f"http://127.0.0.1:{elsewhere}/storage/blob"}, b""

        with server(handle) as (port, seen):
            got = b"".join(client(port).blob_chunks("r", B_DIGEST))
    assert got == BLOB
    assert BASIC in seen.auths()  # the registry itself got them
    assert seen_elsewhere.auths() == [] and seen_elsewhere.requests  # the other port got none


def test_a_plain_http_realm_on_another_host_gets_nothing() -> None:
    def handle(h):
        return 401, {"WWW-Authenticate": 'Bearer realm="http://tokens.example.invalid/token",service="r"'}, b""

    with server(handle) as (port, seen):
        with pytest.raises(RegistryAuthError, match="plain http") as exc:
            client(port).head_manifest("r", "latest")
    assert PASSWORD not in str(exc.value)
    assert seen.auths() == []


def test_a_loopback_realm_is_used_and_its_token_stays_with_the_registry() -> None:
    with server(lambda h: (200, {}, json.dumps({"token": "tok-123"}).encode())) as (tport, tseen):

        def handle(h):
            if h.headers.get("Authorization") == "Bearer tok-123":
                return 200, {"Docker-Content-Digest": M_DIGEST, "Content-Type": MANIFEST_TYPE}, b""
            return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{tport}/token",service="reg"'}, b""

        with server(handle) as (port, seen):
            info = client(port).head_manifest("r", "latest")
    assert info.digest == M_DIGEST
    assert tseen.auths() == [BASIC]  # the realm, on loopback, got the credentials once
    assert "service=reg" in tseen.requests[0][1] and "scope=repository%3Ar%3Apull" in tseen.requests[0][1]
    assert set(seen.auths()) == {"Bearer tok-123"}  # the registry never saw the password


def test_an_identity_token_is_posted_as_a_refresh_token() -> None:
    bodies: list[bytes] = []

    class Tok(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            body = json.dumps({"access_token": "acc"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:

        def handle(h):
            if h.headers.get("Authorization") == "Bearer acc":
                return 200, {"Docker-Content-Digest": M_DIGEST, "Content-Type": MANIFEST_TYPE}, b""
            return (
                401,
                {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{srv.server_address[1]}/t",service="s"'},
                b"",
            )

        with server(handle) as (port, _):
            c = RegistryClient(f"127.0.0.1:{port}", credentials=("<token>", "refresh-xyz"), backoff=0.01)
            assert c.head_manifest("r", "latest").digest == M_DIGEST
    finally:
        srv.shutdown()
        srv.server_close()
    assert b"grant_type=refresh_token" in bodies[0] and b"refresh_token=refresh-xyz" in bodies[0]


def test_429_storm_is_retried_with_retry_after_then_gives_up() -> None:
    count = {"n": 0}

    def handle(h):
        count["n"] += 1
        if count["n"] <= 2:
            return 429, {"Retry-After": "1"}, b""
        return 200, {"Docker-Content-Digest": M_DIGEST, "Content-Type": MANIFEST_TYPE}, b""

    with server(handle) as (port, _):
        t0 = time.monotonic()
        assert client(port).head_manifest("r", "latest").digest == M_DIGEST
        assert time.monotonic() - t0 >= 1.9  # Retry-After honoured twice

    with server(lambda h: (503, {}, b"")) as (port, seen):
        with pytest.raises(RegistryTransient, match="503"):
            client(port).head_manifest("r", "latest")
        assert len(seen.requests) == 4  # one try and three retries, bounded


def test_parallel_clients_do_not_retry_in_lockstep() -> None:
    first_fail: dict[int, float] = {}
    retried: dict[int, float] = {}
    lock = threading.Lock()

    def handle(h):
        who = int(h.path.rsplit("/", 1)[1])
        with lock:
            if who not in first_fail:
                first_fail[who] = time.monotonic()
                return 429, {}, b""
            retried[who] = time.monotonic() - first_fail[who]
        return 200, {"Docker-Content-Digest": M_DIGEST, "Content-Type": MANIFEST_TYPE}, b""

    with server(handle) as (port, _):
        threads = [
            threading.Thread(
                target=lambda i=i: RegistryClient(f"127.0.0.1:{port}", backoff=0.2).head_manifest("r", str(i))
            )
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    waits = sorted(retried.values())
    assert len(waits) == 8 and waits[-1] - waits[0] > 0.02, waits  # jitter spreads them out


def test_an_error_body_reflecting_our_headers_is_never_echoed() -> None:
    def handle(h):
        if h.headers.get("Authorization") != BASIC:
            return 401, {"WWW-Authenticate": 'Basic realm="r"'}, b""
        echo = {"errors": [{"code": "DENIED", "message": f"you sent {h.headers['Authorization']} and {PASSWORD}"}]}
        return 400, {}, json.dumps(echo).encode()

    with server(handle) as (port, _):
        c = client(port)
        with pytest.raises(RegistryError) as exc:
            c.put_manifest("r", "t", MANIFEST, "application/vnd.oci.image.manifest.v1+json")
    text = str(exc.value)
    assert "DENIED" in text and PASSWORD not in text and BASIC.split()[1] not in text


def test_bodies_are_bounded() -> None:
    with server(lambda h: (200, {}, b"{" + b" " * (5 * 2**20) + b"}")) as (port, _):
        with pytest.raises(RegistryError, match="over"):
            client(port).get_manifest("r", "latest")


def test_a_tag_list_that_is_not_json_is_one_error() -> None:
    with server(lambda h: (200, {}, b"<html>")) as (port, _):
        with pytest.raises(RegistryError, match="not JSON"):
            client(port).tags("r")


def test_credentials_resolution_matches_docker_py(tmp_path, monkeypatch) -> None:
    """Our docker-config reading gives what docker-py's ``docker.auth`` gives, for the same file."""
    import docker.auth

    from ml_env_tasks.registry.credentials import credentials_for

    # a real credential helper (the docker protocol: `get` reads a host, answers JSON)
    helper = tmp_path / "bin" / "docker-credential-mltest"
    helper.parent.mkdir()
    helper.write_text(
        '#!/bin/sh\nread host\ncase "$host" in\n'
        '  e.io) echo \'{"ServerURL":"e.io","Username":"eve","Secret":"pw5"}\' ;;\n'
        '  f.io) echo \'{"ServerURL":"f.io","Username":"<token>","Secret":"tok6"}\' ;;\n'
        "  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n"
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    cfg = {
        "auths": {
            "a.io": {"auth": base64.b64encode(b"ann:pw1").decode()},
            "https://b.io": {"auth": base64.b64encode(b"bob:pw2").decode()},
            "c.io": {"identitytoken": "idtok"},
            "e.io": {"auth": base64.b64encode(b"shadowed:by-helper").decode()},
        },
        "credHelpers": {"e.io": "mltest"},
        "credsStore": "mltest",
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    monkeypatch.delenv("ML_ENV_REGISTRY_USERNAME", raising=False)
    theirs = docker.auth.load_config(str(tmp_path / "config.json"))
    for host in ("a.io", "b.io", "c.io", "d.io", "e.io", "f.io"):
        ours = credentials_for(host)
        ref = docker.auth.resolve_authconfig(theirs, host)
        if ref is None:
            assert ours is None, host
            continue
        token = ref.get("IdentityToken") or ref.get("identitytoken")
        if token:
            assert ours == ("<token>", token), host
        else:
            user = ref.get("Username") or ref.get("username")
            assert ours == (user, ref.get("Password") or ref.get("password")), host


@pytest.mark.parametrize("served", [BLOB + b"and more", BLOB[:-100]], ids=["longer", "shorter"])
def test_a_blob_of_another_length_than_its_manifest_says_is_not_uploaded(served: bytes) -> None:
    """A monolithic upload sends Content-Length from the manifest: a source that streams more or
    fewer bytes stops the upload before the destination could complete it."""
    completed = []

    def source(h):
        return 200, {}, served

    def destination(h):
        if h.command == "POST":
            return 202, {"Location": "/v2/r/blobs/uploads/u1"}, b""
        if h.command == "PUT":
            if len(h.body) == int(h.headers["Content-Length"]):  # a whole body arrived
                completed.append(h.body)
            return 201, {"Docker-Content-Digest": B_DIGEST}, b""
        return 404, {}, b""

    with server(source) as (sport, _), server(destination) as (dport, _):
        chunks = client(sport).blob_chunks("r", B_DIGEST)
        with pytest.raises(BlobIntegrityError):
            client(dport).upload_stream("r", B_DIGEST, chunks, size=len(BLOB))
    assert completed == []


def test_a_private_wheel_whose_bytes_are_not_its_digest_is_refused_and_nothing_is_written(tmp_path) -> None:
    """`get -o DIR` of a version with a private wheel, from a registry that serves other bytes
    under the wheel's digest: one line, exit 4, neither the wheel nor the environment file written."""
    import subprocess
    import sys

    from ml_env_tasks.catalog.versions import VersionEntry, Versions
    from ml_env_tasks.catalog.wheelstore import ARTIFACT_TYPE, TITLE, tag_for

    wheel = b"PK\x03\x04 a wheel" * 100
    sha = hashlib.sha256(wheel).hexdigest()
    name, h = "demo-1.0-py3-none-any.whl", "a" * 64
    artifact = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "artifactType": ARTIFACT_TYPE, "layers": [{"mediaType": "x", "digest": f"sha256:{sha}",
                           "size": len(wheel), "annotations": {TITLE: name}}]}).encode()  # fmt: skip
    served = []

    def handle(hd):
        served.append(hd.path)
        if hd.path.endswith(f"/manifests/{tag_for(h)}"):
            return 200, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}, artifact
        if hd.path.endswith(f"/blobs/sha256:{sha}"):
            return 200, {}, wheel[:-4] + b"evil"
        return 404, {}, b""

    with server(handle) as (port, _):
        reg = f"127.0.0.1:{port}"
        v = Versions(tmp_path / "versions.toml")
        spec_text = f'name = "w"\n[base]\nimage = "a/b:1"\n[python]\nwheels = ["wheels/{name}"]\n'
        v.append_raw(VersionEntry("w", 1, h, "sha256:" + "b" * 64, f"{reg}/team/w:{h}", reg, "now", spec_text,
                                  {}, {name: sha}).to_dict())  # fmt: skip
        p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "get", "w:1", "-o", "out", "--versions",
                            "versions.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert any("/blobs/" in s for s in served)
    assert p.returncode == 4 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "does not match its digest" in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_a_registered_wheel_is_written_only_inside_the_folder(tmp_path) -> None:
    from ml_env_tasks.catalog.versions import VersionEntry
    from ml_env_tasks.catalog.wheelstore import targets
    from ml_env_tasks.errors import UsageError

    def entry(rel: str) -> VersionEntry:
        text = f'name = "w"\n[base]\nimage = "a/b:1"\n[python]\nwheels = ["{rel}"]\n'
        return VersionEntry("w", 1, "h", "", "r/w:h", "r", "now", text, {}, {rel.rsplit("/", 1)[-1]: "0" * 64})

    assert targets(entry("wheels/d-1-py3-none-any.whl"), tmp_path) == {
        "d-1-py3-none-any.whl": tmp_path / "wheels/d-1-py3-none-any.whl"
    }
    for bad in ("../d-1-py3-none-any.whl", "/etc/d-1-py3-none-any.whl", "a/../../d-1-py3-none-any.whl"):
        with pytest.raises(UsageError, match="outside"):
            targets(entry(bad), tmp_path)


# --- a registry error is never "exists" ------------------------------------------------------


@pytest.mark.parametrize("status", [400, 409, 418, 422])
def test_a_registry_error_on_a_manifest_is_never_exists(status: int) -> None:
    error = json.dumps({"errors": [{"code": "MANIFEST_INVALID", "message": "no"}]}).encode()

    def handle(h):
        return status, {"Content-Type": "application/json"}, error

    with server(handle) as (port, _):
        c = client(port)
        with pytest.raises(RegistryError, match=f"answered {status}"):
            c.head_manifest("r", "latest")
        with pytest.raises(RegistryError, match=f"answered {status}"):
            c.get_manifest("r", "latest")
        with pytest.raises(RegistryError, match=f"answered {status}"):
            c.blob_exists("r", B_DIGEST)
        with pytest.raises(RegistryError, match=f"answered {status}"):
            c.tags("r")


def test_a_200_that_is_not_a_manifest_is_not_exists() -> None:
    def handle(h):
        return 200, {"Content-Type": "text/html"}, b'{"errors": []}'

    with server(handle) as (port, _):
        with pytest.raises(RegistryError, match="not an image manifest"):
            client(port).head_manifest("r", "latest")


def test_a_200_with_a_generic_type_and_a_manifest_body_exists() -> None:
    def handle(h):
        return 200, {"Content-Type": "application/json"}, MANIFEST

    with server(handle) as (port, _):
        info = client(port).head_manifest("r", "latest")
    assert info is not None and info.digest == M_DIGEST


def test_the_build_check_fails_closed_on_a_registry_error(monkeypatch) -> None:
    from ml_env_tasks.build import exists as reuse

    with server(lambda h: (400, {"Content-Type": "application/json"}, b'{"errors": []}')) as (port, _):
        opts = type("O", (), {"registry": "r", "insecure": False, "build_on_check_error": False})()
        rep = type("R", (), {"warn": lambda self, m: None})()
        with pytest.raises(RegistryError, match="could not check"):
            reuse.image_exists(f"127.0.0.1:{port}/r:t", opts, rep)  # type: ignore[arg-type]


# --- loopback means an address, not a name ---------------------------------------------------


@pytest.mark.parametrize(
    "host,loop",
    [
        ("127.0.0.1:5000", True),
        ("127.9.8.7", True),
        ("localhost:5000", True),
        ("localhost", True),
        ("[::1]:5000", True),
        ("127.attacker.example", False),
        ("127.attacker.example:5000", False),
        ("127.0.0.1.nip.io:5000", False),
        ("localhost.attacker.example", False),
        ("127.1:5000", False),
        ("128.0.0.1", False),
        ("registry.example:443", False),
    ],
)
def test_loopback_is_an_address_not_a_prefix(host: str, loop: bool) -> None:
    from ml_env_tasks.registry import is_loopback

    assert is_loopback(host) is loop
    assert RegistryClient(host, credentials=False).scheme == ("http" if loop else "https")


# --- answers nested thousands deep: one RegistryError, never a RecursionError (exit 70) ----------

DEEP_JSON = b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}"


def test_a_deep_token_answer_is_one_error() -> None:
    with server(lambda h: (200, {}, b'{"token": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")) as (tport, _):

        def handle(h):
            return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{tport}/token",service="reg"'}, b""

        with server(handle) as (port, _):
            with pytest.raises(RegistryError, match="token service.*nested"):
                client(port).head_manifest("r", "latest")


def test_a_deep_manifest_tag_list_or_referrers_is_one_error() -> None:
    def handle(h):
        return 200, {"Content-Type": MANIFEST_TYPE, "Docker-Content-Digest": M_DIGEST}, DEEP_JSON

    with server(handle) as (port, _):
        c = client(port)
        with pytest.raises(RegistryError, match="nested"):
            c.get_manifest("r", "latest")
        with pytest.raises(RegistryError, match="tag list.*nested"):
            c.tags("r")
    with server(lambda h: (200, {"Content-Type": "application/json"}, DEEP_JSON)) as (port, _):
        with pytest.raises(RegistryError, match="referrers.*nested"):
            client(port).referrers("r", M_DIGEST)


def test_a_deep_error_body_is_still_one_error() -> None:
    with server(lambda h: (400, {"Content-Type": "application/json"}, DEEP_JSON)) as (port, _):
        with pytest.raises(RegistryError, match="HTTP 400"):
            client(port).put_manifest("r", "t", MANIFEST, MANIFEST_TYPE)


def test_a_deep_oci_ledger_is_one_error() -> None:
    from ml_env_tasks.errors import LogError
    from ml_env_tasks.registry import artifacts as art
    from ml_env_tasks.release.ledger_oci import ARTIFACT_TYPE, RemoteLedger

    blob = b"[[promotion]]\na = " + b"[" * 20_000 + b"]" * 20_000 + b"\n"
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    body = art.manifest(ARTIFACT_TYPE, [{"mediaType": ARTIFACT_TYPE, "digest": digest, "size": len(blob)}])

    def handle(h):
        if "/manifests/" in h.path:
            return 200, {"Content-Type": MANIFEST_TYPE}, body
        return (200, {}, blob) if digest in h.path else (404, {}, b"")

    with server(handle) as (port, _):
        with pytest.raises(LogError, match="nested") as exc:
            RemoteLedger(f"oci://127.0.0.1:{port}/r", client=client(port))
    assert f"oci://127.0.0.1:{port}/r:ml-env-ledger" in str(exc.value)


# --- a registry that drips: every read within the socket timeout, the whole never done ----------


@contextmanager
def dripping(head: bytes, body: bytes, *, drip_head: bool = False) -> Iterator[int]:
    """A raw HTTP server that answers every request with ``head`` then ``body``, one byte every
    50 ms (the head too when ``drip_head``), until the client goes away or the test ends."""
    import socket as so

    stop = threading.Event()
    lsock = so.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.settimeout(0.2)

    def serve(conn: so.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                conn.recv(65536)  # the request (small; no body)
                slow = head + body if drip_head else body
                if not drip_head:
                    conn.sendall(head)
                for i in range(len(slow)):
                    if stop.is_set():
                        return
                    conn.sendall(slow[i : i + 1])
                    time.sleep(0.05)
            except OSError:
                return

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except OSError:
                continue
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        lsock.close()


def slow_client(port: int) -> RegistryClient:
    c = RegistryClient(f"127.0.0.1:{port}", credentials=False, retries=0, timeout=2.0)
    c.deadline = 1.0  # seconds, plus one per 256 KiB it may carry
    return c


def finishes(fn, seconds: float = 30) -> BaseException | None:
    """What ``fn()`` raised (None if nothing), failing the test if it is still running after ``seconds``."""
    out: dict[str, BaseException | None] = {"e": None}

    def go():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001
            out["e"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still waiting on a dripping registry after {seconds} s"
    return out["e"]


JSON_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"


@pytest.mark.parametrize("drip_head", [True, False], ids=["headers", "body"])
def test_a_dripping_registry_is_cut_off_by_the_deadline(drip_head: bool) -> None:
    body = b'{"tags": [' + b'"t",' * 5000 + b'"t"]}'
    with dripping(JSON_HEAD % len(body), body, drip_head=drip_head) as port:
        t0 = time.monotonic()
        e = finishes(lambda: slow_client(port).tags("r"))
    assert isinstance(e, RegistryError) and "within" in str(e), repr(e)
    assert time.monotonic() - t0 < 15


def test_a_dripping_blob_stream_is_cut_off_per_chunk() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BLOB)
    with dripping(head, BLOB) as port:
        e = finishes(lambda: b"".join(slow_client(port).blob_chunks("r", B_DIGEST, size=4096)))
    assert isinstance(e, RegistryError) and "within" in str(e), repr(e)


def test_a_dripping_token_service_is_cut_off() -> None:
    body = b'{"token": "' + b"t" * 5000 + b'"}'
    with dripping(JSON_HEAD % len(body), body) as tport:

        def handle(h):
            return 401, {"WWW-Authenticate": f'Bearer realm="http://127.0.0.1:{tport}/token",service="r"'}, b""

        with server(handle) as (port, _):
            e = finishes(lambda: slow_client(port).head_manifest("r", "latest"))
    assert isinstance(e, RegistryError) and "within" in str(e), repr(e)


def test_a_slow_but_steady_answer_within_the_deadline_is_read() -> None:
    body = b'{"tags": ["a", "b"]}'
    with dripping(JSON_HEAD % len(body), body) as port:  # ~1 s of drip, under 1 s + a margin
        c = slow_client(port)
        c.deadline = 10.0
        assert c.tags("r") == ["a", "b"]


def test_a_retry_after_of_non_ascii_digits_is_no_crash() -> None:
    """``'¹'.isdigit()`` is true and ``float('¹')`` raises: a registry's Retry-After is read as
    ASCII digits only, else ignored (the usual backoff), never a ValueError (exit 70)."""

    def handle(h):
        return 429, {"Retry-After": "\u00b9", "Content-Type": "application/json"}, b"{}"

    with server(handle) as (port, seen):
        with pytest.raises(RegistryError):
            client(port).head_manifest("r", "latest")
    assert len(seen.requests) > 1  # it was retried, as a 429 is


@pytest.mark.parametrize(
    "where", ["http://127.0.0.1:1@evil.example/v2/r/manifests/x", "http://[::1/v2/x", "http://127.0.0.1:port/x"]
)
def test_a_redirect_to_a_url_with_user_info_or_no_parse_is_one_error(where: str) -> None:
    """A registry's Location with user info (``127.0.0.1:1@evil.example``) or that does not parse was
    an InvalidURL/ValueError from http.client (exit 70); it is a RegistryError."""

    def handle(h):
        return 307, {"Location": where}, b""

    with server(handle) as (port, _):
        with pytest.raises(RegistryError):
            client(port).get_manifest("r", "latest")
