"""Nothing silent: every field of every Azure format, in both directions, is carried over, refused,
or warned about in one line naming it.

The fields walked are the tables of ``formats/azure_fields.py`` (the importers read them as the
formats' known keys) and, for the export, the environment file's own keys (``spec/validate``).
Each field is set to a sample on a small valid document and the result compared with the
document's without it:

- carried: no error, and what is written (environment file, files beside it, printed commands)
  differs — the value went somewhere;
- warned: no error, what is written is the same, and exactly one new line names the field;
- refused: one SpecError whose key is the field.

Besides, no field is named by more than one new line, and an unknown key in any section of a
format is one warning naming it. A field added to a table, or to the environment file, without a
sample here fails ``test_every_field_has_a_sample``.
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit
import yaml

from ml_env_tasks import SpecError, spec
from ml_env_tasks.formats import azure_fields as af
from ml_env_tasks.formats.azure import ImportedDeployment, ImportedJob, export_v1, export_v2, import_source
from ml_env_tasks.formats.azure_export import exported_values
from ml_env_tasks.spec import validate
from ml_env_tasks.spec.conda import parse_conda

DEL = object()  # a context value that removes the key
URL = "https://azuremlschemas.azureedge.net/latest/"

# format -> field -> (sample, context applied to both documents[, what the sample needs besides,
# applied with it only]).
SAMPLES: dict[str, dict[str, tuple[Any, ...]]] = {
    "v1": {
        "name": ("other-env", {}),
        "version": ("7", {}),
        "assetId": ("azureml://locations/x/workspaces/y/environments/z/versions/1", {}),
        "environmentVariables": ({"A": "1"}, {}),
        "inferencingStackVersion": ("latest", {}),
        "python.userManagedDependencies": (True, {}),
        "python.interpreterPath": ("/opt/py/bin/python3", {}),
        "python.condaDependenciesFile": ("deps.yml", {}),
        "python.condaDependencies": ({"dependencies": ["python=3.11", "pip", {"pip": ["six==1.16.0"]}]}, {}),
        "python.baseCondaEnvironment": ("base", {}),
        "docker.enabled": (False, {}),
        "docker.baseImage": ("python:3.12-slim", {}),
        "docker.baseDockerfile": ("FROM python:3.11-slim\nRUN true\n", {}),
        "docker.buildContext": ({"locationType": "git", "location": "https://example.org/x.git"}, {}),
        "docker.baseImageRegistry.address": ("myacr.azurecr.io", {}),
        "docker.baseImageRegistry.username": ("puller", {"docker.baseImageRegistry.address": "myacr.azurecr.io"}),
        "docker.baseImageRegistry.password": ("s3cr3t", {"docker.baseImageRegistry.address": "myacr.azurecr.io",
                                                         "docker.baseImageRegistry.username": "puller"}),
        "docker.baseImageRegistry.registryIdentity": ({"resourceId": "x"}, {"docker.baseImageRegistry.address": "a.io"}),
        "docker.platform.os": ("Windows", {}),
        "docker.platform.architecture": ("arm64", {}),
        "docker.sharedVolumes": (False, {}),
        "docker.shmSize": ("4g", {}),
        "docker.arguments": (["--ipc=host"], {}),
        "spark.repositories": (["https://repo.example"], {}),
        "spark.packages": ([{"group": "g", "artifact": "a", "version": "1"}], {}),
        "spark.precachePackages": (False, {}),
        **{f"databricks.{k}Libraries": ([{"x": 1}], {}) for k in ("maven", "pypi", "rcran", "jar", "egg")},
        "r": ({"rVersion": "4.0"}, {}),
    },
    "inferenceconfig": {
        "entryScript": ("other.py", {}),
        "sourceDirectory": ("src", {}),
        "environment": ({"name": "inline-env", "docker": {"baseImage": "python:3.11-slim"}}, {}),
        "runtime": ("spark-py", {}),
        "condaFile": ("deps.yml", {}),
        "baseImage": ("python:3.12-slim", {}),
        "baseImageRegistry.address": ("myacr.azurecr.io", {}),
        "baseImageRegistry.username": ("puller", {"baseImageRegistry.address": "myacr.azurecr.io"}),
        "baseImageRegistry.password": ("s3cr3t", {"baseImageRegistry.address": "myacr.azurecr.io",
                                                  "baseImageRegistry.username": "puller"}),
        "extraDockerfileSteps": ("steps.txt", {}),
        "enableGpu": (True, {}),
        "cudaVersion": ("11.8", {}),
        "schemaFile": ("schema.json", {}),
        "dependencies": (["extra.txt"], {}),
        "description": ("scores digits", {}),
    },
    "v2": {
        "$schema": (URL + "model.schema.json", {}),
        "name": ("other-env", {}),
        "version": (7, {}),
        "description": ("an environment", {}),
        "tags": ({"team": "vision"}, {}),
        "properties": ({"a": "b"}, {}),
        "image": ("python:3.12-slim", {}),
        "build.path": ("ctx", {"image": DEL, "build.dockerfile_path": "Dockerfile"}),
        "build.dockerfile_path": ("Other.Dockerfile", {"image": DEL, "build.path": "."}),
        "conda_file": ("deps.yml", {}),
        "os_type": ("windows", {}),
        "inference_config": ({"scoring_route": {"path": "/score", "port": 5001}}, {}),
        "inference_config.liveness_route": ({"path": "/alive", "port": 5001},
                                            {"inference_config.scoring_route": {"path": "/score", "port": 5001}}),
        "inference_config.readiness_route": ({"path": "/ready", "port": 5001},
                                             {"inference_config.scoring_route": {"path": "/score", "port": 5001}}),
        "inference_config.scoring_route": ({"path": "/predict", "port": 5001},
                                           {"inference_config.liveness_route": {"path": "/", "port": 5001}}),
        "intellectual_property": ({"publisher": "contoso"}, {}),
        "datastore": ("azureml:workspaceblobstore", {}),
    },
    "conda": {
        "name": ("other-env", {}),
        "channels": (["conda-forge"], {}),
        "dependencies": (["python=3.11", "pip", {"pip": ["six==1.16.0"]}], {}),
        "variables": ({"A": "1"}, {}),
        "prefix": ("/opt/conda/envs/x", {}),
    },
    "job": {
        "$schema": (URL + "pipelineJob.schema.json", {}),
        "type": ("sweep", {}),
        "command": ("python train.py --alpha 1", {}),
        "code": ("src2", {}),
        "inputs": ({"d": {"type": "uri_folder", "path": "data"}}, {}),
        "outputs": ({"model": {"type": "uri_folder"}}, {}, {"command": "python train.py --m ${{outputs.model}}"}),
        "environment": ({"image": "python:3.11-slim"}, {}),
        "environment_variables": ({"A": "1"}, {}),
        "experiment_name": ("digits", {}),
        "limits.timeout": (60, {}),
        "resources.shm_size": ("2g", {}),
        "resources.instance_count": (2, {}, {"compute": "azureml:cpu-cluster"}),  # several nodes: a target's
        **{f"resources.{k}": (v, {}) for k, v in (("instance_type", "gpu"), ("properties", {"a": 1}),
                                                   ("locations", ["westus"]))},
        "resources.docker_args": ("--ipc=host", {}),
        "compute": ("azureml:cpu-cluster", {}),
        "distribution.type": ("mpi", {}),
        "distribution.process_count_per_instance": (4, {}),
        "identity": ({"type": "managed"}, {}),
        "services": ({"jupyter": {"type": "jupyter_lab"}}, {}),
        "queue_settings": ({"job_tier": "spot"}, {}),
        "name": ("run-1", {}),
        "display_name": ("digits", {}),
        "description": ("a run", {}),
        "tags": ({"a": "b"}, {}),
        "properties": ({"a": "b"}, {}),
    },
    "deployment": {
        "$schema": (URL + "batchDeployment.schema.json", {}),
        "name": ("blue", {}),
        "endpoint_name": ("other-endpoint", {}),
        "type": ("sagemaker", {}),
        "description": ("a deployment", {}),
        "tags": ({"a": "b"}, {}),
        "properties": ({"a": "b"}, {}),
        "model": ("azureml:digits:3", {}),
        "model.path": ("model2", {}),
        "model.type": ("triton_model", {}),
        **{f"model.{k}": (v, {}) for k, v in (("name", "digits"), ("version", 3), ("description", "d"),
                                              ("tags", {"a": "b"}), ("properties", {"a": "b"}))},
        "model_mount_path": ("/var/models", {}),
        "code_configuration.code": ("src2", {}),
        "code_configuration.scoring_script": ("other.py", {}),
        "environment": ({"image": "python:3.11-slim"}, {}),
        "environment_variables": ({"A": "1"}, {"environment": {"image": "python:3.11-slim"}}),
        "instance_type": ("Standard_DS3_v2", {}),
        "instance_count": (2, {}),
        "scale_settings": ({"type": "default"}, {}),
        "resources": ({"requests": {"cpu": "1"}}, {}),
        "request_settings.request_timeout_ms": (5000, {}),
        "request_settings.max_concurrent_requests_per_instance": (4, {}),
        "request_settings.max_queue_wait_ms": (500, {}),
        "liveness_probe": ({"period": 10}, {}),
        "readiness_probe": ({"period": 10}, {}),
        "app_insights_enabled": (True, {}),
        "egress_public_network_access": ("disabled", {}),
        "private_network_connection": (True, {}),
        "data_collector": ({"collections": {}}, {}),
    },
    "endpoint": {
        "$schema": (URL + "managedOnlineDeployment.schema.json", {}),
        "name": ("other-endpoint", {}),
        "auth_mode": ("key", {}),
        "traffic": ({"blue": 100}, {}),
        "mirror_traffic": ({"green": 10}, {}),
        "public_network_access": ("enabled", {}),
        "description": ("an endpoint", {}),
        "tags": ({"a": "b"}, {}),
        "properties": ({"a": "b"}, {}),
        "identity": ({"type": "system_assigned"}, {}),
        "kind": ("Managed", {}),
        "compute": ("azureml:k8s", {}),
    },
}  # fmt: skip
TABLES = {
    "v1": af.V1_ENVIRONMENT, "inferenceconfig": af.INFERENCE_CONFIG, "v2": af.V2_ENVIRONMENT, "conda": af.CONDA,
    "job": af.V2_JOB, "deployment": af.DEPLOYMENT, "endpoint": af.ENDPOINT,
}  # fmt: skip
BASELINES: dict[str, dict[str, Any]] = {
    "v1": {"name": "base-env", "docker": {"baseImage": "python:3.11-slim"}},
    "inferenceconfig": {"entryScript": "score.py"},
    "v2": {"name": "base-env", "image": "python:3.11-slim"},
    "conda": {"name": "base-env", "dependencies": ["python=3.11", "pip"]},
    "job": {"command": "python train.py", "code": "src", "environment": "azureml:team-env:1"},
    "deployment": {"endpoint_name": "digits", "model": {"path": "model"}, "environment": "azureml:team-env:1",
                   "code_configuration": {"code": "src", "scoring_script": "score.py"}},
    "endpoint": {"name": "digits"},
}  # fmt: skip
# an unknown key is put in each section; a section that needs more to be valid gets it here
SECTION_CONTEXT = {
    ("v2", "build"): {"image": DEL, "build.path": "."},
    ("v2", "inference_config"): {"inference_config.scoring_route": {"path": "/score", "port": 5001}},
}


def put(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".") if not path.startswith("$") else [path]
    for p in parents:
        doc = doc.setdefault(p, {})
    if value is DEL:
        doc.pop(last, None)
    else:
        doc[last] = copy.deepcopy(value)


def project(tmp_path: Path) -> Path:
    """A project holding every file a sample names."""
    d = tmp_path / "proj"
    (d / ".git").mkdir(parents=True)
    conda = "name: deps\ndependencies:\n  - python=3.11\n  - pip\n  - pip:\n    - six==1.16.0\n"
    files = {
        "deps.yml": conda, "steps.txt": "RUN true\n", "Dockerfile": "FROM python:3.11-slim\n",
        "Other.Dockerfile": "FROM python:3.12-slim\n", "ctx/Dockerfile": "FROM python:3.11-slim\nRUN true\n",
        "score.py": "def init(): pass\ndef run(raw): return raw\n", "other.py": "def init(): pass\ndef run(r): return r\n",
        "src/score.py": "def init(): pass\ndef run(raw): return 1\n", "src/other.py": "def run(r): return 2\n",
        "src2/score.py": "def run(r): return 3\n", "src/train.py": "", "src2/train.py": "", "data/x.csv": "1\n",
        "model/m.txt": "1", "model2/m.txt": "2", "req.txt": "six==1.16.0\n",
    }  # fmt: skip
    for name, text in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)
    return d


def written(result: Any) -> str:
    """Everything an import writes or prints, as one text."""
    parts = []
    env = result
    if isinstance(result, ImportedJob):
        parts.append(result.command(Path("out.toml")))
        env = result.environment
    elif isinstance(result, ImportedDeployment):
        parts.append(result.text(Path("out.toml"), registry="localhost:5000"))
        env = result.environment
    if env is not None:
        parts.append(env.text())
        for n, data in sorted(env.files.items()):
            if n.endswith(".conda.yml"):  # copied as it is: what it installs is what it carries
                c = parse_conda(data, "conda", file=n, key="conda")
                parts.append(f"{n}: {c.python} {c.pip} {c.packages} {c.channels}")
            else:
                parts.append(f"{n}:\n{data.decode()}")
    return "\n".join(parts)


def run_import(fmt: str, d: Path, doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[str, list[str]]:
    monkeypatch.chdir(d)
    if fmt == "v1":
        (d / "envdir").mkdir(exist_ok=True)
        (d / "envdir" / "azureml_environment.json").write_text(json.dumps(doc))
        for n in ("deps.yml",):
            (d / "envdir" / n).write_text((d / n).read_text())
        result = import_source(Path("envdir"), stem="out")
    elif fmt == "inferenceconfig":
        (d / "inferenceconfig.json").write_text(json.dumps(doc))
        result = import_source(Path("inferenceconfig.json"), stem="out")
    elif fmt == "endpoint":
        deployment = dict(BASELINES["deployment"])
        del deployment["endpoint_name"]
        (d / "deployment.yml").write_text(yaml.safe_dump(deployment))
        (d / "endpoint.yml").write_text(yaml.safe_dump(doc))
        result = import_source(Path("deployment.yml"), stem="out", endpoint=Path("endpoint.yml"))
    else:
        name = {"conda": "environment.yml"}.get(fmt, f"{fmt}.yml")
        (d / name).write_text(yaml.safe_dump(doc))
        result = import_source(Path(name), stem="out")
    return written(result), list(result.warnings)


def naming(lines: list[str], path: str) -> list[str]:
    pattern = re.compile(re.escape(path) + r"(?![\w.])")
    return [line for line in lines if pattern.search(line)]


def check(fate: str, path: str, base: Callable[[], tuple[str, list[str]]], tried: Callable[[], tuple[str, list[str]]],
          *, as_is: bool = False, needs_more: bool = False) -> None:  # fmt: skip
    """``as_is``: a carried field whose value leaves what is written unchanged; ``needs_more``:
    the sample comes with other fields (a warned one may then change what is written)."""
    before, before_w = base()
    if fate == af.REFUSED:
        with pytest.raises(SpecError) as e:
            tried()
        assert e.value.key == path, e.value
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
        return
    after, after_w = tried()
    new = [w for w in after_w if w not in before_w]
    assert len(naming(new, path)) <= 1, f"{path}: more than one line names it: {new}"
    if fate == af.CARRIED:
        assert naming(new, path) == [] or after != before, f"{path}: warned about, yet carried nowhere: {new}"
        assert after != before or as_is, f"{path}: carried, yet nothing written changed"
    else:
        assert len(naming(new, path)) == 1, f"{path}: no line names it: {new}"
        assert after == before or needs_more, f"{path}: warned as not carried, yet what is written changed"


def doc_with(fmt: str, context: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(BASELINES[fmt])
    for k, v in {**context, **(extra or {})}.items():
        put(doc, k, v)
    return doc


CASES = [(fmt, path) for fmt, table in TABLES.items() for path in table]


def test_every_field_has_a_sample() -> None:
    for fmt, table in TABLES.items():
        assert set(SAMPLES[fmt]) == set(table), f"{fmt}: fields without a sample, or samples of no field"
    assert set(EXPORT_SAMPLES) == set(af.EXPORT_V1) == set(af.EXPORT_V2) == set(environment_fields())


@pytest.fixture(autouse=True)
def _a_declared_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's config declares the compute target the samples name: a job's compute: is
    carried only to a target declared here (else one line says the run stays on the engine)."""
    cfg = tmp_path / "user-config.toml"
    cfg.write_text('[compute.cpu-cluster]\ntype = "slurm"\nshared = "/tmp"\n')
    monkeypatch.setenv("ML_ENV_CONFIG", str(cfg))


