"""The base protocol's message framing (``Content-Length`` headers), read robustly, over stdio or TCP.

pygls' reader loses the connection for good after one bad frame: a header it does not understand
(``Content-Length: abc``, a length shorter than the body) leaves the rest of the body in front of the
next header, which then never matches, so no later message is read; a huge length stalls it or
raises out of the loop. It also decodes with ``object_hook``, so a nested object that looks like a
message (``{"jsonrpc": "2.0", "id": 1}`` inside params) is structured as one and can make the outer
request go unanswered.

:class:`Framer` (pure, no I/O) finds the next header block, takes the last valid ``Content-Length``
in it (header names are case-insensitive), skips blocks without one and resynchronizes on the next
header after any garbage. :func:`serve` decodes each body once, structures only the top-level
object, and hands errors to pygls' error handler as pygls' own loop does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

from pygls.exceptions import JsonRpcException
from pygls.io_ import StdoutWriter

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024 * 1024
"""A larger ``Content-Length`` is taken as corrupt framing (a 10 MB document is well below)."""
MAX_HEADER_BYTES = 64 * 1024
"""Bytes without a header block end after which the garbage is dropped (its tail is kept)."""
READ_CHUNK = 1 << 20

_HEADER_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"content-length[ \t]*:[ \t]*(\d+)[ \t]*(?=\r?\n|\Z)", re.IGNORECASE)


@dataclass(frozen=True)
class FramingError:
    """Bytes that could not be framed as a message (logged; there is no id to answer)."""

    reason: str


class Framer:
    """Splits a byte stream into message bodies: ``feed(data)`` returns bodies and framing errors."""

    def __init__(self, max_body: int = MAX_BODY_BYTES):
        self.max_body = max_body
        self._buf = bytearray()
        self._scan = 0  # where the header-end search resumes
        self._length: int | None = None  # the body length once a header block was read
        self._in_garbage = False

    def feed(self, data: bytes) -> list[bytes | FramingError]:
        self._buf += data
        out: list[bytes | FramingError] = []
        while True:
            if self._length is None and not self._read_header(out):
                return out
            assert self._length is not None
            if len(self._buf) < self._length:
                return out
            body = bytes(self._buf[: self._length])
            del self._buf[: self._length]
            self._length = None
            out.append(body)

    def _read_header(self, out: list[bytes | FramingError]) -> bool:
        """Consumes header blocks until one has a usable length; False when more bytes are needed."""
        while True:
            end = _HEADER_END.search(self._buf, max(0, self._scan - 3))
            if end is None:
                if len(self._buf) > MAX_HEADER_BYTES:  # garbage: keep a tail that may start a header
                    if not self._in_garbage:
                        out.append(FramingError("bytes outside any frame"))
                    self._in_garbage = True
                    del self._buf[: len(self._buf) - 1024]
                self._scan = len(self._buf)
                return False
            block = bytes(self._buf[: end.start()])
            del self._buf[: end.end()]
            self._scan = 0
            matches = list(_CONTENT_LENGTH.finditer(block))
            length = int(matches[-1].group(1)) if matches else None
            self._in_garbage = False
            if length is None:
                out.append(FramingError("a header block without a valid Content-Length: skipped"))
                continue
            if length > self.max_body:
                out.append(FramingError(f"Content-Length {length} is over {self.max_body}: skipped"))
                continue
            self._length = length
            return True


async def serve(
    read: Callable[[], Awaitable[bytes]],
    protocol: Any,
    stop_event: threading.Event,
    error_handler: Callable[[Exception, type[JsonRpcException]], Any],
) -> None:
    """pygls' message loop with :class:`Framer`: reads until end of input or ``stop_event``."""
    framer = Framer()
    while not stop_event.is_set():
        try:
            data = await read()
        except ConnectionError as exc:  # a reset: the client left with data unread (or was killed)
            log.info("the connection to the client ended: %s", exc)
            return
        if not data:
            return
        for item in framer.feed(data):
            if isinstance(item, FramingError):
                log.warning("unreadable input from the client: %s", item.reason)
                continue
            try:
                message = json.loads(item)
                if isinstance(message, dict):
                    message = protocol.structure_message(message)
                protocol.handle_message(message)
            except Exception as exc:  # noqa: BLE001 - answered or logged by the error handler
                log.debug("unable to handle a message", exc_info=True)
                error_handler(exc, JsonRpcException)
            await asyncio.sleep(0)  # let handlers (and cancellations) run between messages


