"""Every field of every Azure format, and what becomes of it: carried over, refused, or warned
about in one line naming it. The tables below are the formats' known keys (a dotted path per
field); the importers read them as such (``triage``), and ``tests/unit/test_azure_fields.py``
walks each table, so a field cannot be added here without being carried, refused or warned.

A key not in its format's table is warned about as unknown; a ``WARNED`` or ``REFUSED`` field
whose value is one of its ``quiet`` ones (Azure's default, or what ml-env does anyway) needs no
word; an ``own`` field's message depends on other fields, so its importer writes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..safe.grammar import printable

CARRIED, WARNED, REFUSED = "carried", "warned", "refused"


@dataclass(frozen=True)
class Field:
    fate: str  # what a value other than the quiet ones gets: CARRIED, WARNED or REFUSED
    note: str  # CARRIED: where it goes; else the message after "KEY: " ({value}: the value, shown)
    quiet: tuple[Any, ...] = ()
    own: bool = False  # the importer (or exporter) says it itself
    hint: str | None = None  # REFUSED: the way forward


def carried(note: str) -> Field:
    return Field(CARRIED, note)


def warned(note: str, *quiet: Any, own: bool = False) -> Field:
    return Field(WARNED, note, quiet, own)


def refused(note: str, *quiet: Any, hint: str | None = None, own: bool = False) -> Field:
    return Field(REFUSED, note, quiet, own, hint)


def says_nothing(value: Any, quiet: tuple[Any, ...] = ()) -> bool:
    """None, empty, or one of ``quiet`` (compared with its type: 1 is not True)."""
    if value is None or (isinstance(value, (str, list, dict)) and not value):
        return True
    return any(type(value) is type(q) and value == q for q in quiet)


NO_SPARK = "not imported: ml-env runs no Spark"
NO_DATABRICKS = "not imported: ml-env runs no Databricks"

# azureml_environment.json (Environment.save_to_directory), also inline in inferenceconfig.json
V1_ENVIRONMENT: dict[str, Field] = {
    "name": carried("name"),
    "version": carried("version"),
    "assetId": warned("not imported: an Azure asset id (versions here are `ml-env register`'s)"),
    "environmentVariables": carried("[env]"),
    "inferencingStackVersion": carried("inference = true"),
    "python.userManagedDependencies": carried("python.user_managed_dependencies"),
    "python.interpreterPath": carried("python.interpreter"),
    "python.condaDependenciesFile": carried("python.conda_file, copied beside the output"),
    "python.condaDependencies": carried("python.conda_file, written beside the output"),
    "python.baseCondaEnvironment": warned("not imported: the environment is built whole, on no base conda environment"),
    "docker.enabled": warned("= false: not imported: ml-env always builds an image and runs in it", True),
    "docker.baseImage": carried("base.image"),
    "docker.baseDockerfile": carried("base.dockerfile_text"),
    "docker.buildContext": refused(
        "a build context in git or a storage account cannot be read here",
        hint="download it, then import a v2 environment YAML whose build.path names the folder",
    ),
    "docker.baseImageRegistry.address": carried("base.registry.address"),
    "docker.baseImageRegistry.username": carried("base.registry.username, and password_env"),
    "docker.baseImageRegistry.password": warned("not written: it becomes an environment variable's name", own=True),
    "docker.baseImageRegistry.registryIdentity": warned("not imported: give a username, and password_env"),
    "docker.platform.os": refused("{value}: only Linux images are built", "Linux", "linux"),
    "docker.platform.architecture": warned("{value}: not imported: images are for the engine's platform", "amd64"),
    "docker.sharedVolumes": warned("= false: not imported: runs get their own mounts", True),
    "docker.shmSize": carried("docker.shm_size"),
    "docker.arguments": warned("{value}: not imported: give run options to `ml-env train` (--shm-size, --cpus, …)"),
    "spark.repositories": warned(NO_SPARK),
    "spark.packages": warned(NO_SPARK),
    "spark.precachePackages": warned(NO_SPARK, True),
    **{f"databricks.{k}Libraries": warned(NO_DATABRICKS) for k in ("maven", "pypi", "rcran", "jar", "egg")},
    "r": warned("not imported: ml-env builds Python environments only"),
}

# inferenceconfig.json (`az ml model deploy --ic`, InferenceConfig): the environment inline or
# the older base image + conda file; the model comes from the command line, not this file
INFERENCE_CONFIG: dict[str, Field] = {
    "entryScript": carried("serve/smoke-test --entry"),
    "sourceDirectory": carried("the --entry script's folder"),
    "environment": carried("the environment file (its fields: azureml_environment.json's)"),
    "runtime": refused("{value}: only Python entry scripts are served", "python", "Python"),
    "condaFile": carried("python.conda_file, copied beside the output"),
    "baseImage": carried("base.image"),
    "baseImageRegistry.address": carried("base.registry.address"),
    "baseImageRegistry.username": carried("base.registry.username, and password_env"),
    "baseImageRegistry.password": warned("not written: it becomes an environment variable's name", own=True),
    "extraDockerfileSteps": carried("base.dockerfile_text: FROM the base image, then the steps"),
    "enableGpu": warned("= true: not imported: choose a CUDA base image", False),
    "cudaVersion": warned("{value}: not imported: choose a base image with that CUDA"),
    "schemaFile": warned("not imported: the server takes the schemas the entry script declares"),
    "dependencies": warned("not imported: the entry script's folder is mounted whole, nothing outside it"),
    "description": carried("description"),
}

ROUTE = "differs from the server's fixed route"
# a CLI v2 environment YAML (environment.schema.json), also inline in jobs and deployments
V2_ENVIRONMENT: dict[str, Field] = {
    "$schema": refused("names another kind of Azure file, not an environment", own=True),
    "name": carried("name"),
    "version": carried("version"),
    "description": carried("description"),
    "tags": carried("labels com.azure.ml.tag.*"),
    "properties": warned("not imported: an environment file has no properties (labels are its metadata)"),
    "image": carried("base.image"),
    "build.path": carried("the folder of base.dockerfile"),
    "build.dockerfile_path": carried("base.dockerfile, copied beside the output"),
    "conda_file": carried("python.conda_file, copied beside the output"),
    "os_type": refused("{value}: only linux images are built", "linux", "Linux"),
    "inference_config": carried("inference = true"),
    **{f"inference_config.{r}_route": warned(ROUTE, own=True) for r in ("liveness", "readiness", "scoring")},
    "intellectual_property": warned("not imported: nothing is published from here"),
    "datastore": warned("{value}: not imported: the build context is read here, not uploaded"),
}

# a conda environment file
CONDA: dict[str, Field] = {
    "name": carried("name"),
    "channels": carried('the conda file (channels count with conda_installer = "conda")'),
    "dependencies": carried("the conda file, copied beside the output"),
    "variables": carried("[env]"),
    "prefix": warned("{value}: not imported: the environment lives in the image"),
}

# a pip requirements file: its options (a line's first word); other lines are requirements, carried
REQUIREMENTS: dict[str, Field] = {
    **dict.fromkeys(("-r", "--requirement", "-c", "--constraint"),
                    warned("included files are installed but not hashed (the content hash covers this file only)")),
    **dict.fromkeys(("-i", "--index-url", "--extra-index-url"),
                    warned("not carried: set python.index_url_env / extra_index_urls_env instead (credentials)")),
    **dict.fromkeys(("-e", "--editable"),
                    warned("an editable install's folder is not in the build context: build a wheel, list it in python.wheels")),
    **dict.fromkeys(("-f", "--find-links"),
                    warned("a folder of wheels is not in the build context: list them in python.wheels")),
    **dict.fromkeys(("--pre", "--prefer-binary", "--only-binary", "--no-binary", "--trusted-host", "--no-index",
                     "--require-hashes"), carried("passed to pip as written")),
}  # fmt: skip

RESOURCES = "not imported: give --cpus, --memory, --gpus to `ml-env train`"
# a CLI v2 command job (commandJob.schema.json)
V2_JOB: dict[str, Field] = {
    "$schema": refused("only command jobs are imported (not pipeline, sweep or other jobs)", own=True),
    "type": refused("{value}: only command jobs are imported (not pipeline, sweep or other jobs)", "command"),
    "command": carried("--script and the arguments after --"),
    "code": carried("--source"),
    "inputs": carried("--input NAME=PATH, or a literal put into the arguments"),
    "outputs": carried("${{outputs.NAME}}: a folder of the run's outputs"),
    "environment": carried("--env"),
    "environment_variables": carried("--env-var"),
    "experiment_name": carried("--experiment"),
    "limits.timeout": carried("--timeout"),
    "resources.shm_size": carried("--shm-size"),
    "resources.instance_count": carried("--nodes N, on the compute target (several nodes: a Slurm target)"),
    **{f"resources.{k}": warned(RESOURCES) for k in ("instance_type", "properties", "locations")},
    "resources.docker_args": warned("{value}: not imported: ml-env train takes its own run options"),
    "compute": carried("--compute NAME: the compute target of that name ([compute.NAME] in your config)"),
    "distribution.type": warned(
        "{value}: not mapped: every node runs one process with torchrun's variables "
        "(MASTER_ADDR, WORLD_SIZE, RANK), as pytorch's",
        "pytorch",
    ),
    "distribution.process_count_per_instance": warned(
        "{value}: not mapped: one process per node (start more from the script, e.g. torchrun --nproc-per-node)", 1
    ),
    "identity": warned("not imported: the run has your local credentials only through --secret"),
    "services": warned("not imported: no interactive services"),
    "queue_settings": warned("not imported: no queue"),
    "name": warned("{value}: not imported: a run is named by its id"),
    "display_name": warned("{value}: not imported: a run is named by its id"),
    "description": warned("not imported: a run record has no description"),
    "tags": warned("not imported: a run record has no tags (its experiment groups it)"),
    "properties": warned("not imported: a run record has no properties"),
}

ONE = "one container per service"
# an online deployment YAML (`az ml online-deployment`, managed or Kubernetes)
DEPLOYMENT: dict[str, Field] = {
    "$schema": refused("names another kind of Azure file, not an online deployment", own=True),
    "name": warned("{value}: not imported: a service runs one deployment; `ml-env serve --replace` swaps in the next"),
    "endpoint_name": carried("serve --name"),
    "type": warned("{value}: not imported", "managed", "kubernetes"),
    "description": warned("not imported: a local service has no description"),
    "tags": warned("not imported: a local service has no tags"),
    "properties": warned("not imported: a local service has no properties"),
    "model": carried("--model (a folder, or a version registered here)"),
    "model.path": carried("--model NAME=DIR: under AZUREML_MODEL_DIR by its folder's name, as in Azure"),
    "model.type": refused(
        "{value}: only custom and MLflow models with a scoring script are served", "custom_model", "mlflow_model"
    ),
    **{
        f"model.{k}": warned("not imported: the folder is mounted as it is, registered nowhere")
        for k in ("name", "version", "description", "tags", "properties")
    },
    "model_mount_path": warned("{value}: not imported: the model is at AZUREML_MODEL_DIR (/var/azureml-models)"),
    "code_configuration.code": carried("the --entry script's folder"),
    "code_configuration.scoring_script": carried("--entry"),
    "environment": carried("--env: the environment file, or a version registered here"),
    "environment_variables": carried("[env] of the imported environment"),
    "instance_type": warned("{value}: not imported: the container runs on this engine (--cpus, --memory)"),
    "instance_count": warned("{value}: not imported: " + ONE, 1),
    "scale_settings": warned("not imported: " + ONE + ", no autoscaling"),
    "resources": warned("not imported: give --cpus and --memory to serve"),
    "request_settings.request_timeout_ms": carried("--scoring-timeout-ms"),
    "request_settings.max_concurrent_requests_per_instance": warned(
        "{value}: not imported: the server takes up to 64 connections (--workers sets its processes)", 1
    ),
    "request_settings.max_queue_wait_ms": warned("{value}: not imported: requests are not queued"),
    "liveness_probe": warned("not imported: ml-env polls the server's own routes"),
    "readiness_probe": warned("not imported: ml-env polls the server's own routes"),
    "app_insights_enabled": warned("= true: not imported: read the log with `ml-env serve logs NAME`", False),
    "egress_public_network_access": warned("{value}: not imported: the container has the engine's network", "enabled"),
    "private_network_connection": warned("= true: not imported: the container has the engine's network", False),
    "data_collector": warned("not imported: requests are not collected"),
}

# an online endpoint YAML (`az ml online-endpoint`), given with the deployment's
ENDPOINT: dict[str, Field] = {
    "$schema": refused("names another kind of Azure file, not an online endpoint", own=True),
    "name": carried("serve --name"),
    "auth_mode": warned("{value}: not imported: the local service has no authentication; it listens on 127.0.0.1"),
    "traffic": warned("not imported: a service serves one deployment (`ml-env serve --replace` swaps them)"),
    "mirror_traffic": warned("not imported: a service serves one deployment"),
    "public_network_access": warned("{value}: not imported: the service listens on 127.0.0.1", "disabled"),
    "description": warned("not imported: a local service has no description"),
    "tags": warned("not imported: a local service has no tags"),
    "properties": warned("not imported: a local service has no properties"),
    "identity": warned("not imported: the service has no identity"),
    "kind": warned("{value}: not imported"),
    "compute": warned("{value}: not imported: the service runs on this engine"),
}

# an environment file's fields (spec/validate's keys), exported to azureml_environment.json
NO_WHEELS = "not exported: Azure has no field for private wheel files (publish them to an index)"
NO_INDEX = "not exported: set pip's index in the conda file's pip section, or the workspace's"
EXPORT_V1: dict[str, Field] = {
    "name": carried("name"),
    "version": carried("version"),
    "description": warned("not exported: a v1 environment has no description"),
    "inference": carried("inferencingStackVersion = latest"),
    "inference.server": carried("azureml-inference-server-http in the pip list"),
    "base.image": carried("docker.baseImage"),
    "base.dockerfile": carried("docker.baseDockerfile (its text)"),
    "base.dockerfile_text": carried("docker.baseDockerfile"),
    "base.registry.address": carried("docker.baseImageRegistry.address"),
    "base.registry.username": carried("docker.baseImageRegistry.username"),
    "base.registry.password_env": warned("not exported: docker.baseImageRegistry.password is left empty: set it there"),
    "python.installer": warned("{value}: not exported: Azure installs with conda and pip", "pip"),
    "python.layers": warned("{value}: not exported: Azure installs every package in one layer", "one"),
    "python.conda_installer": carried("the conda file (Azure installs it with conda)"),
    "python.user_managed_dependencies": carried("python.userManagedDependencies"),
    "python.interpreter": carried("python.interpreterPath"),
    "python.packages": carried("the conda file's pip list; user-managed: a RUN in docker.baseDockerfile"),
    "python.requirements": carried("the conda file's pip list; user-managed: a RUN in docker.baseDockerfile"),
    "python.conda_file": carried("conda_dependencies.yml"),
    "python.wheels": warned(NO_WHEELS),
    **dict.fromkeys(
        ("python.index_url", "python.index_url_env", "python.extra_index_urls", "python.extra_index_urls_env"),
        warned(NO_INDEX),
    ),  # fmt: skip
    "apt.packages": warned("not exported: a v1 environment has none: install them in docker.baseDockerfile"),
    "env": carried("environmentVariables"),
    "labels": warned("not exported: a v1 environment has no labels"),
    "docker.shm_size": carried("docker.shmSize"),
    "docker.build_args": warned("not exported: Azure passes no build arguments to a base Dockerfile"),
}

# the same fields, exported to a CLI v2 environment YAML (and its conda file and Dockerfile)
NO_CREDENTIALS = "not exported: a v2 environment has no registry credentials (the workspace pulls the base)"
EXPORT_V2: dict[str, Field] = {
    **EXPORT_V1,
    "description": carried("description"),
    "inference": carried("inference_config"),
    "base.image": carried("image"),
    "base.dockerfile": carried("build: the Dockerfile beside the YAML"),
    "base.dockerfile_text": carried("build: the Dockerfile beside the YAML"),
    "base.registry.address": warned("{value}: " + NO_CREDENTIALS),
    "base.registry.username": warned(NO_CREDENTIALS),
    "base.registry.password_env": warned(NO_CREDENTIALS),
    "python.user_managed_dependencies": carried("no conda_file: the image's Python as it is"),
    "python.interpreter": warned("{value}: not exported: a v2 environment names no interpreter", "python3", "python"),
    "python.packages": carried("the conda file's pip list; user-managed: a RUN in the Dockerfile"),
    "python.requirements": carried("the conda file's pip list; user-managed: a RUN in the Dockerfile"),
    "python.conda_file": carried("conda_file"),
    "apt.packages": warned("not exported: a v2 environment has none: install them in a Dockerfile (base.dockerfile)"),
    "env": warned("not exported: a v2 environment has no environment variables (set them on the job or deployment)"),
    "labels": carried("tags"),
    "docker.shm_size": warned("{value}: not exported: set resources.shm_size on the job"),
    "docker.build_args": warned("not exported: Azure passes no build arguments to a v2 build"),
}


def _is_section(path: str, table: dict[str, Field]) -> bool:
    return any(p.startswith(path + ".") for p in table)


def triage(data: dict[Any, Any], table: dict[str, Field], *, file: str | Path, prefix: str = "") -> list[str]:
    """The one-line warnings for ``data``'s fields that are not carried: unknown keys, and
    ``WARNED`` fields with something to say; a ``REFUSED`` one is a SpecError naming its key.
    ``prefix`` is where ``data`` sits in its file (an inline environment: ``environment.``)."""
    out: list[str] = []

    def walk(d: dict[Any, Any], at: str) -> None:
        for k, v in d.items():
            path = f"{at}.{k}" if at else str(k)
            shown = printable(prefix + path, 120)
            f = table.get(path)
            if _is_section(path, table) and isinstance(v, dict):
                walk(v, path)
            elif f is None and not _is_section(path, table):
                out.append(f"{shown}: unknown field, not imported")
            elif _is_section(path, table) and f is None and v not in (None, {}):
                raise SpecError("must be a mapping", file=str(file), key=shown)
            if f is None or f.own or f.fate == CARRIED or says_nothing(v, f.quiet):
                continue
            if f.fate == REFUSED:
                raise SpecError(f.note.format(value=printable(v, 80)), file=str(file), key=shown, hint=f.hint)
            out.append(say(table, path, v, prefix=prefix))

    walk(data, "")
    return out


def say(table: dict[str, Field], path: str, value: Any = None, *, prefix: str = "") -> str:
    """The one line for a field whose message its importer or exporter writes."""
    note = table[path].note
    sep = " " if note.startswith(("{value}", "= ")) else ": "  # docker.arguments ['--ipc=host']: …
    return f"{printable(prefix + path, 120)}{sep}{note.format(value=printable(value, 80))}"


class _Fields:
    """Typed reads of one parsed Azure file: a wrong type is one SpecError naming file and key
    (``prefix``: where the mapping read sits in its file, e.g. ``environment.``)."""

    def __init__(self, file: Path, prefix: str = "") -> None:
        self.file = str(file)
        self.prefix = prefix

    def err(self, key: str, msg: str, hint: str | None = None) -> SpecError:
        return SpecError(msg, file=self.file, key=printable(self.prefix + key, 120), hint=hint)

    def table(self, d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        v = d.get(key)
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self.err(where, f"must be a mapping, got {type(v).__name__}")
        return v

    def text(self, d: dict[str, Any], key: str, where: str, *, numbers: bool = False) -> str | None:
        v = d.get(key)
        if v is None or v == "":
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float) if numbers else str):
            raise self.err(where, f"must be a string, got {type(v).__name__}")
        return str(v)

    def flag(self, d: dict[str, Any], key: str, where: str) -> bool:
        v = d.get(key)
        if v is None:
            return False
        if not isinstance(v, bool):
            raise self.err(where, f"must be true or false, got {type(v).__name__}")
        return v

    def scalars(self, d: dict[str, Any], key: str, where: str) -> dict[str, str]:
        """A mapping of names to scalar values (environment variables, tags), as strings."""
        out = {}
        for k, v in self.table(d, key, where).items():
            if isinstance(v, (dict, list)) or v is None:
                raise self.err(f"{where}.{k}", "must be a string")
            out[str(k)] = str(v)
        return out

    def strings(self, d: dict[str, Any], key: str, where: str) -> list[str]:
        v = d.get(key)
        if v is None:
            return []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.err(where, "must be a list of strings")
        return list(v)