@pytest.mark.parametrize("fmt,path", CASES, ids=[f"{f}:{p}" for f, p in CASES])
def test_each_imported_field_is_carried_refused_or_warned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, path: str
) -> None:
    d = project(tmp_path)
    sample, context, *more = SAMPLES[fmt][path]
    besides = more[0] if more else {}
    check(TABLES[fmt][path].fate, path,
          lambda: run_import(fmt, d, doc_with(fmt, context), monkeypatch),
          lambda: run_import(fmt, d, doc_with(fmt, context, {**besides, path: sample}), monkeypatch),
          needs_more=bool(besides))  # fmt: skip


SECTIONS = sorted({(fmt, p.rsplit(".", 1)[0]) for fmt, t in TABLES.items() for p in t if "." in p[1:]} |
                  {(fmt, "") for fmt in TABLES})  # fmt: skip


@pytest.mark.parametrize("fmt,section", SECTIONS, ids=[f"{f}:{s or '(top)'}" for f, s in SECTIONS])
def test_an_unknown_key_in_any_section_is_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, section: str
) -> None:
    d = project(tmp_path)
    path = f"{section}.zzUnknown" if section else "zzUnknown"
    context = SECTION_CONTEXT.get((fmt, section), {})
    check(af.WARNED, path,
          lambda: run_import(fmt, d, doc_with(fmt, context), monkeypatch),
          lambda: run_import(fmt, d, doc_with(fmt, context, {path: "x"}), monkeypatch))  # fmt: skip


