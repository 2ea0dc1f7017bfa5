"""``train --runner kubernetes --emit``: a real environment built on the lab registry, a Job
written, validated offline against the Kubernetes schemas, its image digest found in the registry.
No cluster: the pod's two containers are then played by hand on the lab engine, with the Job's
own commands, user and variables, to show the code arrives and the script runs."""

from __future__ import annotations

import base64
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

pytestmark = pytest.mark.docker

PLAIN = 'name = "k8splain"\n[base]\nimage = "{base}"\n[env]\nPLAIN = "1"\n'
SECRET_VALUE = "k8s-secret-VALUE-7d1a"


def test_emit_a_job_for_a_built_environment(ws, tmp_path: Path) -> None:
    env_file = ws.spec(PLAIN.format(base=ws.lab["base_image_python"]), name="plain.toml")
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(
        "import os, sys\n"
        "print('args', sys.argv[1:], 'plain', os.environ.get('PLAIN'), 'uid', os.getuid())\n"
        "open(os.path.join(os.environ['ML_ENV_OUTPUT_DIR'], 'done.txt'), 'w').write(os.environ['ML_ENV_RUN_ID'])\n"
    )
    out = tmp_path / "job.yaml"
    p = ml_env(
        "train", "--runner", "kubernetes", "--emit", str(out), "--env", str(env_file), "--source", str(src),
        "--script", "train.py", "--input", "data=pvc:datasets/mnist", "--output-pvc", "results",
        "--secret", "API_TOKEN", "--cpus", "1", "--memory", "1g", "--gpus", "1", "--timeout", "600",
        "--runs-dir", str(tmp_path / "runs"), "--json", *ws.cli_args(), "--", "--alpha", "0.5 1",
        env={"API_TOKEN": SECRET_VALUE},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    result = json.loads(p.stdout)
    text = out.read_text()
    assert SECRET_VALUE not in text and SECRET_VALUE not in p.stdout + p.stderr
    assert not (tmp_path / "runs").exists()  # nothing ran here

    docs = list(yaml.safe_load_all(text))
    validate(docs)
    job = the_job(docs)
    assert job["metadata"]["name"] == result["job"]
    pod = job["spec"]["template"]["spec"]
    (train,) = pod["containers"]
    image = train["image"]
    assert image == result["image"] and "@sha256:" in image
    ref = parse_ref(image)
    assert ref.host == ws.lab["registry"] and ref.repository == ws.repo
    found = RegistryClient(ref.host).head_manifest(ref.repository, ref.digest)
    assert found is not None and found.digest == ref.digest
    assert train["args"][1:] == ["train.py", "--alpha", "0.5 1"]
    labels = job["metadata"]["labels"]
    assert labels["ml-env.run-id"] == result["run_id"] and len(labels["ml-env.env-hash"]) == 63
    env_hash = job["metadata"]["annotations"]["ml-env/env-hash"]
    assert env_hash.startswith(labels["ml-env.env-hash"])
    assert env_hash in RegistryClient(ref.host).tags(ref.repository)  # the hash the image is tagged with

    # the pod by hand: the init container's command, then the training container's, same image and user
    cm = docs[0]
    work = tmp_path / "pod"
    archive_dir, code, outputs = work / "archive", work / "code", work / "outputs"
    for d in (archive_dir, code, outputs):
        d.mkdir(parents=True)
        os.chmod(d, 0o777)
    for key, b64 in cm["binaryData"].items():
        (archive_dir / key).write_bytes(base64.b64decode(b64))
    (init,) = pod["initContainers"]
    user = f"{pod['securityContext']['runAsUser']}:{pod['securityContext']['runAsGroup']}"
    out_root = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == "outputs")
    name = f"ml-env-test-k8s-{uuid.uuid4().hex[:8]}"
    log = docker.run(
        image, init["command"][1:], entrypoint=init["command"][0], user=user, remove=True, name=name + "-init",
        volumes=[(str(archive_dir), "/mnt/ml-env-code-archive", "ro"), (str(code), "/mnt/code"), (str(outputs), out_root)],
    )  # fmt: skip
    assert "code unpacked" in str(log)
    assert (code / "train.py").read_text() == (src / "train.py").read_text()
    run_dir = outputs / result["run_id"]
    assert run_dir.is_dir()
    envs = {e["name"]: e["value"] for e in train["env"] if "value" in e}
    log = docker.run(
        image, train["args"], user=user, remove=True, name=name, workdir=train["workingDir"], envs=envs,
        volumes=[(str(code), "/mnt/code"), (str(run_dir), "/mnt/outputs")],
    )  # fmt: skip
    assert "args ['--alpha', '0.5 1'] plain 1 uid 1000" in str(log)
    assert (run_dir / "done.txt").read_text() == result["run_id"]
