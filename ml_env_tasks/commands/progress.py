"""Progress on a terminal (rich, imported only there): copies, waits, test cases. Nothing
is drawn when stderr is not a terminal, and nothing under ``--json``."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["copy_progress", "is_terminal"]


def is_terminal() -> bool:
    return sys.stderr.isatty()


def copy_progress() -> Callable[[Any], None] | None:
    """A callback for a promotion's Progress: a bar of bytes and blobs, or None off a terminal."""
    if not is_terminal():
        return None
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    # one unit system everywhere: binary (MiB), as the summaries and messages write sizes
    bar = Progress(
        TextColumn("copying {task.fields[blobs]}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TextColumn("{task.fields[speed]}"),
        console=_console(),
        transient=True,
    )
    task: list[Any] = []

    def update(p: Any) -> None:
        if not task:
            bar.start()
            task.append(bar.add_task("copy", total=max(p.bytes_total, 1), blobs="", speed=""))
        speed = bar.tasks[0].speed
        shown = f"{speed / 2**20:.1f} MiB/s" if speed else ""
        bar.update(task[0], completed=p.bytes_done, blobs=f"{p.blobs_done}/{p.blobs_total} blobs", speed=shown)
        if p.blobs_done == p.blobs_total:
            bar.stop()

    return update


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)
