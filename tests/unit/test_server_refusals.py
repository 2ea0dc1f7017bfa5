"""The scoring server's one line when an entry script cannot start, read without starlette: the
server module runs here with stand-ins for starlette and uvicorn (it imports nothing else), and the
host side turns that line into the error the user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_env_tasks.serve.services import exit_reason

SERVER = Path(__file__).resolve().parents[2] / "ml_env_tasks" / "serve" / "server.py"
STUBS = {
    "starlette/__init__.py": "",
    "starlette/applications.py": "class Starlette:\n    def __init__(self, **kw): pass\n",
    "starlette/concurrency.py": "async def run_in_threadpool(f, *a, **k):\n    return f(*a, **k)\n",
    "starlette/requests.py": "class ClientDisconnect(Exception): pass\nclass Request: pass\n",
    "starlette/responses.py": "class Response: pass\nclass JSONResponse(Response): pass\nclass PlainTextResponse(Response): pass\n",
    "starlette/routing.py": "class Route:\n    def __init__(self, *a, **k): pass\n",
    "uvicorn/__init__.py": "",
    "uvicorn/protocols/__init__.py": "",
    "uvicorn/protocols/http/__init__.py": "",
    "uvicorn/protocols/http/h11_impl.py": "class H11Protocol: pass\n",
}
START = "import asyncio, server\nasyncio.run(server.lifespan(None).__aenter__())\n"


def start(tmp_path: Path, score: str) -> subprocess.CompletedProcess:
    stubs = tmp_path / "stubs"
    for name, text in STUBS.items():
        (stubs / name).parent.mkdir(parents=True, exist_ok=True)
        (stubs / name).write_text(text)
    (stubs / "server.py").write_text(SERVER.read_text())
    app = tmp_path / "app"
    app.mkdir()
    (app / "score.py").write_text(score)
    env = {**os.environ, "PYTHONPATH": str(stubs), "AML_APP_ROOT": str(app), "AZUREML_ENTRY_SCRIPT": "score.py"}
    return subprocess.run([sys.executable, "-c", START], env=env, capture_output=True, text=True, timeout=60)


RAWHTTP_V1 = (
    "from azureml.contrib.services.aml_request import AMLRequest, rawhttp\ndef init(): pass\ndef run(r): pass\n"
)


def test_an_sdk_v1_rawhttp_script_says_to_set_the_azureml_server(tmp_path: Path) -> None:
    """Reported: a raw traceback ending `No module named 'azureml'`, then "init() failed?", with no
    word of `[inference] server = "azureml"`; the failure is at import."""
    p = start(tmp_path, RAWHTTP_V1)
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr
    (line,) = p.stderr.strip().splitlines()
    assert line.startswith("ml-env-serve: the entry script ") and "imports azureml.contrib.services.aml_request" in line
    assert 'set inference.server = "azureml" in the environment file' in line
    assert "azureml_inference_server_http.api.aml_request" in line  # where azmlinfsrv 1.5 has @rawhttp
    why, hint = exit_reason("starting\n" + p.stderr)
    assert why == ": " + line.removeprefix("ml-env-serve: ") and hint is None


@pytest.mark.parametrize(
    "score,said",
    [
        ("from azureml.core.model import Model\ndef init(): pass\ndef run(r): pass\n",
         "imports azureml.core.model (Azure ML's SDK v1), which this image lacks"),
        ("import nosuchmodule\ndef init(): pass\ndef run(r): pass\n",
         "importing the entry script failed (before init()); exiting"),
        ("def init():\n    raise RuntimeError('no model')\ndef run(r): pass\n", "init() failed; exiting"),
    ],
)  # fmt: skip
def test_the_last_line_says_at_which_step_it_stopped(tmp_path: Path, score: str, said: str) -> None:
    p = start(tmp_path, score)
    assert p.returncode == 3 and said in p.stderr.strip().splitlines()[-1], p.stderr
    why, hint = exit_reason(p.stderr)
    assert said in why and hint == ("its traceback is above" if "Traceback" in p.stderr else None)


def test_a_log_without_the_servers_line_keeps_the_old_hint() -> None:
    assert exit_reason("gunicorn: worker failed\n") == ("", "init() failed? its traceback is above")
