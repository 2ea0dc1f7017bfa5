"""The Engine API client against an engine of our own on a unix socket (no Docker here): what
it sends (create bodies, chunked uploads, pull credentials), how it reads (multiplexed logs,
bounded bodies) and how engine errors become one clear error. The real engine is exercised by
every Docker test that runs or serves a container."""

from __future__ import annotations

import base64
import http.server
import json
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from ml_env_tasks.engine import Engine
from ml_env_tasks.engine.api import MAX_BODY, EngineAPI, EngineAPIError, NotFound
from ml_env_tasks.engine.buildlog import MAX_LOG_LINE
from ml_env_tasks.engine.resources import Resources
from ml_env_tasks.errors import EngineError

ID = "sha256:" + "b" * 64
IMG = "127.0.0.1:5000/ml-envs/x:" + "a" * 64

Answer = tuple[int, bytes] | Callable[["_Engine"], None]


class _Engine(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    answers: dict[tuple[str, str], Answer] = {}
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        path = self.path.split("?")[0]
        self.seen.append((self.command, self.path, dict(self.headers), body))
        answer = self.answers.get((self.command, path), (404, b'{"message":"No such thing"}'))
        if callable(answer):
            answer(self)
            return
        _reply(self, *answer)

    do_GET = do_POST = do_PUT = do_DELETE = _handle  # noqa: N815 - http.server's names

    def log_message(self, *a: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


def _reply(h: _Engine, status: int, out: bytes) -> None:
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(out)))
    h.end_headers()
    h.wfile.write(out)


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextmanager
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answers: dict[tuple[str, str], Answer]) -> Iterator[Engine]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    sock = tmp_path / "docker.sock"
    _Engine.answers, _Engine.seen = answers, []
    srv = _UnixServer(str(sock), _Engine)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{sock}")
    try:
        yield Engine()
    finally:
        srv.shutdown()
        srv.server_close()


def ok(doc: object, status: int = 200) -> tuple[int, bytes]:
    return status, json.dumps(doc).encode()


def test_local_image_found_missing_and_malformed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = f"/images/{IMG}/json"
    with engine(tmp_path, monkeypatch, {("GET", path): ok({"Id": ID})}) as e:
        assert e.local_image_id(IMG) == ID
        assert e.local_image_id("ml-envs/other:1") is None
    with engine(tmp_path / "b", monkeypatch, {("GET", path): ok({"Id": "sha256:x\nInjected"})}) as e:
        with pytest.raises(EngineError, match="not one"):
            e.local_image_id(IMG)


@pytest.mark.parametrize(
    "answer, words",
    [
        ((500, b'{"message":"boom\\u001b[31m at the engine"}'), "boom"),
        ((500, b"<html>proxy error</html>"), "proxy error"),
        ((200, b"not json"), "not JSON"),
        ((200, b'{"Id": "' + b"a" * (MAX_BODY + 10) + b'"}'), "too large"),
    ],
)
def test_engine_errors_are_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: tuple[int, bytes], words: str
) -> None:
    with engine(tmp_path, monkeypatch, {("GET", f"/images/{IMG}/json"): answer}) as e:
        with pytest.raises(EngineError) as err:
            e.local_image_id(IMG)
    assert words in str(err.value) and "\x1b" not in str(err.value) and len(str(err.value)) < 700


def test_no_engine_is_not_reachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(EngineError, match="not reachable"):
        Engine().local_image_id(IMG)


def test_a_reference_cannot_change_the_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with engine(tmp_path, monkeypatch, {}) as e:
        assert e.local_image_id("x:1 HTTP/1.1\r\nX-Evil: 1\r\n\r\nGET /containers?a=1#") is None
    ((_, path, headers, _),) = _Engine.seen
    assert "\r" not in path and " " not in path and "?" not in path and "X-Evil" not in headers


