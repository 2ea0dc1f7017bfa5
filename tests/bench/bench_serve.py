"""Scoring server start (``nox -s bench -- serve``): time from the container's start (the
engine's ``State.StartedAt``) to the first 200 from ``POST /score``, for a minimal score.py.

Baseline, same run, same image: a bare uvicorn serving a three-line ASGI app — the floor of
starting Python and an ASGI server in that container. A client on the host polls every 5 ms.
Checked: the answer is the entry script's (or the bare app's) own body; neither image is pulled.
Goal: <= 0.5 s. Also reported: the time from the ``serve`` call itself (resolving the environment,
creating and starting the container) to the first 200, and requests/s from 4 clients for 5 s.
Writes .bench/serve.json.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import figure, free_port, invalid, lab, rounds, run, write  # noqa: E402

from ml_env_tasks.build import BuildOptions  # noqa: E402
from ml_env_tasks.serve import local  # noqa: E402

SCORE = "def init():\n    pass\n\n\ndef run(raw_data):\n    return {'answer': 42}\n"
BARE = (
    "async def app(scope, receive, send):\n"
    "    if scope['type'] != 'http':\n        return\n"
    "    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'application/json')]})\n"
    "    await send({'type': 'http.response.body', 'body': b'{\"answer\": 42}'})\n"
)
BODY = json.dumps({"data": [1, 2, 3]}).encode()


def started_at(container: str) -> float:
    """The engine's start time of a container, as epoch seconds (same host clock as ours)."""
    s = run(["docker", "inspect", "-f", "{{.State.StartedAt}}", container]).stdout.strip()
    head, _, frac = s.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))


def first_200(port: int, limit: float = 30.0) -> tuple[float, bytes]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                return time.time(), body
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.005)
    invalid(f"no 200 from 127.0.0.1:{port} within {limit:.0f} s")


def main() -> int:
    lb = lab()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-serve-"))
    try:
        (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        spec = work / "serve.toml"
        spec.write_text(f'name = "bench-serve"\ninference = true\n[base]\nimage = "{lb["base_image_python"]}"\n')
        app = work / "app"
        app.mkdir()
        (app / "score.py").write_text(SCORE)
        (app / "bare.py").write_text(BARE)
        model = work / "model"
        model.mkdir()
        opts = BuildOptions(
            registry=lb["registry"], repository="bench/serve", network=lb["build_network"], log_dir=work / "logs",
            ca_bundle=Path(lb["ca_bundle"]) if lb.get("ca_bundle") else None,
        )  # fmt: skip
        serve = local.ServeOptions(
            environment=str(spec), entry=app / "score.py", models={"": model}, port=0, name="bench-serve", build=opts
        )
        print("bench: building (or reusing) the inference environment")
        svc = local.start(serve)
        image = svc.image
        try:
            first_200(svc.port, 300)
        finally:
            local.remove(svc)

        def present() -> None:
            if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode != 0:
                invalid(f"{image} is not in the engine: the round would time a pull")

        n = rounds(7)
        print(f"bench: first 200 after container start, {n} rounds each (ml-env's server, bare uvicorn)")
        ours, base, whole = [], [], []
        rps = 0.0
        for i in range(n):
            present()
            called = time.time()
            svc = local.start(serve)
            try:
                t, body = first_200(svc.port)
                if json.loads(body) != {"answer": 42}:
                    invalid(f"ml-env's server answered {body[:200]!r}, not the entry script's result")
                ours.append(t - started_at(svc.container_id))
                whole.append(t - called)
                if i == n - 1:
                    rps = load(svc.port)
            finally:
                local.remove(svc)
            present()
            port = free_port()
            cid = run(["docker", "run", "-d", "--rm", "-p", f"127.0.0.1:{port}:5001", "-v", f"{app}:/app:ro", "-w", "/app",
                       "--entrypoint", "", image, "python", "-m", "uvicorn", "bare:app", "--host", "0.0.0.0",
                       "--port", "5001", "--log-level", "warning"]).stdout.strip()  # fmt: skip
            try:
                t, body = first_200(port)
                if json.loads(body) != {"answer": 42}:
                    invalid("the bare uvicorn answered something else")
                base.append(t - started_at(cid))
            finally:
                subprocess.run(["docker", "rm", "-f", cid], capture_output=True)
        o, b = statistics.median(ours), statistics.median(base)
        write(
            "serve",
            {
                "first_200": figure(
                    ours,
                    base,
                    baseline_name="bare uvicorn + 3-line ASGI app, same image",
                    goal="<= 0.5 s",
                    met=o <= 0.5,
                    requests_per_s_4_clients=rps,
                )
            },  # fmt: skip
            [
                f"first 200:          {o:.2f}s after container start (bare uvicorn {b:.2f}s; goal <= 0.5 s); "
                f"{rps:.0f} requests/s from 4 clients"
            ],  # fmt: skip
        )
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def load(port: int, seconds: float = 5.0, clients: int = 4) -> float:
    stop = time.monotonic() + seconds
    counts = [0] * clients

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while time.monotonic() < stop:
            conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                counts[i] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


if __name__ == "__main__":
    sys.exit(main())
