"""A training run on the lab's Slurm cluster (``nox -s bench -- cluster``): ``ml-env train
--compute`` against ``sbatch --wrap`` of ``docker run`` of the same image by digest, same
script, same partition, same run, rounds alternating; ``srun`` of the same reported beside them.

ml-env resolves the environment file (unchanged, its image in the registry), snapshots the
source into the target's shared folder, renders and submits the batch script, follows the job
through ``scontrol`` while reading its log, brings the outputs back and writes the run record.
The baseline is what a user submits: ``sbatch --wait --wrap "docker run --rm -v SRC:/code ...
IMAGE python3 noop.py"`` (``--wait``: sbatch returns when the job has ended; its first line is
when the job's log file first holds the script's line, polled every 20 ms). sbatch --wait polls
the controller with a growing interval, so its total mostly measures that: ``srun`` of the same
``docker run`` (an allocation and a step at once, output on its stdout, returning the moment the
step ends) is reported beside it as the quickest interactive way, not as a floor. Every command
is timed from its start to its end (total) and to the script's first line (submit-to-first-log).
Checked in every round: the image is already on both
nodes' engines (no round times a pull), the script's output is in the baseline's log, and
ml-env recorded one completed run on Slurm. Goal: total <= 1.3x. Writes .bench/cluster.json.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import bench_project, figure, invalid, lab, mlenv, rounds, run, write  # noqa: E402

MARK = "bench-cluster-ran"


def main() -> int:
    lb = lab()
    if not lb.get("slurm_conf"):
        invalid("the lab has no Slurm cluster (lab.py up starts one)")
    cli = mlenv()
    shared = Path(lb["slurm_shared"])
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-cluster-", dir=shared))  # the baseline's source: shared
    os.chmod(work, 0o755)
    env = {"SLURM_CONF": lb["slurm_conf"], "ML_ENV_CONFIG": str(work / "user.toml")}
    (work / "user.toml").write_text(
        f'[compute.bench]\ntype = "slurm"\npartition = "{lb["slurm_partition"]}"\nshared = "{shared}"\n'
    )
    try:
        spec = bench_project(work, "bench-cluster", lb["base_image_python"])
        src = work / "src"
        src.mkdir()
        (src / "noop.py").write_text(f"print({MARK!r}, flush=True)\n")
        common = ["--registry", lb["registry"], "--repository", f"bench/cluster-{os.getpid()}"]
        common += ["--network", lb["build_network"], "--log-dir", str(work / "logs")]
        built = run([*cli, "build", str(spec), *common, "--json", "--quiet"]).json()
        image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
        runs_dir = work / "runs"
        train = [*cli, "train", "--env", str(spec), "--source", str(src), "--script", "noop.py",
                 "--compute", "bench", "--runs-dir", str(runs_dir), *common]  # fmt: skip
        docker = f"docker run --rm -v {shlex.quote(str(src))}:/code:ro -w /code {shlex.quote(image)} python3 noop.py"
        # the first run of each pulls the image on the node it lands on; then both nodes have it
        for _ in range(2):
            run(train, env=env)
            run(["sbatch", "--wait", f"--partition={lb['slurm_partition']}", f"--nodelist=node{_ + 1}",
                 f"--output={work}/warm-%j.log", "--wrap", docker], env=env)  # fmt: skip
        n = rounds(5)
        print(f"bench: cluster run, {n} rounds each, alternating (sbatch --wait --wrap, srun, ml-env train)")
        ours, base, ours_first, base_first = [], [], [], []
        srun = ["srun", f"--partition={lb['slurm_partition']}", "bash", "-c", docker]
        srun_t, srun_first = [], []
        for i in range(n):
            seconds, first = _sbatch_wait(lb["slurm_partition"], docker, work / f"base-{i}.log", env)
            base.append(seconds)
            base_first.append(first)
            seconds, first = _timed_first_line(srun, env)
            srun_t.append(seconds)
            srun_first.append(first)
            before = set(runs_dir.rglob("run.json"))
            seconds, first = _timed_first_line(train, env)
            new = set(runs_dir.rglob("run.json")) - before
            rec = json.loads(new.pop().read_text()) if len(new) == 1 else {}
            if rec.get("status") != "completed" or (rec.get("engine") or {}).get("type") != "slurm":
                invalid(f"ml-env did not record one completed Slurm run: {rec.get('status')}")
            ours.append(seconds)
            ours_first.append(first)
        o, b = statistics.median(ours), statistics.median(base)
        of, bf = statistics.median(ours_first), statistics.median(base_first)
        figures = {
            "cluster_run": figure(ours, base, baseline_name="sbatch --wait --wrap 'docker run --rm ...' (same image)",
                                  goal="<= 1.3x", met=o / b <= 1.3,
                                  srun_s=figure(srun_t, None, goal="(reported)", met=True)["ml_env_s"]),
            "cluster_first_log": figure(ours_first, base_first, baseline_name="the sbatch job's log holds the line",
                                        goal="(reported)", met=True,
                                        srun_s=figure(srun_first, None, goal="(reported)", met=True)["ml_env_s"]),
        }  # fmt: skip
        st, sf = statistics.median(srun_t), statistics.median(srun_first)
        lines = [
            f"cluster run:        ml-env train --compute {o:.2f}s vs sbatch --wait --wrap docker run {b:.2f}s -> "
            f"{o / b:.2f}x (goal <= 1.3x; min-max {min(ours):.2f}-{max(ours):.2f} vs {min(base):.2f}-{max(base):.2f})",
            f"                    submit to first log line: ml-env {of:.2f}s vs sbatch {bf:.2f}s -> {of / bf:.2f}x "
            f"(min-max {min(ours_first):.2f}-{max(ours_first):.2f} vs {min(base_first):.2f}-{max(base_first):.2f})",
            f"                    srun docker run (reported, interactive): {st:.2f}s total, first line {sf:.2f}s -> "
            f"ml-env at {o / st:.2f}x and {of / sf:.2f}x of it",
        ]
        write("cluster", figures, lines)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sbatch_wait(partition: str, docker: str, log: Path, env: dict[str, str]) -> tuple[float, float]:
    """(total, seconds until the job's log holds the script's line) of ``sbatch --wait --wrap``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(["sbatch", "--wait", f"--partition={partition}", f"--output={log}", "--wrap", docker],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env})  # fmt: skip
    first = None
    while p.poll() is None:
        if first is None and log.is_file() and MARK in log.read_text(errors="replace"):
            first = time.perf_counter() - t0
        time.sleep(0.02)
    total = time.perf_counter() - t0
    if p.returncode != 0 or not log.is_file() or MARK not in log.read_text(errors="replace"):
        invalid(f"sbatch --wait exited {p.returncode} or its job never printed the script's line")
    return total, first if first is not None else total


def _timed_first_line(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(total seconds, seconds until the script's line came out) of ``cmd``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **env})
    first = None
    assert p.stdout is not None
    for line in p.stdout:
        if first is None and MARK in line:
            first = time.perf_counter() - t0
    if p.wait() != 0 or first is None:
        invalid(f"{cmd[0]} exited {p.returncode} or never showed the script's output")
    return time.perf_counter() - t0, first


if __name__ == "__main__":
    sys.exit(main())