def test_create_sends_what_docker_run_would(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {("POST", "/containers/create"): ok({"Id": "c1"}, 201)}
    with engine(tmp_path, monkeypatch, answers) as e:
        box = e.containers.create(
            "img:1", [], name="svc", envs={"A": "1", "B": "x=y"}, volumes=[("/src", "/mnt/code", "ro")],
            labels={"ml-env.run": "r1"}, workdir="/mnt/code", user="1000:1000",
            resources=Resources(cpus=1.5, memory=2**30, shm_size=2**29, gpus="device=0,1"), ports={5001: 8080},
        )  # fmt: skip
    assert box.id == "c1" and box.name == "svc"
    method, path, _, body = _Engine.seen[-1]
    assert (method, path) == ("POST", "/containers/create?name=svc")
    doc = json.loads(body)
    assert "Cmd" not in doc  # the image's own CMD
    assert doc["Env"] == ["A=1", "B=x=y"] and doc["User"] == "1000:1000" and doc["Tty"] is False
    hc = doc["HostConfig"]
    assert hc["Binds"] == ["/src:/mnt/code:ro"] and hc["NanoCpus"] == 1_500_000_000
    assert hc["Memory"] == 2**30 and hc["ShmSize"] == 2**29
    assert hc["DeviceRequests"][0]["DeviceIDs"] == ["0", "1"] and hc["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert hc["PortBindings"] == {"5001/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}
    assert doc["ExposedPorts"] == {"5001/tcp": {}}
    # whatever runs in it cannot gain privileges nor use root's capabilities
    assert hc["SecurityOpt"] == ["no-new-privileges"] and hc["CapDrop"] == ["ALL"] and "CapAdd" not in hc


def test_a_missing_image_is_pulled_with_dockers_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "dockercfg"
    cfg.mkdir()
    (cfg / "config.json").write_text(
        json.dumps({"auths": {"reg.example:5000": {"auth": base64.b64encode(b"u:p4ss").decode()}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(cfg))
    pulled: list[bool] = []

    def pull(h: _Engine) -> None:
        pulled.append(True)
        _reply(h, 200, b'{"status":"Pulling"}\n{"status":"Done"}\n')

    def create(h: _Engine) -> None:  # the engine has the image only once it was pulled
        _reply(h, *(ok({"Id": "c2"}, 201) if pulled else (404, b'{"message":"No such image: x"}')))

    answers: dict[tuple[str, str], Answer] = {("POST", "/images/create"): pull, ("POST", "/containers/create"): create}
    with engine(tmp_path, monkeypatch, answers) as e:
        e.containers.create("reg.example:5000/team/img@sha256:" + "c" * 64, ["python", "x.py"], name="r",
                            envs={}, volumes=[], labels={}, workdir="/", user=None)  # fmt: skip
    pull = [s for s in _Engine.seen if s[0] == "POST" and s[1].startswith("/images/create")][0]
    assert "fromImage=reg.example%3A5000%2Fteam%2Fimg" in pull[1] and "tag=sha256%3A" + "c" * 64 in pull[1]
    auth = json.loads(base64.urlsafe_b64decode(pull[2]["X-Registry-Auth"]))
    assert auth == {"username": "u", "password": "p4ss", "serveraddress": "reg.example:5000"}
    assert json.loads(_Engine.seen[-1][3])["Cmd"] == ["python", "x.py"]


def test_a_failed_pull_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        ("POST", "/images/create"): (200, b'{"status":"Pulling"}\n{"error":"manifest unknown","errorDetail":{}}\n')
    }
    with engine(tmp_path, monkeypatch, answers) as e:
        with pytest.raises(EngineError, match="manifest unknown"):
            e.containers.create("reg:5000/x:1", [], name="r", envs={}, volumes=[], labels={}, workdir="/", user=None)


def test_the_snapshot_is_streamed_chunked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts = [b"a" * 70_000, b"", b"b" * 10, b"c" * 300_000]
    with engine(tmp_path, monkeypatch, {("PUT", "/containers/c1/archive"): (200, b"")}) as e:
        e.containers.put_tar("c1", iter(parts))
    method, path, headers, body = _Engine.seen[-1]
    assert path == "/containers/c1/archive?path=%2F" and headers["Transfer-Encoding"] == "chunked"
    assert body == b"".join(parts)


def _frames(*pieces: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([kind, 0, 0, 0]) + len(p).to_bytes(4, "big") + p for kind, p in pieces)


def test_logs_are_demultiplexed_into_bounded_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _frames((1, b"epoch 1\nep"), (2, b"och 2 warn\n"), (1, b"x" * (MAX_LOG_LINE + 5)), (1, b"\nlast"))

    def logs(h: _Engine) -> None:  # chunked, split mid-header, as a real engine may
        h.send_response(200)
        h.send_header("Content-Type", "application/vnd.docker.multiplexed-stream")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        for i in range(0, len(stream), 5):
            piece = stream[i : i + 5]
            h.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
        h.wfile.write(b"0\r\n\r\n")

    with engine(tmp_path, monkeypatch, {("GET", "/containers/c1/logs"): logs}) as e:
        lines = list(e.containers.logs("c1"))
    assert lines[:2] == ["epoch 1", "epoch 2 warn"]
    assert lines[2] == "x" * MAX_LOG_LINE and lines[3] == "xxxxx" and lines[4] == "last"
    assert all(len(x) <= MAX_LOG_LINE for x in lines)


def test_gone_containers_and_quiet_removal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with engine(tmp_path, monkeypatch, {}) as e:
        assert e.containers.state("nope").status == "gone"
        e.containers.remove("nope")  # already gone: not an error
        e.containers.stop("nope", 1)
        assert e.containers.logs_text("nope") == ""
    assert ("DELETE", "/containers/nope?force=1&v=1") in [(m, p) for m, p, _, _ in _Engine.seen]


def test_list_by_label_filters_on_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    listed = [{"Id": "c1", "Names": ["/ml-env-serve-a"], "State": "running", "Labels": {"ml-env.serve": "a"},
               "Ports": [{"PrivatePort": 5001, "PublicPort": 8080, "IP": "127.0.0.1"}, {"PrivatePort": 22}]}]  # fmt: skip
    with engine(tmp_path, monkeypatch, {("GET", "/containers/json"): ok(listed)}) as e:
        (info,) = e.containers.list_by_label("ml-env.serve=a")
    assert info.name == "ml-env-serve-a" and len(info.ports) == 1 and info.ports[0].host_port == 8080
    path = _Engine.seen[-1][1]
    assert "filters=" in path and json.loads(parse_qs(path.split("?")[1])["filters"][0]) == {
        "label": ["ml-env.serve=a"]
    }


def test_a_failed_build_ends_with_the_tools_own_lines() -> None:
    """Plain BuildKit progress as a failed pip step prints it: the message keeps pip's last
    lines (timestamps off, pip's notices skipped); a missing python3 is named with a way out."""
    from ml_env_tasks.engine.buildlog import failure_message

    pip_fail = [
        "#7 [stage-0 3/3] RUN --mount=type=secret,id=ml-env-ca,required=false pip install … (157 more characters)",
        "#7 0.412 Collecting six==1.16.0",
        "#7 0.727 ERROR: Could not find a version that satisfies the requirement nope==9 (from versions: none)",
        "#7 0.728 ERROR: No matching distribution found for nope==9",
        "#7 0.729 [notice] A new release of pip is available",
        '#7 ERROR: process "/bin/sh -c pip install -r r.txt" did not complete successfully: exit code: 1',
        "------",
        " > [stage-0 3/3] RUN pip install:",
        "0.728 ERROR: No matching distribution found for nope==9",
        "------",
        'ERROR: failed to solve: process "/bin/sh -c pip install -r r.txt" did not complete successfully: exit code: 1',
    ]
    msg, hint = failure_message(pip_fail)
    assert msg.startswith('the build failed at step: process "/bin/sh -c pip install')
    assert msg.endswith("its last lines: Collecting six==1.16.0 / ERROR: Could not find a version that satisfies "
                        "the requirement nope==9 (from versions: none) / ERROR: No matching distribution found for nope==9")  # fmt: skip
    assert hint is None
    no_python = [
        "#6 [stage-0 2/3] RUN python3 -m venv /opt/ml-env",
        "#6 0.082 /bin/sh: python3: not found",
        '#6 ERROR: process "/bin/sh -c python3 -m venv /opt/ml-env" did not complete successfully: exit code: 127',
        'ERROR: failed to solve: process "/bin/sh -c python3 -m venv /opt/ml-env" did not complete successfully: exit code: 127',
    ]
    msg, hint = failure_message(no_python)
    assert msg.startswith("the base image has no python3") and "exit code 127" in msg
    assert hint is not None and "user_managed_dependencies" in hint and "python.interpreter" in hint
    # a script of the user's own failing with 127 is not taken for a missing interpreter
    other = [x.replace("python3 -m venv /opt/ml-env", "./setup.sh").replace("python3", "./setup.sh") for x in no_python]
    assert failure_message(other)[0].startswith("the build failed at step:")
    assert failure_message(["ERROR: failed to solve: something else"]) == (
        "the build failed at step: something else",
        None,
    )


class _RemovalAPI:
    """An Engine API whose DELETE fails ``failures`` times (409, as a busy removal answers) before
    the container goes; GET /json answers as the container's state is then."""

    path = staticmethod(EngineAPI.path)

    def __init__(self, failures: int) -> None:
        self.failures, self.deletes, self.gone = failures, 0, False

    def call(self, method: str, path: str, **_kw: object) -> object:
        if method == "DELETE":
            self.deletes += 1
            if self.gone:
                raise NotFound(404, "no such container")
            if self.deletes <= self.failures:
                raise EngineAPIError(409, "removal of container abc is already in progress")
            self.gone = True
            return None
        if self.gone:
            raise NotFound(404, "no such container")
        return {"State": {"Status": "removing"}}


def test_a_container_removal_the_engine_refuses_is_asked_again_until_gone() -> None:
    """A removal answered with an error left the container (and its name) behind, silently: the
    next start under that name said 'already running'. It is asked again until gone, or said."""
    from ml_env_tasks.engine.containers import Containers

    api = _RemovalAPI(failures=2)
    Containers(api).remove("abc")  # type: ignore[arg-type]
    assert api.gone and api.deletes == 3
    stuck = _RemovalAPI(failures=10**6)
    with pytest.raises(EngineError, match="container abc could not be removed: removal of container abc"):
        Containers(stuck).remove("abc", within=0.6)  # type: ignore[arg-type]
    Containers(_RemovalAPI(failures=0)).remove("abc")  # type: ignore[arg-type]
