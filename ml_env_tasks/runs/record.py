"""The run record (``runs/<run-id>/run.json``) as a type: written at the start and the end of a
run, read back by ``runs list/show`` and the fronts. Reading is strict: a record that is not
what this module writes is a RecordError naming the file, never a traceback."""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..engine.resources import Resources
from ..errors import RecordError
from ..safe.fsutil import read_bounded, write_atomic
from ..safe.grammar import RUN_ID, digits, matches
from ..safe.untrusted import json_loads

__all__ = ["RunStatus", "RunRecord", "RunEnvironment", "SourceInfo", "CliProcess", "now"]


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"
    LOST = "lost"  # the ml-env process that ran it died; found and closed by a later command

    @property
    def done(self) -> bool:
        return self is not RunStatus.RUNNING


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _str(d: dict[str, Any], key: str, *, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise ValueError(f"{key} must be a string")
    return v


@dataclass(frozen=True)
class RunEnvironment:
    spec: str | None
    name: str | None
    hash: str | None
    image: str
    digest: str | None
    registered: str | None = None  # NAME:VERSION, when the run used that registered version's image

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunEnvironment:
        return cls(
            _str(d, "spec", optional=True),
            _str(d, "name", optional=True),
            _str(d, "hash", optional=True),
            _str(d, "image"),
            _str(d, "digest", optional=True),
            _str(d, "registered", optional=True),
        )


@dataclass(frozen=True)
class SourceInfo:
    path: str
    snapshot_hash: str
    files: int
    bytes: int
    ignore_file: str | None
    git_commit: str | None
    git_dirty: bool | None
    skipped_links: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceInfo:
        return cls(
            _str(d, "path"),
            _str(d, "snapshot_hash"),
            int(d.get("files") or 0),
            int(d.get("bytes") or 0),
            _str(d, "ignore_file", optional=True),
            _str(d, "git_commit", optional=True),
            d.get("git_dirty") if isinstance(d.get("git_dirty"), bool) else None,
            [str(x) for x in d.get("skipped_links") or []],
        )


@dataclass(frozen=True)
class CliProcess:
    """The ml-env process that runs the run: if it dies, a later command finds the run lost."""

    pid: int
    host: str
    start_ticks: int | None  # /proc/<pid>/stat field 22: tells a reused pid from ours

    @classmethod
    def this(cls) -> CliProcess:
        return cls(os.getpid(), socket.gethostname(), _start_ticks(os.getpid()))

    def alive(self) -> bool | None:
        """True/False on this host; None when the run was started on another host."""
        if self.host != socket.gethostname():
            return None
        ticks = _start_ticks(self.pid)
        return ticks is not None and (self.start_ticks is None or ticks == self.start_ticks)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def label(self) -> str:
        return f"{self.host}/{self.pid}/{self.start_ticks or 0}"

    @classmethod
    def from_label(cls, text: str) -> CliProcess | None:
        parts = text.rsplit("/", 2)
        if len(parts) != 3 or not digits(parts[1]) or not digits(parts[2]):
            return None
        return cls(int(parts[1]), parts[0], int(parts[2]) or None)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CliProcess:
        ticks = d.get("start_ticks")
        return cls(int(d["pid"]), _str(d, "host"), int(ticks) if ticks is not None else None)


def _status(v: Any) -> RunStatus:
    try:
        return RunStatus(v)
    except ValueError:
        raise ValueError("status is not a run status") from None


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat.rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class RunRecord:
    run_id: str
    experiment: str
    status: RunStatus
    environment: RunEnvironment
    source: SourceInfo
    command: list[str]
    arguments: list[str]
    inputs: dict[str, dict[str, Any]]
    env_vars: dict[str, str]
    secrets: list[str]  # names only: values are never recorded
    resources: Resources
    timeout_s: float | None
    started: str
    ended: str | None = None
    exit_code: int | None = None
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    log: str = "log.txt"
    cli: CliProcess | None = None
    model: dict[str, Any] | None = None  # a model registered from this run's outputs
    # where it ran: the engine, how code/inputs/outputs travelled, the mounts the engine reports
    engine: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "experiment": self.experiment,
            "status": self.status.value,
            "environment": self.environment.to_dict(),
            "source": self.source.to_dict(),
            "command": list(self.command),
            "arguments": list(self.arguments),
            "inputs": self.inputs,
            "env_vars": self.env_vars,
            "secrets": list(self.secrets),
            "resources": {**self.resources.to_dict(), "timeout_s": self.timeout_s},
            "started": self.started,
            "ended": self.ended,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "metrics": self.metrics,
            "outputs": self.outputs,
            "log": self.log,
            "cli": self.cli.to_dict() if self.cli else None,
            "model": self.model,
            "engine": self.engine,
        }

    @classmethod
    def from_dict(cls, d: Any) -> RunRecord:
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        run_id = _str(d, "run_id")
        if not matches(RUN_ID, run_id):
            raise ValueError("run_id is not a run id")
        res = d.get("resources") or {}
        if not isinstance(res, dict):
            raise ValueError("resources must be an object")
        code = d.get("exit_code")
        for key, typ in (("command", list), ("arguments", list), ("inputs", dict), ("env_vars", dict),
                         ("secrets", list), ("metrics", dict), ("outputs", list)):  # fmt: skip
            if not isinstance(d.get(key, typ()), typ):
                raise ValueError(f"{key} must be a {typ.__name__}")
        return cls(
            run_id=run_id,
            experiment=_str(d, "experiment"),
            status=_status(d.get("status")),
            environment=RunEnvironment.from_dict(d.get("environment") or {}),
            source=SourceInfo.from_dict(d.get("source") or {}),
            command=[str(x) for x in d.get("command") or []],
            arguments=[str(x) for x in d.get("arguments") or []],
            inputs=dict(d.get("inputs") or {}),
            env_vars={str(k): str(v) for k, v in (d.get("env_vars") or {}).items()},
            secrets=[str(x) for x in d.get("secrets") or []],
            resources=Resources.from_dict(res),
            timeout_s=float(res["timeout_s"]) if res.get("timeout_s") is not None else None,
            started=_str(d, "started"),
            ended=_str(d, "ended", optional=True),
            exit_code=int(code) if isinstance(code, int) and not isinstance(code, bool) else None,
            reason=_str(d, "reason", optional=True),
            metrics=dict(d.get("metrics") or {}),
            outputs=list(d.get("outputs") or []),
            log=str(d.get("log") or "log.txt"),
            cli=CliProcess.from_dict(d["cli"]) if isinstance(d.get("cli"), dict) else None,
            model=d.get("model") if isinstance(d.get("model"), dict) else None,
            engine=d.get("engine") if isinstance(d.get("engine"), dict) else None,
        )

    def save(self, run_dir: Path) -> None:
        write_atomic(run_dir / "run.json", json.dumps(self.to_dict(), indent=2))

    @classmethod
    def read(cls, path: Path) -> RunRecord:
        try:
            data = read_bounded(path, 16 * 2**20, error=RecordError, what="run record")
            return cls.from_dict(json_loads(data, error=RecordError, file=str(path)))
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as e:
            msg = str(e) if isinstance(e, ValueError) and not isinstance(e, json.JSONDecodeError) else "not valid JSON"
            if isinstance(e, OSError):
                msg = f"cannot be read: {e.strerror}"
            raise RecordError(f"not a valid run record: {msg}", file=str(path)) from None
