"""Execute ci/github/build/action.yml's steps as a runner would, against the real lab."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


def run_action(
    action: Path, inputs: dict[str, str], tmp: Path
) -> tuple[subprocess.CompletedProcess, dict[str, str], str]:
    """Run the composite action's steps with `${{ inputs.* }}` resolved; return outputs and summary."""
    doc = yaml.safe_load(action.read_text())
    values = {k: str(v.get("default", "")) for k, v in doc["inputs"].items()}
    values["python"] = sys.executable  # this checkout's ml-env, whichever python3 is first on PATH
    values.update(inputs)
    out_file, summary = tmp / "github_output", tmp / "step_summary"
    out_file.write_text("")
    summary.write_text("")

    def expr(s: str) -> str:
        s = re.sub(r"\$\{\{\s*inputs\.([\w-]+)\s*\}\}", lambda m: values[m.group(1)], s)
        return s.replace("${{ github.action_path }}", str(action.parent))

    proc = None
    for step in doc["runs"]["steps"]:
        cond = step.get("if")
        if cond:
            m = re.fullmatch(r"inputs\.([\w-]+) == '(\w+)'", cond)
            assert m, f"unsupported if: {cond}"
            if values[m.group(1)] != m.group(2):
                continue
        env = {**os.environ, "GITHUB_OUTPUT": str(out_file), "GITHUB_STEP_SUMMARY": str(summary)}
        env.update({k: expr(str(v)) for k, v in (step.get("env") or {}).items()})
        proc = subprocess.run(
            [step["shell"], "-e", "-c", step["run"]], env=env, capture_output=True, text=True, timeout=900
        )
        if proc.returncode != 0:
            break
    assert proc is not None
    return proc, read_outputs(out_file.read_text()), summary.read_text()


def read_outputs(text: str) -> dict[str, str]:
    """$GITHUB_OUTPUT as the runner reads it: name=value lines and name<<DELIMITER blocks."""
    out: dict[str, str] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delim:
                    break
                body.append(inner)
            out[name] = "\n".join(body)
        elif "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def test_build_action_outputs_and_summary(ws) -> None:
    f = ws.spec(f'name = "act"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nACTION = "1"\n')
    inputs = {
        "spec": str(f),
        "registry": ws.lab["registry"],
        "repository": ws.repo,
        "network": ws.lab["build_network"],
        "install": "false",
        "python": sys.executable,
    }
    action = ROOT / "ci/github/build/action.yml"
    proc, outputs, summary = run_action(action, inputs, ws.dir)
    assert proc.returncode == 0, proc.stderr
    assert outputs["built"] == "true"
    assert outputs["image"] == f"{ws.lab['registry']}/{ws.repo}:{outputs['hash']}"
    assert (
        outputs["digest"].startswith("sha256:")
        and outputs["ref"] == f"{ws.lab['registry']}/{ws.repo}@{outputs['digest']}"
    )
    assert "::group::ml-env build" in proc.stdout and "::endgroup::" in proc.stdout
    assert "| digest | `" + outputs["digest"] + "` |" in summary
    again, outputs2, summary2 = run_action(action, inputs, ws.dir)
    assert outputs2["built"] == "false" and outputs2["digest"] == outputs["digest"]
    assert "reused" in summary2


