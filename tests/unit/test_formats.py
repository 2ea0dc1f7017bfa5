"""Azure ML formats: golden imports, unsupported fields named, passwords never written, round trips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_env_tasks import SpecError, spec
from ml_env_tasks.errors import MlEnvError
from ml_env_tasks.formats.azure import export_v1, export_v2, import_source
from ml_env_tasks.spec.hashing import env_hash, explain

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "azure"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    shutil.copytree(FIX, tmp_path / "azure")
    (tmp_path / "envs").mkdir()
    return tmp_path


def write(imp, path: Path) -> spec.Environment:
    imp.write(path)
    return spec.load(path)


def test_v1_directory_golden(work: Path) -> None:
    imp = import_source(work / "azure/v1-sklearn")
    text = imp.text()
    assert "s3cr3t-acr-password" not in text
    env = write(imp, work / "envs" / "team.toml")
    assert env.name == "team-sklearn-env" and env.version == "3" and env.inference
    assert env.base.image == "myacr.azurecr.io/azureml/openmpi4.1.0-ubuntu20.04:20230509.v1"
    assert env.base.registry.address == "myacr.azurecr.io" and env.base.registry.username == "puller"
    assert env.base.registry.password_env == "MYACR_AZURECR_IO_PASSWORD"
    assert env.variables == {"EXAMPLE_ENV_VAR": "EXAMPLE_VALUE", "OMP_NUM_THREADS": "1"}
    assert env.shm_size == "2g"
    assert env.conda_python == "3.11.2"
    assert set(env.conda_pip) == {"numpy==1.26.4", "scikit-learn==1.5.2", "azureml-defaults", "joblib==1.4.2"}
    assert any("numpy=1.26.4 -> numpy==1.26.4" in w for w in env.warnings)
    w = "\n".join(imp.warnings)
    assert "name 'Team-SKLearn-Env' became 'team-sklearn-env'" in w
    assert "docker.arguments ['--ipc=host']: not imported" in w
    assert "docker.enabled = false: not imported" in w
    assert "platform" not in w  # Linux on amd64: what is built here anyway
    assert "MYACR_AZURECR_IO_PASSWORD" in w and "s3cr3t" not in w
    assert "azureml-defaults" in w
    assert text.startswith("# Imported from the Azure ML v1 environment directory")


def test_v2_image_golden(work: Path) -> None:
    imp = import_source(work / "azure/v2-image/env.yml")
    env = write(imp, work / "envs" / "v2.toml")
    assert env.name == "docker-image-plus-conda-example" and env.version == "2" and env.inference
    assert env.description.startswith("Environment created")
    assert env.labels == {"com.azure.ml.tag.team": "vision"}
    assert set(env.conda_pip) == {"numpy==1.26.4", "pandas==2.2.3", "tomli==2.0.2"}
    assert any("scoring_route" in w and "/predict" in w for w in imp.warnings)


def test_v2_build_context(work: Path) -> None:
    imp = import_source(work / "azure/v2-build/env.yml")
    env = write(imp, work / "envs" / "ctx.toml")
    assert env.base.dockerfile is not None and "print(1)" in env.base.dockerfile.text


def test_conda_and_requirements_files(work: Path) -> None:
    env = write(import_source(work / "azure/v2-image/conda-yamls/pydata.yml", stem="c"), work / "envs" / "c.toml")
    assert env.name == "pydata-example" and "pandas==2.2.3" in env.conda_pip
    req = work / "team-requirements.txt"
    req.write_text("six==1.16.0\n-r other.txt\n--extra-index-url https://x/simple\n")
    imp = import_source(req)
    env = write(imp, work / "envs" / "r.toml")
    assert env.requirements[0].read() == req.read_bytes()
    assert any("-r other.txt" in w for w in imp.warnings) and any("extra-index-url" in w for w in imp.warnings)


def test_windows_and_missing_fields_are_errors(work: Path) -> None:
    f = work / "win.yml"
    f.write_text("name: w\nimage: mcr.microsoft.com/windows\nos_type: windows\n")
    with pytest.raises(SpecError, match="only linux"):
        import_source(f)
    (work / "azure/v1-sklearn/azureml_environment.json").write_text(json.dumps({"name": "x", "docker": {}}))
    with pytest.raises(SpecError, match="baseImage"):
        import_source(work / "azure/v1-sklearn")


def test_round_trip_v1_and_v2(work: Path) -> None:
    a = write(import_source(work / "azure/v1-sklearn", stem="a"), work / "envs" / "a.toml")
    export_v1(a, work / "out-v1")
    assert json.loads((work / "out-v1/azureml_environment.json").read_text())["inferencingStackVersion"] == "latest"
    b = write(import_source(work / "out-v1", stem="b"), work / "envs" / "b.toml")
    assert explain(a, b) == [] and env_hash(a) == env_hash(b)
    (work / "out").mkdir()
    warnings = export_v2(b, work / "out" / "env.yml")
    assert any(w.startswith("env: not exported: a v2 environment has no environment variables") for w in warnings)
    doc = yaml.safe_load((work / "out/env.yml").read_text())
    assert doc["image"] == a.base.image and doc["conda_file"] == "env.conda.yml"
    c = write(import_source(work / "out/env.yml", stem="c"), work / "envs" / "c.toml")
    # v2 environments carry no env vars and no registry credentials; everything else comes back
    assert {d.field for d in explain(a, c)} == {"env.EXAMPLE_ENV_VAR", "env.OMP_NUM_THREADS", "base.registry"}
    assert c.conda_pip == a.conda_pip and c.inference


def test_cli_import_to_stdout_and_file(work: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "import", str(work / "azure/v1-sklearn")],
                       capture_output=True, text=True, cwd=work)  # fmt: skip
    assert p.returncode == 0 and p.stdout.startswith("# Imported") and "warning: docker.arguments" in p.stderr
    # the conda file the printed environment names cannot travel on stdout: said, and not written anywhere
    assert "conda_file = " in p.stdout and "which stdout cannot carry: use -o FILE" in p.stderr
    assert not list(work.glob("*.conda.yml"))
    out = work / "envs" / "team.toml"
    p = subprocess.run([sys.executable, "-m", "ml_env_tasks", "import", str(work / "azure/v1-sklearn"), "-o", str(out)],
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 0 and spec.load(out).name == "team-sklearn-env"
    again = subprocess.run([sys.executable, "-m", "ml_env_tasks", "import", str(work / "azure/v1-sklearn"), "-o", str(out)],
                           capture_output=True, text=True)  # fmt: skip
    assert again.returncode == 2 and "not overwriting" in again.stderr


# --- v2 command jobs ----------------------------------------------------------------------


def job(work: Path, monkeypatch: pytest.MonkeyPatch, **changes):
    """The fixture job with some keys changed (None removes one), imported from its folder."""
    d = work / "azure" / "v2-command-job"
    data = yaml.safe_load((d / "job.yml").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    (d / "job.yml").write_text(yaml.safe_dump(data))
    (work / ".git").mkdir(exist_ok=True)  # the project the job's paths must stay in
    monkeypatch.chdir(d)
    return import_source(Path("job.yml"), stem="job-env")


def test_a_distributed_job_maps_onto_a_compute_target(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """compute, resources.instance_count and a PyTorch distribution: a declared Slurm target's
    nodes; a target not declared here stays out of the command, which must run as printed."""
    cfg = work / "user.toml"
    cfg.write_text('[compute.gpu-cluster]\ntype = "slurm"\nshared = "/tmp"\n')
    monkeypatch.setenv("ML_ENV_CONFIG", str(cfg))
    imp = job(work, monkeypatch, compute="azureml:gpu-cluster", resources={"instance_count": 2},
              distribution={"type": "pytorch", "process_count_per_instance": 4})  # fmt: skip
    argv = imp.argv(Path("job-env.toml"))
    assert argv[argv.index("--compute") : argv.index("--compute") + 4] == ["--compute", "gpu-cluster", "--nodes", "2"]
    assert any(w.startswith("distribution.process_count_per_instance 4: not mapped") for w in imp.warnings), (
        imp.warnings
    )
    mpi = job(work, monkeypatch, distribution={"type": "mpi"})
    assert any(w.startswith("distribution.type mpi: not mapped") for w in mpi.warnings), mpi.warnings
    alone = job(work, monkeypatch, compute="azureml:elsewhere", resources={"instance_count": 3})
    assert "--compute" not in alone.argv(Path("e.toml")) and "--nodes" not in alone.argv(Path("e.toml"))
    assert any(w.startswith("compute: elsewhere: no [compute.elsewhere] is declared here") for w in alone.warnings)
    assert any(w.startswith("resources.instance_count 3: one node") for w in alone.warnings)


def test_command_job_becomes_a_train_invocation(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imp = job(work, monkeypatch)
    assert imp.argv(Path("job-env.toml")) == [
        "train", "--env", "job-env.toml", "--source", "src", "--script", "train.py",
        "--input", "training_data=data", "--env-var", "MODE=ci", "--experiment", "digits", "--timeout", "600",
        "--", "--data", "${{inputs.training_data}}", "--alpha", "0.5", "--model-dir", "${{outputs.model}}",
        "--note", "two words",
    ]  # fmt: skip
    assert (
        "compute: cpu-cluster: no [compute.cpu-cluster] is declared here (ml-env compute list): the run goes to the "
        "command's engine; declare it to send the run there" in imp.warnings
    )
    assert any("display_name" in w for w in imp.warnings)
    # the inline environment went through the environment importer and loads
    imp.environment.write(Path("job-env.toml"))
    assert spec.load(Path("job-env.toml")).base.image == "127.0.0.1:5000/base/debian-python:bookworm"
    with pytest.raises(MlEnvError, match="inline: give -o"):
        imp.argv()


def test_command_job_with_a_registered_environment(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    imp = job(work, monkeypatch, environment="azureml:Team-Env:3")
    assert imp.argv()[:3] == ["train", "--env", "team-env:3"] and imp.environment is None
    assert any("'Team-Env' became 'team-env'" in w for w in imp.warnings)


def test_the_printed_command_reads_the_versions_file_import_read(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registered environment the versions file does not have is said at import time; a versions
    file named with --versions is named in the printed command, which reads the default one otherwise."""
    import shlex

    from ml_env_tasks.fronts.cli import run

    job(work, monkeypatch, environment="azureml:team-env:3")
    assert run(["import", "job.yml"]) == 0
    out, err = capsys.readouterr()
    assert shlex.split(out)[:4] == ["ml-env", "train", "--env", "team-env:3"] and "--versions" not in out
    assert "team-env:3 is not registered in envs/versions.toml" in err
    other = work / "other.toml"
    other.write_text(
        '[[environment]]\nname = "team-env"\nversion = 3\nhash = "' + "a" * 64 + '"\ndigest = "sha256:' + "b" * 64
        + '"\nimage = "127.0.0.1:5000/ml-envs/team-env:' + "a" * 64 + '"\nregistry = "127.0.0.1:5000"\n'
        'registered = "2024-01-01T00:00:00+00:00"\nspec = "name = \'team-env\'"\n'
    )  # fmt: skip
    assert run(["import", "job.yml", "--versions", str(other)]) == 0
    out, err = capsys.readouterr()
    assert shlex.split(out)[4:6] == ["--versions", str(other)] and "not registered" not in err


