"""Scoring server start (``nox -s bench -- serve``): time from the container's start (the
engine's ``State.StartedAt``) to the first 200 from ``POST /score``, for a minimal score.py.

Baseline, same run, same image: a bare uvicorn serving a three-line ASGI app — the floor of
starting Python and an ASGI server in that container. A client on the host polls every 5 ms.
Checked: the answer is the entry script's (or the bare app's) own body; neither image is pulled.
Goal: <= 0.5 s. Also reported: the time from the ``serve`` call itself (resolving the environment,
creating and starting the container) to the first 200, and requests/s from 4 clients for 5 s.

Then the two scoring servers side by side (``compare_servers``): ml-env's built-in one and
Microsoft's azmlinfsrv (``inference.server = "azureml"``), same base image, same entry script,
same model: first 200 after container start and requests/s. Checked: both answered the same
result, and each answer came from the server it is credited to (azmlinfsrv sets
``x-ms-server-version: azmlinfsrv/…``; the built-in server does not).
Writes .bench/serve.json (``bench_serve.py servers``: only the comparison, .bench/serve-servers.json).
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

from _common import bench_project, figure, free_port, invalid, lab, rounds, run, write  # noqa: E402

from ml_env_tasks.build import BuildOptions  # noqa: E402
from ml_env_tasks.serve import local  # noqa: E402

SCORE = "def init():\n    pass\n\n\ndef run(raw_data):\n    return {'answer': 42}\n"
# the comparison's model: a weight file read in init(), applied in run()
MODEL_SCORE = """
import json, os
def init():
    global w
    w = [float(x) for x in open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "w.txt")).read().split()]
def run(raw_data):
    x = json.loads(raw_data)["data"]
    return {"score": sum(a * b for a, b in zip(w, x))}
"""
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


def first_200(port: int, limit: float = 30.0, headers: dict[str, str] | None = None) -> tuple[float, bytes]:
    """Poll ``POST /score`` every 5 ms; the time of the first 200 and its body. ``headers``, when
    given, receives the answer's headers (lower-cased names)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
            if r.status == 200:
                if headers is not None:
                    headers.update({k.lower(): v for k, v in r.getheaders()})
                return time.time(), body
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.005)
    invalid(f"no 200 from 127.0.0.1:{port} within {limit:.0f} s")


def compare_servers(lb: dict, work: Path, opts: BuildOptions) -> tuple[dict, str]:
    """First 200 after container start and requests/s, built-in server vs azmlinfsrv, same model."""
    app = work / "cmp-app"
    app.mkdir()
    (app / "score.py").write_text(MODEL_SCORE)
    model = work / "cmp-model"
    model.mkdir()
    (model / "w.txt").write_text("0.5 1.5 2.0")
    expected = {"score": 0.5 * 1 + 1.5 * 2 + 2.0 * 3}
    specs = {
        "builtin": 'name = "bench-serve-builtin"\ninference = true\n',
        "azureml": 'name = "bench-serve-azureml"\n[inference]\nserver = "azureml"\n',
    }
    services = {}
    for server, head in specs.items():
        spec = work / f"cmp-{server}.toml"
        spec.write_text(head + f'[base]\nimage = "{lb["base_image_python"]}"\n')
        services[server] = local.ServeOptions(
            environment=str(spec), entry=app / "score.py", models={"": model}, port=0, name=f"bench-{server}",
            build=opts,
        )  # fmt: skip
        print(f"bench: building (or reusing) the {server} server's environment")
        svc = local.start(services[server])
        try:
            first_200(svc.port, 600)
        finally:
            local.remove(svc)
    n = rounds(5)
    print(f"bench: built-in server vs azmlinfsrv, same model: first 200 after container start, {n} rounds each")
    firsts: dict[str, list[float]] = {"builtin": [], "azureml": []}
    rps: dict[str, float] = {}
    for i in range(n):
        for server, serve in services.items():
            svc = local.start(serve)
            try:
                if subprocess.run(["docker", "image", "inspect", svc.image], capture_output=True).returncode != 0:
                    invalid(f"{svc.image} is not in the engine: the round would time a pull")
                headers: dict[str, str] = {}
                t, body = first_200(svc.port, 120, headers)
                if json.loads(body) != expected:
                    invalid(f"the {server} server answered {body[:200]!r}, not the model's {expected}")
                version = headers.get("x-ms-server-version", "")
                if (server == "azureml") != version.startswith("azmlinfsrv/"):
                    invalid(f"the {server} round was not answered by that server (x-ms-server-version {version!r})")
                firsts[server].append(t - started_at(svc.container_id))
                if i == n - 1:
                    rps[server] = load(svc.port)
            finally:
                local.remove(svc)
    b, a = statistics.median(firsts["builtin"]), statistics.median(firsts["azureml"])
    fig = figure(
        firsts["builtin"], firsts["azureml"], baseline_name="azmlinfsrv 1.5.1 (inference.server = \"azureml\"), same image base, entry script and model",
        goal="report", met=True, requests_per_s_4_clients={"builtin": rps["builtin"], "azureml": rps["azureml"]},
    )  # fmt: skip
    line = (
        f"built-in vs azmlinfsrv: first 200 {b:.2f}s vs {a:.2f}s after container start; "
        f"{rps['builtin']:.0f} vs {rps['azureml']:.0f} requests/s from 4 clients (same answer from both)"
    )
    return fig, line


def servers_only() -> int:
    """``bench_serve.py servers``: the comparison alone (it prunes nothing)."""
    lb = lab()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-servers-"))
    try:
        (work / "pyproject.toml").write_text("[project]\nname = 'bench'\n")
        fig, line = compare_servers(lb, work, _opts(lb, work))
        write("serve-servers", {"builtin_vs_azureml": fig}, [line])
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _opts(lb: dict, work: Path) -> BuildOptions:
    return BuildOptions(
        registry=lb["registry"], repository="bench/serve", network=lb["build_network"], log_dir=work / "logs",
        ca_bundle=Path(lb["ca_bundle"]) if lb.get("ca_bundle") else None,
    )  # fmt: skip


def main() -> int:
    lb = lab()
    work = Path(tempfile.mkdtemp(prefix="ml-env-bench-serve-"))
    try:
        spec = bench_project(work, "bench-serve", lb["base_image_python"], file="serve.toml", top="inference = true\n")
        app = work / "app"
        app.mkdir()
        (app / "score.py").write_text(SCORE)
        (app / "bare.py").write_text(BARE)
        model = work / "model"
        model.mkdir()
        opts = _opts(lb, work)
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
        cmp_fig, cmp_line = compare_servers(lb, work, opts)
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
                ),
                "builtin_vs_azureml": cmp_fig,
            },  # fmt: skip
            [
                f"first 200:          {o:.2f}s after container start (bare uvicorn {b:.2f}s; goal <= 0.5 s); "
                f"{rps:.0f} requests/s from 4 clients",
                cmp_line,
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
    sys.exit(servers_only() if sys.argv[1:] == ["servers"] else main())
