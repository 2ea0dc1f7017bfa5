"""Runs on a cluster outlive the client: ``runs show`` asks Slurm how a running one is now (and
closes it when it has ended), ``runs logs`` prints its log so far, ``runs cancel`` cancels it,
``runs wait`` follows it to its end. A run's record keeps what they need (``engine``: the
target, the job id, its shared folder); the target's config is not needed again.

Closing a run here is what ``train`` does at the end of an attached one: the log kept in the run
folder, ``ML_ENV_METRIC`` lines and ``metrics.json`` read, the outputs brought back and cleared
of setuid bits and devices, the record finished with the job's state and exit code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from .batch import Layout
from .record import RunRecord, RunStatus
from .slurm import JobState, cancel, conclude, follow_job, job_state
from .train import METRIC_LINE, finish_run, metric_value

__all__ = ["on_cluster", "refresh", "wait", "cancel_run", "log_text"]


def on_cluster(rec: RunRecord) -> bool:
    return bool(rec.engine and rec.engine.get("type") == "slurm" and rec.engine.get("job_id"))


def _layout(rec: RunRecord) -> Layout:
    shared = (rec.engine or {}).get("shared_dir")
    if not isinstance(shared, str) or not shared:
        raise UsageError(f"run {rec.run_id} has no shared folder in its record: it cannot be followed")
    return Layout(Path(shared))


def _job(rec: RunRecord) -> str:
    job_id = str((rec.engine or {}).get("job_id", ""))
    if not re.fullmatch(r"[0-9]{1,12}", job_id):
        raise UsageError(f"run {rec.run_id}: its record's job id {job_id[:20]!r} is not a Slurm job id")
    return job_id


def _close(run_dir: Path, rec: RunRecord, state: JobState, say: Callable[[str], None], canceled: bool = False) -> None:
    layout = _layout(rec)
    metrics: dict[str, Any] = {}
    text = _tail_text(layout.log)
    with open(run_dir / "log.txt", "a", encoding="utf-8") as log:
        log.write(text)
    for line in text.splitlines():
        m = METRIC_LINE.fullmatch(line)
        if m:
            metrics[m.group(1)] = metric_value(m.group(2))
    outputs = run_dir / "outputs"
    outcome = conclude(state, layout, outputs, dict(rec.engine or {}), canceled=canceled)
    finish_run(run_dir, rec, outcome, outputs, metrics, say)


def refresh(run_dir: Path, rec: RunRecord, say: Callable[[str], None]) -> RunRecord:
    """A running cluster run as Slurm says it is now; closed when its job has ended."""
    if rec.status is not RunStatus.RUNNING or not on_cluster(rec):
        return rec
    state = job_state(_job(rec))
    if state.ended:
        _close(run_dir, rec, state, say)
    else:
        rec.engine = {**(rec.engine or {}), "state": state.state, "nodes": state.nodes, "times": state.times}
    return rec


def wait(run_dir: Path, rec: RunRecord, on_line: Callable[[str], None], say: Callable[[str], None]) -> RunRecord:
    """Follow a cluster run to its end (its log as it grows; Ctrl-C cancels the job)."""
    if rec.status is not RunStatus.RUNNING:
        return rec
    if not on_cluster(rec):
        raise UsageError(f"run {rec.run_id} is not a cluster run: its own ml-env process follows it")
    state, canceled = follow_job(_job(rec), _layout(rec), on_line, say)
    _close(run_dir, rec, state, say, canceled=canceled)
    return rec


def cancel_run(run_dir: Path, rec: RunRecord, say: Callable[[str], None]) -> RunRecord:
    if rec.status is not RunStatus.RUNNING:
        raise UsageError(f"run {rec.run_id} is {rec.status}: nothing to cancel")
    if not on_cluster(rec):
        raise UsageError(f"run {rec.run_id} is not a cluster run: stop it with Ctrl-C where it runs")
    cancel(_job(rec))
    say(f"cancelled job {_job(rec)}")
    return wait(run_dir, rec, lambda _line: None, say)


def log_text(run_dir: Path, rec: RunRecord) -> str:
    if rec.status is RunStatus.RUNNING and on_cluster(rec):
        return _tail_text(_layout(rec).log)
    return _tail_text(run_dir / "log.txt")


MAX_LOG = 64 * 2**20


def _tail_text(path: Path) -> str:
    """A log's last ``MAX_LOG`` bytes (a job can print without end), "" when there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_LOG))
            return f.read(MAX_LOG).decode(errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return ""
