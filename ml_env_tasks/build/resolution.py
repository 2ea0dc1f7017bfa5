"""The resolution a build with ``python.layers = "split"`` starts with: a small build whose output
is the pins of each layer, read back, checked and rendered into the Dockerfile (``build.layering``
says why); and ``plan --resolve``, the same for another builder. Also the build's
SOURCE_DATE_EPOCH, which both passes and the resolution share."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MlEnvError
from ..safe.grammar import digits
from ..safe.redact import Redactor
from ..spec import Environment
from . import extras
from .cache import choose_cache, existing_sources, with_user_cache
from .dockerfile import BuildPlan, render, write_context
from .layering import read_layers
from .model import BuildOptions, Reporter, image_ref
from .secrets import build_secrets, docker_config_for

if TYPE_CHECKING:
    from ..engine import Engine

__all__ = ["resolve_layers", "resolve_plan", "source_date_epoch", "workspace"]


def workspace(
    env: Environment, p: BuildPlan, opts: BuildOptions, workdir: Path, redactor: Redactor
) -> tuple[Path, list[str], Any, Any]:
    """What a build runs in: the context written under ``workdir``, the secrets (files in a 0700
    folder, their values added to ``redactor``), the engine with the environment's registry
    credentials, and its capabilities."""
    from ..engine import Engine

    context = workdir / "context"
    context.mkdir()
    write_context(p, context)
    secrets_dir = workdir / "secrets"
    secrets_dir.mkdir(mode=0o700)
    secrets = build_secrets(env, opts, secrets_dir, redactor)
    engine = Engine(config_dir=docker_config_for(env, workdir, redactor))
    return context, secrets, engine, engine.capabilities(opts.builder)


def resolve_plan(env: Environment, p: BuildPlan, opts: BuildOptions, rep: Reporter) -> BuildPlan:
    """``ml-env plan --resolve``: the resolution run as a build runs it (the same engine, cache,
    secrets and network), and the plan with each layer's pins: what another builder needs to
    build the image ml-env builds. A plan with nothing to resolve comes back as it is."""
    if p.resolve_dockerfile is None:
        return p
    redactor = Redactor()
    workdir = Path(tempfile.mkdtemp(prefix="ml-env-resolve-"))
    try:
        context, secrets, engine, caps = workspace(env, p, opts, workdir, redactor)
        cache = with_user_cache(choose_cache(env, opts, caps, image_ref(env, opts, p.hash)), extras.parse(opts), caps)
        how = build_how(opts, None)
        on_line = lambda line: rep.log(redactor(line))  # noqa: E731
        try:
            return resolve_layers(
                engine, env, p, context, workdir, secrets, existing_sources(cache, opts, rep), on_line, opts, how, rep
            )
        except MlEnvError as e:
            e.message = redactor(e.message)
            e.details = redactor(e.details) if e.details else e.details
            raise
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def build_how(opts: BuildOptions, platforms: list[str] | None) -> dict[str, Any]:
    """What every build a command runs shares with the others: builder, platforms, the date."""
    return {"builder": opts.builder, "platforms": platforms, "build_args": {"SOURCE_DATE_EPOCH": source_date_epoch()}}


def resolve_layers(engine: Engine, env: Environment, p: BuildPlan, context: Path, workdir: Path, secrets: list[str],
                    cache_from: list[dict[str, str]], on_line: Callable[[str], None], opts: BuildOptions, how: dict[str, Any],
                    rep: Reporter) -> BuildPlan:  # fmt: skip
    """``python.layers = "split"``: resolve in a small build whose output is the pins (on the base
    image alone: it shares no step with the image's build), then write each layer's pins into the
    Dockerfile, where BuildKit finds the layer by its text alone (``build.layering``)."""
    rep.info("resolving the dependencies, a layer per declared package")
    dockerfile = workdir / "resolve.Dockerfile"
    dockerfile.write_text(p.resolve_dockerfile or "")
    out = workdir / "layers"
    engine.build(
        context, file=dockerfile, tags=[], push=False, labels={}, secrets=secrets, network=opts.network,
        cache_from=cache_from, cache_to=None, no_cache=opts.upgrade, on_line=on_line,
        output={"type": "local", "dest": str(out)}, **how,
    )  # fmt: skip
    resolved = render(env, layers=read_layers(out))
    (context / "Dockerfile").write_text(resolved.dockerfile)
    return resolved


def source_date_epoch() -> str:
    """SOURCE_DATE_EPOCH for the build: the caller's, else 0. A constant, so that editing an
    environment never changes the cache keys of the steps before the edit (a date that moved with
    each commit would rebuild every layer)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    return raw if digits(raw) and len(raw) < 12 else "0"
