"""A service's front: the small HTTP forwarder that owns its published port (``ml-env serve``).

This file and ``front_wire.py`` (the HTTP/1.1 framing) are copied into the front container (the
service's own inference image) through the Engine API's archive upload and import only the
standard library (nothing else from ml_env_tasks): they must run on whatever Python the image has.

It forwards **per request**: each request read from a client is sent to the backend that is
current when it arrives, on a connection of its own (``Connection: close`` upstream), so a
client's kept-alive connection is never tied to a backend. ``ml-env serve --replace`` writes a
new target to ``CONTROL`` and sends SIGHUP; from then on new requests go to the new backend,
requests already forwarded finish on the old one, and once none is left the front prints
``ml-env-front: drained generation N`` (the only lines it logs: control events, never a
request) so the old backend can be stopped without cutting anything short.

Clients are untrusted: a request head over 64 KiB gets 431, one not complete within
``ML_ENV_HEADER_TIMEOUT_S`` (10 s; also the idle limit of a kept-alive connection) closes the
connection; bodies and responses are streamed in 64 KiB pieces (never held whole; the backend
enforces its own body limit), a body that stalls longer than ``ML_ENV_BODY_TIMEOUT_S`` (30 s)
gets 408, a client that does not read its response for as long is dropped; at most
``ML_ENV_FRONT_MAX_CONNECTIONS`` (256) client connections at once, and at most
``ML_ENV_FRONT_MAX_PER_CLIENT`` (64) from one peer address, so that one client's idle
connections cannot lock the others out (503 and closed beyond either). Requests with both
Content-Length and Transfer-Encoding, several lengths, a length that is not ASCII digits, or a
coding other than chunked are refused (400/501): what the front forwards is framed the way it
read it, and every malformed head gets an answer.

A backend that cannot be reached (it crashed and is being restarted by the engine's restart
policy, or is gone) gets its request a 502 at once when the connection is refused, within
``CONNECT_TIMEOUT_S`` (2 s) when it goes unanswered: a failed connection is tried again only
when the target has been switched meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

try:  # imported as part of the package (type checks, tests)
    from .front_wire import (
        CHUNK,
        HOP,
        MAX_HEAD,
        ClientGone,
        Refused,
        copy_body,
        digits,
        field_values,
        framing,
        parse_head,
        reply,
        tokens,
    )
except ImportError:  # run as a script in the front container, the file beside it on sys.path
    from front_wire import (  # type: ignore[no-redef,import-not-found]
        CHUNK,
        HOP,
        MAX_HEAD,
        ClientGone,
        Refused,
        copy_body,
        digits,
        field_values,
        framing,
        parse_head,
        reply,
        tokens,
    )

CONTROL = os.environ.get("ML_ENV_FRONT_CONTROL", "/ml-env-front/target.json")
PORT = int(os.environ.get("ML_ENV_FRONT_PORT", "5001"))
HOST = os.environ.get("ML_ENV_FRONT_HOST", "0.0.0.0")  # the tests' fronts listen on loopback only
HEADER_TIMEOUT_S = float(os.environ.get("ML_ENV_HEADER_TIMEOUT_S", "10"))
BODY_TIMEOUT_S = float(os.environ.get("ML_ENV_BODY_TIMEOUT_S", "30"))
# how long a backend may take to answer: run() may take SCORING_TIMEOUT_MS, plus the server's own time
RESPONSE_TIMEOUT_S = int(os.environ.get("SCORING_TIMEOUT_MS", "3600000")) / 1000.0 + 60
MAX_CONNECTIONS = int(os.environ.get("ML_ENV_FRONT_MAX_CONNECTIONS", "256"))
MAX_PER_CLIENT = int(os.environ.get("ML_ENV_FRONT_MAX_PER_CLIENT", "64"))
CONNECT_TIMEOUT_S = 2.0  # a backend on the same host answers a connect in a millisecond
SALVAGE = 1024 * 1024  # an early answer still unread when its connection was reset
LINGER_S = 2.0  # after the last answer: how long the rest of an unread request body is read and dropped


def say(msg: str) -> None:
    print(f"ml-env-front: {msg}", flush=True)


class Target:
    def __init__(self, generation: int, host: str, port: int) -> None:
        self.generation, self.host, self.port = generation, host, port
        self.inflight = 0

    def __str__(self) -> str:
        return f"generation {self.generation} -> {self.host}:{self.port}"


class State:
    current: Target | None = None
    draining: list[Target] = []
    connections = 0
    per_peer: dict[str, int] = {}


def load_target() -> Target:
    with open(CONTROL, "rb") as f:
        doc = json.loads(f.read(4096))
    gen, host, port = doc["generation"], doc["host"], doc["port"]
    if not (isinstance(gen, int) and isinstance(port, int) and isinstance(host, str) and 0 < port < 65536):
        raise ValueError(f"{CONTROL} is not a target")
    return Target(gen, host, port)


def reload() -> None:
    """SIGHUP: switch to the target in CONTROL (a newer generation only)."""
    try:
        new = load_target()
    except (OSError, ValueError, KeyError) as e:
        say(f"cannot read {CONTROL}: {e}")
        return
    old = State.current
    if old is not None and new.generation <= old.generation:
        say(f"ignored {new}: generation {old.generation} is current")
        return
    State.current = new
    say(str(new))
    if old is not None:
        State.draining.append(old)
        settle(old)


def settle(t: Target) -> None:
    if t is not State.current and t.inflight == 0 and t in State.draining:
        State.draining.remove(t)
        say(f"drained generation {t.generation}")


async def read_head(reader: asyncio.StreamReader, timeout: float) -> bytes:
    try:
        return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.LimitOverrunError:
        raise Refused(431, f"the head is over {MAX_HEAD} bytes") from None


async def client_read(coro: object, timeout: float = BODY_TIMEOUT_S) -> bytes:
    try:
        return await asyncio.wait_for(coro, timeout)  # type: ignore[arg-type]
    except asyncio.TimeoutError:  # noqa: UP041  # the image's Python may predate 3.11's alias
        raise Refused(408, f"the request body stalled for {BODY_TIMEOUT_S:g} s") from None
    except (asyncio.IncompleteReadError, ConnectionError):
        raise ClientGone from None


async def pump_body(frame: int | str, reader: asyncio.StreamReader, up: asyncio.StreamWriter) -> None:
    """Copy a request body from the client to the backend, framed as it was read. Raises Refused
    or ClientGone for the client's faults; a backend that stops reading ends it quietly."""
    upstream_ok = True

    async def put(data: bytes) -> None:
        nonlocal upstream_ok
        if upstream_ok:
            try:
                up.write(data)
                await asyncio.wait_for(up.drain(), BODY_TIMEOUT_S)
            except (ConnectionError, asyncio.TimeoutError):  # noqa: UP041
                upstream_ok = False  # it answered early (413?) or went away: its response says which

    await copy_body(frame, reader, client_read, put, chunked_out=True, cut=ClientGone,
                    malformed=lambda: Refused(400, "a malformed chunk"))  # fmt: skip


