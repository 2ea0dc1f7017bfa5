"""Training runs inside environment containers (the ScriptRunConfig / Experiment.submit analogue).

``train`` runs one; ``list_runs``/``load_run`` read the history; ``reap_lost``/``gc`` close runs
whose ml-env process died. The runner interface (``Runner``) is where other places to run plug in.
"""

from __future__ import annotations

from ..errors import RecordError
from .history import gc, list_runs, load_run, reap_lost
from .record import RunEnvironment, RunRecord, RunStatus
from .runner import Job, LocalDockerRunner, Outcome, Runner, on_stop_signals
from .train import RunOptions, RunResult, parse_pairs, train

__all__ = [
    "Job",
    "LocalDockerRunner",
    "Outcome",
    "RecordError",
    "RunEnvironment",
    "RunOptions",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "Runner",
    "gc",
    "list_runs",
    "load_run",
    "on_stop_signals",
    "parse_pairs",
    "reap_lost",
    "train",
]
