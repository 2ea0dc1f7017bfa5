"""Through the lab's second engine (``ml-env-lab-remote``: its own network and mount namespace,
TCP with TLS client certificates): build, train with inputs and outputs, smoke-test, promote.

The engine cannot see this machine's /tmp (where every workspace is), so a bind mount of a
client path would give the container an empty folder, never the data. Each test also looks at
the containers' mounts itself, through the docker CLI on that context, while they exist.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .helpers import ml_env

pytestmark = pytest.mark.docker

PLAIN = 'name = "remoteplain"\n[base]\nimage = "{base}"\n[env]\nPLAIN = "remote"\n'
LIGHT = 'name = "remotelight"\ninference = true\n[base]\nimage = "{base}"\n'
JOB = """
import hashlib, json, os, pathlib, sys, time
time.sleep(float(os.environ.get("PAUSE", "0")))  # the test looks at the container meanwhile
def sha(p):
    return hashlib.sha256(pathlib.Path(p).read_bytes()).hexdigest()
data = pathlib.Path(os.environ["ML_ENV_INPUT_DATA"])
seen = {p.relative_to(data).as_posix(): sha(p) for p in sorted(data.rglob("*")) if p.is_file()}
out = pathlib.Path(os.environ["ML_ENV_OUTPUT_DIR"])
(out / "model.bin").write_bytes(hashlib.sha256(b"seed").digest() * 40000 + os.urandom(4096))
(out / "deep" / "er").mkdir(parents=True)
(out / "deep" / "er" / "notes.txt").write_text("rows %d" % len((data / "rows.csv").read_text().splitlines()))
pathlib.Path("outputs/via-dot.txt").write_text("written to ./outputs")
(out / "latest").symlink_to("model.bin")
(pathlib.Path(sys.argv[1]) / "named.txt").write_text("a named output")
wrote = {p.relative_to(out).as_posix(): sha(p) for p in sorted(out.rglob("*")) if p.is_file() and not p.is_symlink()}
print("INPUTS " + json.dumps(seen))
print("OUTPUTS " + json.dumps(wrote))
print("ML_ENV_METRIC plain=" + os.environ["PLAIN"])
"""


@pytest.fixture
def remote(lab: dict, ws, lab_unavailable):
    """The remote engine's context; the workspace's images on that engine go afterwards."""
    if not lab.get("remote_context"):
        lab_unavailable("the lab has no remote engine (lab.py up or remote-up)")
    context = str(lab["remote_context"])
    yield context
    for ref in docker_on(context, "image", "ls", "--format", "{{.Repository}}:{{.Tag}}").split():
        if ws.repo in ref:
            subprocess.run(["docker", "--context", context, "image", "rm", "-f", ref], capture_output=True)


def docker_on(context: str, *args: str) -> str:
    return subprocess.run(["docker", "--context", context, *args], capture_output=True, text=True, check=True).stdout


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def watch_mounts(context: str, label: str, proc: subprocess.Popen) -> list[list[dict]]:
    """The Mounts of every container carrying ``label`` on that engine that ``proc`` started (its
    ``ml-env.cli`` label names its pid: another test's container on the same engine is not ours),
    seen while ``proc`` runs."""
    seen: dict[str, list[dict]] = {}
    while proc.poll() is None:
        # -a: a container counts from its creation to its removal (its mounts are set when created)
        for cid in docker_on(context, "ps", "-aq", "--filter", f"label={label}").split():
            try:
                cli = docker_on(context, "inspect", "--format", '{{index .Config.Labels "ml-env.cli"}}', cid)
                if label != "ml-env.run" or f"/{proc.pid}/" in cli:  # a run's container names its CLI
                    seen[cid] = json.loads(docker_on(context, "inspect", "--format", "{{json .Mounts}}", cid))
            except subprocess.CalledProcessError:  # gone meanwhile
                pass
        time.sleep(0.2)
    return list(seen.values())


def test_build_train_and_promote_through_the_remote_engine(ws, remote: str, tmp_path: Path) -> None:
    env = ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")
    src = ws.dir / "src"
    src.mkdir()
    (src / "job.py").write_text(JOB)
    data = ws.dir / "data"
    (data / "more").mkdir(parents=True)
    (data / "rows.csv").write_text("a,b\n1,2\n3,4\n")
    (data / "more" / "blob.bin").write_bytes(os.urandom(3 * 2**20 + 7))
    runs = ws.dir / "runs"

    built = ml_env("--context", remote, "build", str(env), *ws.cli_args(), "--json")
    assert built.returncode == 0, built.stderr
    image, digest = json.loads(built.stdout)["image"], json.loads(built.stdout)["digest"]
    # the image was built by the remote engine: that engine has it, by the same reference
    assert docker_on(remote, "image", "inspect", "--format", "{{.Id}}", image).strip()

    cmd = [sys.executable, "-m", "ml_env_tasks", "--context", remote, "train", "--env", str(env),
           "--source", str(src), "--script", "job.py", "--input", f"data={data}", "--env-var", "PAUSE=3",
           "--runs-dir", str(runs), *ws.cli_args(), "--json", "--", "${{outputs.named}}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mounts = watch_mounts(remote, "ml-env.run", proc)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert mounts and all(m == [] for m in mounts), mounts  # no bind mount, no volume: nothing of ours
    assert "through its API" in err

    record = json.loads(out)
    assert record["status"] == "completed" and record["metrics"]["plain"] == "remote"
    assert record["engine"]["files"] == "engine-api" and record["engine"]["mounts"] == []
    assert remote in record["engine"]["endpoint"]
    log = (runs / record["run_id"] / "log.txt").read_text().splitlines()
    inputs = json.loads(next(x for x in log if x.startswith("INPUTS "))[7:])
    wrote = json.loads(next(x for x in log if x.startswith("OUTPUTS "))[8:])
    # the inputs arrived as they are here, byte for byte
    assert inputs == {"rows.csv": sha256(data / "rows.csv"), "more/blob.bin": sha256(data / "more" / "blob.bin")}
    # and the outputs came back byte-identical, the link as a link, ./outputs and the named one too
    outputs = runs / record["run_id"] / "outputs"
    local = {
        p.relative_to(outputs).as_posix(): sha256(p) for p in outputs.rglob("*") if p.is_file() and not p.is_symlink()
    }
    assert local == wrote and set(wrote) == {"model.bin", "deep/er/notes.txt", "via-dot.txt", "named/named.txt"}
    assert os.readlink(outputs / "latest") == "model.bin"
    assert {o["path"]: o["sha256"] for o in record["outputs"]} == wrote
    assert docker_on(remote, "ps", "-aq", "--filter", f"label=ml-env.run={record['run_id']}").strip() == ""

    # promotion is registry-side: the same through the remote context
    dst = f"{ws.lab['auth_registry']}/{ws.repo}"
    ws.extra_repos.append((ws.lab["auth_registry"], ws.repo))
    promoted = ml_env(
        "--context", remote, "promote", image, dst, "--tag", "remote", "--ledger", str(tmp_path / "l.toml")
    )
    assert promoted.returncode == 0, promoted.stderr
    assert digest and digest in promoted.stdout + promoted.stderr


def test_an_input_volume_on_the_engine_and_a_missing_one(ws, remote: str) -> None:
    env = ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")
    src = ws.dir / "src"
    src.mkdir()
    (src / "read.py").write_text(
        "import os, pathlib\nd = pathlib.Path(os.environ['ML_ENV_INPUT_DATA'])\n"
        "(pathlib.Path(os.environ['ML_ENV_OUTPUT_DIR']) / 'copy.txt').write_text((d / 'f.txt').read_text())\n"
    )
    vol = f"ml-env-test-{uuid.uuid4().hex[:10]}"
    docker_on(remote, "volume", "create", vol)
    try:
        docker_on(remote, "run", "--rm", "-v", f"{vol}:/d", ws.lab["base_image_tiny"], "sh", "-c",
                  "echo data already on the engine > /d/f.txt")  # fmt: skip
        args = ["--context", remote, "train", "--env", str(env), "--source", str(src), "--script", "read.py",
                "--runs-dir", str(ws.dir / "runs"), *ws.cli_args(), "--json"]  # fmt: skip
        p = ml_env(*args, "--input", f"data=volume:{vol}")
        assert p.returncode == 0, p.stderr
        record = json.loads(p.stdout)
        assert record["inputs"]["data"] == {"volume": vol, "mount": "/mnt/inputs/data"}
        assert [m["type"] for m in record["engine"]["mounts"]] == ["volume"]
        copy = ws.dir / "runs" / record["run_id"] / "outputs" / "copy.txt"
        assert copy.read_text() == "data already on the engine\n"

        missing = ml_env(*args, "--input", "data=volume:ml-env-no-such-volume")
        assert missing.returncode == 3 and "has no volume ml-env-no-such-volume" in missing.stderr
        assert [x for x in missing.stderr.splitlines() if "error" in x] == [missing.stderr.strip().splitlines()[-1]]
    finally:
        docker_on(remote, "volume", "rm", "-f", vol)


def test_smoke_test_and_serve_reach_the_service_on_the_engine_host(ws, remote: str) -> None:
    env = ws.spec(LIGHT.format(base=ws.lab["base_image_python"]), name="light.toml")
    app = ws.dir / "app"
    app.mkdir()
    (app / "score.py").write_text(
        "import json, os\n"
        "def init():\n    global f\n    f = float(open(os.path.join(os.environ['AZUREML_MODEL_DIR'], 'factor.txt')).read())\n"
        "def run(raw):\n    return {'y': [x * f for x in json.loads(raw)['x']]}\n"
    )
    model = ws.dir / "model"
    model.mkdir()
    (model / "factor.txt").write_text("3")
    cases = ws.dir / "cases.jsonl"
    cases.write_text(json.dumps({"name": "triples", "request": {"x": [1, 2]}, "expect_json": {"y": [3, 6]}}) + "\n")
    cmd = [sys.executable, "-m", "ml_env_tasks", "--context", remote, "smoke-test", "--env", str(env),
           "--entry", str(app / "score.py"), "--model", str(model), "--cases", str(cases), "--no-record",
           *ws.cli_args(), "--registry", ws.lab["registry"], "--repository", ws.repo]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mounts = watch_mounts(remote, "ml-env.serve", proc)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err + out
    assert mounts and all(m == [] for m in mounts), mounts
    address = ws.lab["remote_address"]
    assert f"reached at http://{address}:" in err and "PASS  triples" in out

    # serve --detach says the same URL, and it answers there
    p = ml_env("--context", remote, "serve", "--env", str(env), "--entry", str(app / "score.py"), "--model",
               str(model), "--port", "0", "--detach", "--name", "remote-svc", "--json", *ws.cli_args())  # fmt: skip
    assert p.returncode == 0, p.stderr
    try:
        svc = json.loads(p.stdout)
        assert svc["url"].startswith(f"http://{address}:")
        import requests

        assert requests.post(svc["url"] + "/score", json={"x": [2]}, timeout=10).json() == {"y": [6.0]}
        listed = ml_env("--context", remote, "serve", "list", "--json")
        assert any(s["url"] == svc["url"] for s in json.loads(listed.stdout))
    finally:
        ml_env("--context", remote, "serve", "stop", "remote-svc")
