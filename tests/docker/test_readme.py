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
    assert set(blocks()) == {"cli", "noxfile", "nox", "gha"}


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
