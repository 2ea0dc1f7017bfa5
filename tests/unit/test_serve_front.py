"""The service's front (serve/front.py) run as its own process on loopback, before a stand-in
backend: malformed framing is answered, one client cannot hold every connection, a backend that
cannot be reached is said at once. Real sockets, bounded in count and time; every process and
socket this starts is stopped here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

FRONT = Path(__file__).resolve().parents[2] / "ml_env_tasks" / "serve" / "front.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Backend:
    """A stand-in scoring container: ``GET /weird`` answers a status of non-ASCII digits, anything
    else 200 ``ok``. One thread per connection, all daemon; ``close`` stops accepting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
                if head.startswith(b"GET /weird "):
                    conn.sendall(b"HTTP/1.1 \xb9\xb2\xb3 OK\r\nContent-Length: 2\r\n\r\nok")
                else:
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()


class Front:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        s = socket.socket()
        s.settimeout(5)
        s.bind((source, 0))
        s.connect(("127.0.0.1", self.port))
        return s

    def exchange(self, raw: bytes, source: str = "127.0.0.1", timeout: float = 5) -> bytes:
        """What the front answers to ``raw`` (until it closes, or ``timeout`` passes)."""
        with self.connect(source) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            return read_all(s, timeout)


def read_all(s: socket.socket, timeout: float) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            data = s.recv(65536)
        except (TimeoutError, ConnectionError):
            break
        if not data:
            break
        out += data
    return out


def start_front(tmp_path: Path, backend_port: int, **env: str) -> Iterator[Front]:
    control = tmp_path / "target.json"
    control.write_text(json.dumps({"generation": 1, "host": "127.0.0.1", "port": backend_port}))
    port = free_port()
    environ = dict(os.environ, ML_ENV_FRONT_CONTROL=str(control), ML_ENV_FRONT_PORT=str(port),
                   ML_ENV_FRONT_HOST="127.0.0.1", **env)  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(FRONT)], env=environ, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # its first control line: listening
        assert b"listening on" in line, line
        yield Front(proc, port)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend()
    yield b
    b.close()


@pytest.fixture
def front(tmp_path: Path, backend: Backend) -> Iterator[Front]:
    yield from start_front(tmp_path, backend.port, ML_ENV_FRONT_MAX_CONNECTIONS="8", ML_ENV_FRONT_MAX_PER_CLIENT="4")


def status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer[9:12])


def test_front_forwards_a_plain_request(front: Front) -> None:
    answer = front.exchange(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status(answer) == 200 and answer.endswith(b"ok")


@pytest.mark.parametrize("length", [b"\xb9", b"\xb2\xb3", b"1\xb9", b"+1", b"0x1"])
def test_a_content_length_of_non_ascii_digits_gets_400(front: Front, length: bytes) -> None:
    # '¹' (latin-1 0xb9) passes str.isdigit(), which int() then refuses: no answer at all, before
    answer = front.exchange(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n1")
    assert status(answer) == 400 and b"Content-Length" in answer


def test_a_backend_status_of_non_ascii_digits_gets_502(front: Front) -> None:
    assert status(front.exchange(b"GET /weird HTTP/1.1\r\nHost: x\r\n\r\n")) == 502


def test_one_client_cannot_take_every_connection(front: Front) -> None:
    """A client holding idle connections gets 503 beyond its share (4 of 8 here); a client from
    another address is still served."""
    hostile = [front.connect("127.0.0.1") for _ in range(8)]
    try:
        refused = [read_all(s, 1.0) for s in hostile[4:]]  # over its share: answered at once
        assert all(r.startswith(b"HTTP/1.1 503 ") for r in refused), refused
        answer = front.exchange(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n", source="127.0.0.2")
        assert status(answer) == 200
        # a connection of the hostile client's that closes frees its place
        hostile.pop(0).close()
        deadline = time.monotonic() + 5
        while True:
            answer = front.exchange(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n")
            if status(answer) == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert status(answer) == 200
    finally:
        for s in hostile:
            s.close()


def test_a_backend_that_refuses_gets_502_at_once(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there
    for front in start_front(tmp_path, dead):
        t0 = time.monotonic()
        answer = front.exchange(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n", timeout=10)
        assert status(answer) == 502 and b"not reachable" in answer
        assert time.monotonic() - t0 < 0.5


def test_a_backend_that_does_not_accept_gets_502_within_seconds(tmp_path: Path) -> None:
    """A backend whose connections hang (its accept queue full, as a dead container's address
    leaves a connect unanswered): the front gives up after one connect timeout, not 20 of them."""
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue: a connect beyond it is never answered
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(stuck.getsockname())
            fillers.append(f)
        time.sleep(0.2)
        for front in start_front(tmp_path, int(stuck.getsockname()[1])):
            t0 = time.monotonic()
            answer = front.exchange(b"GET /score HTTP/1.1\r\nHost: x\r\n\r\n", timeout=12)
            assert answer, "no answer within 12 s"
            assert status(answer) == 502 and time.monotonic() - t0 < 6
    finally:
        for f in fillers:
            f.close()
        stuck.close()
