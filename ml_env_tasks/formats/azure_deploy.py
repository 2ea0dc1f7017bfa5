"""Azure ML deployments in: an online deployment YAML (``az ml online-deployment``, with its
endpoint's YAML when given) or a v1 ``inferenceconfig.json`` (``az ml model deploy --ic``), as an
environment file and the ``ml-env`` commands that serve, smoke-test and package the same entry
script with the same model.

Mapped: ``code_configuration`` (``--entry CODE/SCRIPT``: the script's folder is the app root),
``model`` (a local folder → ``--model NAME=DIR``, mounted under ``AZUREML_MODEL_DIR`` by its
folder's name as Azure does; ``azureml:NAME:VERSION`` → the version registered here),
``environment`` (inline → the environment importer, plus the scoring server; registered
``azureml:NAME:VERSION`` → that version here), ``environment_variables`` (→ ``[env]``),
``endpoint_name`` (→ the service's ``--name``), ``request_settings.request_timeout_ms`` (→
``--scoring-timeout-ms``). Instance types, scaling, probes, traffic and authentication have no
meaning for a service on this engine: one warning line each (``azure_fields.DEPLOYMENT``).

The files are untrusted: read bounded, fields type-checked, paths resolved inside the project.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit

from ..catalog import DEFAULT_BASE
from ..errors import SpecError, UsageError
from ..safe.grammar import MODEL_NAME, SERVICE_NAME, matches, printable
from ..safe.paths import MAX_TEXT_FILE, project_root, read_inside, resolve_inside
from ..safe.untrusted import json_loads
from ..safe.yamlsafe import load_yaml
from .azure_common import Imported, _carry, _conda, _read, _registry, _start
from .azure_fields import DEPLOYMENT, ENDPOINT, INFERENCE_CONFIG, _Fields, triage
from .azure_job import _environment, _Job, _shown

__all__ = ["ImportedDeployment", "import_deployment", "import_inference_config", "cases_from_request"]

NO_SERVER = "no Azure scoring server in its dependencies: inference = true (ml-env's own server)"


@dataclass
class ImportedDeployment:
    """An environment (``environment``, inline: written with ``-o``; or ``env_ref``, registered
    here) and what the ``serve``/``smoke-test``/``package`` commands take besides."""

    environment: Imported | None
    env_ref: str | None
    entry: Path
    models: list[tuple[str, Path]] = field(default_factory=list)  # ("" or NAME, folder)
    registered_model: str | None = None  # NAME:VERSION, registered here
    service: str | None = None
    options: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def commands(
        self, env_file: Path | None, *, registry: str | None = None, cases: Path | None = None
    ) -> list[list[str]]:
        """The ``ml-env`` commands, in order, each as it runs (without ``ml-env``)."""
        env = self.env_ref or (str(env_file) if env_file else None)
        if env is None:
            raise UsageError(
                "the deployment's environment is inline: give -o FILE.toml to write it; the commands then name that file"
            )
        entry = ["--entry", _shown(self.entry)]
        out: list[list[str]] = []
        served = [f"{n}={_shown(p)}" if n else _shown(p) for n, p in self.models]
        if self.registered_model:
            if not registry:
                raise UsageError(
                    f"the model is registered ({self.registered_model}): give --registry, where it is registered here",
                    hint="ml-env model register NAME DIR --registry R; or point model.path at its folder",
                )
            folder = "models/" + self.registered_model.replace(":", "-")
            out.append(["model", "download", self.registered_model, folder, "--registry", registry])
            served = [folder]
        models = [w for m in served for w in ("--model", m)]
        name = ["--name", self.service] if self.service else []
        out.append(["serve", "--env", env, *entry, *models, *name, *self.options])
        if cases is not None:
            out.append(["smoke-test", "--env", env, *entry, *models, *self.options, "--cases", str(cases)])
        if registry and (self.registered_model or len(served) == 1):
            out.append(["package", "--env", env, *entry, "--model", self.registered_model or served[0],
                        "--registry", registry])  # fmt: skip
        return out

    def text(self, *args: Any, **kw: Any) -> str:
        return "\n".join(shlex.join(["ml-env", *c]) for c in self.commands(*args, **kw))


def cases_from_request(request: Path) -> bytes:
    """A smoke-test case from the request file ``az ml online-endpoint invoke --request-file`` takes:
    its body sent as it is, a 200 expected."""
    data = _read(request)
    try:
        body: dict[str, Any] = {"request": json_loads(data, error=SpecError, file=str(request))}
    except ValueError:  # not JSON: sent as text (nesting too deep is a SpecError)
        body = {"request_text": data.decode("utf-8", errors="replace")}
    return (json.dumps({"name": printable(request.name, 80), **body}) + "\n").encode()


def _inference(imp: Imported, w: list[str], prefix: str) -> None:
    """A deployment's environment serves: the scoring server, when its dependencies chose none."""
    if "inference" not in imp.doc:
        imp.doc.add("inference", True)
        w.append(f"{prefix}: {NO_SERVER}")


