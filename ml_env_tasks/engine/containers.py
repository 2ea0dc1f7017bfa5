"""Containers through the Engine API (``engine.api``): training runs and scoring services.

A run is several calls (create, copy in, start, follow logs, wait, inspect, remove); over the
socket they cost milliseconds each, where a CLI process per call costs tens of them.
python-on-whales stays the tool for builds (BuildKit is the CLI's). One ``Containers`` per
engine, on the same endpoint as the build side.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..safe.grammar import digits
from .api import EngineAPI, EngineAPIError, NotFound
from .buildlog import MAX_LOG_LINE
from .resources import Resources

__all__ = ["Container", "Containers", "ContainerInfo", "ContainerState", "PortBinding", "CONFINED"]

# Every container this project starts runs code it does not vouch for (a training script, a
# scoring script, an image a pull request built): no process in it may gain privileges (setuid
# binaries, file capabilities: ``no-new-privileges``) and it holds no capability at all. Root in
# such a container still owns root's files (its image, an outputs folder root made) but cannot
# chown, override permissions, make device nodes or bind low ports; nothing the project runs
# needs more (the scoring servers listen on 5001).
CONFINED: dict[str, Any] = {"SecurityOpt": ["no-new-privileges"], "CapDrop": ["ALL"]}


@dataclass(frozen=True)
class PortBinding:
    container_port: int
    host_ip: str
    host_port: int


@dataclass(frozen=True)
class ContainerInfo:
    """A container found by label."""

    id: str
    name: str
    state: str  # running | exited | created | ...
    labels: dict[str, str] = field(default_factory=dict)
    ports: tuple[PortBinding, ...] = ()


@dataclass(frozen=True)
class ContainerState:
    status: str  # running | exited | created | ... | gone
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""


@dataclass(frozen=True)
class Container:
    """A container this command created: its id and what can be done with it."""

    id: str
    name: str
    on: Containers = field(repr=False, compare=False)

    def put_tar(self, chunks: Iterator[bytes], what: str = "copying the source snapshot into the container") -> None:
        self.on.put_tar(self.id, chunks, what)

    def get_tar(self, path: str, dest: Path, *, what: str) -> tuple[int, int]:
        return self.on.get_tar(self.id, path, dest, what=what)

    def mounts(self) -> list[dict[str, Any]]:
        return self.on.mounts(self.id)

    def host_port(self, container_port: int) -> int | None:
        return self.on.host_port(self.id, container_port)

    def start(self) -> None:
        self.on.start(self.id)

    def logs(self) -> Iterator[str]:
        return self.on.logs(self.id)

    def wait(self) -> int:
        return self.on.wait(self.id)

    def stop(self, timeout: int = 10) -> None:
        self.on.stop(self.id, timeout)

    def remove(self) -> None:
        self.on.remove(self.id)

    def state(self) -> ContainerState:
        return self.on.state(self.id)


class Containers:
    def __init__(self, api: EngineAPI, describe: str = "the Docker engine") -> None:
        self.api = api
        self.describe = describe

    def _fail(self, e: EngineAPIError, what: str) -> EngineError:
        return EngineError(f"{what} failed: {e.message}")

    def create(
        self,
        image: str,
        command: list[str],
        *,
        name: str,
        envs: dict[str, str],
        volumes: list[tuple[str, str, str]],
        labels: dict[str, str],
        workdir: str,
        user: str | None,
        resources: Resources | None = None,
        ports: dict[int, int] | None = None,
        network: str | None = None,
        host_ip: str = "127.0.0.1",
        cap_add: tuple[str, ...] = (),
    ) -> Container:
        """A created container, ``CONFINED``. ``volumes``: (host path or volume name, container
        path, mode); ``ports``: container port -> host port on ``host_ip`` (0: the engine picks
        one); ``network``: a user-defined network to join instead of the default bridge;
        ``cap_add``: the capabilities it gets back (none unless a caller shows it needs one)."""
        r = resources or Resources()
        host: dict[str, Any] = {"Binds": [f"{src}:{dst}:{mode}" for src, dst, mode in volumes], **CONFINED}
        if cap_add:
            host["CapAdd"] = list(cap_add)
        if r.cpus:
            host["NanoCpus"] = int(r.cpus * 1e9)
        if r.memory:
            host["Memory"] = r.memory
        if r.shm_size:
            host["ShmSize"] = r.shm_size
        if r.gpus:
            gpu: dict[str, Any] = {"Driver": "", "Capabilities": [["gpu"]], "Options": {}}
            if r.gpus == "all" or digits(r.gpus):
                gpu.update(Count=-1 if r.gpus == "all" else int(r.gpus), DeviceIDs=[])
            else:
                gpu.update(Count=0, DeviceIDs=[x for x in r.gpus.replace("device=", "").split(",") if x])
            host["DeviceRequests"] = [gpu]
        if ports:
            host["PortBindings"] = {
                f"{c}/tcp": [{"HostIp": host_ip, "HostPort": str(h) if h else ""}] for c, h in ports.items()
            }
        if network:
            host["NetworkMode"] = network
        config: dict[str, Any] = {
            "Image": image, "Env": [f"{k}={v}" for k, v in envs.items()], "Labels": labels, "WorkingDir": workdir,
            "User": user or "", "HostConfig": host, "Tty": False, "AttachStdout": False, "AttachStderr": False,
        }  # fmt: skip
        if command:  # none: the image's own CMD
            config["Cmd"] = command
        if ports:
            config["ExposedPorts"] = {f"{c}/tcp": {} for c in ports}
        create = self.api.path("/containers/create", query={"name": name})
        try:
            try:
                made = self.api.call("POST", create, json_body=config)
            except NotFound:  # no such image here: pull it, as docker run does, and create again
                self._pull(image)
                made = self.api.call("POST", create, json_body=config)
        except EngineAPIError as e:
            raise self._fail(e, f"creating a container from {image}") from None
        return Container(str(made["Id"]), name, self)

    def _pull(self, image: str) -> None:
        """Pull an image (by digest or tag) with the registry credentials docker would use."""
        repo, sep, ref = image.rpartition("@") if "@" in image else image.rpartition(":")
        if not sep or "/" in ref:  # "host:port/repo" without a tag
            repo, ref = image, "latest"
        headers = {}
        auth = _registry_auth(repo.split("/", 1)[0] if "/" in repo else "docker.io")
        if auth:
            headers["X-Registry-Auth"] = auth
        for _ in self.api.json_lines("POST", self.api.path("/images/create", query={"fromImage": repo, "tag": ref}),
                                     headers=headers, timeout=None):  # fmt: skip
            pass

    def put_tar(
        self, cid: str, chunks: Iterator[bytes], what: str = "copying the source snapshot into the container"
    ) -> None:
        """Stream a tar (paths relative to /) into a created container: nothing is held whole."""
        try:
            self.api.call("PUT", self.api.path("/containers/{}/archive", cid, query={"path": "/"}), body=chunks,
                          headers={"Content-Type": "application/x-tar"}, timeout=None)  # fmt: skip
        except EngineAPIError as e:
            raise self._fail(e, what) from None

    def get_tar(self, cid: str, path: str, dest: Path, *, what: str) -> tuple[int, int]:
        """A folder of a container (running or stopped) into ``dest``, streamed and contained
        (``engine.archive``): ``path``'s own files land directly in ``dest``. (files, bytes)."""
        from .archive import receive_tar

        try:
            with self.api.open("GET", self.api.path("/containers/{}/archive", cid, query={"path": path}),
                               timeout=None) as resp:  # fmt: skip
                return receive_tar(resp, path.rstrip("/").rsplit("/", 1)[-1], dest, what=what)
        except EngineAPIError as e:
            raise self._fail(e, what) from None

    def mounts(self, cid: str) -> list[dict[str, Any]]:
        """What the engine mounted into a container (its inspect's ``Mounts``)."""
        try:
            got = self.api.call("GET", self.api.path("/containers/{}/json", cid))
        except EngineAPIError as e:
            raise self._fail(e, "inspecting a container") from None
        return list(got.get("Mounts") or [])

    def volume_exists(self, name: str) -> bool:
        try:
            self.api.call("GET", self.api.path("/volumes/{}", name))
        except NotFound:
            return False
        except EngineAPIError as e:
            raise self._fail(e, f"inspecting volume {name}") from None
        return True

    def start(self, cid: str) -> None:
        try:
            self.api.call("POST", self.api.path("/containers/{}/start", cid))
        except EngineAPIError as e:
            raise self._fail(e, "starting the container") from None

    def logs(self, cid: str) -> Iterator[str]:
        """Follow stdout and stderr, line by line, until the container stops. A line longer than
        MAX_LOG_LINE is cut into pieces: output without newlines cannot grow memory."""
        buf = b""
        for chunk in self.api.output(cid, follow=True):
            buf += chunk
            while b"\n" in buf or len(buf) > MAX_LOG_LINE:
                cut = buf.find(b"\n")
                if cut < 0 or cut > MAX_LOG_LINE:
                    line, buf = buf[:MAX_LOG_LINE], buf[MAX_LOG_LINE:]
                else:
                    line, buf = buf[:cut], buf[cut + 1 :]
                yield line.decode(errors="replace")
        if buf:
            yield buf.decode(errors="replace")

    def kill(self, cid: str, signal: str) -> None:
        """Send a signal to a running container's main process."""
        try:
            self.api.call("POST", self.api.path("/containers/{}/kill", cid, query={"signal": signal}))
        except EngineAPIError as e:
            raise self._fail(e, f"signalling the container ({signal})") from None

    def inspect(self, cid: str) -> dict[str, Any]:
        try:
            got = self.api.call("GET", self.api.path("/containers/{}/json", cid))
        except EngineAPIError as e:
            raise self._fail(e, "inspecting a container") from None
        return got if isinstance(got, dict) else {}

    def address(self, cid: str, network: str) -> str:
        """The container's IP address on a network it joined."""
        nets = (self.inspect(cid).get("NetworkSettings") or {}).get("Networks") or {}
        ip = str((nets.get(network) or {}).get("IPAddress") or "")
        if not ip:
            raise EngineError(f"the container {cid[:12]} has no address on the network {network}")
        return ip

    def host_port(self, cid: str, container_port: int) -> int:
        """The host port a container port is published on (one the engine picked)."""
        ports = (self.inspect(cid).get("NetworkSettings") or {}).get("Ports") or {}
        for b in ports.get(f"{container_port}/tcp") or []:
            if digits(str(b.get("HostPort") or "")):
                return int(b["HostPort"])
        raise EngineError(f"the container {cid[:12]} publishes no port for {container_port}")

    def create_network(self, name: str, labels: dict[str, str]) -> None:
        """A user-defined bridge network; one that exists already is used as it is."""
        try:
            self.api.call("POST", "/networks/create", json_body={"Name": name, "Driver": "bridge", "Labels": labels,
                                                                 "CheckDuplicate": True})  # fmt: skip
        except EngineAPIError as e:
            if e.status != 409:
                raise self._fail(e, f"creating the network {name}") from None

    def remove_network(self, name: str) -> None:
        with contextlib.suppress(EngineAPIError, EngineError):
            self.api.call("DELETE", self.api.path("/networks/{}", name))

    def wait(self, cid: str) -> int:
        got = self.api.call("POST", self.api.path("/containers/{}/wait", cid), timeout=None)
        return int(got["StatusCode"])

    def stop(self, cid: str, timeout: int = 10) -> None:
        # called from a timer or a signal handler's thread: errors mean it is gone already
        with contextlib.suppress(EngineAPIError, EngineError):
            self.api.call("POST", self.api.path("/containers/{}/stop", cid, query={"t": timeout}), timeout=timeout + 30)

    def remove(self, cid: str, *, within: float = 30.0) -> None:
        """Remove a container (forced, with its anonymous volumes) and see that it is gone. The
        engine may answer a removal with an error and keep the container (``removal already in
        progress``, a file system still busy: it is then ``dead`` or ``removing``), and a name
        still held blocks the next start under it: asked again until it is gone, for ``within``
        seconds, then an error naming it."""
        deadline = time.monotonic() + within
        while True:
            try:
                self.api.call("DELETE", self.api.path("/containers/{}", cid, query={"force": 1, "v": 1}))
                return
            except NotFound:
                return
            except (EngineAPIError, EngineError) as e:
                failure = e
            with contextlib.suppress(EngineError):
                if self.state(cid).status == "gone":
                    return
            if time.monotonic() >= deadline:
                message = failure.message if isinstance(failure, EngineAPIError) else str(failure)
                raise EngineError(f"container {cid[:12]} could not be removed: {message}")
            time.sleep(0.25)

    def state(self, cid: str) -> ContainerState:
        """Where the container is now; ``gone`` when it no longer exists."""
        try:
            st = self.api.call("GET", self.api.path("/containers/{}/json", cid))["State"]
        except NotFound:
            return ContainerState("gone")
        except EngineAPIError as e:
            raise self._fail(e, "inspecting a container") from None
        return ContainerState(
            str(st.get("Status") or "?"), st.get("ExitCode"), bool(st.get("OOMKilled")), str(st.get("Error") or "")
        )

    def image(self, ref: str) -> dict[str, Any] | None:
        """The engine's inspect of a local image; None when it has none by that reference."""
        try:
            got = self.api.call("GET", self.api.path("/images/{}/json", ref))
        except NotFound:
            return None
        except EngineAPIError as e:
            raise self._fail(e, f"inspecting {ref}") from None
        return got if isinstance(got, dict) else None

    def distribution(self, ref: str, host: str) -> str | None:
        """The manifest digest a tag has in its registry, as the engine resolves it: through
        the engine's registry mirrors and with docker's credentials. None when the registry has
        no such manifest."""
        auth = _registry_auth(host)
        try:
            got = self.api.call("GET", self.api.path("/distribution/{}/json", ref),
                                headers={"X-Registry-Auth": auth} if auth else None)  # fmt: skip
        except NotFound:
            return None
        except EngineAPIError as e:
            if "manifest unknown" in e.message or "not found" in e.message.lower():
                return None
            raise self._fail(e, f"resolving {ref} in its registry") from None
        digest = (got.get("Descriptor") or {}).get("digest") if isinstance(got, dict) else None
        return str(digest) if digest else None

    def image_digest(self, ref: str) -> str | None:
        """The repository digest of a local image (for a run against an image without a spec)."""
        img = self.image(ref)
        if img is None:
            return None
        for d in img.get("RepoDigests") or []:
            return str(d).split("@", 1)[1]
        return str(img["Id"])

    def image_labels(self, ref: str) -> dict[str, str]:
        try:
            img = self.image(ref) or {}
        except EngineError:
            return {}
        labels = (img.get("Config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def history(self, ref: str) -> list[dict[str, Any]]:
        try:
            got = self.api.call("GET", self.api.path("/images/{}/history", ref))
        except EngineAPIError as e:
            raise self._fail(e, f"docker history {ref}") from None
        return list(got or [])

    def gpus_available(self) -> bool:
        """A GPU runtime is registered with the engine (nvidia) or a GPU device node exists."""
        try:
            runtimes = (self.api.call("GET", "/info") or {}).get("Runtimes") or {}
        except EngineAPIError:
            runtimes = {}
        return "nvidia" in runtimes or Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()

    def list_by_label(self, label: str) -> list[ContainerInfo]:
        """Containers carrying a label (``key`` or ``key=value``)."""
        try:
            found = self.api.call(
                "GET", self.api.path("/containers/json", query={"all": 1, "filters": {"label": [label]}})
            )
        except EngineAPIError as e:
            raise self._fail(e, "listing containers") from None
        out = []
        for c in found or []:
            ports = tuple(
                PortBinding(int(p["PrivatePort"]), str(p.get("IP") or ""), int(p["PublicPort"]))
                for p in c.get("Ports") or []
                if p.get("PublicPort")
            )
            out.append(
                ContainerInfo(
                    str(c["Id"]), str(c["Names"][0]).lstrip("/"), str(c["State"]), dict(c.get("Labels") or {}), ports
                )
            )
        return out

    def logs_text(self, cid: str, tail: int | str = "all") -> str:
        """The last lines of a container's output (bounded), for an error report."""
        out = bytearray()
        with contextlib.suppress(EngineAPIError, EngineError):
            for chunk in self.api.output(cid, follow=False, tail=str(tail)):
                out += chunk
                if len(out) > 4 * 2**20:
                    del out[: len(out) - 4 * 2**20]
        return out.decode(errors="replace")


def _registry_auth(host: str) -> str | None:
    """The X-Registry-Auth header for a pull from ``host``: docker's credentials for it."""
    import base64

    from ..registry.credentials import credentials_for

    creds = credentials_for(host)
    if creds is None:
        return None
    user, secret = creds
    doc = {"identitytoken": secret} if user == "<token>" else {"username": user, "password": secret}
    doc["serveraddress"] = host
    return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
