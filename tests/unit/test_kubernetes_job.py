"""``train --runner kubernetes``: the Job it writes, validated offline against the Kubernetes API
schemas (kubernetes-validate) of the two newest minors the installed package ships, and the
refusals for what a cluster could not honour. No cluster is involved anywhere."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor
from packaging.version import Version

from ml_env_tasks.engine.resources import Resources
from ml_env_tasks.errors import UsageError
from ml_env_tasks.runs import kubernetes as k8s
from ml_env_tasks.runs.snapshot import snapshot

from .test_hostile_input import cli, one_clean_line

IMAGE = "127.0.0.1:5000/team/env@sha256:" + "ab" * 32
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def newest_minors(n: int = 2) -> list[str]:
    """The ``n`` newest Kubernetes minors the installed kubernetes-validate has schemas for."""
    return sorted({major_minor(v) for v in all_versions()}, key=Version)[-n:]


K8S = newest_minors()


def validate(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        for version in K8S:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "pkg").mkdir(parents=True)
    (d / "train.py").write_text("import pkg.util\nprint('hi')\n")
    (d / "pkg" / "util.py").write_text("X = 1\n")
    (d / "pkg" / "link.py").symlink_to("util.py")
    return d


def job(src: Path, **kw: Any) -> k8s.KubeJob:
    snap = snapshot(src, warn=lambda _m: None)
    base: dict[str, Any] = dict(
        run_id=k8s.new_run_id("train"),
        image=IMAGE,
        command=["python3", "train.py", "--alpha", "0.5"],
        archive=k8s.code_archive(snap),
        snapshot_hash=snap.hash,
        env_hash="c" * 64,
    )
    base.update(kw)
    j = k8s.KubeJob(**base)
    k8s.check(j)
    return j


def the_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (j,) = [d for d in docs if d["kind"] == "Job"]
    return j


def test_the_versions_are_the_two_newest_the_package_ships() -> None:
    assert len(K8S) == 2 and K8S[0] != K8S[1]
    assert Version(K8S[1]) == max(Version(major_minor(v)) for v in all_versions())
    assert kubernetes_validate.latest_version().startswith(K8S[1])


def test_a_full_job_is_valid_and_says_what_was_asked(src: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_TOKEN", "tok-VALUE-9f2e")
    j = job(
        src,
        inputs={"data": k8s.parse_pvc("pvc:datasets/mnist/v1", "input data"), "Extra_2": k8s.parse_pvc("pvc:x", "i")},
        output=k8s.parse_pvc("results/team-a", "--output-pvc", prefix=False),
        env_vars={"MODE": "ci", "EMPTY": ""},
        secret_names=("API_TOKEN",),
        resources=Resources.parse(cpus="1.5", memory="4g", gpus="2", shm_size="1g"),
        timeout=3600.2,
        namespace="ml-team",
        backoff_limit=1,
        ttl_after_finished=600,
    )
    docs = k8s.manifests(j)
    validate(docs)
    text = k8s.to_yaml(docs)
    assert list(yaml.safe_load_all(text)) == docs
    validate(list(yaml.safe_load_all(text)))
    assert "tok-VALUE-9f2e" not in text
    assert "&id" not in text and "*id" not in text  # no anchors: kubectl users read this file

    job_doc = the_job(docs)
    spec, pod = job_doc["spec"], job_doc["spec"]["template"]["spec"]
    assert (
        spec["backoffLimit"] == 1 and spec["activeDeadlineSeconds"] == 3601 and spec["ttlSecondsAfterFinished"] == 600
    )
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
    (init,), (train,) = pod["initContainers"], pod["containers"]
    assert init["image"] == train["image"] == IMAGE
    assert train["args"] == ["python3", "train.py", "--alpha", "0.5"] and "command" not in train
    assert train["workingDir"] == "/mnt/code"
    env = {e["name"]: e for e in train["env"]}
    assert env["API_TOKEN"] == {
        "name": "API_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "api-token", "key": "API_TOKEN"}},
    }
    assert env["ML_ENV_OUTPUT_DIR"]["value"] == "/mnt/outputs" and env["ML_ENV_RUN_ID"]["value"] == j.run_id
    assert env["ML_ENV_INPUT_DATA"]["value"] == "/mnt/inputs/data"
    assert env["ML_ENV_INPUT_EXTRA_2"]["value"] == "/mnt/inputs/Extra_2"
    assert env["MODE"]["value"] == "ci" and env["HOME"]["value"] == "/tmp"
    limits = train["resources"]["limits"]
    assert limits == {"cpu": "1500m", "memory": str(4 * 2**30), "nvidia.com/gpu": "2"}
    assert (
        "nvidia.com/gpu" not in train["resources"]["requests"] and "nvidia.com/gpu" not in init["resources"]["limits"]
    )
    mounts = {m["mountPath"]: m for m in train["volumeMounts"]}
    assert mounts["/mnt/inputs/data"]["readOnly"] is True and mounts["/mnt/inputs/data"]["subPath"] == "mnist/v1"
    # the run's folder on the claim, as $ML_ENV_OUTPUT_DIR and as ./outputs (Azure ML's, a local run's)
    assert mounts["/mnt/outputs"] == {"name": "outputs", "mountPath": "/mnt/outputs", "subPath": f"team-a/{j.run_id}"}
    assert mounts["/mnt/code/outputs"] == {**mounts["/mnt/outputs"], "mountPath": "/mnt/code/outputs"}
    init_mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert init_mounts[k8s.model.OUTPUT_ROOT] == {
        "name": "outputs",
        "mountPath": k8s.model.OUTPUT_ROOT,
        "subPath": "team-a",
    }
    assert init["command"][4:] == [f"{k8s.model.OUTPUT_ROOT}/{j.run_id}", k8s.model.ARCHIVE_DIR, "1", "/mnt/code"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/mnt/inputs/data"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "datasets",
        "readOnly": True,
    }
    assert vols["outputs"]["persistentVolumeClaim"] == {"claimName": "results"}
    assert vols["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": str(2**30)}
    for doc in docs:
        assert doc["metadata"]["namespace"] == "ml-team"
        labels = doc["metadata"]["labels"]
        assert labels["ml-env.run-id"] == j.run_id and labels["ml-env.env-hash"] == "c" * 63
        assert all(LABEL_VALUE.fullmatch(v) for v in labels.values())
    assert job_doc["metadata"]["annotations"]["ml-env/env-hash"] == "c" * 64
    assert DNS_LABEL.fullmatch(job_doc["metadata"]["name"])


def test_a_minimal_job_is_valid(src: Path) -> None:
    docs = k8s.manifests(job(src, env_hash=None))
    validate(docs)
    pod = the_job(docs)["spec"]["template"]["spec"]
    assert "activeDeadlineSeconds" not in the_job(docs)["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["outputs"] == {"name": "outputs", "emptyDir": {}}
    assert "resources" not in pod["containers"][0]
    # an emptyDir is laid out as a claim is: the run's folder, at /mnt/outputs and ./outputs
    mounts = {m["mountPath"]: m.get("subPath") for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/outputs"] == mounts["/mnt/code/outputs"] == the_job(docs)["metadata"]["labels"]["ml-env.run-id"]


def test_the_validation_can_fail(src: Path) -> None:
    """The schema check is real: a wrong type or an unknown field is caught in both versions."""
    docs = k8s.manifests(job(src))
    for mutate in (
        lambda j: j["spec"].__setitem__("backoffLimit", "zero"),
        lambda j: j["spec"]["template"]["spec"].__setitem__("restartPolicyy", "Never"),
        lambda j: j["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ):
        bad = copy.deepcopy(the_job(docs))
        mutate(bad)
        for version in K8S:
            with pytest.raises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(bad, version, strict=True)


def test_root_only_when_asked(src: Path) -> None:
    pod = the_job(k8s.manifests(job(src, user=k8s.parse_user("0"))))["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is False and pod["securityContext"]["runAsUser"] == 0
    assert k8s.parse_user("1234:99") == (1234, 99) and k8s.parse_user(None) == (1000, 1000)
    for bad in ("root", "1000:staff", "-1", "1\n2"):
        with pytest.raises(UsageError, match="numeric UID"):
            k8s.parse_user(bad)


def _play_init(docs: list[dict[str, Any]], root: Path, **swap: str) -> subprocess.CompletedProcess:
    """The init container's own command, run with this python: the ConfigMaps' keys in one folder
    (as their projected volume is), its paths moved under ``root``."""
    parts = root / "archive"
    parts.mkdir(parents=True, exist_ok=True)
    for cm in docs[:-1]:
        for key, b64 in cm["binaryData"].items():
            (parts / key).write_bytes(base64.b64decode(b64))
    (init,) = the_job(docs)["spec"]["template"]["spec"]["initContainers"]
    _python, dash_c, script, digest, out, archive, count, code, *named = init["command"]
    assert out.startswith(k8s.model.OUTPUT_ROOT + "/") and archive == k8s.model.ARCHIVE_DIR and code == "/mnt/code"
    argv = dict(digest=digest, out=str(root / "out" / out.rsplit("/", 1)[1]), archive=str(parts), count=count,
                code=str(root / "code"))  # fmt: skip
    argv.update(swap)
    Path(argv["code"]).mkdir(exist_ok=True)
    return subprocess.run([sys.executable, dash_c, script, *argv.values(), *named], capture_output=True, text=True)


def test_the_init_script_unpacks_exactly_the_snapshot(src: Path, tmp_path: Path) -> None:
    (src / "blob.bin").write_bytes(os.urandom(2 * k8s.PART_BYTES + 100))  # three parts
    j = job(src, output_names=("model", "logs"))
    docs = k8s.manifests(j)
    assert len(docs) == 4
    p = _play_init(docs, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "in 3 parts" in p.stdout
    code, out = tmp_path / "code", tmp_path / "out" / j.run_id
    assert sorted(x.name for x in out.iterdir()) == ["logs", "model"]  # ${{outputs.NAME}} made first
    assert (code / "train.py").read_bytes() == (src / "train.py").read_bytes()
    assert (code / "blob.bin").read_bytes() == (src / "blob.bin").read_bytes()
    assert os.readlink(code / "pkg" / "link.py") == "util.py"
    assert snapshot(code, warn=lambda _m: None).hash == j.snapshot_hash
    # a part of another archive under the same name is refused, nothing unpacked
    swapped = copy.deepcopy(docs)
    swapped[1]["binaryData"] = {"code.tar.gz.001": k8s.manifests(job(src / "pkg"))[0]["binaryData"]["code.tar.gz.000"]}
    p = _play_init(swapped, tmp_path, code=str(tmp_path / "fresh"))
    assert p.returncode != 0 and "not the one the Job was written for" in p.stderr
    assert not any((tmp_path / "fresh").iterdir())


def test_the_archive_is_reproducible_and_names_its_configmaps(src: Path) -> None:
    a, b = job(src), job(src)
    assert a.archive == b.archive
    digest = hashlib.sha256(a.archive).hexdigest()
    assert k8s.names(a)[1] == k8s.names(b)[1] == [f"ml-env-code-{digest[:40]}-0"]
    with tarfile.open(fileobj=io.BytesIO(a.archive), mode="r:gz") as t:
        assert {m.name for m in t.getmembers()} >= {"train.py", "pkg/util.py", "pkg/link.py"}


@pytest.mark.parametrize(
    "experiment",
    ["My Experiment", "UPPER_case.v2", "new\nline", "..--__", "ünïcödé 実験", "x" * 300, "-lead", "a b\tc/d:e"],
)
def test_hostile_experiment_names_give_valid_names(src: Path, experiment: str) -> None:
    j = job(src, run_id=k8s.new_run_id(experiment))
    docs = k8s.manifests(j)
    validate(docs)
    name = the_job(docs)["metadata"]["name"]
    assert DNS_LABEL.fullmatch(name) and len(name) <= 63
    assert LABEL_VALUE.fullmatch(j.run_id) and len(j.run_id) <= 63
    assert name.endswith(j.run_id[-8:])  # the random part survives any cut


def test_dns_label_keeps_the_unique_end() -> None:
    assert k8s.dns_label("A" * 100 + "_20260101T000000_deadbeef").endswith("20260101t000000-deadbeef")
    assert len(k8s.dns_label("a-" * 80)) <= 63
    with pytest.raises(UsageError, match="nothing a Kubernetes name"):
        k8s.dns_label("___")


def test_secret_names() -> None:
    assert k8s.secret_ref("API_TOKEN") == ("api-token", "API_TOKEN")
    assert k8s.secret_ref("hf_token") == ("hf-token", "hf_token")
    for bad in ("_", "__", "my secret", "A\nB", "1ABC", "x" * 300, "a.b", ""):
        with pytest.raises(UsageError) as e:
            k8s.secret_ref(bad)
        assert "\n" not in str(e.value)


def test_pvc_references() -> None:
    assert k8s.parse_pvc("pvc:data", "i") == k8s.PvcRef("data", "")
    assert k8s.parse_pvc("pvc:data.v1/a//b/", "i") == k8s.PvcRef("data.v1", "a/b")
    with pytest.raises(UsageError, match="cannot read this machine's files"):
        k8s.parse_pvc("./data", "input data")
    with pytest.raises(UsageError, match="cannot read this machine's files"):
        k8s.parse_pvc("/abs/data", "input data")
    for bad in (
        "pvc:",
        "pvc:Bad_Claim",
        "pvc:a b",
        "pvc:-x",
        "pvc:data/../etc",
        "pvc:data/./x",
        "pvc:x/a\nb",
        "pvc:x/a b",
    ):
        with pytest.raises(UsageError):
            k8s.parse_pvc(bad, "input data")


def test_a_snapshot_over_what_a_job_carries_is_refused_clearly(src: Path) -> None:
    (src / "weights.bin").write_bytes(os.urandom(300_000))  # incompressible
    snap = snapshot(src, warn=lambda _m: None)
    with pytest.raises(UsageError) as e:
        k8s.code_archive(snap, limit=200_000)
    msg = str(e.value)
    assert "too big for a Job" in msg and "weights.bin" in msg and "pvc:" in msg and "\n" not in msg
    assert k8s.code_archive(snap, limit=400_000)


def _last_applied_bytes(doc: dict[str, Any]) -> int:
    """What client-side ``kubectl apply`` makes of an object's annotations: its own, plus the whole
    object as JSON under ``kubectl.kubernetes.io/last-applied-configuration`` (the API server's
    limit on annotations counts keys and values)."""
    key = "kubectl.kubernetes.io/last-applied-configuration"
    annotations = dict(doc["metadata"].get("annotations") or {})
    applied = copy.deepcopy(doc)
    applied["metadata"]["annotations"] = annotations
    annotations[key] = json.dumps(applied, separators=(",", ":"), sort_keys=True) + "\n"
    return sum(len(k) + len(v.encode()) for k, v in annotations.items())


def test_code_beyond_one_configmap_travels_in_several_each_fit_for_kubectl_apply(src: Path) -> None:
    """Code over one ConfigMap: cut into parts that each pass the API server's ConfigMap limit and
    the 256 KiB of annotations client-side ``kubectl apply`` fills, with the longest names."""
    (src / "blob.bin").write_bytes(os.urandom(5 * k8s.PART_BYTES // 2))
    j = job(src, run_id=k8s.new_run_id("x" * 300), namespace="n" * 63, env_hash="e" * 64)
    docs = k8s.manifests(j)
    validate(docs)
    cms, job_doc = docs[:-1], docs[-1]
    assert len(cms) == 3 and [d["kind"] for d in cms] == ["ConfigMap"] * 3
    assert [c["metadata"]["name"] for c in cms] == k8s.names(j)[1]
    assert b"".join(base64.b64decode(c["binaryData"][f"code.tar.gz.{i:03d}"]) for i, c in enumerate(cms)) == j.archive
    for c in cms:
        assert sum(len(k) + len(base64.b64decode(v)) for k, v in c["binaryData"].items()) <= k8s.CONFIGMAP_LIMIT
        assert _last_applied_bytes(c) < k8s.ANNOTATIONS_LIMIT, c["metadata"]["name"]
        assert c["metadata"]["labels"]["ml-env.code"] == hashlib.sha256(j.archive).hexdigest()[:40]
    assert _last_applied_bytes(job_doc) < k8s.ANNOTATIONS_LIMIT
    (vol,) = [v for v in job_doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "code-archive"]
    assert vol == {
        "name": "code-archive",
        "projected": {"sources": [{"configMap": {"name": n}} for n in k8s.names(j)[1]]},
    }
    # a whole part is as big as a part gets
    assert _last_applied_bytes(cms[0]) > k8s.ANNOTATIONS_LIMIT * 0.9


def test_dollars_reach_the_script_as_written(src: Path) -> None:
    """Kubernetes expands ``$(VAR)`` in command, args and env values and makes ``$$`` one ``$``:
    what ml-env writes, expanded the way Kubernetes does, is what was given."""
    from ..docker.kube_replay import expand

    given = ["$(HOME)", "$$", "cost$", "$(UNSET)", "a$$(HOME)b", "$", "$("]
    j = job(src, command=["python3", "train.py", *given], env_vars={"MODE": "$(HOME)$$x", "PLAIN": "p"})
    (train,) = the_job(k8s.manifests(j))["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: expand(e["value"], {}) for e in train["env"] if "value" in e}
    assert env["MODE"] == "$(HOME)$$x" and env["PLAIN"] == "p" and env["HOME"] == "/tmp"
    assert [expand(a, env) for a in train["args"]] == ["python3", "train.py", *given]
    assert expand("$(HOME)$$x", env) == "/tmp$x"  # what an unescaped argument would have become


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"resources": Resources.parse(gpus="all")}, "number of GPUs"),
        ({"resources": Resources.parse(gpus="device=0,1")}, "number of GPUs"),
        ({"timeout": -1.0}, "--timeout"),
        ({"namespace": "Bad NS"}, "--namespace"),
        ({"env_vars": {"BAD NAME": "x"}}, "not a variable name"),
        ({"env_vars": {"A": "x\0y"}}, "NUL"),
        ({"env_vars": {"TOKEN": "x"}, "secret_names": ("TOKEN",)}, "both --env-var and --secret"),
        ({"secret_names": ("bad name",)}, "not an environment variable name"),
        ({"inputs": {"bad-name": k8s.PvcRef("c")}}, "input name"),
        ({"inputs": {"data": k8s.PvcRef("c"), "DATA": k8s.PvcRef("d")}}, "differ only in case"),
        ({"image": "127.0.0.1:5000/team/env:latest"}, "not pinned by digest"),
        ({"backoff_limit": 5000}, "--backoff-limit"),
    ],
)
def test_what_a_job_cannot_honour_is_refused(src: Path, kw: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        job(src, **kw)


# --- the command line: refusals before anything is built, nothing written -------------------


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--input", "data=./data"], "cannot read this machine's files"),
        (["--input", "data=pvc:Bad Claim"], "PersistentVolumeClaim"),
        (["--output-pvc", "../x"], "PersistentVolumeClaim"),
        (["--secret", "_"], "not a Kubernetes Secret name"),
        (["--gpus", "all"], "number of GPUs"),
        (["--user", "root"], "numeric UID"),
        (["--script", "../x.py"], "inside --source"),
        ([], "needs --registry"),
    ],
)
def test_cli_refusals(tmp_path: Path, src: Path, extra: list[str], message: str) -> None:
    env = tmp_path / "env.toml"
    env.write_text('[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    out = tmp_path / "job.yaml"
    args = ["train", "--runner", "kubernetes", "--emit", str(out), "--env", str(env), "--source", str(src)]
    if "--script" not in extra:
        args += ["--script", "train.py"]
    if message != "needs --registry":
        args += ["--registry", "127.0.0.1:9"]  # never reached: every refusal comes first
    line = one_clean_line(cli(*args, *extra, cwd=tmp_path, env={"ML_ENV_REGISTRY": ""}), 2)
    assert message in line
    assert not out.exists() and not list(tmp_path.glob(".job.yaml.*"))


def test_cli_emit_into_a_directory_is_refused(tmp_path: Path, src: Path) -> None:
    args = ["train", "--runner", "kubernetes", "--emit", str(tmp_path), "--env", "127.0.0.1:9/x@sha256:" + "0" * 64]
    line = one_clean_line(cli(*args, "--source", str(src), "--script", "train.py", cwd=tmp_path), 2)
    assert "is a directory" in line


@pytest.mark.parametrize(
    "args,message",
    [
        (["--emit", "job.yaml"], "add --runner kubernetes"),
        (["--runner", "kubernetes"], "give --emit FILE"),
        (["--runner", "kubernetes", "--emit", "j.yaml", "--register-model", "m=outputs/x"], "--register-model"),
    ],
)
def test_cli_runner_and_emit_go_together(tmp_path: Path, args: list[str], message: str) -> None:
    line = one_clean_line(cli("train", "--env", "e.toml", "--source", ".", "--script", "t.py", *args, cwd=tmp_path), 2)
    assert message in line


def _kube_cli(tmp_path: Path, src: Path, *extra: str) -> subprocess.CompletedProcess:
    env = tmp_path / "env.toml"
    env.write_text('[base]\nimage = "127.0.0.1:5000/base/busybox:1"\n')
    args = ["train", "--runner", "kubernetes", "--emit", str(tmp_path / "job.yaml"), "--env", str(env)]
    args += ["--source", str(src), "--registry", "127.0.0.1:9"]  # never reached: the refusal comes first
    if "--script" not in extra:
        args += ["--script", "train.py"]
    return cli(*args, *extra, cwd=tmp_path, env={"ML_ENV_REGISTRY": ""})


@pytest.mark.parametrize(
    "arg", ["${{inputs.nope}}", "${{parent.inputs.data}}", "--x=${{inputs.data", "${{ outputs.a-b }}"]
)
def test_placeholders_are_refused_as_a_local_run_refuses_them(tmp_path: Path, src: Path, arg: str) -> None:
    """The same resolver, the same line and exit code; only the hint says how a Job takes an input."""
    (tmp_path / "data").mkdir()
    local = one_clean_line(
        cli("train", "--env", "e.toml", "--source", str(src), "--script", "train.py", "--input", "data=./data",
            "--", "--data", arg, cwd=tmp_path),
        2,
    )  # fmt: skip
    kube = one_clean_line(_kube_cli(tmp_path, src, "--input", "data=pvc:datasets", "--", "--data", arg), 2)
    assert "placeholder" in local
    assert kube.split(" (add --input")[0] == local.split(" (add --input")[0]
    if "(add --input" in local:
        assert "(add --input nope=PATH)" in local and "(add --input nope=pvc:CLAIM)" in kube
    assert not (tmp_path / "job.yaml").exists()


def test_a_script_under_outputs_is_refused_as_for_a_local_run(tmp_path: Path, src: Path) -> None:
    (src / "outputs").mkdir()
    (src / "outputs" / "t.py").write_text("print(1)\n")
    line = one_clean_line(_kube_cli(tmp_path, src, "--script", "outputs/t.py"), 2)
    assert "is under outputs/" in line


def test_cli_code_over_what_a_job_carries(tmp_path: Path, src: Path) -> None:
    (src / "weights.bin").write_bytes(os.urandom(k8s.CODE_LIMIT + 100_000))
    line = one_clean_line(_kube_cli(tmp_path, src), 2)
    assert "too big for a Job" in line and "weights.bin" in line and "pvc:CLAIM" in line
    assert not (tmp_path / "job.yaml").exists()
