"""The one place that talks to Docker and buildx (through python-on-whales).

It checks capabilities up front (engine reachable, buildx present, builder driver, containerd
image store), translates python-on-whales' ``DockerException`` into our errors once, and keeps
the tail of build logs so a failed build says why. python-on-whales is imported lazily: the
"already built" path never pays for it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import re
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BuildError, EngineError, RegistryAuthError
from .resources import Resources

if TYPE_CHECKING:
    from python_on_whales import DockerClient

__all__ = ["CACHE_BACKENDS", "Capabilities", "Engine", "Containers"]

CACHE_BACKENDS = ("auto", "inline", "registry", "local", "gha", "none")

TAIL_LINES = 40
MAX_LOG_LINE = 64 * 1024  # bytes of one log line, streamed from a build or a run


@dataclass(frozen=True)
class Capabilities:
    server_version: str
    containerd_store: bool
    buildx_version: str
    driver: str

    @property
    def cache_backends(self) -> tuple[str, ...]:
        """What ``--cache-to`` this builder can export (docs: docker driver needs the containerd store)."""
        if self.driver != "docker" or self.containerd_store:
            return ("inline", "registry", "local", "gha")
        return ("inline",)


@dataclass(frozen=True)
class BuildOutcome:
    metadata: dict[str, Any]
    steps: int  # RUN/COPY-like steps seen
    cached: int  # of which CACHED

    @property
    def digest(self) -> str | None:
        return self.metadata.get("containerimage.digest")

    @property
    def all_cached(self) -> bool:
        return self.steps > 0 and self.cached == self.steps


class Engine:
    def __init__(self, *, config_dir: str | Path | None = None) -> None:
        try:
            from python_on_whales import DockerClient
        except ImportError as e:  # pragma: no cover - a broken install
            raise EngineError(f"python-on-whales is not installed: {e}") from None
        self.docker: DockerClient = DockerClient(config=str(config_dir) if config_dir else None)
        self._caps: Capabilities | None = None

    # errors --------------------------------------------------------------------------------
    def _translate(self, e: Exception, what: str) -> Exception:
        from python_on_whales.exceptions import DockerException

        try:
            from python_on_whales.client_config import ClientNotFoundError
        except ImportError:  # pragma: no cover
            ClientNotFoundError = ()  # type: ignore[assignment,misc]  # noqa: N806
        if ClientNotFoundError and isinstance(e, ClientNotFoundError):
            return EngineError("the docker client is not installed", hint="run `nox -s lab` or install docker-cli")
        if isinstance(e, DockerException):
            err = _text(e.stderr) or _text(e.stdout) or ""
            if "Cannot connect to the Docker daemon" in err or "Is the docker daemon running" in err:
                return EngineError(
                    "the Docker engine is not reachable", hint="start it, or run `nox -s lab`", details=err
                )
            if "'buildx' is not a docker command" in err or "unknown command: docker buildx" in err:
                return EngineError("docker buildx is not installed", hint="install the docker-buildx package")
            if "unauthorized" in err or "authentication required" in err:
                return RegistryAuthError(f"{what}: the registry refused the credentials", details=_tail(err))
            return EngineError(f"{what} failed: {_last_error_line(err)}", details=_tail(err))
        return e

    # capabilities --------------------------------------------------------------------------
    def capabilities(self) -> Capabilities:
        if self._caps is not None:
            return self._caps
        from python_on_whales.exceptions import DockerException

        try:
            info = self.docker.system.info()
        except (DockerException, Exception) as e:  # ClientNotFoundError is not a DockerException
            raise self._translate(e, "docker info") from None
        status = json.dumps([list(x) for x in (info.driver_status or [])])
        try:
            bx = self.docker.buildx.version()
            builder = self.docker.buildx.inspect()
        except DockerException as e:
            raise self._translate(e, "docker buildx") from None
        version = str(bx).split()[1] if len(str(bx).split()) > 1 else str(bx)
        self._caps = Capabilities(
            server_version=info.server_version or "?",
            containerd_store="io.containerd.snapshotter" in status,
            buildx_version=version,
            driver=builder.driver or "docker",
        )
        return self._caps

    # build ---------------------------------------------------------------------------------
    def build(
        self,
        context: Path,
        *,
        tags: list[str],
        push: bool,
        labels: dict[str, str],
        secrets: list[str],
        network: str | None,
        cache_from: list[dict[str, str]],
        cache_to: dict[str, str] | None,
        no_cache: bool,
        on_line: Callable[[str], None],
    ) -> BuildOutcome:
        """Run one buildx build, streaming plain progress lines to ``on_line``.

        Raises BuildError with the last lines of the log when the build fails.
        """
        from python_on_whales.exceptions import DockerException

        metadata_file = context.parent / f"{context.name}.metadata.json"
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        steps: set[str] = set()
        cached: set[str] = set()
        try:
            stream = self.docker.buildx.build(
                context,
                tags=tags,
                push=push,
                labels=labels,
                secrets=secrets,
                network=network,
                cache_from=cache_from or None,
                cache_to=cache_to,
                cache=not no_cache,
                metadata_file=metadata_file,
                progress="plain",
                stream_logs=True,
            )
            assert not isinstance(stream, (str, type(None)))
            for raw in _lines(stream):
                tail.append(raw)
                on_line(raw)
                _count_step(raw, steps, cached)
        except DockerException as e:
            err = "\n".join(tail) or _text(e.stderr)
            failing = _failing_step(list(tail))
            if "Cannot connect to the Docker daemon" in err:
                raise EngineError("the Docker engine is not reachable", hint="start it, or run `nox -s lab`") from None
            if "unauthorized" in err or "authentication required" in err or "401 Unauthorized" in err:
                raise RegistryAuthError(
                    "the build could not authenticate to a registry (pulling the base or pushing the image)",
                    details=err,
                ) from None
            msg = "the build failed"
            if failing:
                msg += f" at step: {failing}"
            raise BuildError(msg, details=err) from None
        meta: dict[str, Any] = {}
        if metadata_file.exists():
            meta = json.loads(metadata_file.read_text() or "{}")
            metadata_file.unlink()
        return BuildOutcome(meta, len(steps), len(cached & steps))

    # images and containers -----------------------------------------------------------------
    def run_capture(self, image: str, command: list[str], *, entrypoint: str | None = None) -> str:
        """Run a short command in a throwaway container (no network) and return its stdout."""
        from python_on_whales.exceptions import DockerException

        try:
            out = self.docker.run(image, command, remove=True, networks=["none"], entrypoint=entrypoint)
        except DockerException as e:
            raise self._translate(e, f"running {' '.join(command)} in {image}") from None
        return str(out)

    def local_image_id(self, ref: str) -> str | None:
        from python_on_whales.exceptions import DockerException, NoSuchImage

        try:
            return self.docker.image.inspect(ref).id
        except NoSuchImage:
            return None
        except DockerException as e:
            raise self._translate(e, f"docker image inspect {ref}") from None

    def remove_image(self, ref: str) -> None:
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.image.remove(ref, force=True)
        except DockerException:
            pass

    def history(self, ref: str) -> str:
        """Every layer's ``created by`` text, for checks that nothing secret went into the image.

        python-on-whales does not implement ``image.history``; the Engine API (docker-py) does.
        """
        import docker
        import docker.errors

        try:
            client = docker.from_env()
            try:
                return "\n".join(str(h.get("CreatedBy", "")) for h in client.api.history(ref))
            finally:
                client.close()
        except docker.errors.DockerException as e:
            raise EngineError(f"docker history {ref} failed: {e}") from None

    def login(self, server: str, username: str, password: str) -> None:
        """``docker login`` with the password on stdin; refused credentials are a RegistryAuthError.

        Run directly rather than through python-on-whales, whose login does not capture stderr
        (the reason for a refusal would be lost).
        """
        try:
            p = subprocess.run(
                ["docker", "login", server, "--username", username, "--password-stdin"],
                input=password, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except FileNotFoundError:
            raise EngineError("the docker client is not installed") from None
        if p.returncode != 0:
            err = (p.stderr + p.stdout).replace(password, "***")
            if "unauthorized" in err.lower() or "denied" in err.lower() or "401" in err:
                raise RegistryAuthError(f"{server} refused the login of {username!r}") from None
            raise EngineError(f"docker login {server} failed: {_last_error_line(err)}")

    def prune_builder(self) -> None:
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.buildx.prune(all=True)
        except DockerException as e:
            raise self._translate(e, "docker buildx prune") from None


class Containers:
    """Containers for training runs, through the Engine API (docker-py).

    A run is several calls (create, copy in, start, follow logs, wait, inspect, remove); over the
    socket they cost milliseconds each, where a CLI process per call costs tens of them.
    python-on-whales stays the tool for builds (docker-py has no BuildKit).
    """

    def __init__(self) -> None:
        import docker
        import docker.errors

        self.errors = docker.errors
        try:
            self.client = docker.from_env(timeout=300)
            self.api = self.client.api
            self.api.ping()
        except docker.errors.DockerException as e:
            raise EngineError(
                "the Docker engine is not reachable", hint="start it, or run `nox -s lab`", details=str(e)
            ) from None

    def _fail(self, e: Exception, what: str) -> EngineError:
        explanation = getattr(e, "explanation", None) or str(e)
        return EngineError(f"{what} failed: {explanation}")

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
    ) -> str:
        from docker.types import DeviceRequest

        r = resources or Resources()
        devices = None
        if r.gpus:
            count = -1 if r.gpus == "all" else int(r.gpus) if r.gpus.isdigit() else None
            ids = None if count is not None else [x for x in r.gpus.replace("device=", "").split(",") if x]
            devices = [DeviceRequest(count=count if ids is None else None, device_ids=ids, capabilities=[["gpu"]])]
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
                image,
                command,
                name=name,
                environment=envs,
                labels=labels,
                working_dir=workdir,
                user=user or "",
                host_config=host_config,
                ports=list(ports) if ports else None,
            )
        except self.errors.DockerException as e:
            raise self._fail(e, f"creating a container from {image}") from None
        return str(c["Id"])

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
            raise self._fail(e, "starting the run container") from None

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
        import docker

        # a client of its own: stop is called from a timer or signal thread
        with contextlib.suppress(docker.errors.DockerException):
            docker.from_env(timeout=timeout + 30).api.stop(cid, timeout=timeout)

    def remove(self, cid: str) -> None:
        with contextlib.suppress(self.errors.DockerException):
            self.api.remove_container(cid, force=True, v=True)

    def state(self, cid: str) -> dict[str, Any]:
        try:
            st = self.api.inspect_container(cid)["State"]
        except self.errors.DockerException:
            return {}
        return {
            "oom_killed": bool(st.get("OOMKilled")),
            "error": st.get("Error") or "",
            "exit_code": st.get("ExitCode"),
        }

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

    def gpus_available(self) -> bool:
        """A GPU runtime is registered with the engine (nvidia) or a GPU device node exists."""
        try:
            runtimes = self.api.info().get("Runtimes") or {}
        except self.errors.DockerException:
            runtimes = {}
        return "nvidia" in runtimes or Path("/dev/nvidia0").exists() or Path("/dev/dxg").exists()

    def list_by_label(self, label: str) -> list[dict[str, Any]]:
        """Containers carrying a label (``key`` or ``key=value``): id, name, state, labels."""
        return [
            {
                "id": c["Id"],
                "name": c["Names"][0].lstrip("/"),
                "state": c["State"],
                "labels": c.get("Labels") or {},
                "ports": c.get("Ports") or [],
            }
            for c in self.api.containers(all=True, filters={"label": label})
        ]

    def status(self, cid: str) -> tuple[str, int | None]:
        """(``running``/``exited``/... or ``gone``, exit code)."""
        try:
            st = self.api.inspect_container(cid)["State"]
        except self.errors.NotFound:
            return "gone", None
        return st.get("Status", "?"), st.get("ExitCode")

    def logs_text(self, cid: str, tail: int | str = "all") -> str:
        try:
            return self.api.logs(cid, stdout=True, stderr=True, tail=tail).decode(errors="replace")
        except self.errors.DockerException:
            return ""


def _lines(stream: Iterator[str]) -> Iterator[str]:
    for chunk in stream:
        for line in chunk.splitlines():
            yield line if len(line) <= MAX_LOG_LINE else line[:MAX_LOG_LINE] + " … (line cut)"


def _count_step(line: str, steps: set[str], cached: set[str]) -> None:
    """Count build steps and those that did not run.

    Plain progress says ``#7 [3/5] RUN ...`` and then either ``#7 CACHED`` (local cache) or,
    for a layer taken from an imported cache (registry/local after a prune), lines like
    ``#7 sha256:<blob> 29kB / 29kB done``; a step that runs prints no blob lines.
    """
    m = _STEP.match(line)
    if m:
        steps.add(m.group(1))
        return
    m = _CACHED.match(line)
    if m and (m.group(2) == "CACHED" or m.group(1) in steps):
        cached.add(m.group(1))


_STEP = re.compile(r"^(#\d+) \[(?:[\w.-]+ )?\d+/\d+\] (?:RUN|COPY|ADD)\b")
_CACHED = re.compile(r"^(#\d+) (CACHED$|sha256:[0-9a-f]{64} )")


def _failing_step(tail: list[str]) -> str | None:
    for line in reversed(tail):
        if "ERROR: failed to solve:" in line or line.startswith("ERROR:"):
            s = line.split("failed to solve:", 1)[-1].strip()
            return s[:300]
    return None


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bytes):
        return v.decode(errors="replace")
    if isinstance(v, list):
        return "\n".join(map(str, v))
    return str(v)


def _tail(s: str, n: int = TAIL_LINES) -> str:
    return "\n".join(s.splitlines()[-n:])


def _last_error_line(s: str) -> str:
    lines = [x for x in s.splitlines() if x.strip()]
    for x in reversed(lines):
        if "error" in x.lower():
            return x.strip()[:300]
    return lines[-1].strip()[:300] if lines else "unknown error"