def test_build_action_takes_build_push_action_inputs(ws) -> None:
    """tags, labels, annotations, cache-from, platforms, builder; outputs imageid and metadata; tags
    land on a reused image too; what the builder cannot do is refused naming builder and driver."""
    import json

    from ml_env_tasks.registry import RegistryClient

    reg = ws.lab["registry"]
    ws.extra_repos.append((reg, f"{ws.repo}-copy"))
    f = ws.spec(f'name = "extras"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nX = "1"\n')
    inputs = {
        "spec": str(f),
        "registry": reg,
        "repository": ws.repo,
        "network": ws.lab["build_network"],
        "install": "false",
        "tags": f"latest\n{reg}/{ws.repo}-copy:v1",
        "labels": "org.opencontainers.image.source=https://example.invalid/a,b\nteam=ml",
        "annotations": 'org.example.note=built by a test, with "quotes"',
        "cache-from": f"type=registry,ref={reg}/{ws.repo}-extcache:none",
        "platforms": "linux/amd64",
    }
    action = ROOT / "ci/github/build/action.yml"
    proc, out, summary = run_action(action, inputs, ws.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out["built"] == "true" and out["imageid"].startswith("sha256:")
    digest = out["digest"]
    meta = json.loads(out["metadata"])
    assert meta["containerimage.digest"] == digest and meta["containerimage.config.digest"] == out["imageid"]
    assert f"{reg}/{ws.repo}:latest" in meta["image.name"] and meta["ml-env.hash"] == out["hash"]
    assert out["tags"].splitlines() == [out["image"], f"{reg}/{ws.repo}:latest", f"{reg}/{ws.repo}-copy:v1"]
    assert "ERROR" not in proc.stdout  # the missing extra cache was left out, not imported
    client = RegistryClient(reg)
    assert client.head_manifest(ws.repo, "latest").digest == digest
    assert client.head_manifest(f"{ws.repo}-copy", "v1").digest == digest
    from ml_env_tasks import engine

    assert engine.current().local_image_id(out["image"]) == out["imageid"]  # what `docker images` calls its ID
    labels = client.image_config(ws.repo, digest)["config"]["Labels"]
    assert labels["team"] == "ml" and labels["org.opencontainers.image.source"] == "https://example.invalid/a,b"
    assert labels["ml-env.hash"] == out["hash"]
    info, body = client.get_manifest(ws.repo, digest)
    doc = json.loads(body)
    if "manifests" in doc:  # an index: the image manifest carries the annotation
        child = next(m for m in doc["manifests"] if (m.get("platform") or {}).get("os") != "unknown")
        doc = json.loads(client.get_manifest(ws.repo, child["digest"])[1])
    assert doc["annotations"]["org.example.note"] == 'built by a test, with "quotes"'

    # labels do not enter the hash: the same environment is reused; given again as they are, they
    # are on it already, and a new tag still lands
    proc2, out2, summary2 = run_action(action, {**inputs, "tags": "v2"}, ws.dir)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert out2["built"] == "false" and out2["digest"] == digest and out2["imageid"] == out["imageid"]
    assert client.head_manifest(ws.repo, "v2").digest == digest
    assert "| tags |" in summary2
    # a label or an annotation the reused image does not carry is refused, not dropped: nothing is written
    for changed, words in (({"labels": "team=other"}, "label team: "), ({"annotations": "org.example.note=x"},
                           "annotation org.example.note: "), ({"labels": "new.key=1"}, "does not carry it")):  # fmt: skip
        p, o, _ = run_action(action, {**inputs, "tags": "v3", **changed}, ws.dir)
        assert p.returncode == 2 and words in p.stdout and "reused, not built" in p.stdout, (changed, p.stdout)
        assert "digest" not in o and client.head_manifest(ws.repo, "v3") is None
    # a label ml-env fills in itself (the OCI title) is the user's to set, not silently replaced
    assert labels["org.opencontainers.image.title"] == "extras"
    # (rebuilt with build-push-action's no-cache: true, which is --upgrade: the hash is there, it builds anyway)
    p, o, _ = run_action(
        action, {**inputs, "labels": "org.opencontainers.image.title=mine", "no-cache": "true"}, ws.dir
    )
    assert p.returncode == 0 and o["built"] == "true", p.stdout
    assert client.image_config(ws.repo, o["digest"])["config"]["Labels"]["org.opencontainers.image.title"] == "mine"

    for bad, exit_code, words in (
        ({"platforms": "linux/amd64,linux/arm64"}, 3, "builder 'default' (driver docker)"),
        ({"builder": "no-such-builder", "force": "true"}, 3, "no-such-builder"),
        ({"labels": "ml-env.hash=forged"}, 2, "ml-env.* keys are set by ml-env"),
        ({"cache-to": "type=ftp,ref=x"}, 2, "cache type 'ftp'"),
        ({"build-args": "A=1"}, 2, "input 'build-args': build arguments change the image but not its content hash"),
        ({"outputs": "type=local,dest=out"}, 2, "input 'outputs': ml-env decides where the image goes"),
        ({"load": "true"}, 2, "input 'load': true with a push"),
        ({"target": "runtime"}, 2, "input 'target': ml-env writes the Dockerfile from the environment file"),
        ({"file": "Dockerfile"}, 2, "input 'file': ml-env writes the Dockerfile from the environment file"),
        ({"no-cache": "true", "locked": "true"}, 2, "--upgrade (the build action's no-cache)"),
    ):
        p, o, _ = run_action(action, {**inputs, **bad}, ws.dir)
        assert p.returncode == exit_code, (bad, p.stdout, p.stderr)
        assert words in p.stdout.replace("%2C", ",").replace("%3A", ":"), (bad, p.stdout)
        assert "Traceback" not in p.stdout + p.stderr and "digest" not in o


def test_build_action_annotates_the_spec_line(ws) -> None:
    f = ws.spec(f'name = "act"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[apt]\npackages = ["Bad Name"]\n')
    inputs = {"spec": str(f), "registry": ws.lab["registry"], "install": "false", "python": sys.executable}
    proc, outputs, _ = run_action(ROOT / "ci/github/build/action.yml", inputs, ws.dir)
    assert proc.returncode == 2
    assert re.search(r"^::error file=[^,]*e?nv\.toml,line=5,title=ml-env%3A SpecError::", proc.stdout, re.M), (
        proc.stdout
    )
    assert "image" not in outputs


def test_train_action_outputs_and_metrics_summary(ws) -> None:
    env = ws.spec(f'name = "acttrain"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n', name="t.toml")
    src = ws.dir / "src"
    src.mkdir()
    (src / "fit.py").write_text(
        "import os, sys, json\n"
        "print('args', sys.argv[1:])\n"
        "open(os.environ['ML_ENV_OUTPUT_DIR'] + '/metrics.json', 'w').write(json.dumps({'rmse': 1.5}))\n"
        "print('ML_ENV_METRIC r2=0.9')\n"
        "sys.exit(int(os.environ.get('FAIL', '0')))\n"
    )
    inputs = {
        "env": str(env),
        "source": str(src),
        "script": "fit.py",
        "args": "--alpha '0.5 0.6'",
        "env-vars": "MODE=ci\n",
        "runs-dir": str(ws.dir / "runs"),
        "registry": ws.lab["registry"],
        "repository": ws.repo,
        "network": ws.lab["build_network"],
        "install": "false",
    }
    action = ROOT / "ci/github/train/action.yml"
    proc, outputs, summary = run_action(action, inputs, ws.dir)
    assert proc.returncode == 0, proc.stderr
    assert outputs["status"] == "completed" and outputs["exit-code"] == "0"
    assert Path(outputs["outputs"]).joinpath("metrics.json").exists()
    assert (ws.dir / "runs" / outputs["run-id"] / "run.json").exists()
    assert "args ['--alpha', '0.5 0.6']" in proc.stdout
    # the run's metrics are plain text in the summary: punctuation escaped, rendered as written
    assert "| rmse | 1\\.5 |" in summary and "| r2 | 0\\.9 |" in summary
    failing, out2, summary2 = run_action(action, {**inputs, "env-vars": "FAIL=5"}, ws.dir)
    assert failing.returncode == 5
    assert out2["status"] == "failed" and "**failed** (exit 5)" in summary2
    assert "::error title=ml-env train::run " in failing.stdout


def test_smoke_test_action_outputs_summary_and_annotations(ws) -> None:
    env = ws.spec(
        f'name = "actserve"\ninference = true\n[base]\nimage = "{ws.lab["base_image_python"]}"\n', name="s.toml"
    )
    app = ws.dir / "app"
    app.mkdir()
    (app / "score.py").write_text(
        "import json\ndef init():\n    pass\ndef run(raw):\n    return {'echo': json.loads(raw)}\n"
    )
    model = ws.dir / "model"
    model.mkdir()
    cases = ws.dir / "cases.jsonl"
    cases.write_text(
        '{"name": "echo", "request": {"a": 1}, "expect_json": {"echo": {"a": 1}}}\n{"name": "wrong", "request": {"a": 1}, "expect_json": {"echo": {"a": 2}}}\n'
    )
    inputs = {
        "env": str(env),
        "entry": str(app / "score.py"),
        "model": str(model),
        "cases": str(cases),
        "repeat": "2",
        "report-dir": str(ws.dir / "reports"),
        "registry": ws.lab["registry"],
        "repository": ws.repo,
        "network": ws.lab["build_network"],
        "ca-bundle": ws.lab.get("ca_bundle", ""),
        "install": "false",
    }
    proc, outputs, summary = run_action(ROOT / "ci/github/smoke-test/action.yml", inputs, ws.dir)
    assert proc.returncode == 1
    assert outputs["passed"] == "1" and outputs["failed"] == "1"
    assert float(outputs["p95-ms"]) >= float(outputs["p50-ms"]) > 0
    assert Path(outputs["report"]).exists() and Path(outputs["junit"]).exists()
    assert "1 passed, 1 failed" in summary and "| ❌ | wrong | 200 |" in summary
    assert re.search(
        rf"^::error file={re.escape(str(cases))},line=2,title=ml-env smoke-test::wrong: \$\.echo\.a: expected 2, got 1",
        proc.stdout,
        re.M,
    ), proc.stdout


def test_promote_action_outputs_and_summary(ws) -> None:
    from ml_env_tasks.registry import RegistryClient

    from .helpers import push_single_image

    digest = push_single_image(RegistryClient(ws.lab["registry"]), ws.repo, "tested", payload=b"promote me")
    inputs = {
        "source": f"{ws.lab['registry']}/{ws.repo}:tested",
        "destination": f"{ws.lab['auth_registry']}/{ws.repo}",
        "tags": "1.4.0, prod",
        "ledger": str(ws.dir / "releases.toml"),
        "install": "false",
    }
    proc, outputs, summary = run_action(ROOT / "ci/github/promote/action.yml", inputs, ws.dir)
    assert proc.returncode == 0, proc.stderr
    assert outputs["digest"] == digest and outputs["no-op"] == "false"
    assert outputs["ref"] == f"{ws.lab['auth_registry']}/{ws.repo}@{digest}"
    assert "### ml-env promote: promoted" in summary and "`prod`" in summary
    assert (ws.dir / "releases.toml").read_text().count("\n[[promotion]]") == 1
    again, outputs2, summary2 = run_action(ROOT / "ci/github/promote/action.yml", inputs, ws.dir)
    assert outputs2["no-op"] == "true" and "already promoted" in summary2


def test_login_action_masks_the_password_and_logs_in(ws, tmp_path: Path) -> None:
    cfg = tmp_path / "docker-config"
    cfg.mkdir()
    inputs = {
        "registry": ws.lab["auth_registry"],
        "username": ws.lab["auth_user"],
        "password": ws.lab["auth_password"],
        "install": "false",
    }
    os.environ["DOCKER_CONFIG"] = str(cfg)
    try:
        proc, _, _ = run_action(ROOT / "ci/github/login/action.yml", inputs, ws.dir)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == f"::add-mask::{ws.lab['auth_password']}"
        assert ws.lab["auth_password"] not in "\n".join(proc.stdout.splitlines()[1:]) + proc.stderr
        assert ws.lab["auth_registry"] in (cfg / "config.json").read_text()
        bad, _, _ = run_action(ROOT / "ci/github/login/action.yml", {**inputs, "password": "wrong-one"}, ws.dir)
        assert (
            bad.returncode == 4
            and "refused the login" in bad.stdout
            and "wrong-one" not in bad.stdout.split("::add-mask::wrong-one")[1]
        )
    finally:
        del os.environ["DOCKER_CONFIG"]


def test_login_action_credentials_end_with_the_job(ws, tmp_path: Path, monkeypatch) -> None:
    """In a job (RUNNER_TEMP, GITHUB_ENV set) the login writes a docker config of the job's own in
    RUNNER_TEMP, which the runner empties when the job ends: the runner user's own config (here
    with a credential store, which would have kept the password) is left as it was, and the job's
    later steps find the login through GITHUB_ENV."""
    from ml_env_tasks.registry import RegistryClient
    from ml_env_tasks.registry.credentials import credentials_for

    own = tmp_path / "runner-docker"
    own.mkdir()
    (own / "config.json").write_text('{"credsStore": "desktop", "auths": {"other.example": {}}}')
    runner_temp, github_env = tmp_path / "runner-temp", tmp_path / "github_env"
    runner_temp.mkdir()
    github_env.write_text("")
    monkeypatch.setenv("DOCKER_CONFIG", str(own))
    monkeypatch.setenv("RUNNER_TEMP", str(runner_temp))
    monkeypatch.setenv("GITHUB_ENV", str(github_env))
    inputs = {"registry": ws.lab["auth_registry"], "username": ws.lab["auth_user"],
              "password": ws.lab["auth_password"], "install": "false"}  # fmt: skip
    proc, _, _ = run_action(ROOT / "ci/github/login/action.yml", inputs, ws.dir)
    assert proc.returncode == 0, proc.stderr
    assert (own / "config.json").read_text() == '{"credsStore": "desktop", "auths": {"other.example": {}}}'
    [line] = github_env.read_text().splitlines()
    job_config = Path(line.removeprefix("DOCKER_CONFIG="))
    assert (
        job_config.is_relative_to(runner_temp) and ws.lab["auth_registry"] in (job_config / "config.json").read_text()
    )
    assert oct((job_config / "config.json").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("DOCKER_CONFIG", str(job_config))  # a later step of the job
    assert credentials_for(ws.lab["auth_registry"]) == (ws.lab["auth_user"], ws.lab["auth_password"])
    assert RegistryClient(ws.lab["auth_registry"]).head_manifest("nothing/here", "x") is None  # authenticated
    import shutil

    shutil.rmtree(runner_temp)  # the runner, at the end of the job
    monkeypatch.setenv("DOCKER_CONFIG", str(own))
    assert ws.lab["auth_password"] not in (own / "config.json").read_text()


def test_sign_action_signs_by_digest_with_a_key_from_a_secret(ws, cosign_keys, monkeypatch) -> None:
    """The sign action with the key in a variable, as a workflow passes a secret: the image by
    digest signed, outputs and summary, and neither the key nor its password in any of it."""
    from ml_env_tasks.registry import RegistryClient

    from .helpers import push_single_image

    key = cosign_keys("action")
    digest = push_single_image(RegistryClient(ws.lab["registry"]), ws.repo, "tested", payload=b"sign me")
    monkeypatch.setenv("COSIGN_PRIVATE_KEY", Path(key["key"]).read_text())
    monkeypatch.setenv("COSIGN_PASSWORD", key["password"])
    inputs = {"image": f"{ws.lab['registry']}/{ws.repo}:tested", "sign-key": "env://COSIGN_PRIVATE_KEY",
              "install": "false"}  # fmt: skip
    proc, outputs, summary = run_action(ROOT / "ci/github/sign/action.yml", inputs, ws.dir)
    assert proc.returncode == 0, proc.stderr
    assert outputs["ref"] == f"{ws.lab['registry']}/{ws.repo}@{digest}" and outputs["fingerprint"].startswith("sha256:")
    assert "### ml-env sign" in summary and "env://COSIGN_PRIVATE_KEY" in summary
    v = subprocess.run(["cosign", "verify", "--key", str(key["pub"]), "--insecure-ignore-tlog", "--allow-http-registry",
                        outputs["ref"]], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert v.returncode == 0, v.stderr
    said = proc.stdout + proc.stderr + summary + "".join(outputs.values())
    secret_lines = Path(key["key"]).read_text().splitlines()[1:-1]
    assert key["password"] not in said and not [ln for ln in secret_lines if ln in said]


def test_build_action_push_false_builds_and_checks_and_pushes_nothing(ws) -> None:
    """A pull request's build: `push: false` builds, locks and checks the image and leaves it in the
    engine under its hash tag; nothing reaches the registry (image, tags, cache). An image the
    registry already has is reused as it is, nothing built."""
    from ml_env_tasks import engine
    from ml_env_tasks.registry import RegistryClient, parse_ref

    reg = ws.lab["registry"]
    ws.extra_repos.append((reg, f"{ws.repo}-cache"))
    f = ws.spec(f'name = "pr"\n[base]\nimage = "{ws.lab["base_image_tiny"]}"\n[env]\nPR = "{ws.repo}"\n')
    inputs = {
        "spec": str(f), "registry": reg, "repository": ws.repo, "network": ws.lab["build_network"],
        "install": "false", "push": "false", "tags": "pr-1", "cache": "registry",
        "cache-ref": f"{reg}/{ws.repo}-cache:deps",
    }  # fmt: skip
    action = ROOT / "ci/github/build/action.yml"
    client, eng = RegistryClient(reg), engine.current()
    proc, out, summary = run_action(action, inputs, ws.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out["built"] == "true" and out["image"] == f"{reg}/{ws.repo}:{out['hash']}"
    assert out["ref"] == out["image"]  # no registry digest: the hash tag in the engine
    assert "not pushed" in summary and "the registry cache is read, not written" in proc.stdout
    assert client.head_manifest(ws.repo, out["hash"]) is None and client.head_manifest(ws.repo, "pr-1") is None
    cache = parse_ref(f"{reg}/{ws.repo}-cache:deps")
    assert client.head_manifest(cache.repository, "deps") is None  # no cache export either
    assert eng.local_image_id(out["image"]) and eng.local_image_id(f"{reg}/{ws.repo}:pr-1")
    assert (ws.dir / "env.lock").exists()  # built, locked and checked all the same
    # the same environment once pushed (main): a pull request's build reuses it, builds nothing
    pushed, out2, _ = run_action(action, {**inputs, "push": "", "tags": ""}, ws.dir)
    assert pushed.returncode == 0 and out2["built"] == "true", pushed.stdout + pushed.stderr
    assert client.head_manifest(ws.repo, out["hash"]).digest == out2["digest"]
    again, out3, _ = run_action(action, {**inputs, "tags": "pr-2"}, ws.dir)
    assert again.returncode == 0 and out3["built"] == "false" and out3["digest"] == out2["digest"], again.stdout
    assert client.head_manifest(ws.repo, "pr-2") is None and "not tagged" in again.stdout
    bad, _, _ = run_action(action, {**inputs, "push": "nope"}, ws.dir)
    assert bad.returncode == 2 and "input 'push' must be true or false" in bad.stdout + bad.stderr
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "build", str(f), *ws.cli_args(), "--no-push",
                        "--cache-to", f"type=registry,ref={reg}/{ws.repo}-cache:x"], capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 2 and "--no-push" in p.stderr and "Traceback" not in p.stderr