def serve_stdio(server: Any, stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> int:
    """What pygls' ``start_io`` does, with :func:`serve` as the loop. Returns the process's exit code:
    1 after an ``exit`` without ``shutdown`` (as the LSP specification asks), else 0."""
    server._stop_event = stop_event = threading.Event()
    source = stdin or sys.stdin.buffer
    server.protocol.set_writer(StdoutWriter(stdout or sys.stdout.buffer))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        read_chunk = await pipe_reader(loop, source, stdout or sys.stdout.buffer)
        if read_chunk is None:  # a file, a terminal, a socket: a blocking read on a pool thread
            read = getattr(source, "read1", source.read)

            async def read_chunk() -> bytes:
                return await loop.run_in_executor(server.thread_pool, read, READ_CHUNK)

        await serve(read_chunk, server.protocol, stop_event, server.report_server_error)

    code = 0
    try:
        asyncio.run(main())
    except BrokenPipeError:
        log.error("the connection to the client is lost: shutting down")
    except KeyboardInterrupt:
        pass
    except SystemExit as exc:  # pygls' exit handler
        code = exit_code(exc)
    finally:
        server.shutdown()
    return code


def exit_code(exc: SystemExit) -> int:
    """The process exit code that ``exc`` carries (an int, else 0 for None and 1 for anything else)."""
    return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1


async def pipe_reader(
    loop: asyncio.AbstractEventLoop, source: BinaryIO, stdout: BinaryIO
) -> Callable[[], Awaitable[bytes]] | None:
    """Reads ``source`` on the event loop itself when it is a pipe or a socket (what editors start the
    server with: Emacs a pipe, VS Code and Neovim a socket pair each for stdin and stdout): the loop wakes
    when bytes arrive, instead of a pool thread that reads and wakes the loop (one thread hand-off less
    per message). None where that is not safe: not POSIX, a file or a terminal, or ``stdout`` on the same
    pipe or socket (the reader makes ``source`` non-blocking, which would make writes to it fail)."""
    if os.name != "posix":
        return None
    try:
        here = os.fstat(source.fileno())
        if not (stat.S_ISFIFO(here.st_mode) or stat.S_ISSOCK(here.st_mode)):
            return None
        if os.path.samestat(here, os.fstat(stdout.fileno())):
            return None
        reader = asyncio.StreamReader(limit=READ_CHUNK)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), source)
    except (AttributeError, OSError, ValueError):  # no file descriptor (a test's BytesIO), or refused
        return None
    return lambda: reader.read(READ_CHUNK)


def serve_tcp(server: Any, host: str, port: int) -> int:
    """What pygls' ``start_tcp`` does, with :func:`serve` as the loop; the exit code as ``serve_stdio``,
    and 1 when the address cannot be bound (in use, not resolvable): one line in the log, no traceback."""
    server._stop_event = stop_event = threading.Event()

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.protocol.set_writer(writer)
        try:
            await serve(
                lambda: reader.read(READ_CHUNK), server.protocol, stop_event, server.report_server_error
            )
        finally:  # the client is gone (end of input or a reset): the session ends as pygls' does
            server.shutdown()

    async def main() -> int:
        try:
            server._server = await asyncio.start_server(connection, host, port)
        except OSError as exc:  # also socket.gaierror: an unknown host
            log.error("cannot listen on tcp %s:%d: %s", host, port, exc.strerror or exc)
            return 1
        bound = ", ".join(_address(sock.getsockname()) for sock in server._server.sockets)
        log.info("%s %s serving on tcp %s", server.name, server.version, bound)
        async with server._server:
            await server._server.serve_forever()
        return 0

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        log.debug("the TCP server was cancelled")
    except SystemExit as exc:  # pygls' exit handler
        return exit_code(exc)
    return 0


def _address(sockname: tuple) -> str:
    """``host:port`` of a socket's own address (``[host]:port`` for IPv6)."""
    host, port = sockname[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
