"""Train overhead: `ml-env train` of a script that exits at once vs `docker run --rm IMAGE python -c pass`.

Both measured in this run, same image. Goal: ml-env <= 1.5x the baseline + 0.3 s.
Writes .bench/train.json. Not a test: it reports.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from _common import lab as bench_lab  # noqa: E402
from _common import write_result  # noqa: E402

REPEAT = int(os.environ.get("ML_ENV_BENCH_REPEAT", "5"))


def timed(cmd: list[str]) -> float:
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    dt = time.monotonic() - t0
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    return dt


def main() -> int:
    lab = bench_lab()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-train-"))
    try:
        spec = work / "plain.toml"
        spec.write_text(f'name = "bench-train"\n[base]\nimage = "{lab["base_image_python"]}"\n')
        src = work / "src"
        src.mkdir()
        (src / "noop.py").write_text("pass\n")
        common = [
            "--registry",
            lab["registry"],
            "--repository",
            f"bench/train-{os.getpid()}",
            "--network",
            lab["build_network"],
        ]
        build = subprocess.run(
            [sys.executable, "-m", "ml_env_tasks.cli", "build", str(spec), *common, "--json", "--quiet"],
            capture_output=True,
            text=True,
            check=True,
        )
        image = json.loads(build.stdout)["image"]
        train = [
            sys.executable,
            "-m",
            "ml_env_tasks.cli",
            "train",
            "--env",
            str(spec),
            "--source",
            str(src),
            "--script",
            "noop.py",
            "--runs-dir",
            str(work / "runs"),
            *common,
        ]
        baseline = ["docker", "run", "--rm", image, "python3", "-c", "pass"]
        timed(baseline)  # warm the image into the engine for both
        ours, base = [], []
        for _ in range(REPEAT):
            base.append(timed(baseline))
            ours.append(timed(train))
        o, b = statistics.median(ours), statistics.median(base)
        budget = 1.5 * b + 0.3
        result = {
            "ml_env_train_s": o,
            "docker_run_s": b,
            "ratio": o / b,
            "budget_s": budget,
            "within_goal": o <= budget,
            "goal": "<= 1.5x docker run + 0.3 s",
            "runs": {"ml_env": ours, "docker_run": base},
        }
        write_result(
            "train",
            result,
            f"train overhead:   ml-env train {o:.2f}s vs docker run --rm {b:.2f}s -> {o / b:.2f}x (budget {budget:.2f}s: {'met' if o <= budget else 'missed'})",
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
