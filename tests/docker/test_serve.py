"""Inference images, the scoring server, the local service and smoke tests, on the real engine."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import requests

from ml_env_tasks.build import build
from ml_env_tasks.registry import RegistryClient
from ml_env_tasks.runs import RunOptions, train
from ml_env_tasks.serve import local
from ml_env_tasks.serve.local import ServeOptions, ServiceFailed
from ml_env_tasks.serve.smoke import run_smoke_test, write_reports

from .helpers import ml_env

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parents[2]

LIGHT = 'name = "light"\ninference = true\n[base]\nimage = "{base}"\n'
GOOD = """
import json, os, time
def init():
    global factor
    factor = float(open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "factor.txt")).read())
    print("init done, factor", factor, flush=True)
def run(raw):
    data = json.loads(raw)
    if data.get("sleep"):
        time.sleep(data["sleep"])
    if data.get("boom"):
        raise ValueError("boom requested")
    return {"y": [x * factor for x in data["x"]]}
"""


def leftovers() -> list[str]:
    from .helpers import mine

    return mine("ml-env.serve")


@pytest.fixture
def app(ws) -> tuple[Path, Path, Path]:
    """(environment file, entry script, model dir) of a light inference environment."""
    env = ws.spec(LIGHT.format(base=ws.lab["base_image_python"]), name="light.toml")
    app_dir = ws.dir / "app"
    app_dir.mkdir()
    (app_dir / "score.py").write_text(GOOD)
    model = ws.dir / "model"
    model.mkdir()
    (model / "factor.txt").write_text("2")
    return env, app_dir / "score.py", model


def opts(ws, env: Path, entry: Path, model: Path, **kw) -> ServeOptions:
    # a name of its own: a service's name is the engine's, and anything else serving "light" on the
    # shared engine meanwhile would find this one and take it for its own
    kw.setdefault("name", f"t-{os.urandom(4).hex()}")
    return ServeOptions(environment=str(env), entry=entry, models={"": model}, build=ws.opts(), **kw)


def cases(ws, *objs: dict) -> Path:
    f = ws.dir / "cases.jsonl"
    f.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return f


def test_routes_of_the_scoring_server(ws, app) -> None:
    env, entry, model = app
    svc = local.start(opts(ws, env, entry, model, port=0, scoring_timeout_ms=700))
    try:
        local.wait_ready(svc)
        assert requests.get(svc.url + "/").status_code == 200
        assert requests.get(svc.url + "/score").text == "Healthy"
        r = requests.post(svc.url + "/score", json={"x": [1, 2.5]})
        assert r.status_code == 200 and r.json() == {"y": [2.0, 5.0]} and "x-ms-run-fn-exec-ms" in r.headers
        boom = requests.post(svc.url + "/score", json={"x": [1], "boom": True})
        assert boom.status_code == 500 and "boom requested" in boom.json()["message"]
        slow = requests.post(svc.url + "/score", json={"x": [1], "sleep": 3})
        assert slow.status_code == 500 and "timed out after 700 ms" in slow.json()["message"]
        assert (
            requests.post(
                svc.url + "/score", data=b"\xff\xfe", headers={"Content-Type": "application/json"}
            ).status_code
            == 400
        )
        assert requests.post(svc.url + "/score", data="x", headers={"Content-Type": "image/png"}).status_code == 415
        assert requests.get(svc.url + "/swagger.json").status_code == 404
        assert requests.options(svc.url + "/score").status_code == 200
        assert "init done, factor 2.0" in local.logs(svc.name)
    finally:
        local.remove(svc)
    assert leftovers() == []


def test_swagger_when_the_script_declares_a_schema(ws, app) -> None:
    env, entry, model = app
    entry.write_text(GOOD + "\ninput_schema = {'type': 'object'}\noutput_schema = {'type': 'object'}\n")
    svc = local.start(opts(ws, env, entry, model, port=0))
    try:
        local.wait_ready(svc)
        doc = requests.get(svc.url + "/swagger.json").json()
        assert doc["swagger"] == "2.0" and "/score" in doc["paths"]
    finally:
        local.remove(svc)


def test_init_failure_is_a_clear_failure_with_the_traceback(ws, app) -> None:
    env, entry, model = app
    entry.write_text("def init():\n    raise RuntimeError('cannot load the model')\ndef run(raw):\n    return raw\n")
    with pytest.raises(ServiceFailed) as exc:
        run_smoke_test(opts(ws, env, entry, model), cases(ws, {"request": {"x": [1]}}), ready_timeout=60)
    assert "exited" in str(exc.value)
    assert "Traceback" in exc.value.details and "RuntimeError: cannot load the model" in exc.value.details
    assert leftovers() == []


def test_smoke_test_failures_show_expected_and_got(ws, app) -> None:
    env, entry, model = app
    f = cases(
        ws,
        {"name": "doubles", "request": {"x": [1, 2]}, "expect_json": {"y": [2, 4]}},
        {"name": "wrong answer", "request": {"x": [1]}, "expect_json": {"y": [3]}},
        {"name": "run raises", "request": {"x": [1], "boom": True}, "expect_json": {"y": [2]}},
        {
            "name": "run raises, expected",
            "request": {"x": [1], "boom": True},
            "expect_status": 500,
            "expect_subset": {},
        },
    )
    report = run_smoke_test(opts(ws, env, entry, model), f, repeat=3)
    by = {c.name: c for c in report.cases}
    assert by["doubles"].passed and len(by["doubles"].latencies_ms) == 3
    assert by["wrong answer"].message == "$.y[0]: expected 3, got 2.0"
    assert (
        by["run raises"].message.startswith("expected status 200, got 500")
        and "boom requested" in by["run raises"].message
    )
    assert by["run raises, expected"].passed
    assert (report.passed, report.failed) == (2, 2)
    assert "ValueError: boom requested" in report.logs_tail
    assert report.p50_ms > 0 and report.p95_ms >= report.p50_ms and report.max_ms >= report.p95_ms
    js, xml = write_reports(report, ws.dir / "reports", f)
    assert json.loads(js.read_text())["failed"] == 2
    assert xml.read_text().count("<failure") == 2
    assert leftovers() == []


def test_cli_smoke_test_exit_codes_and_port_handling(ws, app) -> None:
    env, entry, model = app
    ok = cases(ws, {"request": {"x": [1]}, "expect_json": {"y": [2]}})
    args = ["--env", str(env), "--entry", str(entry), "--model", str(model), *ws.cli_args()]
    p = ml_env("smoke-test", *args, "--cases", str(ok), "--report-dir", str(ws.dir / "r"), "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["passed"] == 1 and out["failed"] == 0 and Path(out["junit"]).exists()
    (ws.dir / "bad.jsonl").write_text('{"request": {"x": [1]}, "expect_json": {"y": [5]}}\n')
    p = ml_env("smoke-test", *args, "--cases", str(ws.dir / "bad.jsonl"), "--report-dir", str(ws.dir / "r"))
    assert p.returncode == 1 and "FAIL" in p.stdout and "expected 5, got 2.0" in p.stdout
    assert "last lines of the scoring container's log" in p.stderr
    # a taken port is a clear error; --port 0 finds a free one
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        taken = s.getsockname()[1]
        p = ml_env("serve", *args, "--port", str(taken), "--detach")
        assert p.returncode == 2 and f"port {taken} on 127.0.0.1 is taken" in p.stderr
    p = ml_env("serve", *args, "--port", "0", "--detach", "--name", "svc-test", "--json")
    assert p.returncode == 0, p.stderr
    url = json.loads(p.stdout)["url"]
    assert requests.post(url + "/score", json={"x": [4]}).json() == {"y": [8.0]}
    assert ml_env("serve", "stop", "svc-test").returncode == 0
    assert leftovers() == []


def test_a_training_environment_is_not_an_inference_one(ws, app) -> None:
    _, entry, model = app
    env = ws.spec(f'name = "notinf"\n[base]\nimage = "{ws.lab["base_image_python"]}"\n', name="n.toml")
    # --port 0: a taken port (the lab's registry has 5001) is refused first, before the environment is read
    p = ml_env("serve", "--env", str(env), "--entry", str(entry), "--model", str(model), "--port", "0", timeout=60)
    assert p.returncode == 2 and "inference: this environment has no scoring server (set inference = true)" in p.stderr


def _layers(ref: str, lab: dict) -> list[str]:
    host, rest = ref.split("/", 1)
    repo, tag = rest.split("@")[0].rsplit(":", 1)
    c = RegistryClient(host)
    doc = json.loads(c.get_manifest(repo, tag)[1])
    if "manifests" in doc:
        m = next(m for m in doc["manifests"] if (m.get("platform") or {}).get("os") != "unknown")
        doc = json.loads(c.get_manifest(repo, m["digest"])[1])
    return [layer["digest"] for layer in doc["layers"]]


def test_example_trains_then_serves_and_shares_layers(ws) -> None:
    """The demo path: train the example, smoke-test examples/serve with the model it made."""
    o = ws.opts(repository=None)
    r = train(
        RunOptions(
            environment=str(ROOT / "envs/sklearn.toml"),
            source=ROOT / "examples/train",
            script="train.py",
            args=("--alpha", "0.5"),
            runs_dir=ws.dir / "runs",
            build=o,
        ),
        on_line=lambda _l: None,
        info=lambda _m: None,
    )
    assert r.status == "completed"
    report = run_smoke_test(
        ServeOptions(
            environment=str(ROOT / "envs/sklearn-inference.toml"),
            entry=ROOT / "examples/serve/score.py",
            models={"": r.outputs / "model"},
            build=o,
        ),
        ROOT / "examples/serve/cases.jsonl",
        repeat=3,
    )
    assert report.failed == 0, [(c.name, c.message) for c in report.cases]
    # both built here, into this test's repositories: the inference build must reuse every
    # dependency layer of the training build (same cache key), adding only its own layer
    for name in ("sklearn", "sklearn-inference"):
        ws.extra_repos.append((ws.lab["registry"], f"{ws.repo}/{name}"))
    training = build(ROOT / "envs/sklearn.toml", ws.opts(repository=f"{ws.repo}/sklearn"))
    inference = build(ROOT / "envs/sklearn-inference.toml", ws.opts(repository=f"{ws.repo}/sklearn-inference"))
    assert training.built and inference.built
    t, i = _layers(training.image, ws.lab), _layers(inference.image, ws.lab)
    assert i[: len(t)] == t and len(i) == len(t) + 1  # every dependency layer shared; one layer added
    assert leftovers() == []


def test_the_entry_folder_of_a_checkout_reaches_the_container_without_git(ws, app) -> None:
    """A CI checkout keeps its token in .git/config (actions/checkout's extraheader): the entry's
    folder goes in as its snapshot, so a score.py a pull request wrote cannot read it."""
    env, entry, model = app
    git = entry.parent / ".git"
    git.mkdir()
    (git / "config").write_text('[http "https://github.com/"]\n\textraheader = AUTHORIZATION: basic FAKE-TOKEN-abc\n')
    (entry.parent / "kept.txt").write_text("kept")
    entry.write_text(
        GOOD + "\ndef run(raw):\n    import os\n    root = os.environ['AML_APP_ROOT']\n"
        "    return {'git': os.path.exists(os.path.join(root, '.git')), 'kept': os.path.exists(os.path.join(root, 'kept.txt'))}\n"
    )
    report = run_smoke_test(
        opts(ws, env, entry, model), cases(ws, {"request": {}, "expect_json": {"git": False, "kept": True}})
    )
    assert report.passed == 1, [c.message for c in report.cases]
    assert leftovers() == []


def test_a_stopped_container_left_under_the_name_does_not_hold_it(ws, app) -> None:
    """A container of the service's name that has exited (or that the engine is still removing) is
    not a running service: start removes it and goes on (seen in CI: 'already running' just after
    the test before had removed its service)."""
    from ml_env_tasks import engine

    env, entry, model = app
    c = engine.current().containers
    name = f"stale-{os.urandom(4).hex()}"
    box = c.create(ws.lab["base_image_tiny"], ["true"], name=f"ml-env-serve-stale-{ws.repo[-6:]}", envs={},
                   volumes=[], labels={local.LABEL: name}, workdir="/", user=None)  # fmt: skip
    try:
        box.start()
        c.wait(box.id)
        svc = local.start(opts(ws, env, entry, model, port=0, name=name))
        try:
            local.wait_ready(svc)
        finally:
            local.remove(svc)
        assert c.state(box.id).status == "gone"
    finally:
        c.remove(box.id)
    assert leftovers() == []


def test_serve_list_shows_the_callers_services_unless_asked_for_all(ws) -> None:
    """On a shared engine `serve list` shows the services the caller (its uid) started; another
    user's, and one an older ml-env started without an owner, only with --all, with the uid."""
    from ml_env_tasks import engine
    from ml_env_tasks.serve.services import OWNER

    c = engine.current().containers
    boxes = []
    try:
        for name, owner in ((f"theirs-{ws.repo[-6:]}", "4242"), (f"mine-{ws.repo[-6:]}", str(os.getuid()))):
            box = c.create(ws.lab["base_image_tiny"], ["sleep", "60"], name=f"ml-env-serve-{name}", envs={},
                           volumes=[], labels={local.LABEL: name, OWNER: owner}, workdir="/", user=None)  # fmt: skip
            boxes.append(box.id)
            box.start()
        mine = {s["name"]: s for s in json.loads(ml_env("serve", "list", "--json").stdout)}
        every = {s["name"]: s for s in json.loads(ml_env("serve", "list", "--all", "--json").stdout)}
        assert f"mine-{ws.repo[-6:]}" in mine and f"theirs-{ws.repo[-6:]}" not in mine
        assert every[f"theirs-{ws.repo[-6:]}"]["owner"] == "4242"
        text = ml_env("serve", "list", "--all").stdout
        assert f"theirs-{ws.repo[-6:]}" in text and "(uid 4242)" in text
    finally:
        for b in boxes:
            c.remove(b)