@pytest.mark.parametrize(
    "changes,key,msg",
    [
        ({"inputs": {"training_data": {"type": "uri_folder", "path": "azureml://datastores/blob/paths/d/"}}},
         "inputs.training_data.path", "cloud input"),
        ({"inputs": {"training_data": {"type": "uri_file", "path": "data"}}}, "inputs.training_data.path", "name a file"),
        ({"inputs": {"training_data": {"type": "mltable", "path": "data"}}}, "inputs.training_data.type", "only uri_"),
        ({"inputs": {"training_data": {"path": "/etc"}}}, "inputs.training_data.path", "outside the project"),
        ({"command": "bash run.sh"}, "command", "only `python SCRIPT"),
        ({"command": "python -m pkg.train"}, "command", "only `python SCRIPT"),
        ({"command": "python train.py && rm -rf /"}, "command", "shell syntax"),
        ({"command": "python train.py --x $(id)"}, "command", "shell syntax"),
        ({"command": "python train.py '--x"}, "command", "cannot be split"),
        ({"command": "python ../train.py"}, "command", "relative path inside the code folder"),
        ({"command": "python nope.py"}, "command", "not found"),
        ({"command": "python train.py --d ${{inputs.nope}}"}, "command", r"\$\{\{inputs.nope\}\} names no declared input"),
        ({"command": "python train.py --m ${{outputs.other}}"}, "command", "names no declared output"),
        ({"command": "python train.py ${{parent.inputs.x}}"}, "command", "not inputs.NAME or outputs.NAME"),
        ({"environment": "azureml:AzureML-sklearn@latest"}, "environment", "only azureml:NAME:VERSION"),
        ({"environment": None}, "environment", "is required"),
        ({"code": None}, "code", "is required"),
        ({"code": "azureml://codes/x"}, "code", "cloud code folder"),
        ({"$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json"}, "$schema", "only command jobs"),
        ({"environment_variables": {"1BAD": "x"}}, "environment_variables.1BAD", "not an environment variable"),
        ({"limits": {"timeout": "soon"}}, "limits.timeout", "positive"),
    ],
)  # fmt: skip
def test_command_job_errors_name_the_key(work: Path, monkeypatch: pytest.MonkeyPatch, changes, key, msg) -> None:
    with pytest.raises(SpecError, match=msg) as e:
        job(work, monkeypatch, **changes)
    assert e.value.key == key and e.value.exit_code == 2
    assert "rm -rf" not in str(e.value) and "id)" not in str(e.value)  # the file's text is not echoed


