"""Azure entry scripts unchanged: ``inference.server = "azureml"`` runs Microsoft's azmlinfsrv;
the built-in server takes inference-schema decorated scripts too and refuses @rawhttp clearly.
Real builds on the lab, real containers, both servers."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import requests

from ml_env_tasks.serve import local
from ml_env_tasks.serve.local import ServeOptions, ServiceFailed
from ml_env_tasks.serve.smoke import run_smoke_test

from .helpers import ml_env

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]

# same packages on both sides: the built-in image has inference-schema itself, Azure's brings it
BUILTIN = 'name = "{name}"\ninference = true\n[base]\nimage = "{base}"\n[python]\npackages = ["numpy", "inference-schema==1.8"]\n'
AZUREML = 'name = "{name}"\n[inference]\nserver = "azureml"\n[base]\nimage = "{base}"\n[python]\npackages = ["numpy"]\n'

PLAIN = """
import json, os
def init():
    global factor
    factor = float(open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.txt")).read())
def run(raw):
    return {"y": [x * factor for x in json.loads(raw)["x"]]}
"""

DECORATED = """
import os
import numpy as np
from inference_schema.schema_decorators import input_schema, output_schema
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType

def init():
    global factor
    factor = float(open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.txt")).read())

@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]])))
@output_schema(StandardPythonParameterType({"row_sums": [6.0], "got": "ndarray"}))
def run(data):
    # the decorator turned the JSON list into an array of the sample's shape and dtype
    return {"row_sums": (data.sum(axis=1) * factor).tolist(), "got": type(data).__name__}
"""

RAWHTTP = """
import json
from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
from azureml_inference_server_http.api.aml_response import AMLResponse

def init():
    pass

@rawhttp
def run(request: AMLRequest):
    if request.method != "POST":
        return AMLResponse("POST only", 405)
    body = request.get_json()
    out = {"sum": sum(body["x"]), "probe": request.headers.get("X-Probe"), "args": request.args.get("k")}
    return AMLResponse(json.dumps(out), 418 if body.get("teapot") else 200, {"Content-Type": "application/json"})