REQUIREMENT_ARGS = {"-r": "other.txt", "--requirement": "other.txt", "-c": "c.txt", "--constraint": "c.txt",
                    "-i": "https://pypi.example/simple", "--index-url": "https://pypi.example/simple",
                    "--extra-index-url": "https://pypi.example/simple", "-e": "./pkg", "--editable": "./pkg",
                    "-f": "./wheels", "--find-links": "./wheels", "--only-binary": ":all:", "--no-binary": ":none:",
                    "--trusted-host": "pypi.example"}  # fmt: skip


@pytest.mark.parametrize("option", [*af.REQUIREMENTS, "--zz-unknown"])
def test_each_requirements_option_is_carried_or_warned(tmp_path: Path, option: str) -> None:
    """A requirements file is copied byte for byte (pip reads every line at the build); what the
    content hash or the build context cannot cover is one line naming the option."""
    req = tmp_path / "team.txt"
    line = f"{option} {REQUIREMENT_ARGS.get(option, '')}".strip()
    req.write_text(f"six==1.16.0\n{line}\n")
    imp = import_source(req, stem="out")
    assert imp.files["out.requirements.txt"] == req.read_bytes()
    lines = [w for w in imp.warnings if f"({option}" in w]
    fate = af.REQUIREMENTS[option].fate if option in af.REQUIREMENTS else af.WARNED
    assert len(lines) == (0 if fate == af.CARRIED else 1), imp.warnings


