"""Inputs up and outputs back through a remote engine's API (``nox -s bench -- transfer``):
``ml-env --context REMOTE train`` with 200 MiB of inputs, whose script copies them to its
outputs, vs ``docker --context REMOTE cp`` of the same folder into and out of a container of the
same image, same run.

ml-env's own phases are read from its run record (``engine.inputs_sent`` and
``engine.outputs_received``: bytes and seconds, timed around the one tar stream each way), so the
run's start-up and the script are not counted against it; the baseline is the docker CLI's copy
in each direction. Throughput is MB/s; the ratio is ml-env's over docker cp's (goal >= 0.8 each
way). The client's peak memory (max RSS of the ml-env process, from wait4) must stay under 100 MB:
nothing is held whole.

Checked on every round: ml-env's run completed on the remote engine with its files through the
API and nothing mounted, sent at least the inputs' bytes, and brought back every file with the
inputs' sha256; docker cp's copy, brought back from the container it was copied into, has the same
sha256 for every file (so the upload carried the bytes too). Writes .bench/transfer.json; exit 3
when a run did not do what it claims.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import bench_project, figure, invalid, lab, mlenv, rounds, run, write  # noqa: E402

FILES, FILE_MB = 20, 10  # 200 MiB
MB = 2**20
RSS_LIMIT_MB = 100


def hashes(folder: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with p.open("rb") as f:
                while chunk := f.read(MB):
                    h.update(chunk)
            out[p.relative_to(folder).as_posix()] = h.hexdigest()
    return out


def run_rss(cmd: list[str]) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd``; its result and its peak resident memory in MB (wait4's ru_maxrss)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, p.returncode, out.read(), err.read()), usage.ru_maxrss / 1024


def main() -> int:
    lb = lab()
    ctx = lb.get("remote_context")
    if not ctx:
        invalid("the lab has no remote engine (lab.py remote-up): there is nothing to transfer to")
    cli = mlenv()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-transfer-"))
    containers: list[str] = []
    try:
        spec = bench_project(work, "bench-transfer", lb["base_image_python"])
        src = work / "src"
        src.mkdir()
        (src / "copy.py").write_text(
            "import os, shutil\n"
            "shutil.copytree(os.environ['ML_ENV_INPUT_DATA'], 'outputs/data')\n"
            "print('copied', len(os.listdir('outputs/data')))\n"
        )
        data = work / "data"
        data.mkdir()
        for i in range(FILES):
            with (data / f"part-{i:02d}.bin").open("wb") as f:
                for _ in range(FILE_MB):
                    f.write(os.urandom(MB))
        want = hashes(data)
        size = sum(p.stat().st_size for p in data.iterdir())
        common = ["--registry", lb["registry"], "--repository", f"bench/transfer-{os.getpid()}"]
        common += ["--network", lb["build_network"], "--log-dir", str(work / "logs")]
        built = run([*cli, "build", str(spec), *common, "--json", "--quiet"]).json()
        image = f"{built['image'].rsplit(':', 1)[0]}@{built['digest']}"
        runs_dir = work / "runs"
        train = [*cli, "--context", ctx, "train", "--env", str(spec), "--source", str(src), "--script", "copy.py"]
        train += ["--input", f"data={data}", "--runs-dir", str(runs_dir), *common, "--json"]
        docker = ["docker", "--context", ctx]

        def ours() -> tuple[float, float, float]:
            p, rss = run_rss(train)
            if p.returncode != 0:
                invalid(f"ml-env train exited {p.returncode}: {p.stderr[-2000:]}")
            import json

            rec = json.loads(p.stdout)
            eng = rec.get("engine") or {}
            if rec.get("status") != "completed" or eng.get("files") != "engine-api" or eng.get("mounts"):
                invalid(f"the run did not complete on {ctx} with its files through the API: {rec.get('status')} {eng}")
            up, down = eng.get("inputs_sent") or {}, eng.get("outputs_received") or {}
            if up.get("bytes", 0) < size or down.get("bytes", 0) < size:
                invalid(f"the run moved less than the inputs' {size} bytes: up {up}, down {down}")
            got = {
                o["path"].removeprefix("data/"): o["sha256"] for o in rec["outputs"] if o["path"].startswith("data/")
            }
            if got != want:
                invalid("the outputs that came back are not the inputs' bytes")
            return size / MB / up["seconds"], size / MB / down["seconds"], rss

        def baseline() -> tuple[float, float]:
            cid = run([*docker, "create", image, "true"]).stdout.strip()
            containers.append(cid)
            t0 = time.perf_counter()
            run([*docker, "cp", str(data), f"{cid}:/mnt/data"])
            t1 = time.perf_counter()
            back = work / "back"
            shutil.rmtree(back, ignore_errors=True)
            back.mkdir()
            run([*docker, "cp", f"{cid}:/mnt/data", str(back)])
            t2 = time.perf_counter()
            if hashes(back / "data") != want:
                invalid("docker cp did not bring back the bytes it copied in")
            run([*docker, "rm", cid])
            containers.remove(cid)
            return size / MB / (t1 - t0), size / MB / (t2 - t1)

        ours()  # the first run pulls the image on the remote engine
        n = rounds(3)
        print(f"bench: {size // MB} MiB up and back through {ctx}, {n} rounds each, alternating")
        up_o, down_o, up_b, down_b, rss = [], [], [], [], []
        for _ in range(n):
            u, d, r = ours()
            up_o.append(u)
            down_o.append(d)
            rss.append(r)
            u, d = baseline()
            up_b.append(u)
            down_b.append(d)
        mu, md = statistics.median(up_o), statistics.median(down_o)
        bu, bd = statistics.median(up_b), statistics.median(down_b)
        peak = max(rss)
        figures = {
            # throughputs (MB/s): the ratio is ml-env's over docker cp's, higher is better
            "transfer_up": figure(up_o, up_b, baseline_name="docker cp DIR CONTAINER:/mnt (same engine, same data)",
                                  goal=">= 0.8x docker cp", met=mu / bu >= 0.8, unit="MB/s"),
            "transfer_down": figure(down_o, down_b, baseline_name="docker cp CONTAINER:/mnt/data DIR",
                                    goal=">= 0.8x docker cp", met=md / bd >= 0.8, unit="MB/s"),
            "transfer_client_rss_mb": figure(rss, None, goal=f"< {RSS_LIMIT_MB} MB", met=peak < RSS_LIMIT_MB),
        }  # fmt: skip
        lines = [
            f"inputs up:          ml-env {mu:.0f} MB/s vs docker cp {bu:.0f} MB/s -> {mu / bu:.2f}x (goal >= 0.8x)",
            f"outputs back:       ml-env {md:.0f} MB/s vs docker cp {bd:.0f} MB/s -> {md / bd:.2f}x (goal >= 0.8x)",
            f"client memory:      peak {peak:.0f} MB for {size // MB} MiB each way (goal < {RSS_LIMIT_MB} MB)",
        ]
        write("transfer", figures, lines)
        return 0
    finally:
        for cid in containers:
            subprocess.run(["docker", "--context", ctx, "rm", "-f", cid], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
