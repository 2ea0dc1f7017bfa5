"""Test helpers for the real lab: workspaces that clean up, wheels, a private index, a fault proxy."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ml_env_tasks.build import BuildOptions
from ml_env_tasks.registry import RegistryClient


def ml_env(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the `ml-env` CLI as a user would, in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "ml_env_tasks", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Workspace:
    lab: dict
    dir: Path
    repo: str
    extra_repos: list[tuple[str, str]] = field(default_factory=list)  # (host, repo) to clean

    def spec(self, text: str, name: str = "env.toml", files: dict[str, bytes] | None = None) -> Path:
        for n, data in (files or {}).items():
            p = self.dir / n
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        f = self.dir / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)
        return f

    def opts(self, **kw) -> BuildOptions:
        base = dict(
            registry=self.lab["registry"],
            repository=self.repo,
            network=self.lab["build_network"],
            ca_bundle=Path(self.lab["ca_bundle"]) if self.lab.get("ca_bundle") else None,
            log_dir=self.dir / "logs",
            lock_dir=self.dir / "locks",
        )
        base.update(kw)
        return BuildOptions(**base)

    def cli_args(self) -> list[str]:
        args = ["--registry", self.lab["registry"], "--repository", self.repo, "--network", self.lab["build_network"]]
        args += ["--log-dir", str(self.dir / "logs")]
        if self.lab.get("ca_bundle"):
            args += ["--ca-bundle", self.lab["ca_bundle"]]
        return args


def delete_repository(host: str, repo: str, credentials: tuple[str, str] | None = None) -> None:
    """Delete every tag's manifest of a test repository (the lab registries allow delete)."""
    client = RegistryClient(host, retries=1, credentials=credentials or True)
    r = client.request("GET", f"/v2/{repo}/tags/list", scope=f"repository:{repo}:pull", ok=(200, 404))
    if r.status_code != 200:
        return
    for tag in r.json().get("tags") or []:
        info = client.head_manifest(repo, tag)
        if info:
            client.request(
                "DELETE",
                f"/v2/{repo}/manifests/{info.digest}",
                scope=f"repository:{repo}:delete,pull,push",
                ok=(202, 404),
            )


@contextmanager
def serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve a handler on a free loopback port in a thread; yields the port, stops on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def make_wheel(directory: Path, name: str, version: str, body: str = "VALUE = 42\n") -> Path:
    """A real, minimal pure-Python wheel (PEP 427), made here so no index is needed to get one."""
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": body.encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: ml-env-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    out = directory / f"{dist}-py3-none-any.whl"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path, data in files.items():
            z.writestr(path, data)
    out.write_bytes(buf.getvalue())
    return out


@contextmanager
def private_index(root: Path, wheels: list[Path], user: str, token: str) -> Iterator[str]:
    """A PEP 503 simple index on loopback that demands basic auth. Yields its URL with credentials."""
    simple = root / "simple"
    for w in wheels:
        project = w.name.split("-")[0].replace("_", "-")
        d = simple / project
        d.mkdir(parents=True, exist_ok=True)
        (d / w.name).write_bytes(w.read_bytes())
        (d / "index.html").write_text(f'<html><body><a href="{w.name}">{w.name}</a></body></html>')
    expected = "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="private"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *a):
            pass

    with serve(Handler) as port:
        yield f"http://{user}:{token}@127.0.0.1:{port}/simple/"


@contextmanager
def fault_proxy(
    upstream: str, *, fail_first: int = 0, always_fail: bool = False, status: int = 503, truncate_blobs: int = 0
) -> Iterator[tuple[str, list[int]]]:
    """An HTTP proxy on loopback in front of a registry that answers `status` to the first N
    requests (or to all), and cuts the first `truncate_blobs` blob downloads off halfway.
    Yields its host:port and the list of statuses it sent (-1: a cut connection)."""
    cuts = [truncate_blobs]
    seen: list[int] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self):
            with lock:
                n = len(seen)
                fail = always_fail or n < fail_first
                seen.append(status if fail else 0)
            if fail:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            req = urllib.request.Request(f"http://{upstream}{self.path}", data=body, method=self.command)
            for k, v in self.headers.items():
                if k.lower() not in ("host", "connection"):
                    req.add_header(k, v)
            try:
                resp = urllib.request.urlopen(req, timeout=30)
                code, headers, data = resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                code, headers, data = e.code, e.headers, e.read()
            cut = False
            with lock:  # this request's own slot: requests run in parallel
                seen[n] = code
                if self.command == "GET" and "/blobs/sha256:" in self.path and code == 200 and cuts[0] > 0:
                    cuts[0] -= 1
                    seen[n] = cut = -1
            self.send_response(code)
            for k, v in headers.items():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if cut:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if self.command != "HEAD":
                self.wfile.write(data)

        do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _handle

        def log_message(self, *a):
            pass

    with serve(Handler) as port:
        yield f"127.0.0.1:{port}", seen


def push_single_image(
    client: RegistryClient, repo: str, tag: str, *, arch: str = "amd64", payload: bytes = b"hello"
) -> str:
    """Push a real single-manifest OCI image (one gzip layer holding one file) over the API."""
    import gzip
    import json
    import tarfile

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
    layer = gzip.compress(raw.getvalue(), mtime=0)
    diff_id = "sha256:" + hashlib.sha256(raw.getvalue()).hexdigest()
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    digests = {}
    for name, data in (("layer", layer), ("config", config)):
        d = "sha256:" + hashlib.sha256(data).hexdigest()
        if not client.blob_exists(repo, d):
            client.upload_stream(repo, d, iter([data]))
        digests[name] = d
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digests["config"],
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": digests["layer"],
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    client.put_manifest(repo, tag, manifest, "application/vnd.oci.image.manifest.v1+json")
    return "sha256:" + hashlib.sha256(manifest).hexdigest()


REPO_ROOT = Path(__file__).resolve().parents[2]


def copy_checkout(dest: Path) -> Path:
    """The files a push would carry (tracked and untracked-but-not-ignored), as a new repository."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True,
    ).stdout.split(b"\0")  # fmt: skip
    for f in filter(None, files):
        src = REPO_ROOT / f.decode()
        if src.is_file():
            (dest / f.decode()).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f.decode())
    git = ["git", "-c", "user.name=act", "-c", "user.email=act@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "act"], cwd=dest, check=True)
    return dest


def mine(label: str) -> list[str]:
    """Names of containers with ``label`` made from this test's images (the ``ws`` repository):
    other sessions sharing the engine have containers of their own, which are not this test's."""
    from python_on_whales import docker
    from python_on_whales.exceptions import NoSuchContainer

    repo = os.environ.get("ML_ENV_TEST_REPO", "")
    out = []
    for c in docker.container.list(all=True, filters=[("label", label)]):
        try:
            image = (c.config.labels or {}).get("ml-env.image", "") or c.config.image
        except NoSuchContainer:
            continue
        if repo and repo in str(image):
            out.append(c.name)
    return out
