"""Model versions in a registry and packaged scoring images, on the lab: register → package →
smoke-test → promote → serve the promoted digest, with nothing mounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ml_env_tasks import models
from ml_env_tasks.errors import RegistryError, UsageError
from ml_env_tasks.models.package import package
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.release.promote import PromoteOptions, promote
from ml_env_tasks.serve import client as http
from ml_env_tasks.serve import local
from ml_env_tasks.serve.local import ServeOptions
from ml_env_tasks.serve.smoke import run_smoke_test

from .helpers import ml_env, push_single_image

pytestmark = pytest.mark.docker

SCORE = """
import json, os
def init():
    global factor
    factor = float(open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.txt")).read())
def run(raw):
    return {"y": [x * factor for x in json.loads(raw)["x"]]}
"""


def test_model_versions_are_content_addressed_and_verified(ws, tmp_path: Path) -> None:
    reg = ws.lab["registry"]
    repo = f"{ws.repo}-models/factor"
    ws.extra_repos.append((reg, repo))
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "factor.txt").write_text("2")
    (model / "sub" / "weights.bin").write_bytes(bytes(range(256)) * 100)
    v1 = models.register(reg, "factor", model, repository=repo, framework="sklearn", metrics={"r2": 0.9})
    assert v1.version == 1 and not v1.reused and v1.metrics == {"r2": 0.9}
    again = models.register(reg, "factor", model, repository=repo)
    assert again.reused and again.version == 1 and again.digest == v1.digest  # same bytes, same version
    (model / "factor.txt").write_text("3")
    v2 = models.register(reg, "factor", model, repository=repo)
    assert v2.version == 2 and v2.layer != v1.layer
    assert [m.version for m in models.list_versions(reg, "factor", repository=repo)] == [1, 2]
    assert models.get(reg, "factor", repository=repo).version == 2  # NAME alone: the latest
    out = tmp_path / "restored"
    models.download(reg, "factor:1", out, repository=repo)
    assert (out / "factor.txt").read_text() == "2"
    assert (out / "sub" / "weights.bin").read_bytes() == bytes(range(256)) * 100
    with pytest.raises(UsageError, match="new or empty"):
        models.download(reg, "factor:2", out, repository=repo)
    p = ml_env("model", "list", "factor", "--registry", reg, "--repository", repo, "--json")
    assert p.returncode == 0 and [m["version"] for m in json.loads(p.stdout)] == [1, 2]
    # what the registry serves is untrusted: an image where a model should be is refused, named
    push_single_image(RegistryClient(reg), repo, "3", payload=b"not a model")
    with pytest.raises(RegistryError, match="not an ml-env model artifact"):
        models.get(reg, "factor:3", repository=repo)
    p = ml_env("model", "get", "factor:3", "--registry", reg, "--repository", repo)
    assert p.returncode == 4 and "not an ml-env model artifact" in p.stderr and "Traceback" not in p.stderr
    p = ml_env("model", "get", "../x:1", "--registry", reg)
    assert p.returncode == 2 and "not a model name" in p.stderr


def test_deploy_journey_register_package_smoke_promote_serve(ws, tmp_path: Path) -> None:
    lab = ws.lab
    reg = lab["registry"]
    models_repo, pkg_repo = f"{ws.repo}-models/factor", f"{ws.repo}-pkg"
    prod = f"{ws.repo}-prod"
    ws.extra_repos += [(reg, models_repo), (reg, pkg_repo), (lab["auth_registry"], prod)]
    env = ws.spec(f'name = "light"\ninference = true\n[base]\nimage = "{lab["base_image_python"]}"\n', name="l.toml")
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(SCORE)
    model = tmp_path / "model"
    model.mkdir()
    (model / "factor.txt").write_text("2")
    mv = models.register(reg, "factor", model, repository=models_repo)

    # package by the registered version: the model layer is the registered blob itself
    r = package(str(env), app / "score.py", f"{models_repo}:{mv.version}", build=ws.opts(), repository=pkg_repo)
    assert not r.reused and r.model_digest == mv.layer
    again = package(str(env), app / "score.py", f"{models_repo}:{mv.version}", build=ws.opts(), repository=pkg_repo)
    assert again.reused and again.digest == r.digest  # one HEAD, the same digest
    client = RegistryClient(reg)
    cfg = client.image_config(pkg_repo, r.digest)["config"]
    assert cfg["Labels"]["ml-env.package.model_digest"] == mv.layer
    assert cfg["Labels"]["ml-env.package.entry"] == "score.py" and "AZUREML_ENTRY_SCRIPT=score.py" in cfg["Env"]
    # the same three parts from a folder give the same layer: the same image
    same = package(str(env), app / "score.py", str(model), build=ws.opts(), repository=pkg_repo)
    assert same.digest == r.digest
    # the environment given as the image itself, by its tag, which the engine has too: the
    # registry is asked for it (it was refused as "not in a registry")
    env_tag = r.environment.split("@")[0] + ":" + cfg["Labels"]["ml-env.hash"]
    by_ref = package(env_tag, app / "score.py", str(model), build=ws.opts(), repository=pkg_repo)
    assert by_ref.reused and by_ref.digest == r.digest
    # provable as a built image is: SBOM (the environment's packages and the two parts) and provenance
    from ml_env_tasks.release.sbom import CYCLONEDX, SLSA_V1, attested
    from ml_env_tasks.release.verify import verify

    checks = {c.name: c.ok for c in verify(r.image, ledger=None)}
    assert all(checks[k] for k in ("image", "hash", "package", "tag", "sbom", "provenance")), checks
    found = attested(client, pkg_repo, r.digest)
    names = {c["name"] for c in found[CYCLONEDX][0][1]["predicate"]["components"]}
    assert {f"model factor:{mv.version}", "entry score.py"} <= names and "python3" in " ".join(names)
    deps = found[SLSA_V1][0][1]["predicate"]["buildDefinition"]["resolvedDependencies"]
    assert deps[2]["digest"]["sha256"] == mv.layer.split(":", 1)[1] and deps[1]["digest"]["sha256"] == r.entry_hash

    # smoke-test the packaged image as it is: no entry, no model mounted
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"request": {"x": [1, 2]}, "expect_json": {"y": [2.0, 4.0]}}\n')
    report = run_smoke_test(ServeOptions(environment=r.ref, entry=None, models={}, build=ws.opts()), cases)
    assert report.failed == 0 and report.passed == 1
    # promote exactly that digest, then serve the promoted one
    promoted = promote(
        PromoteOptions(r.ref, f"{lab['auth_registry']}/{prod}", tags=("1.0.0",), ledger=tmp_path / "releases.toml")
    )
    assert promoted.digest == r.digest
    svc = local.start(
        ServeOptions(environment=f"{lab['auth_registry']}/{prod}@{r.digest}", entry=None, models={}, port=0,
                     build=ws.opts(registry=lab["auth_registry"]))
    )  # fmt: skip
    try:
        local.wait_ready(svc, 120)
        resp = http.request("POST", svc.url + "/score", body=b'{"x": [5]}', timeout=10)
        assert resp.status == 200 and json.loads(resp.body) == {"y": [10.0]}
        from python_on_whales import docker

        assert docker.container.inspect(svc.container_id).mounts == []  # the image is the deployable artefact
    finally:
        local.remove(svc)
    with pytest.raises(UsageError, match="packaged image"):  # port 0: a taken port is said first
        local.start(ServeOptions(environment=r.ref, entry=app / "score.py", models={}, port=0, build=ws.opts()))


def test_train_registers_its_model_in_one_step(ws, tmp_path: Path) -> None:
    import uuid

    lab = ws.lab
    name = f"m{uuid.uuid4().hex[:10]}"
    ws.extra_repos.append((lab["registry"], f"models/{name}"))
    env = ws.spec(f'name = "fit"\n[base]\nimage = "{lab["base_image_python"]}"\n', name="fit.toml")
    src = tmp_path / "src"
    src.mkdir()
    (src / "fit.py").write_text(
        "import os, json\n"
        "d = os.path.join(os.environ['ML_ENV_OUTPUT_DIR'], 'model'); os.makedirs(d)\n"
        "open(os.path.join(d, 'factor.txt'), 'w').write('4')\n"
        "print('ML_ENV_METRIC r2=0.75')\n"
    )
    args = ["train", "--env", str(env), "--source", str(src), "--script", "fit.py", *ws.cli_args(),
            "--runs-dir", str(tmp_path / "runs"), "--register-model", f"{name}=outputs/model", "--json"]  # fmt: skip
    p = ml_env(*args)
    assert p.returncode == 0, p.stderr
    rec = json.loads(p.stdout)
    mv = rec["registered_model"]
    assert mv["version"] == 1 and mv["run_id"] == rec["run_id"] and mv["metrics"] == {"r2": 0.75}
    got = models.get(lab["registry"], f"{name}:1")
    assert got.layer == mv["layer"] and got.run_id == rec["run_id"]
    bad = ml_env(*[a if a != f"{name}=outputs/model" else f"{name}=outputs/../../../etc" for a in args])
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr


def test_provable_release_sbom_provenance_gate_verify(ws, tmp_path: Path) -> None:
    """Build → SBOM and provenance attached → smoke test recorded against the digest → promote
    refuses without it and accepts with it → both attestations survive → verify passes."""
    import subprocess

    from ml_env_tasks.build import build
    from ml_env_tasks.release.attest import smoke_records
    from ml_env_tasks.release.verify import verify
    from ml_env_tasks.serve.smoke import record_result

    lab = ws.lab
    reg = lab["registry"]
    prod = f"{ws.repo}-prod"
    ws.extra_repos.append((lab["auth_registry"], prod))
    env = ws.spec(f'name = "light"\ninference = true\n[base]\nimage = "{lab["base_image_python"]}"\n', name="l.toml")
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(SCORE)
    model = tmp_path / "model"
    model.mkdir()
    (model / "factor.txt").write_text("2")
    result = build(str(env), ws.opts())
    image = result.pinned
    checks = {c.name: c for c in verify(image)}
    assert checks["hash"].ok and checks["sbom"].ok and checks["provenance"].ok, [c.line() for c in checks.values()]
    # the SBOM is what imagetools shows, and lists the Debian and Python packages really there
    p = subprocess.run(["docker", "buildx", "imagetools", "inspect", image, "--format", "{{json .SBOM}}"],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert p.returncode == 0, p.stderr
    spdx = json.loads(p.stdout)["SPDX"]
    names = {pkg["name"] for pkg in spdx["packages"]}
    assert "pip" in names and "libc6" in names, sorted(names)[:20]

    # promote --require smoke-test: refused without a record (exit 5), accepted with a passing one
    dest = f"{lab['auth_registry']}/{prod}"
    p = ml_env(
        "promote", image, dest, "--tag", "1.0.0", "--require", "smoke-test", "--ledger", str(tmp_path / "r.toml")
    )
    assert p.returncode == 5 and "no smoke test recorded" in p.stderr, p.stderr
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"request": {"x": [1]}, "expect_json": {"y": [2.0]}}\n')
    report = run_smoke_test(
        ServeOptions(environment=image, entry=app / "score.py", models={"": model}, build=ws.opts()), cases
    )
    assert report.failed == 0 and report.image == image
    assert record_result(report, cases)
    [rec] = smoke_records(RegistryClient(reg), ws.repo, result.digest)
    assert rec["tested"] == result.digest and rec["passed"] == 1
    p = ml_env("promote", image, dest, "--tag", "1.0.0", "--require", "smoke-test", "--ledger", str(tmp_path / "r.toml"),
               "--spec", str(env))  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "gate smoke-test: passed" in p.stderr
    # both attestations and the smoke-test record survived the promotion
    promoted = f"{dest}:1.0.0"
    auth = RegistryClient(lab["auth_registry"], credentials=(lab["auth_user"], lab["auth_password"]))
    assert smoke_records(auth, prod, result.digest)
    p = ml_env("verify", promoted, "--ledger", str(tmp_path / "r.toml"), "--require", "smoke-test", "--json")
    doc = json.loads(p.stdout)
    assert p.returncode == 0 and doc["ok"], doc
    assert {c["name"]: c["ok"] for c in doc["checks"]} == {
        "image": True, "hash": True, "tag": None, "sbom": True, "provenance": True, "ledger": True, "smoke-test": True,
    }  # fmt: skip
    # what ml-env did not build, or that is not there, fails its checks (exit 1), one line each
    push_single_image(RegistryClient(reg), ws.repo, "stranger", payload=b"x")
    p = ml_env("verify", f"{reg}/{ws.repo}:stranger")
    assert p.returncode == 1 and "not an image ml-env built" in p.stdout and "no SBOM" in p.stdout
    p = ml_env("verify", f"{reg}/{ws.repo}:{'0' * 64}")
    assert p.returncode == 1 and "not in its registry" in p.stdout
