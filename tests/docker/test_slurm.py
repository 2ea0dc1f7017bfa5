"""Training on the lab's Slurm cluster (real munged, slurmctld and two slurmd: node1 here, node2 in
the second engine's namespace, using that engine): a compute target named once in the config,
`ml-env train --compute cluster`, outputs and metrics back, the run listed with where it ran;
two nodes whose ranks meet over TCP; a failing, a timed-out and a cancelled run; a detached run
followed with runs show|logs|wait; the podman launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .helpers import ml_env

pytestmark = pytest.mark.docker

FIT = """
import json, os, sys
print("args", sys.argv[1:], "rank", os.environ["RANK"], "of", os.environ["WORLD_SIZE"], flush=True)
os.makedirs("outputs/model", exist_ok=True)
open("outputs/model/weights.txt", "w").write("w=" + sys.argv[-1])
json.dump({"loss": 0.25}, open(os.path.join(os.environ["ML_ENV_OUTPUT_DIR"], "metrics.json"), "w"))
print("ML_ENV_METRIC acc=0.75")
"""
# each rank offers rank+1; rank 0 adds them up and tells every rank; each writes what it was told
RENDEZVOUS = """
import os, socket, time
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
assert os.environ["NODE_RANK"] == str(rank) and os.environ["LOCAL_RANK"] == "0"
if rank == 0:
    srv = socket.create_server(("0.0.0.0", port))
    peers, total = [], 1
    for _ in range(world - 1):
        conn, peer = srv.accept()
        total += int(conn.recv(64).decode())
        peers.append((conn, peer[0]))
    for conn, _ in peers:
        conn.sendall(str(total).encode())
    agreed, seen = total, [p for _, p in peers]