def test_command_job_symlinked_code_outside_the_project_is_refused(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = work.parent / f"{work.name}-outside"
    outside.mkdir()
    (outside / "train.py").write_text("")
    (work / "azure" / "v2-command-job" / "linked").symlink_to(outside)
    with pytest.raises(SpecError, match="outside the project") as e:
        job(work, monkeypatch, code="linked")
    assert e.value.key == "code"


def test_import_cli_for_a_command_job(work: Path) -> None:
    d = work / "azure" / "v2-command-job"
    (work / ".git").mkdir()
    cli = [sys.executable, "-m", "ml_env_tasks", "import", "job.yml"]
    p = subprocess.run(cli, cwd=d, capture_output=True, text=True)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert "inline: give -o FILE.toml" in p.stderr and not (d / "job-env.toml").exists()
    p = subprocess.run([*cli, "-o", "env/job-env.toml", "--json"], cwd=d, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["argv"][:4] == ["ml-env", "train", "--env", "env/job-env.toml"]
    assert sorted(got["files"]) == ["env/job-env.conda.yml", "env/job-env.toml"]
    assert spec.load(d / "env" / "job-env.toml").name == "job"
    # the printed command parses as `ml-env train` arguments (the CLI splits the script's off at --)
    from ml_env_tasks.fronts.cli import build_parser

    argv = got["argv"][1:]
    i = argv.index("--")
    args = build_parser(argv[:i]).parse_args(argv[:i])
    assert args.script == "train.py" and args.inputs == ["training_data=data"] and args.timeout == 600
    assert argv[i + 1 :][-2:] == ["--note", "two words"]


def test_azure_inference_dependency_maps_to_the_azureml_server(work: Path) -> None:
    """azureml-defaults (v1 fixture) or azureml-inference-server-http (v2) in the conda file:
    the scripts are written for Azure's server, so the import chooses it."""
    imp = import_source(work / "azure/v1-sklearn", stem="a")
    a = write(imp, work / "envs" / "a.toml")
    assert a.inference and a.inference_server == "azureml"
    assert any('azureml-defaults in the conda file is Azure\'s inference stack: inference.server = "azureml"' in w
               for w in imp.warnings)  # fmt: skip
    assert '[inference]\nserver = "azureml"' in imp.text()
    conda = work / "azure/v2-image/conda-yamls/pydata.yml"
    conda.write_text(conda.read_text().replace("- pip:\n", "- pip:\n    - azureml-inference-server-http==1.5.1\n", 1))
    assert "azureml-inference-server-http" in conda.read_text()
    imp2 = import_source(work / "azure/v2-image/env.yml", stem="b")
    b = write(imp2, work / "envs" / "b.toml")
    assert b.inference_server == "azureml"
    # the fixture's routes are checked against azmlinfsrv's: readiness is GET / there
    assert any("scoring_route" in w and "azmlinfsrv's fixed /score" in w for w in imp2.warnings)
    # without such a dependency, Azure's inference flag stays ml-env's own server
    c = write(import_source(work / "azure/v2-build/env.yml", stem="c"), work / "envs" / "c.toml")
    assert c.inference_server == "builtin"


@pytest.mark.parametrize(
    "line", ["azureml-defaults==1.55.0", "AzureML_Defaults", "azureml-inference-server-http>=1.3 ; python_version>'3'"]
)
def test_azure_inference_dependency_in_a_requirements_file_maps_to_the_azureml_server(work: Path, line: str) -> None:
    """The same dependency in a pip requirements file (Azure's other way to name them) chooses the
    same server: it used to import as a plain environment, silently."""
    req = work / "scoring.txt"
    req.write_text(f"numpy==1.26.4\n{line}\n")
    imp = import_source(req, stem="r")
    r = write(imp, work / "envs" / "r.toml")
    assert r.inference and r.inference_server == "azureml"
    assert any("in the requirements file is Azure's inference stack" in w for w in imp.warnings)
    req.write_text("numpy==1.26.4\nazureml-defaults-extra==1\n# azureml-defaults\n")
    assert write(import_source(req, stem="s"), work / "envs" / "s.toml").inference is False


def test_export_of_an_azureml_server_environment_lists_the_server(work: Path) -> None:
    f = work / "envs" / "s.toml"
    f.write_text(
        'name = "s"\n[inference]\nserver = "azureml"\n[base]\nimage = "x/y:1"\n[python]\npackages = ["numpy"]\n'
    )
    env = spec.load(f)
    (work / "out").mkdir()
    export_v2(env, work / "out" / "env.yml")
    doc = yaml.safe_load((work / "out/env.yml").read_text())
    assert doc["inference_config"]["readiness_route"] == {"path": "/", "port": 5001}
    conda = yaml.safe_load((work / "out/env.conda.yml").read_text())
    assert {"pip": ["numpy", "azureml-inference-server-http==1.5.1"]} in conda["dependencies"]
    back = write(import_source(work / "out/env.yml", stem="back"), work / "envs" / "back.toml")
    assert back.inference_server == "azureml"