"""

DECORATED_CASES = [
    {"name": "numpy rows", "request": {"data": [[1, 2, 3], [4, 5, 6]]},
     "expect_json": {"row_sums": [12.0, 30.0], "got": "ndarray"}},
    {"name": "no data key", "request": {"rows": [[1, 2, 3]]}, "expect_status": 400,
     "expect_subset": {"message": "A value is not provided for the 'data' parameter."}},
    {"name": "wrong column count", "request": {"data": [[1, 2]]}, "expect_status": 500},
]  # fmt: skip
PLAIN_CASES = [{"name": "doubles", "request": {"x": [1, 2.5]}, "expect_json": {"y": [2.0, 5.0]}}]
RAW_CASES = [{"name": "sum", "request": {"x": [1, 2, 3]}, "expect_subset": {"sum": 6}}]


def leftovers() -> list[str]:
    from .helpers import mine

    return mine("ml-env.serve")


@pytest.fixture
def setup(ws) -> dict[str, Path]:
    base = ws.lab["base_image_python"]
    out = {
        "builtin": ws.spec(BUILTIN.format(name="score-builtin", base=base), name="builtin.toml"),
        "azureml": ws.spec(AZUREML.format(name="score-azureml", base=base), name="azureml.toml"),
        "model": ws.dir / "model",
    }
    out["model"].mkdir()
    (out["model"] / "factor.txt").write_text("2")
    for name, text in (("plain", PLAIN), ("decorated", DECORATED), ("rawhttp", RAWHTTP)):
        (ws.dir / name).mkdir()
        (ws.dir / name / "score.py").write_text(text)
        out[name] = ws.dir / name / "score.py"
    return out


def cases(ws, name: str, objs: list[dict]) -> Path:
    f = ws.dir / f"{name}.jsonl"
    f.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return f


def opts(ws, env: Path, entry: Path, model: Path, **kw) -> ServeOptions:
    # a name of its own: a service's name is the engine's, and anything else serving "light" on the
    # shared engine meanwhile would find this one and take it for its own
    kw.setdefault("name", f"t-{os.urandom(4).hex()}")
    return ServeOptions(environment=str(env), entry=entry, models={"": model}, build=ws.opts(), **kw)


@pytest.mark.parametrize("server", ["builtin", "azureml"])
@pytest.mark.parametrize(
    "script,objs", [("plain", PLAIN_CASES), ("decorated", DECORATED_CASES)], ids=["plain", "decorated"]
)
def test_smoke_test_on_both_servers(ws, setup, server: str, script: str, objs: list[dict]) -> None:
    report = run_smoke_test(opts(ws, setup[server], setup[script], setup["model"]), cases(ws, script, objs))
    assert [(c.name, c.passed, c.message) for c in report.cases if not c.passed] == []
    assert report.passed == len(objs)
    assert leftovers() == []


def test_rawhttp_on_azureml_and_a_clear_refusal_on_the_builtin_server(ws, setup) -> None:
    report = run_smoke_test(opts(ws, setup["azureml"], setup["rawhttp"], setup["model"]), cases(ws, "raw", RAW_CASES))
    assert report.passed == 1, report.cases
    # full request access: headers, query string, the status the script chose
    svc = local.start(opts(ws, setup["azureml"], setup["rawhttp"], setup["model"], port=0))
    try:
        local.wait_ready(svc)
        r = requests.post(svc.url + "/score?k=v", json={"x": [4, 5], "teapot": True}, headers={"X-Probe": "p1"})
        assert r.status_code == 418 and r.json() == {"sum": 9, "probe": "p1", "args": "v"}
        assert requests.get(svc.url + "/score").text == "POST only"  # GET /score is run() here, not readiness
    finally:
        local.remove(svc)
    with pytest.raises(ServiceFailed) as exc:
        run_smoke_test(opts(ws, setup["builtin"], setup["rawhttp"], setup["model"]), cases(ws, "raw", RAW_CASES))
    log = exc.value.details
    line = [x for x in log.splitlines() if x.startswith("ml-env-serve:")]
    assert line == [
        "ml-env-serve: the entry script /var/azureml-app/score.py imports azureml_inference_server_http "
        '(Azure\'s scoring server): set inference.server = "azureml" in the environment file'
    ], log
    assert "Traceback" not in log
    assert leftovers() == []


def test_an_sdk_v1_rawhttp_script_on_the_builtin_server_names_the_setting(ws, setup) -> None:
    """Reported: a traceback ending `No module named 'azureml'`, then "init() failed?", and no word of
    `[inference] server = "azureml"`: the error now says it, and that the failure was at import."""
    (ws.dir / "v1raw").mkdir()
    script = ws.dir / "v1raw" / "score.py"
    script.write_text(RAWHTTP.replace("azureml_inference_server_http.api", "azureml.contrib.services"))
    with pytest.raises(ServiceFailed) as exc:
        run_smoke_test(opts(ws, setup["builtin"], script, setup["model"]), cases(ws, "raw", RAW_CASES))
    message = str(exc.value)
    assert "before it was ready: the entry script /var/azureml-app/score.py imports azureml.contrib.services" in message
    assert 'set inference.server = "azureml" in the environment file' in message and "init() failed?" not in message
    assert "Traceback" not in exc.value.details
    assert leftovers() == []


def _swagger(ws, setup, server: str) -> tuple[dict, dict]:
    svc = local.start(opts(ws, setup[server], setup["decorated"], setup["model"], port=0))
    try:
        local.wait_ready(svc)
        r = requests.get(svc.url + "/swagger.json")
        assert r.status_code == 200, r.text
        live = requests.get(svc.url + "/")
        assert live.status_code == 200 and live.text == "Healthy"
        return r.json(), dict(r.headers)
    finally:
        local.remove(svc)


@pytest.mark.parametrize("server", ["builtin", "azureml"])
def test_swagger_from_the_decorators_is_served(ws, setup, server: str) -> None:
    doc, headers = _swagger(ws, setup, server)
    assert doc["swagger"] == "2.0"
    data = doc["definitions"]["ServiceInput"]["properties"]["data"]
    assert data["type"] == "array" and data["items"]["type"] == "array"
    assert data["items"]["items"]["type"] == "number" and data["items"]["items"]["format"] == "double"
    assert doc["definitions"]["ServiceInput"]["example"] == {"data": [[1.0, 2.0, 3.0]]}
    out = doc["definitions"]["ServiceOutput"]
    assert out["properties"]["row_sums"]["type"] == "array" and out["properties"]["got"]["type"] == "string"
    post = [p for path, p in doc["paths"].items() if path.endswith("/score")][0]["post"]
    assert post["parameters"][0]["schema"] == {"$ref": "#/definitions/ServiceInput"}
    if server == "azureml":
        assert headers.get("x-ms-server-version", "").startswith("azmlinfsrv/1.5.1")


def test_cli_serve_and_smoke_test_with_azureml(ws, setup) -> None:
    args = ["--env", str(setup["azureml"]), "--entry", str(setup["decorated"]), "--model", str(setup["model"])]
    args += ws.cli_args()
    ok = cases(ws, "dec", DECORATED_CASES[:1])
    p = ml_env("smoke-test", *args, "--cases", str(ok), "--report-dir", str(ws.dir / "r"), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["passed"] == 1
    p = ml_env("serve", *args, "--port", "0", "--max-body", "100")
    assert p.returncode == 2 and "this image runs azmlinfsrv" in p.stderr and "Traceback" not in p.stderr
    p = ml_env("serve", *args, "--port", "0", "--detach", "--name", "azml-cli", "--json")
    assert p.returncode == 0, p.stderr
    url = json.loads(p.stdout)["url"]
    try:
        r = requests.post(url + "/score", json={"data": [[1, 1, 1]]})
        assert r.status_code == 200 and r.json() == {"row_sums": [6.0], "got": "ndarray"}
        logs = ml_env("serve", "logs", "azml-cli")
        assert "Azure ML Inferencing HTTP server v1.5.1" in logs.stdout + logs.stderr
    finally:
        assert ml_env("serve", "stop", "azml-cli").returncode == 0
    assert leftovers() == []


def test_smoke_test_action_with_azureml(ws, setup) -> None:
    from .test_actions import run_action

    inputs = {
        "env": str(setup["azureml"]),
        "entry": str(setup["plain"]),
        "model": str(setup["model"]),
        "cases": str(cases(ws, "plain", PLAIN_CASES)),
        "report-dir": str(ws.dir / "reports"),
        "registry": ws.lab["registry"],
        "repository": ws.repo,
        "network": ws.lab["build_network"],
        "ca-bundle": ws.lab.get("ca_bundle", ""),
        "install": "false",
        "python": sys.executable,  # this checkout's ml-env, not whatever python3 on PATH has
    }
    proc, outputs, summary = run_action(ROOT / "ci/github/smoke-test/action.yml", inputs, ws.dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert outputs["passed"] == "1" and outputs["failed"] == "0" and "1 passed, 0 failed" in summary