def _endpoint(path: Path, endpoint_name: str | None, w: list[str]) -> str:
    data = load_yaml(_read(path), file=str(path))
    if not isinstance(data, dict):
        raise SpecError("expected a YAML mapping at the top", file=str(path))
    schema = data.get("$schema")
    if isinstance(schema, str) and "onlineendpoint" not in schema.lower():
        raise SpecError(ENDPOINT["$schema"].note, file=str(path), key="$schema")
    w += [f"{path.name}: {line}" for line in triage(data, ENDPOINT, file=path)]
    name = _Fields(path).text(data, "name", "name")
    if name is None:
        raise SpecError("is required: the endpoint's name", file=str(path), key="name")
    if endpoint_name and endpoint_name != name:
        raise SpecError(f"names endpoint {printable(endpoint_name, 40)!r}, the endpoint YAML {printable(name, 40)!r}",
                        file=str(path), key="name")  # fmt: skip
    return name


def import_deployment(
    src: Path, data: dict[str, Any], stem: str | None, import_environment: Callable[..., Imported],
    *, endpoint: Path | None = None,
) -> ImportedDeployment:  # fmt: skip
    """An online deployment YAML (already parsed, bounded); ``import_environment`` is
    ``azure.import_v2``, passed in so the modules stay one-way."""
    j = _Job(src, data)
    schema = data.get("$schema")
    if isinstance(schema, str) and "onlinedeployment" not in schema.lower():
        raise j.err("$schema", DEPLOYMENT["$schema"].note)
    w = j.warnings  # the inline environment's go here too
    w += triage(data, DEPLOYMENT, file=src)
    service = j.text(data, "endpoint_name", "endpoint_name")
    if endpoint is not None:
        service = _endpoint(endpoint, service, w)
    if service is not None and not matches(SERVICE_NAME, service):
        raise j.err("endpoint_name", "is not a service name (letters, digits, '.', '_', '-')")
    cc = j.table(data, "code_configuration", "code_configuration")
    code, script = (
        j.text(cc, "code", "code_configuration.code"),
        j.text(cc, "scoring_script", "code_configuration.scoring_script"),
    )
    if code is None or script is None:
        raise j.err("code_configuration", "needs code and scoring_script: the folder and the script ml-env serves",
                    hint="a deployment without a scoring script (MLflow, Triton) is not served here")  # fmt: skip
    folder = j.local(code, "code_configuration.code", "code folder")
    entry = resolve_inside(
        folder, script, folder, file=j.file, key="code_configuration.scoring_script", what="scoring script"
    )
    if not entry.is_file():
        raise j.err("code_configuration.scoring_script", "must be a file inside the code folder")
    if entry.parent != folder:
        w.append(f"code_configuration.scoring_script: the app root is the script's own folder "
                 f"({_shown(entry.parent)}), not the code folder")  # fmt: skip
    environment, env_ref = _environment(j, stem, import_environment)
    variables = {str(k): v for k, v in j.table(data, "environment_variables", "environment_variables").items()}
    if environment is not None:
        _inference(environment, w, "environment")
        _variables(j, environment, variables)
    elif variables:
        w.append(f"environment_variables: not imported: the registered environment {env_ref} is used as it is "
                 "(add them to its [env])")  # fmt: skip
    models, registered = _model(j, w)
    options = []
    timeout = j.table(data, "request_settings", "request_settings").get("request_timeout_ms")
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
            raise j.err("request_settings.request_timeout_ms", "must be a positive number of milliseconds")
        options = ["--scoring-timeout-ms", str(timeout)]
    return ImportedDeployment(environment, env_ref, entry, models, registered, service, options, w)


def _variables(j: _Job, env: Imported, variables: dict[str, Any]) -> None:
    if not variables:
        return
    table = env.doc.get("env")
    if table is None:
        table = tomlkit.table()
        env.doc.add("env", table)
    for k, v in variables.items():
        if isinstance(v, (dict, list)) or v is None:
            raise j.err(f"environment_variables.{printable(k, 60)}", "must be a string")
        table[k] = str(v)  # the deployment's value wins over the environment's, as in Azure


