"""The README's worked examples, run verbatim against the lab; and the release example."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]


def blocks() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return {
        m.group(1): m.group(2) for m in re.finditer(r"<!-- readme-test: ([\w-]+) -->\n```\w*\n(.*?)```", text, re.S)
    }


@pytest.fixture
def checkout(tmp_path: Path, lab: dict) -> tuple[Path, dict]:
    """A copy of the project's environments and examples, and the environment a user has: no
    ML_ENV_* variables (the lab's build settings come from the machine's config file)."""
    for d in ("envs", "examples"):
        shutil.copytree(ROOT / d, tmp_path / d, symlinks=True, ignore=shutil.ignore_patterns("*.lock"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ML_ENV_")}
    return tmp_path, env


def run_lines(block: str, cwd: Path, env: dict) -> list[subprocess.CompletedProcess]:
    out = []
    for line in block.strip().splitlines():
        p = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 0, f"{line}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        out.append(p)
    return out


def test_the_blocks_are_there() -> None:
    assert set(blocks()) == {
        "cli", "noxfile", "nox", "gha",
        "azure-environments", "azure-train-custom-image", "azure-deploy-custom-image",
    }  # fmt: skip


def test_cli_example(checkout) -> None:
    cwd, env = checkout
    build, train, runs, explain = run_lines(blocks()["cli"], cwd, env)
    assert json.loads(build.stdout)["image"].startswith("localhost:5000/ml-envs/sklearn:")
    assert "completed" in train.stdout and "completed" in runs.stdout
    assert "inference" in explain.stdout


def test_nox_example(checkout) -> None:
    cwd, env = checkout
    (cwd / "noxfile.py").write_text(blocks()["noxfile"])
    listing, hashed, matrix = run_lines(blocks()["nox"], cwd, env)
    assert "ml-env_build(env='sklearn')" in listing.stdout and "ml-train" not in listing.stdout
    assert re.fullmatch(r"[0-9a-f]{64}", hashed.stdout.strip())
    assert [m["env"] for m in json.loads(matrix.stdout.strip().splitlines()[-1])["include"]] == [
        "sklearn",
        "sklearn-inference",
    ]


# The Azure walkthroughs push what the CLI example pushes, into localhost:5000: images tagged by
# their content hash (and myimage:v1, the same digest each time), a model whose same bytes are the
# same version, packages keyed by their parts. A re-run reuses every one of them (that is what
# keeps these tests fast on a warm lab), so nothing is deleted afterwards; each run's versions file
# is its own checkout's, so the versions it checks are always that run's 1 and 2.


def _run_record(cwd: Path, train: subprocess.CompletedProcess) -> dict:
    run_id = re.search(r"^run (\S+): completed", train.stdout, re.M)
    assert run_id, train.stdout[-2000:]
    return json.loads((cwd / "runs" / run_id.group(1) / "run.json").read_text())


def _entry(cwd: Path, ref: str):
    from ml_env_tasks.catalog.versions import Versions

    return Versions(cwd / "envs" / "versions.toml").get(ref)


def _config(image: str) -> dict:
    from ml_env_tasks.registry import RegistryClient, parse_ref

    r = parse_ref(image)
    config = RegistryClient(r.host).image_config(r.repository, r.reference)
    assert config is not None, image
    return config


def test_azure_environments_walkthrough(checkout) -> None:
    """Azure's "reuse environments" guide: curated ones, conda and pip files imported, a package
    and a private wheel added, two registered versions listed, got and compared; a run in the
    second by NAME:VERSION alone, on its registered digest; the Dockerfile it builds."""
    cwd, env = checkout
    out = run_lines(blocks()["azure-environments"], cwd, env)
    listed, curated, conda, pip, reg1, _, _, _, reg2, listed_all, got, diff, train, _, plan = out
    assert "curated/sklearn  (ml-env-sklearn:1)" in listed.stdout and "FROM python:3.11-slim" in curated.stdout
    from ml_env_tasks import spec

    assert spec.load(cwd / "envs/myenv-conda.toml").conda_file is not None
    assert spec.load(cwd / "envs/myenv.toml").name == "myenv"  # the name -o gives, as from_pip_requirements(name=)
    one, two = _entry(cwd, "myenv:1"), _entry(cwd, "myenv:2")
    assert "myenv:1 registered" in reg1.stdout and "myenv:2 registered" in reg2.stdout and one.hash != two.hash
    assert "kept 1 wheel(s) in the registry" in reg2.stderr and set(two.wheels) == {"mylib-0.1-py3-none-any.whl"}
    assert all(f"myenv:{v} " in listed_all.stdout for v in (1, 2))
    assert got.stdout.startswith("# Imported") and "packages" not in got.stdout and "wheels" not in got.stdout
    assert "python.packages" in diff.stdout and "python.wheels" in diff.stdout
    # what pip installed in myenv:2's image (its lock label): the package and the wheel
    lock = _config(f"localhost:5000/ml-envs/myenv@{two.digest}")["config"]["Labels"]["ml-env.lock"].splitlines()
    assert "tomli==2.0.2" in lock and "mylib==0.1" in lock
    # the run: myenv:2's registered image by digest, nothing built, no --registry
    record = _run_record(cwd, train)
    assert record["status"] == "completed" and record["environment"]["registered"] == "myenv:2"
    assert record["environment"]["image"] == f"localhost:5000/ml-envs/myenv@{two.digest}"
    assert "building" not in train.stderr and "its registered image" in train.stderr
    # the downloaded version plans to the registered hash, its Dockerfile installing the wheel
    assert f"# hash: {two.hash}" in plan.stdout and "ml-env/wheels/mylib-0.1-py3-none-any.whl" in plan.stdout


def test_azure_train_custom_image_walkthrough(checkout) -> None:
    """Azure's "train with a custom Docker image" guide: the custom image built from a Dockerfile,
    a run in it by reference (its own Python, nothing installed), then by its registered
    NAME:VERSION alone: the same digest, recorded as that version."""
    cwd, env = checkout
    build, by_ref, reg, by_name, runs = run_lines(blocks()["azure-train-custom-image"], cwd, env)
    assert "also localhost:5000/ml-envs/myimage:v1" in build.stdout
    entry = _entry(cwd, "myimage:1")
    assert "myimage:1 registered" in reg.stdout and entry.registry == "localhost:5000"
    first, second = _run_record(cwd, by_ref), _run_record(cwd, by_name)
    assert first["experiment"] == second["experiment"] == "custom-image"
    assert first["status"] == second["status"] == "completed"
    assert first["environment"]["digest"] == second["environment"]["digest"] == entry.digest
    assert first["environment"]["registered"] is None and second["environment"]["registered"] == "myimage:1"
    assert "building" not in by_name.stderr and "python3 train.py" in by_name.stderr  # the image's own Python
    assert sum(r in runs.stdout for r in (first["run_id"], second["run_id"])) == 2
    # the image is the Dockerfile's: its step is in the image's history
    history = _config(f"localhost:5000/ml-envs/myimage@{entry.digest}")["history"]
    assert any("Hello from custom container!" in h.get("created_by", "") for h in history)


def test_azure_deploy_custom_image_walkthrough(checkout) -> None:
    """Azure's "deploy with a custom Docker base image" guide: the base image built and tagged,
    a model trained and registered, an inference environment on that base registered, then
    smoke-tested and packaged by NAME:VERSION alone (the package goes to that version's registry)."""
    cwd, env = checkout
    build, train, reg, smoke, package = run_lines(blocks()["azure-deploy-custom-image"], cwd, env)
    assert "also localhost:5000/ml-envs/myimage:v1" in build.stdout
    model = re.search(r"^model localhost:5000/models/mymodel:(\d+)@(sha256:\w+)", train.stdout, re.M)
    assert model, train.stdout[-2000:]
    entry = _entry(cwd, "myimage-deploy:1")
    assert "myimage-deploy:1 registered" in reg.stdout
    pinned = f"localhost:5000/ml-envs/myimage-deploy@{entry.digest}"
    # the inference environment is built FROM the custom image: its layers, then the scoring server's
    base = _config("localhost:5000/ml-envs/myimage:v1")["rootfs"]["diff_ids"]
    deploy = _config(pinned)["rootfs"]["diff_ids"]
    assert deploy[: len(base)] == base and len(deploy) > len(base)
    # smoke-tested: the registered image by digest, nothing built, every case passed
    assert "3 passed, 0 failed" in smoke.stdout
    assert f"environment myimage-deploy:1: its registered image {pinned}" in smoke.stderr
    assert "building" not in smoke.stderr
    # packaged without --registry: into the registry the versions file names
    got = json.loads(package.stdout)
    assert got["environment"] == pinned and got["model"] == f"mymodel:{model.group(1)}"
    assert got["ref"].startswith("localhost:5000/ml-packages/myimage-deploy@sha256:")
    assert "package: into localhost:5000, where myimage-deploy:1 is" in package.stderr


def test_github_actions_example_uses_real_inputs() -> None:
    doc = yaml.safe_load(blocks()["gha"])
    steps = doc["jobs"]["ml"]["steps"]
    ids = set()
    for step in steps:
        uses = step["uses"]
        if uses.startswith("./"):
            action = yaml.safe_load((ROOT / uses[2:] / "action.yml").read_text())
            assert set(step.get("with") or {}) <= set(action["inputs"]), uses
            for ref in re.findall(r"steps\.([\w-]+)\.outputs\.([\w-]+)", json.dumps(step)):
                assert ref[0] in ids
        if "id" in step:
            ids.add(step["id"])


def test_release_example(checkout, tmp_path: Path, lab: dict, cosign_keys) -> None:
    """The release example, twice in a row: the second run reuses everything, promotes nothing
    new, and the ledger (kept in the registry by default) still has its two records (the version
    tag, then prod), each naming the key that signed the release there. A version tag that names
    another image is never moved."""
    cwd, env = checkout
    shutil.copy(ROOT / "examples/release/release.sh", cwd / "release.sh")
    prod = f"127.0.0.1:5001/test/release-{os.getpid()}"
    key = cosign_keys("build")
    env = {**env, "REGISTRY": lab["registry"], "PROD": prod, "VERSION": "9.9.9", "SIGN_KEY": key["key"],
           "COSIGN_PASSWORD": key["password"]}  # fmt: skip
    env.pop("LEDGER", None)
    try:
        lasts = []
        for _ in range(2):
            p = subprocess.run(["bash", "release.sh"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
            assert p.returncode == 0, p.stderr[-3000:]
            assert "3 passed, 0 failed" in p.stdout
            lasts.append(p.stdout.strip().splitlines()[-1])
            assert lasts[-1].startswith("sklearn-inference prod: sha256:") and "since" in lasts[-1]
        assert lasts[0] == lasts[1]  # the same digest, since the same first promotion
        assert "already there, nothing changed" in p.stdout
        from ml_env_tasks.release.ledger_oci import open_ledger

        with open_ledger(f"oci://{prod}:ml-env-ledger") as ledger:
            entries = ledger.entries()
        digest = lasts[0].split()[2]
        assert [e.tags for e in entries] == [("9.9.9",), ("prod",)] and {e.digest for e in entries} == {digest}
        assert len({e.signed_by for e in entries}) == 1 and entries[0].signed_by.startswith("sha256:")
        v = subprocess.run(["cosign", "verify", "--key", str(key["pub"]), "--insecure-ignore-tlog",
                            "--allow-http-registry", f"{prod}:prod"], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert v.returncode == 0, v.stderr
        assert not (cwd / "releases.toml").exists()

        # the version tag never moves: 9.9.9 given to another image (elsewhere) is refused, exit 5
        from ml_env_tasks.registry import RegistryClient

        from .helpers import push_single_image

        auth = RegistryClient("127.0.0.1:5001", credentials=(lab["auth_user"], lab["auth_password"]))
        other = push_single_image(auth, prod.split("/", 1)[1], "9.9.9", payload=b"another release")
        p = subprocess.run(["bash", "release.sh"], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert p.returncode == 5 and "9.9.9" in p.stderr, p.stderr[-3000:]
        assert auth.head_manifest(prod.split("/", 1)[1], "9.9.9").digest == other
    finally:
        from .helpers import delete_repository

        delete_repository(
            "127.0.0.1:5001",
            prod.split("/", 1)[1],
            (lab["auth_user"], lab["auth_password"]),
        )
