"""``train --runner kubernetes --emit``: a real environment built on the lab registry, a Job
written, validated offline against the Kubernetes schemas, its image digest found in the registry,
and then the Job's pod REPLAYED on the lab engine (``kube_replay``: there is no cluster here):
its volumes as engine volumes (the claims as volumes this test fills and reads), its init
container then its container, with the spec's own image, command, arguments, variables, user,
working folder and mounts. What must hold is what a cluster would give: the arguments resolved,
the code (more than one ConfigMap of it) unpacked, ``./outputs`` and ``$ML_ENV_OUTPUT_DIR`` on the
output claim, in the run's folder."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
import yaml
from python_on_whales import docker

from ml_env_tasks.registry import RegistryClient, parse_ref

from ..unit.test_kubernetes_job import the_job, validate
from .helpers import ml_env
from .kube_replay import LABEL, Cluster, copy_in, copy_out, replay

pytestmark = pytest.mark.docker

PLAIN = 'name = "k8splain"\n[base]\nimage = "{base}"\n[env]\nPLAIN = "1"\n'
SECRET_VALUE = "k8s-secret-VALUE-7d1a"
CSV = "label,x\n1,0.5\n0,0.25\n"

# writes the way a script written for Azure ML does: ./outputs relative to its working folder, a
# named output from ${{outputs.NAME}}, metrics into $ML_ENV_OUTPUT_DIR; reads its input and code
TRAIN = """\
import hashlib, json, os, sys
print("argv", json.dumps(sys.argv[1:]), flush=True)
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
data = open(os.path.join(args["--data"], "digits.csv")).read()
os.makedirs("outputs/model", exist_ok=True)
with open("outputs/model/model.pkl", "wb") as f:
    f.write(b"model of " + data.encode())
with open(os.path.join(args["--out"], "named.txt"), "w") as f:
    f.write("a named output")
metrics = {
    "rows": len(data.splitlines()) - 1,
    "blob": hashlib.sha256(open("blob.bin", "rb").read()).hexdigest(),
    "mode": os.environ["MODE"],
    "secret_len": len(os.environ["API_TOKEN"]),
    "uid": os.getuid(),
    "plain": os.environ.get("PLAIN"),
}
with open(os.path.join(os.environ["ML_ENV_OUTPUT_DIR"], "metrics.json"), "w") as f:
    json.dump(metrics, f)
"""


@pytest.fixture
def claims(ws):
    """Two claims as engine volumes: ``datasets`` holding ``mnist/digits.csv``, ``results`` empty."""
    image = ws.lab["base_image_python"]
    made = {}
    try:
        for claim in ("datasets", "results"):
            made[claim] = f"ml-env-test-claim-{claim}-{uuid.uuid4().hex[:8]}"
            docker.volume.create(made[claim], labels={LABEL: made[claim]})
        data = ws.dir / "claim-datasets" / "mnist"
        data.mkdir(parents=True)
        (data / "digits.csv").write_text(CSV)
        copy_in(made["datasets"], data.parent, image=image)
        yield made
    finally:
        for v in made.values():
            docker.volume.remove(v)


@pytest.mark.parametrize("output_pvc", ["results/team-a", None], ids=["output-claim", "emptydir"])
def test_an_emitted_job_runs_right_when_replayed(ws, claims, tmp_path: Path, output_pvc: str | None) -> None:
    env_file = ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")
    src = tmp_path / "src"
    (src / "outputs").mkdir(parents=True)
    (src / "train.py").write_text(TRAIN)
    (src / "outputs" / "stale.txt").write_text("left by a local run")  # not code: left out
    blob = os.urandom(400_000)  # incompressible: the code needs more than one ConfigMap
    (src / "blob.bin").write_bytes(blob)
    out = tmp_path / "job.yaml"
    p = ml_env(
        "train", "--runner", "kubernetes", "--emit", str(out), "--env", str(env_file), "--source", str(src),
        "--script", "train.py", "--input", "data=pvc:datasets/mnist",
        *(["--output-pvc", output_pvc] if output_pvc else []),
        "--secret", "API_TOKEN", "--env-var", "MODE=$(HOME) $$x", "--cpus", "1", "--memory", "1g", "--timeout", "600",
        "--runs-dir", str(tmp_path / "runs"), "--json", *ws.cli_args(),
        "--", "--data", "${{inputs.data}}", "--out", "${{outputs.named}}", "--alpha", "0.5 1", "--pattern", "$(HOME)$$",
        env={"API_TOKEN": SECRET_VALUE},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "1 file(s) under outputs/" in p.stderr
    result = json.loads(p.stdout)
    text = out.read_text()
    assert SECRET_VALUE not in text and SECRET_VALUE not in p.stdout + p.stderr
    assert "${{" not in text
    assert not (tmp_path / "runs").exists()  # nothing ran here

    docs = list(yaml.safe_load_all(text))
    validate(docs)
    job = the_job(docs)
    assert job["metadata"]["name"] == result["job"]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    assert sorted(configmaps) == sorted(result["configmaps"]) and len(configmaps) >= 3
    pod = job["spec"]["template"]["spec"]
    (init,), (train,) = pod["initContainers"], pod["containers"]
    image = train["image"]
    assert image == result["image"] and "@sha256:" in image
    ref = parse_ref(image)
    assert ref.host == ws.lab["registry"] and ref.repository == ws.repo
    found = RegistryClient(ref.host).head_manifest(ref.repository, ref.digest)
    assert found is not None and found.digest == ref.digest
    labels = job["metadata"]["labels"]
    assert labels["ml-env.run-id"] == result["run_id"] and len(labels["ml-env.env-hash"]) == 63
    env_hash = job["metadata"]["annotations"]["ml-env/env-hash"]
    assert env_hash.startswith(labels["ml-env.env-hash"])
    assert env_hash in RegistryClient(ref.host).tags(ref.repository)  # the hash the image is tagged with

    # the pod, played on the engine as a kubelet would run it
    cluster = Cluster(configmaps, claims, {("api-token", "API_TOKEN"): SECRET_VALUE})
    stage = tmp_path / "stage"
    with replay(pod, cluster, python=init["command"][0], stage=stage) as played:
        assert played.ok, played.logs
        assert "code unpacked" in played.logs["code"]
        argv = [
            "--data",
            "/mnt/inputs/data",
            "--out",
            "/mnt/outputs/named",
            "--alpha",
            "0.5 1",
            "--pattern",
            "$(HOME)$$",
        ]
        assert f"argv {json.dumps(argv)}" in played.logs["train"].splitlines()
        if output_pvc:
            outputs = copy_out(claims["results"], f"team-a/{result['run_id']}", tmp_path / "got", image=image)
        else:  # an emptyDir: read before the pod's volumes go, as nothing else could
            outputs = copy_out(played.volumes["outputs"], result["run_id"], tmp_path / "got", image=image)
    assert (outputs / "model" / "model.pkl").read_bytes() == b"model of " + CSV.encode()
    assert (outputs / "named" / "named.txt").read_text() == "a named output"
    metrics = json.loads((outputs / "metrics.json").read_text())
    assert metrics == {
        "rows": 2, "blob": hashlib.sha256(blob).hexdigest(), "mode": "$(HOME) $$x", "secret_len": len(SECRET_VALUE),
        "uid": 1000, "plain": "1",
    }  # fmt: skip
    assert not (outputs / "stale.txt").exists()
    assert sorted(x.relative_to(outputs).as_posix() for x in outputs.rglob("*")) == [
        "metrics.json", "model", "model/model.pkl", "named", "named/named.txt",
    ]  # fmt: skip
