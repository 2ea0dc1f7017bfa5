"""Run history: list and show records, and close runs whose ml-env process died.

A run whose CLI was killed (SIGKILL, a lost terminal, a crashed CI runner) stays ``running`` in
its record and may leave its container behind. Any later ``train``, ``runs list``, ``runs show``
or ``runs gc`` on the same host finds such a run (its recorded process is gone, or the pid now
belongs to another process), marks it ``lost`` with the reason and removes its container.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from ..errors import MlEnvError, RecordError, UsageError
from ..safe.grammar import RUN_ID, matches, printable
from .record import RunRecord, RunStatus, now

__all__ = ["list_runs", "load_run", "reap_lost", "gc"]


def _records(runs_dir: Path, warn: Callable[[str], None] | None) -> list[tuple[Path, RunRecord]]:
    out = []
    if runs_dir.is_dir():
        for d in sorted(runs_dir.iterdir()):
            f = d / "run.json"
            if not f.is_file() or not matches(RUN_ID, d.name):
                continue
            try:
                out.append((d, RunRecord.read(f)))
            except RecordError as e:
                if warn:
                    warn(f"skipped: {e}")
    return out


def reap_lost(runs_dir: Path, *, warn: Callable[[str], None] | None = None) -> list[str]:
    """Mark runs whose ml-env process died as lost and remove their containers; their ids."""
    lost = []
    for d, rec in _records(runs_dir, None):
        if rec.status is not RunStatus.RUNNING or rec.cli is None or rec.cli.alive() is not False:
            continue
        if rec.engine and rec.engine.get("type") == "slurm":
            continue  # the cluster runs it, not that process: `runs show`/`wait` ask Slurm
        rec.status = RunStatus.LOST
        rec.ended = now()
        rec.reason = f"the ml-env process that ran it (pid {rec.cli.pid}) ended without finishing the run"
        rec.save(d)
        lost.append(rec.run_id)
        _remove_containers(rec.run_id, warn)
    return lost


def _remove_containers(run_id: str, warn: Callable[[str], None] | None) -> int:
    from .runner import RUN_LABEL

    try:
        from .. import engine

        c = engine.current().containers
        found = c.list_by_label(f"{RUN_LABEL}={run_id}")
        for info in found:
            c.remove(info.id)
        return len(found)
    except MlEnvError as e:
        if warn:
            warn(f"could not remove the container of lost run {run_id}: {e.message}")
        return 0


def gc(runs_dir: Path, *, warn: Callable[[str], None] | None = None) -> dict[str, list[str]]:
    """``runs gc``: close lost runs, and remove run containers whose ml-env process (on this
    host) is gone, whichever project started them."""
    from .record import CliProcess
    from .runner import CLI_LABEL, RUN_LABEL

    lost = reap_lost(runs_dir, warn=warn)
    removed: list[str] = []
    with contextlib.suppress(MlEnvError):
        from .. import engine

        c = engine.current().containers
        for info in c.list_by_label(RUN_LABEL):
            cli = CliProcess.from_label(info.labels.get(CLI_LABEL, ""))
            if cli is not None and cli.alive() is False:
                c.remove(info.id)
                removed.append(printable(info.labels.get(RUN_LABEL, "")))
    return {"lost": lost, "removed_containers": removed}


def list_runs(runs_dir: Path, *, warn: Callable[[str], None] | None = None) -> list[RunRecord]:
    return sorted((rec for _, rec in _records(runs_dir, warn)), key=lambda r: r.started)


def load_run(runs_dir: Path, run_id: str) -> RunRecord:
    """One run by id or unique prefix; an id is never a path (``../x`` is refused)."""
    if not matches(RUN_ID, run_id):
        raise UsageError(f"{printable(run_id, 80)!r} is not a run id", hint="`ml-env runs list` shows them")
    f = runs_dir / run_id / "run.json"
    if f.is_file():
        return RunRecord.read(f)
    matches_ = [r for r in list_runs(runs_dir) if r.run_id.startswith(run_id)]
    if len(matches_) == 1:
        return matches_[0]
    raise UsageError(f"run {run_id} not found in {runs_dir}" + (" (ambiguous prefix)" if matches_ else ""))
