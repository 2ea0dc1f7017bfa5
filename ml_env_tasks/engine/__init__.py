"""The one place that talks to a Docker engine.

``Engine`` is a facade over one endpoint (``context``): python-on-whales (the docker CLI and
buildx) for builds and images, the Engine API (``api``) for containers, both on the same docker
context and only when first used. ``current()`` gives the command's one engine.
Capabilities are checked up front (engine reachable, buildx present, builder driver, containerd
image store), python-on-whales' ``DockerException`` is translated once into our errors, and the
tail of a build log is kept so a failed build says why.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BuildError, EngineError, RegistryAuthError, UsageError
from .buildlog import TAIL_LINES, count_step, failure_message, last_error_line, lines, tail, text
from .context import Endpoint, current_endpoint, select_context

if TYPE_CHECKING:
    from .containers import Containers

__all__ = [
    "BuildOutcome",
    "Capabilities",
    "Endpoint",
    "Engine",
    "current",
    "select_context",
]


@dataclass(frozen=True)
class Capabilities:
    server_version: str
    containerd_store: bool
    buildx_version: str
    driver: str
    builder: str = "default"
    platform: str = "linux/amd64"  # the engine's own (os/arch)

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
        d = self.metadata.get("containerimage.digest")
        return d if isinstance(d, str) else None

    @property
    def all_cached(self) -> bool:
        return self.steps > 0 and self.cached == self.steps


_current: dict[str | None, Engine] = {}


def current() -> Engine:
    """The engine of this command (one per process and selected context)."""
    from .context import selected_context

    key = selected_context()
    if key not in _current:
        _current[key] = Engine()
    return _current[key]


class Engine:
    def __init__(self, *, context: str | None = None, config_dir: str | Path | None = None) -> None:
        self.endpoint = current_endpoint(context)
        self._config_dir = config_dir
        self._caps: Capabilities | None = None
        self._caps_builder: str | None = None

    @cached_property
    def docker(self) -> Any:
        """python-on-whales' client (the docker CLI) on this endpoint."""
        try:
            from python_on_whales import DockerClient
        except ImportError as e:  # pragma: no cover - a broken install
            raise EngineError(f"python-on-whales is not installed: {e}") from None
        config = str(self._config_dir) if self._config_dir else None
        return DockerClient(config=config, **self.endpoint.cli_options())

    @cached_property
    def containers(self) -> Containers:
        """The Engine API side (``engine.api``) on the same endpoint."""
        from .containers import Containers

        return Containers(self.endpoint.api(), self.endpoint.describe())

    # errors --------------------------------------------------------------------------------
    def _translate(self, e: Exception, what: str) -> Exception:
        from python_on_whales.client_config import ClientNotFoundError
        from python_on_whales.exceptions import DockerException

        if isinstance(e, ClientNotFoundError):
            return EngineError("the docker client is not installed", hint="run `nox -s lab` or install docker-cli")
        if isinstance(e, DockerException):
            err = text(e.stderr) or text(e.stdout) or ""
            if "Cannot connect to the Docker daemon" in err or "Is the docker daemon running" in err:
                return EngineError(
                    f"the Docker engine ({self.endpoint.describe()}) is not reachable",
                    hint="start it, or run `nox -s lab`",
                    details=err,
                )
            if "'buildx' is not a docker command" in err or "unknown command: docker buildx" in err:
                return EngineError("docker buildx is not installed", hint="install the docker-buildx package")
            if "unauthorized" in err or "authentication required" in err:
                return RegistryAuthError(f"{what}: the registry refused the credentials", details=tail(err))
            return EngineError(f"{what} failed: {last_error_line(err)}", details=tail(err))
        return e

    # capabilities --------------------------------------------------------------------------
    def capabilities(self, builder: str | None = None) -> Capabilities:
        """What the engine and its buildx builder (the current one, or ``builder``) can do."""
        if self._caps is not None and self._caps_builder == builder:
            return self._caps
        if builder is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", builder):
            from ..safe.grammar import printable

            raise UsageError(f"--builder {printable(builder, 60)!r} is not a buildx builder name")
        from python_on_whales.exceptions import DockerException

        try:
            info = self.docker.system.info()
        except Exception as e:  # ClientNotFoundError is not a DockerException
            raise self._translate(e, "docker info") from None
        status = json.dumps([list(x) for x in (info.driver_status or [])])
        try:
            bx = self.docker.buildx.version()
            found = self.docker.buildx.inspect(builder)
        except DockerException as e:
            err = text(e.stderr) or ""
            if builder and ("no builder" in err or "not found" in err):
                raise EngineError(
                    f"buildx builder {builder!r} does not exist", hint="`docker buildx ls` lists them"
                ) from None
            raise self._translate(e, "docker buildx") from None
        from ..build.extras import native_platform

        version = str(bx).split()[1] if len(str(bx).split()) > 1 else str(bx)
        self._caps = Capabilities(
            server_version=info.server_version or "?",
            containerd_store="io.containerd.snapshotter" in status,
            buildx_version=version,
            driver=found.driver or "docker",
            builder=found.name or builder or "default",
            platform=native_platform(getattr(info, "os_type", None), getattr(info, "architecture", None)),
        )
        self._caps_builder = builder
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
        builder: str | None = None,
        platforms: list[str] | None = None,
        output: dict[str, str] | None = None,
        provenance: dict[str, str] | None = None,
        build_args: dict[str, str] | None = None,
        load: bool = False,
        file: Path | None = None,
    ) -> BuildOutcome:
        """Run one buildx build, streaming plain progress lines to ``on_line``.

        Raises BuildError with the last lines of the log when the build fails.
        """
        from python_on_whales.exceptions import DockerException

        metadata_file = context.parent / f"{context.name}.metadata.json"
        last: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        steps: set[str] = set()
        cached: set[str] = set()
        try:
            stream = self.docker.buildx.build(
                context, tags=tags, push=push, labels=labels, secrets=secrets, network=network,
                cache_from=cache_from or None, cache_to=cache_to, cache=not no_cache, metadata_file=metadata_file,
                progress="plain", stream_logs=True, builder=builder, platforms=platforms or None, output=output or {},
                provenance=provenance, build_args=build_args or {}, load=load, file=file,
            )  # fmt: skip
            for raw in lines(stream):
                last.append(raw)
                on_line(raw)
                count_step(raw, steps, cached)
        except DockerException as e:
            err = "\n".join(last) or text(e.stderr)
            if "Cannot connect to the Docker daemon" in err:
                raise EngineError(
                    f"the Docker engine ({self.endpoint.describe()}) is not reachable",
                    hint="start it, or run `nox -s lab`",
                ) from None
            if "unauthorized" in err or "authentication required" in err or "401 Unauthorized" in err:
                raise RegistryAuthError(
                    "the build could not authenticate to a registry (pulling the base or pushing the image)",
                    details=err,
                ) from None
            msg, hint = failure_message(list(last))
            raise BuildError(msg, details=err, hint=hint) from None
        meta: dict[str, Any] = {}
        if metadata_file.exists():
            meta = json.loads(metadata_file.read_text() or "{}")
            metadata_file.unlink()
        return BuildOutcome(meta, len(steps), len(cached & steps))

    # images --------------------------------------------------------------------------------
    def run_capture(self, image: str, command: list[str], *, entrypoint: str | None = None) -> str:
        """Run a short command in a throwaway container (no network, confined as every container
        this project starts: ``containers.CONFINED``) and return its stdout."""
        from python_on_whales.exceptions import DockerException

        from .containers import CONFINED

        try:
            out = self.docker.run(image, command, remove=True, networks=["none"], entrypoint=entrypoint,
                                  security_options=CONFINED["SecurityOpt"], cap_drop=CONFINED["CapDrop"])  # fmt: skip
        except DockerException as e:
            raise self._translate(e, f"running {' '.join(command)} in {image}") from None
        return str(out)

    def local_image_id(self, ref: str) -> str | None:
        """The id of a local image, None when the engine has none by that reference: one Engine
        API call, no CLI process (the no-op build's only question to the engine)."""
        img = self.containers.image(ref)
        if img is None:
            return None
        got = img.get("Id")
        if not isinstance(got, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", got):
            raise EngineError(f"the engine answered an image id that is not one for {ref}")
        return got

    def tag_image(self, source: str, target: str) -> None:
        """``docker tag``: another name for a local image."""
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.image.tag(source, target)
        except DockerException as e:
            raise self._translate(e, f"tagging {source} as {target}") from None

    def remove_image(self, ref: str) -> None:
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.image.remove(ref, force=True)
        except DockerException:
            pass

    def history(self, ref: str) -> str:
        """Every layer's ``created by`` text, for checks that nothing secret went into the image.

        python-on-whales does not implement ``image.history``; the Engine API does."""
        return "\n".join(str(h.get("CreatedBy", "")) for h in self.containers.history(ref))

    def login(self, server: str, username: str, password: str) -> None:
        """``docker login`` with the password on stdin; refused credentials are a RegistryAuthError.

        Run directly rather than through python-on-whales, whose login does not capture stderr
        (the reason for a refusal would be lost)."""
        cmd = ["docker", *(["--context", self.endpoint.context] if self.endpoint.context else [])]
        try:
            p = subprocess.run(
                [*cmd, "login", server, "--username", username, "--password-stdin"],
                input=password, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        except FileNotFoundError:
            raise EngineError("the docker client is not installed") from None
        if p.returncode != 0:
            err = (p.stderr + p.stdout).replace(password, "***")
            if "unauthorized" in err.lower() or "denied" in err.lower() or "401" in err:
                raise RegistryAuthError(f"{server} refused the login of {username!r}") from None
            raise EngineError(f"docker login {server} failed: {last_error_line(err)}")

    def prune_builder(self) -> None:
        from python_on_whales.exceptions import DockerException

        try:
            self.docker.buildx.prune(all=True)
        except DockerException as e:
            raise self._translate(e, "docker buildx prune") from None