else:
    for _ in range(200):
        try:
            c = socket.create_connection((addr, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    c.sendall(str(rank + 1).encode())
    agreed, seen = int(c.recv(64).decode()), []
os.makedirs("outputs", exist_ok=True)
open(f"outputs/rank{rank}.txt", "w").write(f"{agreed} {' '.join(seen)}")
print(f"rank {rank}: sum {agreed}", flush=True)
"""
SLOW = """
import sys, time
for i in range(int(sys.argv[1])):
    print("tick", i, flush=True)
    time.sleep(1)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


@pytest.fixture
def cluster(ws, lab_unavailable) -> dict:
    """A project on the lab's cluster: the target named once in the user's config."""
    lab = ws.lab
    if not lab.get("slurm_conf"):
        lab_unavailable("the lab has no Slurm cluster (lab.py up starts one)")
    src = ws.dir / "src"
    src.mkdir()
    for name, text in (("fit.py", FIT), ("rendezvous.py", RENDEZVOUS), ("slow.py", SLOW)):
        (src / name).write_text(text)
    env = ws.spec(f'name = "fit"\n[base]\nimage = "{lab["base_image_python"]}"\n', name="fit.toml")
    config = ws.dir / "user.toml"
    config.write_text(
        f'default_compute = "cluster"\n\n[compute.cluster]\ntype = "slurm"\npartition = "{lab["slurm_partition"]}"\n'
        f'shared = "{lab["slurm_shared"]}"\n\n[compute.pods]\ntype = "slurm"\nlauncher = "podman"\n'
        f'shared = "{lab["slurm_shared"]}"\n'
    )
    return {
        "env": {"ML_ENV_CONFIG": str(config), "SLURM_CONF": lab["slurm_conf"]},
        "args": ["--env", str(env), "--source", str(src), "--runs-dir", str(ws.dir / "runs"), *ws.cli_args()],
        "runs": ws.dir / "runs",
    }


def train(cluster: dict, *args: str) -> subprocess.CompletedProcess:
    return ml_env("train", *cluster["args"], *args, env=cluster["env"], timeout=300)


def record(cluster: dict, run_id: str) -> dict:
    return json.loads((cluster["runs"] / run_id / "run.json").read_text())


def test_a_cluster_run_comes_back_as_a_local_one_and_is_listed_where_it_ran(cluster) -> None:
    p = train(cluster, "--script", "fit.py", "--json", "--", "--lr", "0.1")  # default_compute: cluster
    assert p.returncode == 0, p.stderr[-2000:]
    rec = json.loads(p.stdout)
    run = cluster["runs"] / rec["run_id"]
    assert (run / "outputs/model/weights.txt").read_text() == "w=0.1"  # ./outputs, as Azure ML collects it
    assert rec["metrics"] == {"acc": 0.75, "loss": 0.25} and rec["status"] == "completed"
    engine = rec["engine"]
    assert engine["type"] == "slurm" and engine["compute"] == "cluster" and engine["state"] == "COMPLETED"
    assert engine["nodes"] in ("node1", "node2") and engine["job_id"].isdigit() and "StartTime" in engine["times"]
    assert "args ['--lr', '0.1'] rank 0 of 1" in (run / "log.txt").read_text()
    listed = ml_env("runs", "list", "--runs-dir", str(cluster["runs"]), env=cluster["env"]).stdout
    assert f"cluster job {engine['job_id']}" in listed
    assert not any(Path(cluster_shared(cluster)).glob(f"ml-env-runs/{rec['run_id']}"))  # the shared copy is gone


def cluster_shared(cluster: dict) -> str:
    return Path(cluster["env"]["ML_ENV_CONFIG"]).read_text().split('shared = "')[1].split('"')[0]


@pytest.mark.parametrize("target", ["cluster", "pods"])
def test_two_nodes_meet_over_tcp_and_agree(cluster, target: str) -> None:
    """One container per node, the second on node2's own engine (docker) or podman; torchrun's
    variables set; rank 0 sees rank 1 connect from node2's address."""
    p = train(cluster, "--compute", target, "--nodes", "2", "--script", "rendezvous.py", "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    rec = json.loads(p.stdout)
    out = cluster["runs"] / rec["run_id"] / "outputs"
    assert (out / "rank0.txt").read_text() == "3 10.87.213.2"  # 1 + 2, rank 1 from node2
    assert (out / "rank1.txt").read_text().strip() == "3"
    assert rec["engine"]["nodes"] == "node[1-2]" and rec["engine"]["node_count"] == 2
    assert rec["engine"]["launcher"] == ("podman" if target == "pods" else "docker")


def test_failed_timed_out_and_cancelled_runs_end_as_they_did(cluster) -> None:
    failed = train(cluster, "--script", "slow.py", "--", "1", "7")
    assert failed.returncode == 7 and "failed (exit 7)" in failed.stderr
    late = train(cluster, "--script", "slow.py", "--timeout", "3", "--", "60")
    assert late.returncode == 124 and "timed_out (exit 124)" in late.stderr
    # Ctrl-C on an attached run cancels the job and says so
    before = set(cluster["runs"].iterdir())
    proc = subprocess.Popen([sys.executable, "-m", "ml_env_tasks", "train", *cluster["args"], "--script", "slow.py",
                             "--", "120"], env={**os.environ, **cluster["env"]}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "tick 1" not in _logs(set(cluster["runs"].iterdir()) - before):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "cancelling job" in err and "canceled" in err, (proc.returncode, err[-2000:])
    states = sorted(record(cluster, d.name)["status"] for d in cluster["runs"].iterdir())
    assert states == ["canceled", "failed", "timed_out"]
    squeue = subprocess.run(["squeue", "-h"], capture_output=True, text=True, env={**os.environ, **cluster["env"]})
    assert "ml-env" not in squeue.stdout  # nothing left running


def _logs(runs: set[Path]) -> str:
    return "".join((d / "log.txt").read_text() for d in runs if (d / "log.txt").is_file())


def test_a_detached_run_is_followed_after_the_client_is_gone(cluster) -> None:
    p = train(cluster, "--script", "slow.py", "--detach", "--json", "--", "3")
    assert p.returncode == 0, p.stderr
    run_id = json.loads(p.stdout)["run_id"]
    assert record(cluster, run_id)["status"] == "running"
    base = ["--runs-dir", str(cluster["runs"])]
    shown = ml_env("runs", "show", run_id, *base, env=cluster["env"])
    assert shown.returncode == 0 and "cluster job" in shown.stdout
    waited = ml_env("runs", "wait", run_id, *base, env=cluster["env"], timeout=120)
    assert waited.returncode == 0 and "completed" in waited.stdout  # (its lines, unless `show` saw the end first)
    assert record(cluster, run_id)["status"] == "completed"
    assert "tick 2" in ml_env("runs", "logs", run_id, *base, env=cluster["env"]).stdout
    # another detached run, cancelled from another process: recorded cancelled, never "running"
    p = train(cluster, "--script", "slow.py", "--detach", "--json", "--", "120")
    other = json.loads(p.stdout)["run_id"]
    c = ml_env("runs", "cancel", other, *base, env=cluster["env"], timeout=120)
    assert c.returncode == 0 and "canceled" in c.stdout, c.stderr
    assert record(cluster, other)["status"] == "canceled"
    # a job the controller no longer knows (purged, or another cluster's id): lost, never "running"
    rec = record(cluster, other)
    rec.update(status="running", exit_code=None, ended=None)
    rec["engine"] = {**rec["engine"], "job_id": "987654321", "shared_dir": str(cluster["runs"] / "gone")}
    (cluster["runs"] / other / "run.json").write_text(json.dumps(rec))
    shown = ml_env("runs", "show", other, *base, env=cluster["env"])
    assert shown.returncode == 0 and "lost" in shown.stdout and "vanished from the Slurm controller" in shown.stdout


def test_what_a_slurm_target_cannot_do_is_refused_before_anything_runs(cluster, ws) -> None:
    p = train(cluster, "--script", "fit.py", "--secret", "HOME")
    assert p.returncode == 2 and "--secret is not passed to Slurm jobs" in p.stderr
    p = ml_env("train", *[a for a in cluster["args"] if a not in ws.cli_args()], "--network",
               ws.lab["build_network"], "--script", "fit.py", env=cluster["env"])  # fmt: skip
    assert p.returncode == 2 and "pulls the environment by digest" in p.stderr
    p = train(cluster, "--compute", "nope", "--script", "fit.py")
    assert p.returncode == 2 and "no such compute target (cluster, pods)" in p.stderr
    p = train(cluster, "--compute", "cluster", "--nodes", "99", "--script", "fit.py")
    assert p.returncode == 2 and "--nodes must be between 1 and 64" in p.stderr
    assert not cluster["runs"].exists() or not any(cluster["runs"].iterdir())
