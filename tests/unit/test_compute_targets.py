"""Compute targets from the config files, and the batch script a Slurm run is given: pure logic,
no cluster (the real one: tests/docker/test_slurm.py)."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from ml_env_tasks.engine.resources import Resources
from ml_env_tasks.errors import UsageError
from ml_env_tasks.runs.batch import Layout, render
from ml_env_tasks.runs.runner import Job
from ml_env_tasks.runs.snapshot import Snapshot
from ml_env_tasks.settings.compute import targets
from ml_env_tasks.settings.files import ConfigFile, Layers


def layers(project: dict | None = None, user: dict | None = None) -> Layers:
    return Layers(ConfigFile(Path("/p/pyproject.toml"), {"compute": project} if project else {}),
                  ConfigFile(Path("/u/config.toml"), {"compute": user} if user else {}), ConfigFile(None))  # fmt: skip


def test_a_target_is_merged_from_the_project_and_the_user() -> None:
    found = targets(layers({"cluster": {"type": "slurm", "partition": "gpu", "nodes": 2}},
                           {"cluster": {"shared": "/scratch/ml", "partition": "cpu"}}))  # fmt: skip
    t = found["cluster"]
    assert t.type == "slurm" and t.get("partition") == "gpu" and t.get("shared") == "/scratch/ml"  # project wins
    assert t.where["shared"] == "/u/config.toml" and t.where["partition"] == "/p/pyproject.toml"


@pytest.mark.parametrize(
    ("project", "user", "why"),
    [
        ({"c": {"type": "slurm", "shared": "/home/runner"}}, None, "cannot set this: it chooses a host folder"),
        ({"c": {"type": "docker", "context": "prod"}}, None, "chooses the engine code and secrets run on"),
        ({"c": {"type": "kubernetes", "emit": "/etc/cron.d/x"}}, None, "chooses a host file written"),
        (None, {"c": {"type": "lsf"}}, "type must be one of docker, slurm, kubernetes"),
        (None, {"c": {"type": "slurm", "sbatch_args": "--output=/etc/x"}}, "unknown key for a slurm target"),
        (None, {"c": {"type": "slurm", "nodes": "2"}}, "must be a int"),
        (None, {"c": {"type": "slurm", "nodes": 0}}, "nodes must be between 1 and 64"),
        (
            None,
            {"c": {"type": "slurm", "launcher": "singularity"}},
            "launcher must be one of docker, podman, apptainer",
        ),
        (None, {"c": {"type": "slurm", "partition": "a b"}}, "must be a Slurm name"),
        (None, {"c": {"type": "slurm", "shared": "rel/dir"}}, "must be an absolute path"),
        (None, {"c d": {"type": "slurm"}}, "must be a table named with letters"),
    ],
)
def test_what_a_target_may_not_say_is_one_line_naming_the_key(project, user, why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        targets(layers(project, user))
    assert e.value.key and e.value.key.startswith("compute.")


def _job(tmp_path: Path, **kw) -> Job:
    base = dict(run_id="fit_20261203T000000_abcd1234", image="127.0.0.1:5000/x/fit@sha256:" + "a" * 64,
                command=["python3", "fit.py", "--note", "$(touch /tmp/pwned) `id`"],
                snapshot=Snapshot(tmp_path, (), None), inputs={"data": tmp_path}, outputs=tmp_path,
                env_vars={"MODE": "a'b; rm -rf /"}, secret_names=(), user="1000:1000",
                resources=Resources(cpus=1.5, memory=2 * 2**30, gpus="2"), timeout=90.0)  # fmt: skip
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_the_batch_script_quotes_every_value_and_asks_slurm_for_the_resources(tmp_path: Path) -> None:
    layout = Layout(Path("/shared/ml-env-runs/run"))
    batch, launch = render(_job(tmp_path), {"partition": "gpu", "account": "team-a"}, 2, layout)
    assert "#SBATCH --nodes=2" in batch and "#SBATCH --partition=gpu" in batch and "#SBATCH --account=team-a" in batch
    assert "#SBATCH --cpus-per-task=2" in batch and "#SBATCH --mem=2048M" in batch and "#SBATCH --gres=gpu:2" in batch
    assert "#SBATCH --time=3" in batch  # 90 s + the 60 s grace, in minutes
    assert "timeout" not in batch and "sleep 90" in launch and "exit 124" in launch
    # no value reaches the shell unquoted: the launch script, parsed, holds them as single words
    line = next(x for x in launch.splitlines() if x.startswith("docker run"))
    words = shlex.split(line.removesuffix(" &"))
    assert "$(touch /tmp/pwned) `id`" in words and "MODE=a'b; rm -rf /" in words
    assert words[words.index("--user") + 1] == "1000:1000" and "--cap-drop" in words
    assert subprocess.run(["bash", "-n"], input=launch, text=True).returncode == 0
    assert subprocess.run(["bash", "-n"], input=batch, text=True).returncode == 0


def test_podman_is_told_a_loopback_registry_speaks_plain_http(tmp_path: Path) -> None:
    _, launch = render(_job(tmp_path, timeout=None), {"launcher": "podman"}, 1, Layout(Path("/s/r")))
    assert launch.count("podman run") == 1 and "--tls-verify=false" in launch and "sleep" not in launch
    _, launch = render(_job(tmp_path, image="registry.example.com/x@sha256:" + "b" * 64), {"launcher": "podman"}, 1,
                       Layout(Path("/s/r")))  # fmt: skip
    assert "--tls-verify" not in launch


def test_apptainer_and_enroot_are_rendered_with_the_same_folders_and_variables(tmp_path: Path) -> None:
    """Rendered only (neither can be installed here): the scripts parse, bind the same folders,
    pass the run's variables and torchrun's, and stop at the timeout with 124."""
    layout = Layout(Path("/shared/r"))
    _, launch = render(_job(tmp_path), {"launcher": "apptainer"}, 2, layout)
    line = next(x for x in launch.splitlines() if x.startswith("apptainer exec"))
    words = shlex.split(line.removesuffix(" &"))
    assert "docker://127.0.0.1:5000/x/fit@sha256:" + "a" * 64 in words and "--nohttps" in words and "--nv" in words
    assert "/shared/r/code:/mnt/code:rw" in words and "/shared/r/outputs:/mnt/code/outputs:rw" in words
    assert "MODE=a'b; rm -rf /" in words and "--cleanenv" in words and "exit 124" in launch
    batch, _ = render(_job(tmp_path), {"launcher": "enroot"}, 2, layout)
    srun = next(x for x in batch.splitlines() if "srun" in x)
    assert "--container-image='127.0.0.1:5000#x/fit@sha256:" in srun and "timeout --kill-after=10 90" in srun
    assert "--container-mounts=" in srun and "/shared/r/inputs/data:/mnt/inputs/data:ro" in srun
    assert "export MODE='a'\"'\"'b; rm -rf /'" in batch  # quoted for bash
    for text in (launch, batch):
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