# --- export: every field of the environment file ------------------------------------------


def environment_fields() -> set[str]:
    """The environment file's fields, from the validator's own key sets."""
    sections = {"base": validate.BASE_KEYS, "python": validate.PYTHON_KEYS, "apt": validate.APT_KEYS,
                "docker": validate.DOCKER_KEYS, "inference": validate.INFERENCE_KEYS}  # fmt: skip
    out = {k for k in validate.TOP_KEYS if k not in sections or k == "inference"}
    out |= {f"{s}.{k}" for s, keys in sections.items() for k in keys if not (s == "base" and k == "registry")}
    out |= {f"base.registry.{k}" for k in validate.REGISTRY_KEYS}
    return out


REG = {"base.registry.address": "myacr.azurecr.io"}
PKG = {"python.packages": ["six==1.16.0"]}
EXPORT_SAMPLES: dict[str, tuple[Any, ...]] = {
    "name": ("other", {}),
    "version": ("7", {}),
    "description": ("an environment", {}),
    "inference": (True, {}),
    "inference.server": ("azureml", {}),
    "base.image": ("python:3.12-slim", {}),
    "base.dockerfile": ("Dockerfile", {}, {"base.image": DEL}),
    "base.dockerfile_text": ("FROM python:3.11-slim\nRUN true\n", {}, {"base.image": DEL}),
    "base.registry.address": ("myacr.azurecr.io", {}),
    # username and password_env go together
    "base.registry.username": ("puller", REG, {"base.registry.password_env": "ACR_PASSWORD"}),
    "base.registry.password_env": ("ACR_PASSWORD", REG, {"base.registry.username": "puller"}),
    "python.installer": ("uv", {}),
    "python.layers": ("split", {}),
    "python.conda_installer": ("conda", {"python.conda_file": "deps.yml"}),  # as_is: Azure installs it with conda
    "python.user_managed_dependencies": (True, PKG),
    "python.interpreter": ("/usr/local/bin/python3.11", {}),
    "python.packages": (["six==1.16.0"], {}),
    "python.requirements": (["req.txt"], {}),
    "python.conda_file": ("deps.yml", {}),
    "python.wheels": (["tiny-1.0-py3-none-any.whl"], {}),
    "python.index_url": ("https://pypi.example/simple", {}),
    "python.index_url_env": ("PIP_INDEX", {}),
    "python.extra_index_urls": (["https://pypi.example/simple"], {}),
    "python.extra_index_urls_env": (["PIP_EXTRA"], {}),
    "apt.packages": (["curl"], {}),
    "env": ({"A": "1"}, {}),
    "labels": ({"team": "vision"}, {}),
    "docker.shm_size": ("2g", {}),
    "docker.build_args": ({"A": "1"}, {}),
}
AS_IS = {"python.conda_installer"}


