"""The HTTP/1.1 message framing the service's front speaks (``front.py``): heads parsed and
refused, bodies copied as they are framed. Standard library only, like the front: both files are
copied into the front container, where ``front.py`` runs as a script beside this one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

MAX_HEAD = 64 * 1024
MAX_HEADERS = 100
CHUNK = 64 * 1024
# hop-by-hop: about one connection, never forwarded (the front sets its own framing and Connection)
HOP = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect",
    "content-length", "proxy-authenticate", "proxy-authorization",
}  # fmt: skip
TOKEN = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 505: "HTTP Version Not Supported"}  # fmt: skip


def digits(text: str) -> bool:
    """ASCII decimal digits only: str.isdigit() also takes '¹' or '٣', which int() then refuses."""
    return text.isascii() and text.isdigit()


class Refused(Exception):
    """A request the front answers itself: (status, message)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class ClientGone(Exception):
    pass


def reply(writer: asyncio.StreamWriter, status: int, message: str, *, close: bool = True) -> None:
    body = json.dumps({"message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    writer.write(head.encode("latin-1") + body)


def parse_head(data: bytes, *, request: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """The start line's three parts and the header fields of a head (without its blank line)."""
    lines = data.decode("latin-1").split("\r\n")
    start = lines[0].split(" ", 2)
    if len(start) != 3 or (request and not (start[0] and set(start[0]) <= TOKEN and start[1].isprintable())):
        raise Refused(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise Refused(431, f"more than {MAX_HEADERS} header fields")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or not set(name) <= TOKEN:
            raise Refused(400, "malformed header field")
        value = value.strip(" \t")
        if any(c < " " and c != "\t" or c == "\x7f" for c in value):
            raise Refused(400, "a control character in a header field")
        fields.append((name, value))
    return start, fields


def field_values(fields: list[tuple[str, str]], name: str) -> list[str]:
    return [v for k, v in fields if k.lower() == name]


def framing(fields: list[tuple[str, str]]) -> int | str:
    """``"chunked"``, or the length of the body (0: none); a head that frames ambiguously is refused."""
    te = field_values(fields, "transfer-encoding")
    cl = field_values(fields, "content-length")
    if te:
        if cl:
            raise Refused(400, "both Content-Length and Transfer-Encoding")
        if ",".join(te).strip().lower() != "chunked":
            raise Refused(501, "only the chunked transfer coding is supported")
        return "chunked"
    if not cl:
        return 0
    if len(cl) > 1 or not digits(cl[0]) or len(cl[0]) > 18:
        raise Refused(400, "a malformed Content-Length")
    return int(cl[0])


def tokens(fields: list[tuple[str, str]], name: str) -> set[str]:
    return {t.strip().lower() for v in field_values(fields, name) for t in v.split(",") if t.strip()}


def chunk_size(line: bytes) -> int:
    """A chunk-size line's size (extensions dropped); -1 when it is not one."""
    text = line[:-2].split(b";", 1)[0].strip(b" \t")
    if not text or len(text) > 15 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        return -1
    return int(text, 16)


async def copy_body(
    frame: int | str | None,
    src: asyncio.StreamReader,
    get: Callable[[Awaitable[bytes]], Awaitable[bytes]],
    put: Callable[[bytes], Awaitable[None]],
    *,
    chunked_out: bool,
    cut: Callable[[], Exception],
    malformed: Callable[[], Exception],
) -> None:
    """Copy one message body framed as ``frame`` says (a length, ``"chunked"``, or None: until EOF)
    from ``src`` to ``put``, ``get`` bounding each read. Chunk framing is re-emitted when
    ``chunked_out``; trailers are dropped. ``cut()`` is raised when the body ends early,
    ``malformed()`` when its chunk framing is broken."""

    async def exactly(n: int) -> None:
        while n:
            data = await get(src.read(min(n, CHUNK)))
            if not data:
                raise cut()
            n -= len(data)
            await put(data)

    if frame is None:
        while data := await get(src.read(CHUNK)):
            await put(data)
        return
    if isinstance(frame, int):
        await exactly(frame)
        return
    while True:
        size = chunk_size(await get(src.readuntil(b"\r\n")))
        if size < 0:
            raise malformed()
        if size == 0:
            for _ in range(MAX_HEADERS + 1):
                if await get(src.readuntil(b"\r\n")) == b"\r\n":
                    break
            else:
                raise malformed()  # trailers are header fields: as many at most
            if chunked_out:
                await put(b"0\r\n\r\n")
            return
        if chunked_out:
            await put(b"%x\r\n" % size)
        await exactly(size)
        if await get(src.readexactly(2)) != b"\r\n":
            raise malformed()
        if chunked_out:
            await put(b"\r\n")
