"""Containers through the Engine API (docker-py): training runs and scoring services.

A run is several calls (create, copy in, start, follow logs, wait, inspect, remove); over the
socket they cost milliseconds each, where a CLI process per call costs tens of them.
python-on-whales stays the tool for builds (docker-py has no BuildKit). One ``Containers`` per
engine, created from the same endpoint as the build side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EngineError
from ..resources import Resources
from .buildlog import MAX_LOG_LINE

__all__ = ["Container", "Containers", "ContainerInfo", "ContainerState", "PortBinding"]


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

    def put_tar(self, chunks: Iterator[bytes]) -> None:
        self.on.put_tar(self.id, chunks)

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
    def __init__(self, api: Any, describe: str = "the Docker engine") -> None:
        import docker.errors

        self.errors = docker.errors
        self.api = api
        self.describe = describe

    def _fail(self, e: Exception, what: str) -> EngineError:
        explanation = getattr(e, "explanation", None) or str(e)
        return EngineError(f"{what} failed: {str(explanation)[:300]}")

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
    ) -> Container:
        from docker.types import DeviceRequest

        r = resources or Resources()
        devices = None
        if r.gpus:
            if r.gpus == "all" or r.gpus.isdigit():
                count = -1 if r.gpus == "all" else int(r.gpus)
                devices = [DeviceRequest(count=count, capabilities=[["gpu"]])]
            else:
                ids = [x for x in r.gpus.replace("device=", "").split(",") if x]
                devices = [DeviceRequest(device_ids=ids, capabilities=[["gpu"]])]
        host_config = self.api.create_host_config(
            binds=[f"{src}:{dst}:{mode}" for src, dst, mode in volumes],
            nano_cpus=int(r.cpus * 1e9) if r.cpus else None,
            mem_limit=r.memory,
            shm_size=r.shm_size,
            device_requests=devices,
            port_bindings={c: ("127.0.0.1", h) for c, h in (ports or {}).items()} or None,
        )
        try:
            self._ensure_image(image)
            c = self.api.create_container(
                image, command, name=name, environment=envs, labels=labels, working_dir=workdir,
                user=user or "", host_config=host_config, ports=list(ports) if ports else None,
            )  # fmt: skip
        except self.errors.DockerException as e:
            raise self._fail(e, f"creating a container from {image}") from None
        return Container(str(c["Id"]), name, self)

    def _ensure_image(self, image: str) -> None:
        try:
            self.api.inspect_image(image)
        except self.errors.ImageNotFound:
            repo, _, ref = image.rpartition("@") if "@" in image else image.rpartition(":")
            if "/" in ref:  # "host:port/repo" without a tag
                repo, ref = image, "latest"
            self.api.pull(repo, tag=ref)

    def put_tar(self, cid: str, chunks: Iterator[bytes]) -> None:
        """Stream a tar (paths relative to /) into a created container: nothing is held whole."""
        try:
            self.api.put_archive(cid, "/", chunks)
        except self.errors.DockerException as e:
            raise self._fail(e, "copying the source snapshot into the container") from None

    def start(self, cid: str) -> None:
        try:
            self.api.start(cid)
        except self.errors.DockerException as e:
            raise self._fail(e, "starting the container") from None

    def logs(self, cid: str) -> Iterator[str]:
        """Follow stdout and stderr, line by line, until the container stops. A line longer than
        MAX_LOG_LINE is cut into pieces: output without newlines cannot grow memory."""
        buf = b""
        for chunk in self.api.logs(cid, stream=True, follow=True, stdout=True, stderr=True):
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

    def wait(self, cid: str) -> int:
        return int(self.api.wait(cid)["StatusCode"])

    def stop(self, cid: str, timeout: int = 10) -> None:
        # called from a timer or a signal handler's thread: errors mean it is gone already
        with contextlib.suppress(self.errors.DockerException):
            self.api.stop(cid, timeout=timeout)

    def remove(self, cid: str) -> None:
        with contextlib.suppress(self.errors.DockerException):
            self.api.remove_container(cid, force=True, v=True)

    def state(self, cid: str) -> ContainerState:
        """Where the container is now; ``gone`` when it no longer exists."""
        try:
            st = self.api.inspect_container(cid)["State"]
        except self.errors.NotFound:
            return ContainerState("gone")
        except self.errors.DockerException as e:
            raise self._fail(e, "inspecting a container") from None
        return ContainerState(
            str(st.get("Status") or "?"), st.get("ExitCode"), bool(st.get("OOMKilled")), str(st.get("Error") or "")
        )

    def image_digest(self, ref: str) -> str | None:
        """The repository digest of a local image (for a run against an image without a spec)."""
        try:
            img = self.api.inspect_image(ref)
        except self.errors.ImageNotFound:
            return None
        except self.errors.DockerException as e:
            raise self._fail(e, f"inspecting {ref}") from None
        for d in img.get("RepoDigests") or []:
            return str(d).split("@", 1)[1]
        return str(img["Id"])

    def image_labels(self, ref: str) -> dict[str, str]:
        try:
            img = self.api.inspect_image(ref)
        except self.errors.DockerException:
            return {}
        labels = (img.get("Config") or {}).get("Labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def gpus_available(self) -> bool:
        """A GPU runtime is registered with the engine (nvidia) or a GPU device node exists."""
        try:
            runtimes = self.api.info().get("Runtimes") or {}
        except self.errors.DockerException:
            runtimes = {}
        return "nvidia" in runtimes or Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()

    def list_by_label(self, label: str) -> list[ContainerInfo]:
        """Containers carrying a label (``key`` or ``key=value``)."""
        out = []
        for c in self.api.containers(all=True, filters={"label": label}):
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
        try:
            return str(self.api.logs(cid, stdout=True, stderr=True, tail=tail).decode(errors="replace"))
        except self.errors.DockerException:
            return ""
