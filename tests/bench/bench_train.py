"""Training-run overhead (``nox -s bench -- train``): ``ml-env train`` of a script that exits at
once vs ``docker run --rm`` of the same image with the same source folder mounted, same run.

ml-env's run resolves the environment file (unchanged, its image in the registry), snapshots the
source, runs the script in a container, streams its log and writes the run record; the baseline
only runs the container. Checked before every timed run: the image is already in the engine (so
neither pulls); after every one: the script's output arrived and ml-env recorded it completed.
Goal: <= 1.3x.

With the lab's second engine (``remote_context`` in the lab's env file): ``ml-env --context
REMOTE train`` vs ``ml-env train`` on the local engine, same image, same script, which writes an
output: through the remote engine the code goes in and the outputs come back through the Engine
API (TLS, another network namespace) instead of bind mounts. Checked after every run: both ran
the same command on the same source snapshot, completed, and recorded the same output bytes
(sha256), and the remote one moved its files through the API with nothing mounted. Goal: <= 1.5x.
Writes .bench/train.json; exit 3 when a run did not do what it claims.
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
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _common import bench_project, figure, invalid, lab, mlenv, rounds, run, write  # noqa: E402

MARK = "bench-train-ran"


def main() -> int:
    lb = lab()
    cli = mlenv()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-train-"))
    try:
        spec = bench_project(work, "bench-train", lb["base_image_python"])
        src = work / "src"
        src.mkdir()
        (src / "noop.py").write_text(f"print({MARK!r})\n")
        (src / "result.py").write_text(
            "import hashlib, pathlib\n"
            "r = hashlib.sha256(b'bench' * 100000).hexdigest()\n"
            "pathlib.Path('outputs/result.txt').write_text(r)\n"
            f"print({MARK!r}, r)\n"
        )
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
        figures = {
            "train_overhead": figure(
                ours, base, baseline_name="docker run --rm (same image, source mounted)", goal="<= 1.3x",
                met=o / b <= 1.3,
            )
        }  # fmt: skip
        lines = [
            f"train overhead:     ml-env train {o:.2f}s vs docker run --rm {b:.2f}s -> {o / b:.2f}x (goal <= 1.3x)"
        ]
        if lb.get("remote_context"):
            rem, loc = remote_vs_local(cli, lb["remote_context"], spec, src, common, runs_dir, n)
            r, lo = statistics.median(rem), statistics.median(loc)
            figures["train_remote_overhead"] = figure(
                rem, loc, baseline_name="ml-env train on the local engine (same image, same script)",
                goal="<= 1.5x", met=r / lo <= 1.5,
            )  # fmt: skip
            lines.append(
                f"remote train:       --context {lb['remote_context']} {r:.2f}s vs local {lo:.2f}s -> {r / lo:.2f}x"
                " (goal <= 1.5x)"
            )
        else:
            print("bench: the lab has no remote engine (lab.py remote-up): no remote figure")
        write("train", figures, lines)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def remote_vs_local(
    cli: list[str], context: str, spec: Path, src: Path, common: list[str], runs_dir: Path, n: int
) -> tuple[list[float], list[float]]:
    """Rounds of the same run through the remote engine and on the local one, alternating."""
    train = ["train", "--env", str(spec), "--source", str(src), "--script", "result.py"]
    train += ["--runs-dir", str(runs_dir), *common, "--json"]
    remote_cmd, local_cmd = [*cli, "--context", context, *train], [*cli, *train]

    def check(r: Any, remote: bool) -> dict:
        rec = r.json()
        if rec.get("status") != "completed" or MARK not in r.stderr + r.stdout:
            invalid(f"the {'remote' if remote else 'local'} run did not complete the script")
        eng = rec.get("engine") or {}
        if remote and (eng.get("files") != "engine-api" or eng.get("mounts") or context not in eng.get("endpoint", "")):
            invalid(f"the remote run did not run on {context} with its files through the API: {eng}")
        if not remote and eng.get("files") != "bind-mounts":
            invalid(f"the local run did not use the local engine: {eng}")
        outputs = {o["path"]: o["sha256"] for o in rec["outputs"]}
        return {"command": rec["command"], "source": rec["source"]["snapshot_hash"], "outputs": outputs,
                "image": rec["environment"]["image"]}  # fmt: skip

    # the first remote run pulls the image there by digest
    first = check(run(remote_cmd), True)
    if not first["outputs"]:
        invalid("the remote run brought no outputs back")
    rem, loc = [], []
    print(f"bench: remote train overhead, {n} rounds each, alternating")
    for _ in range(n):
        r = run(remote_cmd)
        a = check(r, True)
        rem.append(r.seconds)
        lr = run(local_cmd)
        b = check(lr, False)
        loc.append(lr.seconds)
        if a != b or a != first:
            invalid(f"the remote and local runs differ (command, source, image or output bytes): {a} vs {b}")
    return rem, loc


if __name__ == "__main__":
    sys.exit(main())
