"""Azure online deployments (and their endpoint) in: an environment file and the `ml-env serve`,
`smoke-test` and `package` commands that run as printed; what has no meaning here, one line each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ml_env_tasks import SpecError, spec
from ml_env_tasks.errors import UsageError
from ml_env_tasks.formats.azure import ImportedDeployment, import_source

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "azure" / "online-deployment"


@pytest.fixture
def d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(FIX, tmp_path / "dep")
    (tmp_path / ".git").mkdir()
    monkeypatch.chdir(tmp_path / "dep")
    return tmp_path / "dep"


def edit(d: Path, **changes) -> Path:
    data = yaml.safe_load((d / "blue-deployment.yml").read_text())
    for k, v in changes.items():
        if v is None:
            data.pop(k, None)
        else:
            data[k] = v
    (d / "blue-deployment.yml").write_text(yaml.safe_dump(data))
    return Path("blue-deployment.yml")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ml_env_tasks", *args], cwd=cwd, capture_output=True, text=True)


def test_a_deployment_becomes_an_environment_and_commands(d: Path) -> None:
    imp = import_source(Path("blue-deployment.yml"), stem="blue", endpoint=Path("endpoint.yml"))
    assert isinstance(imp, ImportedDeployment)
    serve, smoke, package = imp.commands(Path("envs/blue.toml"), registry="localhost:5000", cases=Path("envs/c.jsonl"))
    assert serve == ["serve", "--env", "envs/blue.toml", "--entry", "onlinescoring/score.py",
                     "--model", "model=model", "--name", "my-endpoint", "--scoring-timeout-ms", "3000"]  # fmt: skip
    assert smoke[:7] == [
        "smoke-test",
        "--env",
        "envs/blue.toml",
        "--entry",
        "onlinescoring/score.py",
        "--model",
        "model=model",
    ]
    assert smoke[-2:] == ["--cases", "envs/c.jsonl"]
    assert package == ["package", "--env", "envs/blue.toml", "--entry", "onlinescoring/score.py",
                       "--model", "model=model", "--registry", "localhost:5000"]  # fmt: skip
    # what has no meaning for a local service: one line each, naming the field (instance_count 1 says nothing)
    heads = sorted(w.split(":")[0].split(" ")[0] for w in imp.warnings)
    assert heads == ["endpoint.yml", "environment", "instance_type", "name"], imp.warnings
    assert "endpoint.yml: auth_mode key: not imported: the local service has no authentication" in "\n".join(
        imp.warnings
    )
    # the environment serves (the scoring server added), and the deployment's variables are baked in
    imp.environment.write(Path("envs/blue.toml"))
    env = spec.load(Path("envs/blue.toml"))
    assert env.inference and env.inference_server == "builtin" and env.variables == {"FACTOR_FILE": "factor.txt"}
    assert env.base.image == "127.0.0.1:5000/base/debian-python:bookworm" and env.conda_python == "3.11"


def test_the_printed_commands_parse_as_the_cli_takes_them(d: Path) -> None:
    from ml_env_tasks.fronts.cli import build_parser

    p = cli("import", "blue-deployment.yml", "--endpoint", "endpoint.yml", "--request", "sample-request.json",
            "-o", "envs/blue.toml", "--registry", "localhost:5000", "--json", cwd=d)  # fmt: skip
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert sorted(got["files"]) == ["envs/blue.cases.jsonl", "envs/blue.conda.yml", "envs/blue.toml"]
    assert [c[1] for c in got["commands"]] == ["serve", "smoke-test", "package"]
    for argv in got["commands"]:
        args = build_parser(argv[1:]).parse_args(argv[1:])
        assert args.env == "envs/blue.toml"
    case = json.loads((d / "envs/blue.cases.jsonl").read_text())
    assert case == {"name": "sample-request.json", "request": {"data": [1, 2.5]}}
    assert p.stderr.count("warning: instance_type Standard_DS3_v2: not imported") == 1
    # the text form: one command a line, as a shell takes it
    p = cli("import", "blue-deployment.yml", "-o", "envs/again.toml", cwd=d)
    assert p.returncode == 0 and p.stdout.splitlines() == [
        "ml-env serve --env envs/again.toml --entry onlinescoring/score.py --model model=model --name my-endpoint "
        "--scoring-timeout-ms 3000"
    ], p.stdout


def test_a_registered_model_and_environment(d: Path) -> None:
    path = edit(d, model="azureml:digits:3", environment="azureml:team-env:2")
    imp = import_source(path)
    with pytest.raises(UsageError, match="give --registry"):
        imp.commands(None)
    download, serve, package = imp.commands(None, registry="localhost:5000")
    assert download == ["model", "download", "digits:3", "models/digits-3", "--registry", "localhost:5000"]
    assert serve[:6] == ["serve", "--env", "team-env:2", "--entry", "onlinescoring/score.py", "--model"]
    assert package[-4:] == ["--model", "digits:3", "--registry", "localhost:5000"]
    w = "\n".join(imp.warnings)
    assert "environment_variables: not imported: the registered environment team-env:2" in w
    assert "model: azureml:digits:3 is the version registered here" in w


@pytest.mark.parametrize(
    "changes,key,msg",
    [
        ({"model": "azureml:digits@latest"}, "model", "only azureml:NAME:VERSION"),
        ({"model": {"path": "azureml://datastores/x/paths/m"}}, "model.path", "cloud model"),
        ({"model": {"path": "/etc"}}, "model.path", "outside the project"),
        ({"model": {"path": "model", "type": "triton_model"}}, "model.type", "only custom and MLflow"),
        ({"code_configuration": {"code": "onlinescoring"}}, "code_configuration", "needs code and scoring_script"),
        ({"code_configuration": {"code": "onlinescoring", "scoring_script": "../x.py"}},
         "code_configuration.scoring_script", "outside"),
        ({"environment": None}, "environment", "is required"),
        ({"environment": {"conda_file": "environment/conda.yaml"}}, "environment.image", "needs image or build"),
        ({"request_settings": {"request_timeout_ms": "soon"}}, "request_settings.request_timeout_ms", "positive"),
        ({"endpoint_name": "bad name!"}, "endpoint_name", "not a service name"),
        ({"$schema": "https://azuremlschemas.azureedge.net/latest/kubernetesOnlineDeployment.schema.json",
          "instance_type": None, "environment": {"image": "x/y:1", "os_type": "windows"}}, "environment.os_type", "linux"),
    ],
)  # fmt: skip
def test_deployment_errors_name_the_key(d: Path, changes, key, msg) -> None:
    (d / "x.py").write_text("")  # beside the code folder, not in it
    with pytest.raises(SpecError, match=msg) as e:
        import_source(edit(d, **changes))
    assert e.value.key == key and e.value.exit_code == 2


def test_an_endpoint_that_names_another_endpoint_is_refused(d: Path) -> None:
    (d / "endpoint.yml").write_text("name: other\nauth_mode: key\n")
    with pytest.raises(SpecError, match="names endpoint 'my-endpoint'") as e:
        import_source(Path("blue-deployment.yml"), endpoint=Path("endpoint.yml"))
    assert e.value.file == "endpoint.yml" and e.value.key == "name"


def test_an_endpoint_alone_names_the_way_forward(d: Path) -> None:
    p = cli("import", "endpoint.yml", cwd=d)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert "ml-env import DEPLOYMENT.yml --endpoint endpoint.yml" in p.stderr


def test_an_inline_environment_needs_an_output_and_nothing_is_written_without_it(d: Path) -> None:
    p = cli("import", "blue-deployment.yml", cwd=d)
    assert p.returncode == 2 and "inline: give -o FILE.toml" in p.stderr and p.stdout == ""
    assert not list(d.rglob("*.toml"))


def test_a_model_file_and_a_scoring_script_in_a_subfolder_are_said(d: Path) -> None:
    (d / "onlinescoring" / "sub").mkdir()
    (d / "onlinescoring" / "sub" / "score.py").write_text("def init(): pass\ndef run(r): return r\n")
    imp = import_source(edit(d, model={"path": "model/factor.txt"},
                             code_configuration={"code": "onlinescoring", "scoring_script": "sub/score.py"}))  # fmt: skip
    assert imp.commands(Path("e.toml"))[0][3:7] == ["--entry", "onlinescoring/sub/score.py", "--model", "model"]
    w = "\n".join(imp.warnings)
    assert "code_configuration.scoring_script: the app root is the script's own folder" in w
    assert "model.path: a file: its folder model is mounted at AZUREML_MODEL_DIR" in w


def test_a_request_file_is_untrusted(d: Path) -> None:
    from ml_env_tasks.formats.azure_deploy import cases_from_request

    (d / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpecError) as e:
        cases_from_request(d / "deep.json")
    assert e.value.exit_code == 2 and "\n" not in str(e.value)
    (d / "text.txt").write_text("not json\n")
    assert json.loads(cases_from_request(d / "text.txt")) == {"name": "text.txt", "request_text": "not json\n"}
