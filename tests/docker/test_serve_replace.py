"""``ml-env serve --replace``: a running service swapped for another model with no failed request."""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import pytest
from python_on_whales import docker

from .helpers import ml_env
from .test_serve import GOOD, LIGHT

pytestmark = pytest.mark.docker


def containers(name: str) -> list[str]:
    found = docker.container.list(all=True, filters=[("label", f"ml-env.serve={name}")])
    found += docker.container.list(all=True, filters=[("label", f"ml-env.serve.backend={name}")])
    return sorted(c.name for c in found)


class Client(threading.Thread):
    """Requests in a tight loop, one on a kept-alive connection, the next on a new one, and so on:
    every answer (the factor it was computed with) or failure, in order."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.answers: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def ask(self, conn: http.client.HTTPConnection) -> None:
        conn.request("POST", "/score", body=b'{"x": [1]}', headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            self.failures.append(f"{r.status} {body[:200]!r}")
        else:
            self.answers.append(json.loads(body)["y"][0])

    def run(self) -> None:
        kept = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.done.is_set():
            for conn in (kept, http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)):
                try:
                    self.ask(conn)
                except (OSError, http.client.HTTPException) as e:
                    self.failures.append(f"{type(e).__name__}: {e}")
                    if conn is kept:
                        kept = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if conn is not kept:
                    conn.close()


@pytest.fixture
def app(ws) -> tuple[list[str], Path]:
    """The serve arguments of a light environment (model factor 2), and a second model (factor 3)."""
    env = ws.spec(LIGHT.format(base=ws.lab["base_image_python"]), name="light.toml")
    (ws.dir / "app").mkdir()
    (ws.dir / "app" / "score.py").write_text(GOOD)
    for name, factor in (("m2", "2"), ("m3", "3")):
        (ws.dir / name).mkdir()
        (ws.dir / name / "factor.txt").write_text(factor)
    return ["--env", str(env), "--entry", str(ws.dir / "app" / "score.py"), *ws.cli_args()], ws.dir


def test_replace_swaps_the_model_with_no_failed_request(ws, app) -> None:
    args, d = app
    name = f"swap-{ws.repo[-6:]}"
    p = ml_env("serve", *args, "--model", str(d / "m2"), "--port", "0", "--detach", "--name", name, "--json")
    assert p.returncode == 0, p.stderr
    first = json.loads(p.stdout)
    port = first["port"]
    try:
        client = Client(port)
        client.start()
        # a slow request in flight on the old container when the front switches: it finishes there
        slow: dict = {}

        def ask_slow() -> None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            c.request("POST", "/score", body=b'{"x": [1], "sleep": 3}', headers={"Content-Type": "application/json"})
            r = c.getresponse()
            slow.update(status=r.status, body=json.loads(r.read()))

        slow_thread = threading.Thread(target=ask_slow)
        time.sleep(0.3)
        slow_thread.start()
        t0 = time.monotonic()
        p = ml_env("serve", "--replace", name, *args, "--model", str(d / "m3"), "--json")
        took = time.monotonic() - t0
        assert p.returncode == 0, p.stderr
        swapped = json.loads(p.stdout)
        time.sleep(0.5)
        client.done.set()
        client.join(30)
        slow_thread.join(30)
        print(f"\nreplace: {took:.2f}s in all, ready {swapped['ready_s']:.2f}s, switched {swapped['swap_s']:.2f}s; "
              f"{len(client.answers)} requests, {len(client.failures)} failed")  # fmt: skip
        assert client.failures == []
        answers = client.answers
        assert answers[0] == 2.0 and answers[-1] == 3.0 and set(answers) == {2.0, 3.0}
        switch = answers.index(3.0)
        assert all(a == 3.0 for a in answers[switch:])  # never back to the old model
        assert slow == {"status": 200, "body": {"y": [2.0]}}  # drained on the old container, not cut
        assert swapped["port"] == port and swapped["url"] == first["url"]
        assert swapped["container"] != first["container"]
        assert containers(name) == sorted([f"ml-env-serve-{name}", f"ml-env-backend-{name}-2"])  # the old one is gone
        listed = json.loads(ml_env("serve", "list", "--json").stdout)
        mine = [s for s in listed if s["name"] == name]
        assert len(mine) == 1 and mine[0]["state"] == "running" and mine[0]["url"] == first["url"]
        assert "init done, factor 3.0" in ml_env("serve", "logs", name).stdout

        # a new container that never gets ready: the old one keeps serving, its log tail is said
        bad = d / "bad"
        bad.mkdir()
        (bad / "score.py").write_text(
            "def init():\n    raise RuntimeError('no model here')\ndef run(raw):\n    return 1\n"
        )
        p = ml_env("serve", "--replace", name, *args[:2], "--entry", str(bad / "score.py"), *args[4:],
                   "--model", str(d / "m2"))  # fmt: skip
        assert p.returncode == 1 and "RuntimeError: no model here" in p.stderr, p.stderr
        assert p.stderr.strip().splitlines()[-1].startswith("ml-env: error: the scoring container exited (code 3)")
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("POST", "/score", body=b'{"x": [1]}', headers={"Content-Type": "application/json"})
        assert json.loads(c.getresponse().read()) == {"y": [3.0]}
        assert containers(name) == sorted([f"ml-env-serve-{name}", f"ml-env-backend-{name}-2"])
    finally:
        assert ml_env("serve", "stop", name).returncode == 0
    assert containers(name) == []
    assert not docker.network.exists(f"ml-env-serve-{name}")


def test_replace_needs_a_running_service(ws, app) -> None:
    args, d = app
    p = ml_env("serve", "--replace", "nothing-here", *args, "--model", str(d / "m2"))
    assert p.returncode == 2 and "no service named nothing-here is running" in p.stderr
    assert len(p.stderr.strip().splitlines()) <= 2 and "Traceback" not in p.stderr