def exported(d: Path, fmt: str, doc: dict[str, Any]) -> tuple[str, list[str]]:
    (d / "env.toml").write_text(tomlkit.dumps(doc))
    env = spec.load(d / "env.toml")
    out = d / f"out-{fmt}"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    warnings = export_v1(env, out / "dir") if fmt == "v1" else export_v2(env, out / "env.yml")
    return "\n".join(f"{p.name}:\n{p.read_text()}" for p in sorted(out.rglob("*")) if p.is_file()), warnings


@pytest.mark.parametrize("fmt", ["v1", "v2"])
@pytest.mark.parametrize("path", sorted(EXPORT_SAMPLES))
def test_each_exported_field_is_carried_or_warned(tmp_path: Path, fmt: str, path: str) -> None:
    d = project(tmp_path)
    with zipfile.ZipFile(d / "tiny-1.0-py3-none-any.whl", "w") as z:
        z.writestr("tiny/__init__.py", "")
    sample, context, *more = EXPORT_SAMPLES[path]
    besides = more[0] if more else {}
    base = {"name": "base-env", "base": {"image": "python:3.11-slim"}}
    table = af.EXPORT_V1 if fmt == "v1" else af.EXPORT_V2

    def doc(extra: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for k, v in {**context, **extra}.items():
            put(out, k, v)
        return out

    check(table[path].fate, path, lambda: exported(d, fmt, doc({})),
          lambda: exported(d, fmt, doc({**besides, path: sample})), as_is=path in AS_IS, needs_more=bool(besides))  # fmt: skip


def test_the_export_reads_every_field(tmp_path: Path) -> None:
    f = tmp_path / "e.toml"
    f.write_text('name = "e"\n[base]\nimage = "python:3.11-slim"\n')
    assert set(exported_values(spec.load(f))) == set(af.EXPORT_V1)


def test_a_user_managed_environment_keeps_its_packages_in_both_exports(tmp_path: Path) -> None:
    """Reported: a user-managed environment's python.packages vanished from both exports, with no
    word (v1 condaDependenciesFile null, v2 only build: path: .). They go into the Dockerfile."""
    f = tmp_path / "um.toml"
    f.write_text('name = "um"\n[base]\nimage = "python:3.11-slim"\n'
                 '[python]\nuser_managed_dependencies = true\ninterpreter = "/usr/local/bin/python3"\n'
                 'packages = ["six==1.16.0", "tomli==2.0.2"]\n')  # fmt: skip
    env = spec.load(f)
    assert export_v1(env, tmp_path / "v1") == []
    v1 = json.loads((tmp_path / "v1" / "azureml_environment.json").read_text())
    assert v1["python"]["userManagedDependencies"] is True and v1["docker"]["baseImage"] is None
    run = "RUN /usr/local/bin/python3 -m pip install --no-cache-dir six==1.16.0 tomli==2.0.2"
    assert (
        v1["docker"]["baseDockerfile"].startswith("FROM python:3.11-slim\n") and run in v1["docker"]["baseDockerfile"]
    )
    assert export_v2(env, tmp_path / "env.yml") == [
        "python.interpreter /usr/local/bin/python3: not exported: a v2 environment names no interpreter"
    ]
    v2 = yaml.safe_load((tmp_path / "env.yml").read_text())
    assert v2["build"] == {"path": ".", "dockerfile_path": "env.Dockerfile"} and "conda_file" not in v2
    assert run in (tmp_path / "env.Dockerfile").read_text()
    # and back: the packages are in the imported base Dockerfile
    back = import_source(tmp_path / "v1", stem="back")
    assert run in back.text().replace("\\n", "\n")


def test_the_v2_export_says_the_private_registry_is_not_there(tmp_path: Path) -> None:
    f = tmp_path / "r.toml"
    f.write_text('name = "r"\n[base]\nimage = "myacr.azurecr.io/base:1"\n'
                 '[base.registry]\naddress = "myacr.azurecr.io"\nusername = "puller"\npassword_env = "ACR_PW"\n')  # fmt: skip
    warnings = export_v2(spec.load(f), tmp_path / "env.yml")
    assert [w.split(":")[0].split(" ")[0] for w in warnings] == [
        "base.registry.address", "base.registry.username", "base.registry.password_env"
    ]  # fmt: skip
    assert "myacr.azurecr.io" not in yaml.safe_load((tmp_path / "env.yml").read_text()).get("build", "")


def test_inferenceconfig_entry_script_is_carried_into_the_commands(tmp_path: Path, monkeypatch) -> None:
    """Reported: importing inferenceconfig.json dropped entryScript without a word."""
    d = project(tmp_path)
    monkeypatch.chdir(d)
    (d / "inferenceconfig.json").write_text(json.dumps({
        "entryScript": "score.py", "sourceDirectory": "src",
        "environment": {"name": "my-deploy-env", "docker": {"baseImage": "python:3.11-slim"},
                        "python": {"condaDependencies": {"dependencies": ["python=3.11", {"pip": ["azureml-defaults"]}]}}},
    }))  # fmt: skip
    imp = import_source(Path("inferenceconfig.json"), stem="deploy")
    assert isinstance(imp, ImportedDeployment)
    assert imp.text(Path("envs/deploy.toml")) == "ml-env serve --env envs/deploy.toml --entry src/score.py"
    assert any(w.startswith("the model is not in inferenceconfig.json") for w in imp.warnings)
    assert '[inference]\nserver = "azureml"' in imp.environment.text()
