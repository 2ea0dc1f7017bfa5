"""A fronted service (``ml-env serve``) under faults, on the real engine: clients that go away
mid-body leave no tracebacks in the scoring container's log, and a scoring container that dies
is restarted by the engine while the front answers at once instead of waiting for it."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from python_on_whales import docker

from ml_env_tasks.serve import local
from ml_env_tasks.serve.local import ServeOptions

from .test_serve import GOOD, LIGHT, leftovers

pytestmark = pytest.mark.docker

CRASHING = (
    GOOD
    + """
def _crash_on(data):
    if data.get("crash"):
        os._exit(1)  # as an OOM kill or a fault in native code ends the process: no answer
_run = run
def run(raw):
    _crash_on(json.loads(raw))
    return _run(raw)
"""
)


@pytest.fixture
def service(ws):
    env = ws.spec(LIGHT.format(base=ws.lab["base_image_python"]), name="light.toml")
    (ws.dir / "app").mkdir()
    (ws.dir / "app" / "score.py").write_text(CRASHING)
    (ws.dir / "model").mkdir()
    (ws.dir / "model" / "factor.txt").write_text("2")
    opts = ServeOptions(environment=str(env), entry=ws.dir / "app" / "score.py", models={"": ws.dir / "model"},
                        build=ws.opts(), port=0)  # fmt: skip
    svc = local.start(opts, unique=True, front=True)
    try:
        local.wait_ready(svc)
        yield svc
    finally:
        local.remove(svc)
    assert leftovers() == []


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def abandon_body(port: int) -> None:
    """A request whose body stops a tenth of the way: the client closes its connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(
            b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )
        s.sendall(b'{"x": [' + b"1, " * 3000)
        time.sleep(0.3)  # forwarded to the scoring container, which is reading it


def log_lines(cid: str) -> list[str]:
    return docker.container.logs(cid).splitlines()


def test_a_client_gone_mid_body_leaves_at_most_a_line_in_the_log(service) -> None:
    before = len(log_lines(service.container_id))
    for port in (port_of(service.url), port_of(service.backend_url)):  # through the front, and to the server itself
        for _ in range(3):
            abandon_body(port)
    time.sleep(1)
    assert requests.post(service.url + "/score", json={"x": [1]}, timeout=10).json() == {"y": [2.0]}
    new = log_lines(service.container_id)[before:]
    assert not [x for x in new if "Traceback" in x or "Exception" in x], "\n".join(new[:60])
    assert len(new) <= 6, "\n".join(new[:60])  # at most one line for each of the six


def test_a_dead_scoring_container_is_said_at_once_and_restarted(service) -> None:
    t0 = time.monotonic()
    try:
        crashed = requests.post(service.url + "/score", json={"x": [1], "crash": True}, timeout=15)
        assert crashed.status_code == 502
    except requests.ConnectionError:
        pass
    assert time.monotonic() - t0 < 5
    answers = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        t1 = time.monotonic()
        try:
            r = requests.post(service.url + "/score", json={"x": [1]}, timeout=10)
        except requests.RequestException as e:
            pytest.fail(f"no answer within 10 s while the scoring container was down: {e}")
        answers.append((r.status_code, round(time.monotonic() - t1, 2)))
        assert time.monotonic() - t1 < 5, answers  # never the ~68 s wait of a dead backend
        if r.status_code == 200:
            break
        assert r.status_code in (502, 503), (r.status_code, r.text)
        time.sleep(0.2)
    assert answers and answers[-1][0] == 200, answers
    info = docker.container.inspect(service.container_id)
    assert info.restart_count >= 1 and info.state.status == "running", answers
