"""Training-run overhead (``nox -s bench -- train``): ``ml-env train`` of a script that exits at
once vs ``docker run --rm`` of the same image with the same source folder mounted, same run.

ml-env's run resolves the environment file (unchanged, its image in the registry), snapshots the
source, runs the script in a container, streams its log and writes the run record; the baseline
only runs the container. Checked before every timed run: the image is already in the engine (so
neither pulls); after every one: the script's output arrived and ml-env recorded it completed.
Goal: <= 1.3x. Writes .bench/train.json; exit 3 when a run did not do what it claims.
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

sys.path.insert(0, str(Path(__file__).parent))

from _common import figure, invalid, lab, mlenv, rounds, run, write  # noqa: E402

MARK = "bench-train-ran"


def main() -> int:
    lb = lab()
    cli = mlenv()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-train-"))
    try:
        (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        spec = work / "plain.toml"
        spec.write_text(f'name = "bench-train"\n[base]\nimage = "{lb["base_image_python"]}"\n')
        src = work / "src"
        src.mkdir()
        (src / "noop.py").write_text(f"print({MARK!r})\n")
        common = ["--registry", lb["registry"], "--repository", f"bench/train-{os.getpid()}"]
        common += ["--network", lb["build_network"], "--log-dir", str(work / "logs")]
        built = run([*cli, "build", str(spec), *common, "--json", "--quiet"]).json()
        image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
        t = time.time() - 120
        for p in (spec, spec.with_suffix(".lock"), src / "noop.py"):
            if p.exists():
                os.utime(p, (t, t))
        runs_dir = work / "runs"
        train = [*cli, "train", "--env", str(spec), "--source", str(src), "--script", "noop.py"]
        train += ["--runs-dir", str(runs_dir), *common]
        baseline = [
            "docker",
            "run",
            "--rm",
            "-v",
            f"{src}:/mnt/code:ro",
            "-w",
            "/mnt/code",
            image,
            "python3",
            "noop.py",
        ]
        # the first ml-env run pulls the image by digest and remembers the spec summary
        first = run(train)
        if MARK not in first.stdout + first.stderr:
            invalid("the training script's output did not arrive")

        def present() -> None:
            if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
                invalid(f"{image} is not in the engine: the round would time a pull")

        n = rounds(10)
        print(f"bench: train overhead, {n} rounds each, alternating")
        ours, base = [], []
        for _ in range(n):
            present()
            r = run(baseline)
            if MARK not in r.stdout:
                invalid("docker run did not run the script")
            base.append(r.seconds)
            present()
            before = set(runs_dir.rglob("run.json"))
            r = run(train)
            if MARK not in r.stdout + r.stderr:
                invalid("ml-env train did not show the script's output")
            new = set(runs_dir.rglob("run.json")) - before
            if len(new) != 1 or json.loads(new.pop().read_text()).get("status") != "completed":
                invalid("ml-env train did not record one completed run")
            ours.append(r.seconds)
        o, b = statistics.median(ours), statistics.median(base)
        write(
            "train",
            {
                "train_overhead": figure(
                    ours,
                    base,
                    baseline_name="docker run --rm (same image, source mounted)",
                    goal="<= 1.3x",
                    met=o / b <= 1.3,
                )
            },  # fmt: skip
            [f"train overhead:     ml-env train {o:.2f}s vs docker run --rm {b:.2f}s -> {o / b:.2f}x (goal <= 1.3x)"],
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
