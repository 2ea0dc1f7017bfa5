"""A buildx builder of the ``remote`` driver (``ml-env-lab-remote-builder``): its BuildKit is the
engine's own, reached through the lab's relay process (``buildkit-relay``) on a unix socket,
which upgrades each connection to the engine's BuildKit API as buildx's docker driver does."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

from lab_proc import RUN, SCRIPT, _error_line, _pipe, ok, output, read_pid, run, start, stop, wait_for

RELAY_BUILDER = "ml-env-lab-remote-builder"
RELAY_SOCKET = RUN / "buildkit.sock"
ENGINE_SOCKET = "/var/run/docker.sock"


def relay_main() -> int:
    """``buildkit-relay``: each connection to RELAY_SOCKET becomes one to the engine's BuildKit
    API (``POST /grpc`` upgraded to h2c, as buildx's docker driver dials it), bytes relayed both ways."""
    import threading

    def handle(conn: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX)
        try:
            engine.connect(ENGINE_SOCKET)
            engine.sendall(b"POST /grpc HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                           b"Content-Length: 0\r\n\r\n")  # fmt: skip
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 8192:
                got = engine.recv(1)
                if not got:
                    break
                head += got
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                raise OSError(f"the engine did not upgrade: {head[:80]!r}")
        except OSError as e:
            print(f"[lab] buildkit relay: {e}", file=sys.stderr, flush=True)
            conn.close()
            engine.close()
            return
        threading.Thread(target=_pipe, args=(conn, engine), daemon=True).start()
        _pipe(engine, conn)

    RELAY_SOCKET.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(RELAY_SOCKET))
    RELAY_SOCKET.chmod(0o600)
    listener.listen(64)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def relay_builder_health() -> tuple[bool, str]:
    code, text = output(["docker", "buildx", "inspect", RELAY_BUILDER, "--bootstrap"], timeout=60)
    driver = re.search(r"Driver:\s*(\S+)", text)
    status = re.search(r"Status:\s*(\S+)", text)
    good = code == 0 and bool(driver and driver.group(1) == "remote" and status and status.group(1) == "running")
    return good, (f"{RELAY_BUILDER}: driver remote, {RELAY_SOCKET}" if good else _error_line(text))


def ensure_relay_builder() -> None:
    """The relay process and the builder, each started or made again only when missing or wrong."""
    if read_pid("buildkit-relay") is None or not RELAY_SOCKET.exists():
        stop("buildkit-relay")
        start("buildkit-relay", [sys.executable, str(SCRIPT), "buildkit-relay"])
        wait_for("the BuildKit relay's socket", RELAY_SOCKET.exists, 15)
    code, text = output(["docker", "buildx", "inspect", RELAY_BUILDER])
    if code == 0 and f"unix://{RELAY_SOCKET}" in text:
        return
    if code == 0:
        ok(["docker", "buildx", "rm", RELAY_BUILDER])
    run(["docker", "buildx", "create", "--name", RELAY_BUILDER, "--driver", "remote", f"unix://{RELAY_SOCKET}"],
        stdout=subprocess.DEVNULL)  # fmt: skip


def relay_builder_down() -> None:
    ok(["docker", "buildx", "rm", RELAY_BUILDER])
    stop("buildkit-relay")
    RELAY_SOCKET.unlink(missing_ok=True)