def _model(j: _Job, w: list[str]) -> tuple[list[tuple[str, Path]], str | None]:
    raw = j.data.get("model")
    if raw is None:
        return [], None
    rel = raw if isinstance(raw, str) else j.text(j.table(j.data, "model", "model"), "path", "model.path")
    where = "model" if isinstance(raw, str) else "model.path"
    if rel is None:
        raise j.err("model", "azureml:NAME:VERSION, or a mapping with path: the model's folder")
    if rel.startswith("azureml:") and "://" not in rel:  # azureml://datastores/...: a cloud path, below
        parts = rel.split(":")
        if len(parts) != 3 or not matches(MODEL_NAME, parts[1]) or not parts[2].isdigit():
            raise j.err(where, "only azureml:NAME:VERSION (a version registered here) or a local path can be mapped",
                        hint="download the model and give model: {path: DIR}")  # fmt: skip
        w.append(f"{where}: {rel} is the version registered here under that name; its files sit at "
                 "AZUREML_MODEL_DIR itself (Azure nests a folder model under its folder's name)")  # fmt: skip
        return [], f"{parts[1]}:{parts[2]}"
    path = j.local(rel, where, "model")
    if path.is_file():
        w.append(
            f"{where}: a file: its folder {_shown(path.parent)} is mounted at AZUREML_MODEL_DIR, not the file alone"
        )
        return [("", path.parent)], None
    if not matches(MODEL_NAME, path.name):
        w.append(f"{where}: the folder's name is no model name: its files sit at AZUREML_MODEL_DIR itself")
        return [("", path)], None
    return [(path.name, path)], None


# --- inferenceconfig.json (v1) ------------------------------------------------------------


def import_inference_config(
    jp: Path, data: dict[str, Any], stem: str | None, v1_environment: Callable[..., Imported]
) -> ImportedDeployment:
    """``inferenceconfig.json``: its environment inline (``v1_environment``, passed in), or the
    older base image, conda file and Dockerfile steps. The model is the command line's."""
    f = _Fields(jp)
    w = triage(data, INFERENCE_CONFIG, file=jp)
    base_dir = jp.parent
    source = f.text(data, "sourceDirectory", "sourceDirectory") or "."
    entry_rel = f.text(data, "entryScript", "entryScript") or ""
    folder = resolve_inside(base_dir, source, _root(jp), file=str(jp), key="sourceDirectory", what="source folder")
    entry = resolve_inside(folder, entry_rel, _root(jp), file=str(jp), key="entryScript", what="entry script")
    if not entry.is_file():
        raise f.err("entryScript", "must be a file")
    older = [k for k in ("baseImage", "baseImageRegistry", "condaFile", "extraDockerfileSteps") if data.get(k)]
    env_data = f.table(data, "environment", "environment")
    if env_data and older:
        raise f.err(older[0], "goes with environment in Azure neither: the environment says it")
    if env_data:
        imp = v1_environment(base_dir, jp, env_data, stem, "environment.")
        w += imp.warnings
        imp.warnings = w
    else:
        imp = _older(jp, data, f, stem, w)
    _inference(imp, w, "environment" if env_data else "condaFile")
    description = f.text(data, "description", "description")
    if description and "description" not in imp.doc:
        imp.doc.add("description", description)
    w.append("the model is not in inferenceconfig.json (az ml model deploy -m NAME:VERSION): "
             "add --model DIR to the commands")  # fmt: skip
    return ImportedDeployment(imp, None, entry, warnings=w)


def _root(jp: Path) -> Path:
    return project_root(jp.parent)


def _older(jp: Path, data: dict[str, Any], f: _Fields, stem: str | None, w: list[str]) -> Imported:
    """The environment of an inference config without one: a base image (Azure's default one
    has no equivalent: ml-env's default base), its Dockerfile steps, a conda file."""
    doc, more, name = _start(jp, "the inference config", None)
    w += more
    image = f.text(data, "baseImage", "baseImage")
    base = tomlkit.table()
    steps_rel = f.text(data, "extraDockerfileSteps", "extraDockerfileSteps")
    if steps_rel:
        _, steps = read_inside(jp.parent, steps_rel, _root(jp), file=str(jp), key="extraDockerfileSteps",
                               what="Dockerfile steps", limit=MAX_TEXT_FILE)  # fmt: skip
        text = f"FROM {image or DEFAULT_BASE}\n" + steps.decode("utf-8", errors="replace")
        base.add("dockerfile_text", tomlkit.string(text, multiline=True))
    else:
        base.add("image", image or DEFAULT_BASE)
    if not image:
        base.comment("Azure's default base image has no equivalent here: ml-env's default base")
    _registry(f, f.table(data, "baseImageRegistry", "baseImageRegistry"), "baseImageRegistry", base, w)
    doc.add("base", base)
    files: dict[str, bytes] = {}
    conda_rel = f.text(data, "condaFile", "condaFile")
    if conda_rel:
        pyt = tomlkit.table()
        _conda(_carry(jp.parent, conda_rel, file=jp, key="condaFile", what="conda file"),
               f"{stem or name}.conda.yml", files, pyt, doc, w)  # fmt: skip
        doc.add("python", pyt)
    return Imported(name, doc, w, files)
