"""An upstream that answers with bytes written in advance and keeps every request's bytes.

For checking that the proxy changes nothing: the test decides the exact status line, header
names, order and duplicates, and how the body is cut into writes; and it sees exactly what
arrived. Also a tiny raw HTTP client (``exchange``) that returns the response's bytes as they came.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

Answer = Callable[[bytes, bytes], list[bytes]]
"""(request head, request body) -> the response, as the pieces to write (one write each)."""


@dataclass
class RawUpstream:
    """A loopback server in a thread; use as a context manager."""

    answer: Answer
    gap_s: float = 0.02
    """Pause between pieces, so each reaches the proxy as a read of its own."""
    received: list[tuple[bytes, bytes]] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        size = int(value)
                body = await reader.readexactly(size) if size else b""
                self.received.append((head, body))
                for i, piece in enumerate(self.answer(head, body)):
                    if i:
                        await asyncio.sleep(self.gap_s)
                    writer.write(piece)
                    await writer.drain()
                if b"\r\nconnection: close" in head.lower():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def __enter__(self) -> RawUpstream:
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop

            async def serve() -> None:
                server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
                self.port = server.sockets[0].getsockname()[1]
                started.set()
                async with server:
                    await asyncio.Event().wait()

            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                loop.run_until_complete(serve())

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)


def exchange(url: str, request: bytes, timeout: float = 30) -> bytes:
    """Send ``request`` as is to ``url``'s host and port; every byte until the server closes."""
    host, _, port = url.removeprefix("http://").partition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        out = b""
        while data := s.recv(65536):
            out += data
    return out


def dechunk(body: bytes) -> tuple[bytes, list[bytes]]:
    """A chunked body's content and its chunks."""
    chunks = []
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            return b"".join(chunks), chunks
        chunks.append(rest[:n])
        body = rest[n + 2 :]


@dataclass(frozen=True)
class Parsed:
    """A raw HTTP response: status line, headers in order (names as sent), content."""

    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    content: bytes
    chunks: list[bytes]

    def end_to_end(self) -> list[tuple[bytes, bytes]]:
        """The headers a proxy must pass on unchanged (all but the hop-by-hop ones)."""
        hop = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade"}
        return [(k, v) for k, v in self.headers if k.lower() not in hop]


def parse_response(raw: bytes) -> Parsed:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip()))
    chunked = any(k.lower() == b"transfer-encoding" and b"chunked" in v for k, v in headers)
    content, chunks = dechunk(body) if chunked else (body, [body])
    return Parsed(lines[0], headers, content, chunks)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
