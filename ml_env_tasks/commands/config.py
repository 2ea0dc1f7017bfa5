"""``config``: every setting a config file or an environment variable can give, its effective
value and where it came from (flag > environment > project > user > machine > default)."""

from __future__ import annotations

import argparse
from typing import Any

from ..settings import groups, options
from . import Command, Console, Outcome, Values

__all__ = ["COMMANDS"]


def _settable() -> list[options.Option]:
    from ..settings.files import KEYS

    seen: dict[str, options.Option] = {}
    g = groups
    every = (g.BUILD_WHERE, g.BUILD_HOW, g.RUN, g.PROMOTE, g.SIGN, g.TRUST,
             (g.TRAIN_ENV, g.INFERENCE_ENV, g.VERSIONS, g.SPEC_ENV, g.MODEL_REPOSITORY, g.PACKAGE_REPOSITORY), g.COMPUTE)  # fmt: skip
    for group in every:
        for o in group:
            if (o.config or o.env) and (o.config or o.name) not in seen:
                seen[o.config or o.name] = o
    missing = set(KEYS) - {o.config for o in seen.values()} - {"compute"}  # tables: `ml-env compute list`
    assert not missing, f"config keys no option declares: {missing}"
    return list(seen.values())


def run_config(args: Values, io: Console) -> Outcome:
    from ..settings.files import load_layers, site_config_path, user_config_path

    layers = load_layers()
    settable = _settable()
    rows = []
    settings: dict[str, dict[str, str | None]] = {}
    data: dict[str, Any] = {
        "settings": settings,
        "files": {
            "project": str(layers.project.path) if layers.project.path else None,
            "user": str(user_config_path()),
            "site": str(site_config_path()),
        },
    }
    for o in settable:  # one at a time: two settings may fill the same option (--env: train_env, inference_env)
        resolved = options.resolve_options([o], argparse.Namespace(), layers=layers)
        value, source = resolved.values[o.name], str(resolved.origin(o.name))
        settings[o.config or o.name] = {"value": None if value is None else str(value), "source": source, "env": o.env}
        rows.append(f"{o.config or o.name:14} = {'' if value is None else value!s:40} ({source})")
    rows.append(
        f"files: project {data['files']['project'] or '-'}, user {data['files']['user']}, site {data['files']['site']}"
    )
    return Outcome(data, "\n".join(rows))


COMMANDS = {"config": Command("config", "show every effective setting and where it came from", (), run_config)}