class BadGateway(Exception):
    pass


async def up_read(coro: object) -> bytes:
    try:
        return await asyncio.wait_for(coro, RESPONSE_TIMEOUT_S)  # type: ignore[arg-type]
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):  # noqa: UP041
        raise BadGateway from None


async def client_write(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    try:
        await asyncio.wait_for(writer.drain(), BODY_TIMEOUT_S)
    except (asyncio.TimeoutError, ConnectionError):  # noqa: UP041
        raise ClientGone from None


async def relay_response(
    up: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    method: str,
    keep: bool,
    chunked_ok: bool,
    pump: asyncio.Future[None],
    sent: list[bool],
) -> bool:
    """Read the backend's response and pass it on; ``sent[0]`` turns True once the client has
    bytes of it. Returns whether the client connection can take another request."""
    while True:
        head = await up_read(up.readuntil(b"\r\n\r\n"))
        try:
            (version, status_text, reason), fields = parse_head(head[:-4], request=False)
            frame: int | str | None = framing(fields)
        except Refused:
            raise BadGateway from None
        if not (version.startswith("HTTP/1.") and digits(status_text) and len(status_text) == 3):
            raise BadGateway
        status = int(status_text)
        if status == 101:
            raise BadGateway
        if status >= 200:
            break  # an interim 1xx: the front answered Expect itself; dropped
    bodiless = method == "HEAD" or status in (204, 304)
    if not bodiless and frame == 0 and not field_values(fields, "content-length"):
        frame = None  # until the backend closes: the client's connection closes too
        keep = False
    if keep and not pump.done():  # the last piece of the body may still be on its way out
        await asyncio.wait({pump}, timeout=0.5)
    if not pump.done() or pump.cancelled() or pump.exception() is not None:
        keep = False  # answered before the body was all read: the rest of it is still on the connection
    out = [f"HTTP/1.1 {status} {''.join(c for c in reason if c.isprintable())[:100]}"]
    drop = HOP | tokens(fields, "connection")
    out += [f"{k}: {v}" for k, v in fields if k.lower() not in drop]
    if isinstance(frame, int) and field_values(fields, "content-length"):
        out.append(f"Content-Length: {frame}")
    elif frame == "chunked" and chunked_ok:
        out.append("Transfer-Encoding: chunked")
    elif frame == "chunked":
        keep = False  # an HTTP/1.0 client: the body unframed, ended by closing
    if not keep:
        out.append("Connection: close")
    sent[0] = True
    await client_write(writer, ("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
    if bodiless:
        return keep
    await copy_body(frame, up, up_read, lambda data: client_write(writer, data), chunked_out=chunked_ok,
                    cut=BadGateway, malformed=BadGateway)  # fmt: skip
    return keep


class UpstreamProtocol(asyncio.StreamReaderProtocol):
    """A backend's connection: a reset ends its stream like EOF, after every byte that came before
    it. A server that answers early (413) and closes with the body unread resets the connection,
    and asyncio stops reading at the first write that fails, which can come before the answer was
    read: what the kernel still holds (at most SALVAGE bytes) is read first, so the answer counts."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        super().__init__(reader)
        self.upstream_reader = reader
        self.upstream_transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.upstream_transport = transport
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(exc, ConnectionError):
            sock = self.upstream_transport.get_extra_info("socket") if self.upstream_transport else None
            fd, left = (sock.fileno() if sock is not None else -1), SALVAGE
            while fd >= 0 and left > 0:
                try:
                    data = os.read(fd, min(left, CHUNK))  # still open here: asyncio closes it after this
                except OSError:
                    break
                if not data:
                    break
                left -= len(data)
                self.upstream_reader.feed_data(data)
            exc = None
        super().connection_lost(exc)


async def open_upstream(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_HEAD)
    protocol = UpstreamProtocol(reader)
    transport, _ = await loop.create_connection(lambda: protocol, host, port)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def connect() -> tuple[Target, asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the current backend, counted in its in-flight requests. A connection
    that fails is tried again only when the target was switched meanwhile (on the new backend):
    a backend that is down (crashed, restarting) is said at once, never waited for."""
    error: Exception | None = None
    for _ in range(5):
        target = State.current
        assert target is not None
        target.inflight += 1
        try:
            r, w = await asyncio.wait_for(open_upstream(target.host, target.port), CONNECT_TIMEOUT_S)
            return target, r, w
        except (OSError, asyncio.TimeoutError) as e:  # noqa: UP041
            error = e
            target.inflight -= 1
            settle(target)
        if State.current is target:
            break
    reason = "timed out" if isinstance(error, asyncio.TimeoutError) else type(error).__name__  # noqa: UP041
    raise BadGateway(f"the scoring container is not reachable ({reason}): it may be restarting")


async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> bool:
    """One request: read from the client, sent to the current backend, its response relayed.
    Returns whether the connection can take another request."""
    (method, path, version), fields = parse_head(head[:-4], request=True)
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(505, "HTTP/1.1 only")
    frame = framing(fields)
    if frame == "chunked" and version == "HTTP/1.0":
        raise Refused(400, "chunked in an HTTP/1.0 request")
    keep = version == "HTTP/1.1" and "close" not in tokens(fields, "connection")
    expect = tokens(fields, "expect")
    if expect - {"100-continue"}:
        raise Refused(417, "only Expect: 100-continue is supported")
    drop = HOP | tokens(fields, "connection")
    out = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in fields if k.lower() not in drop]
    if frame == "chunked":
        out.append("Transfer-Encoding: chunked")
    elif frame or field_values(fields, "content-length"):
        out.append(f"Content-Length: {frame}")
    out.append("Connection: close")
    target, up_r, up_w = await connect()
    sent = [False]
    pump = None
    try:
        up_w.write(("\r\n".join(out) + "\r\n\r\n").encode("latin-1"))
        if expect and frame and version == "HTTP/1.1":
            await client_write(writer, b"HTTP/1.1 100 Continue\r\n\r\n")
        pump = asyncio.ensure_future(pump_body(frame, reader, up_w))
        response = asyncio.ensure_future(relay_response(up_r, writer, method, keep, version == "HTTP/1.1", pump, sent))
        done, _ = await asyncio.wait({pump, response}, return_when=asyncio.FIRST_COMPLETED)
        if pump in done and pump.exception() is not None and not sent[0]:
            response.cancel()
            raise pump.exception()  # type: ignore[misc]  # the client's fault: Refused or ClientGone
        try:
            keep = await response
        except BadGateway:
            if sent[0]:
                raise ClientGone from None  # cut mid-response: nothing else can be said
            raise Refused(502, "the scoring container closed the connection without an answer") from None
        return keep
    finally:
        if pump is not None and not pump.done():
            pump.cancel()
            await asyncio.wait({pump})  # its read of the client ends before anything else reads there
        up_w.close()
        target.inflight -= 1
        settle(target)


def peer_of(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    peer = peer_of(writer)
    if State.connections >= MAX_CONNECTIONS or State.per_peer.get(peer, 0) >= MAX_PER_CLIENT:
        over = State.connections >= MAX_CONNECTIONS
        reply(writer, 503, f"more than {MAX_CONNECTIONS} connections" if over
              else f"more than {MAX_PER_CLIENT} connections from one client")  # fmt: skip
        writer.close()
        return
    State.connections += 1
    State.per_peer[peer] = State.per_peer.get(peer, 0) + 1
    try:
        while True:
            try:
                head = await read_head(reader, HEADER_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):  # noqa: UP041
                return
            try:
                if not await forward(reader, writer, head):
                    return
            except BadGateway as e:
                reply(writer, 502, str(e) or "bad gateway")
                return
    except Refused as e:
        reply(writer, e.status, e.message)
    except (ClientGone, ConnectionError):
        pass
    except Exception as e:  # one line, never a request's content: the log is not the clients' to fill
        say(f"internal error: {type(e).__name__}")
    finally:
        await linger(reader, writer)
        State.connections -= 1
        State.per_peer[peer] -= 1
        if not State.per_peer[peer]:
            del State.per_peer[peer]


async def linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close a client connection without losing its last answer. An answer given before the
    request body was all read (413, 408, an early backend answer) would be cut by the reset that
    closing a socket with unread bytes sends, so the front stops writing (FIN), then reads and drops
    what the client still sends, for LINGER_S at most, and only then closes."""
    try:
        await asyncio.wait_for(writer.drain(), 1)
        if writer.can_write_eof() and not writer.is_closing():
            writer.write_eof()
            deadline = asyncio.get_running_loop().time() + LINGER_S
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                if not await asyncio.wait_for(reader.read(CHUNK), left):
                    break
    except Exception:
        pass
    writer.close()


async def main() -> None:
    State.current = load_target()
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda loop, context: None)  # nothing a client causes reaches the log
    loop.add_signal_handler(signal.SIGHUP, reload)
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    loop.add_signal_handler(signal.SIGINT, stop.set_result, None)
    server = await asyncio.start_server(handle, HOST, PORT, limit=MAX_HEAD, backlog=1024)
    say(f"listening on :{PORT}, {State.current}")
    async with server:
        await stop


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except OSError as e:
        say(f"cannot start: {e}")
        sys.exit(3)
