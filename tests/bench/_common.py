"""What every benchmark shares: the lab's facts and how a result is written."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def lab() -> dict[str, Any]:
    default = Path(os.environ.get("ML_ENV_LAB_STATE", "/var/lib/ml-env-lab")) / "run" / "env.json"
    return json.loads(Path(os.environ.get("ML_ENV_LAB", default)).read_text())


def write_result(name: str, result: dict[str, Any], *lines: str) -> None:
    """Write .bench/<name>.json and print the summary lines."""
    out = ROOT / ".bench" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for line in lines:
        print(line)
    print(f"written to {out}")
