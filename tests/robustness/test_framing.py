"""Framing: the transport's :class:`~refact_lsp.transport.Framer` (pure), then the real server after
corrupt frames and messages that only look like messages."""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from refact_lsp.transport import Framer, FramingError, pipe_reader

from .framing_cases import corrupt_framing_round, write_raw
from .fuzz_cases import check_answer, start_fuzz_server
from .rpc import RawServer


def frame(body: bytes) -> bytes:
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def bodies(items: list) -> list[bytes]:
    return [item for item in items if isinstance(item, bytes)]


def test_frames_split_anywhere_are_reassembled() -> None:
    stream = frame(b'{"a": 1}') + frame(b"") + frame("é".encode())
    for cut in range(len(stream) + 1):
        framer = Framer()
        assert bodies(framer.feed(stream[:cut]) + framer.feed(stream[cut:])) == [
            b'{"a": 1}',
            b"",
            "é".encode(),
        ]


@pytest.mark.parametrize(
    "bad",
    [
        b"Content-Length: abc\r\n\r\n{}",
        b"Content-Length: 99999999999999\r\n\r\n{}",
        b"Content-Length: -3\r\n\r\n{}",
        b"garbage without any header",
        b"\r\n\r\n",
    ],
)
def test_bad_framing_resynchronizes_on_the_next_header(bad: bytes) -> None:
    framer = Framer()
    out = framer.feed(bad + frame(b'{"next": true}'))
    assert bodies(out) == [b'{"next": true}']
    assert any(isinstance(item, FramingError) for item in out) or bad == b"garbage without any header"


def test_a_short_length_loses_only_its_own_message() -> None:
    body = b'{"jsonrpc": "2.0", "id": 1, "method": "x"}'
    out = Framer().feed(b"Content-Length: 10\r\n\r\n" + body + frame(b'{"id": 2}'))
    assert bodies(out) == [body[:10], b'{"id": 2}']


def test_megabytes_of_garbage_are_dropped_not_kept() -> None:
    framer = Framer()
    for _ in range(64):
        framer.feed(b"x" * 65536)
    assert len(framer._buf) < 70_000
    assert bodies(framer.feed(b"\r\n" + frame(b"{}"))) == [b"{}"]


@pytest.mark.parametrize("kind", ["pipe", "socket pair"])
async def test_a_pipe_or_socket_is_read_on_the_event_loop(kind: str, tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    if kind == "pipe":
        read_fd, write_fd = os.pipe()
    else:  # how libuv (VS Code, Neovim) connects a child's stdin
        ours, theirs = socket.socketpair()
        read_fd, write_fd = ours.detach(), theirs.detach()
    with open(read_fd, "rb") as source, open(tmp_path / "out", "wb") as stdout:
        read = await pipe_reader(loop, source, stdout)
        assert read is not None
        os.write(write_fd, frame(b"{}"))
        assert await read() == frame(b"{}")
        os.close(write_fd)
        assert await read() == b""  # the end of input


async def test_what_is_not_a_pipe_is_read_on_a_thread(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    (tmp_path / "in").write_bytes(frame(b"{}"))
    with open(tmp_path / "in", "rb") as file, open(tmp_path / "out", "wb") as stdout:
        assert await pipe_reader(loop, file, stdout) is None  # a regular file: no readiness events
        assert await pipe_reader(loop, io.BytesIO(), stdout) is None  # no file descriptor
    one, other = socket.socketpair()
    fd = one.fileno()
    with one, other, open(fd, "rb", closefd=False) as source, open(fd, "wb", closefd=False) as same:
        assert await pipe_reader(loop, source, same) is None  # stdin and stdout are one socket


@pytest.fixture(scope="module")
def server(scripted_checkpoint: Path) -> Iterator[RawServer]:
    server = start_fuzz_server(scripted_checkpoint)
    yield server
    assert server.alive()
    server.stop()


def test_the_server_reads_on_after_corrupt_framing(server: RawServer) -> None:
    corrupt_framing_round(server, "test")


def test_a_nested_object_that_looks_like_a_message_is_just_params(server: RawServer) -> None:
    """pygls' object_hook structured every nested dict: a request with one in its params went unanswered."""
    params = {
        "command": "refact.nope",
        "arguments": [{"jsonrpc": "2.0", "id": 3}, {"jsonrpc": "2.0", "method": 1}],
    }
    answer = server.wait(server.request("workspace/executeCommand", params))
    assert check_answer(answer) == -32602


@pytest.mark.parametrize(
    ("message", "answered_id"),
    [
        ({"id": "no-version", "method": "x"}, "no-version"),
        ({"jsonrpc": "2.0", "id": 1.5, "method": "textDocument/completion"}, None),
        ({"jsonrpc": "2.0", "id": True, "method": "textDocument/completion"}, None),
        ({"jsonrpc": "2.0", "id": "m", "method": 7}, "m"),
        ({"jsonrpc": "2.0"}, None),
    ],
)
def test_objects_that_are_no_message_get_invalid_request(
    server: RawServer, message: dict, answered_id
) -> None:
    before = len(server.null_id_errors)
    write_raw(server, frame(json.dumps(message).encode()))
    if answered_id is None:
        server.stats()  # answered after the bad frame was handled
        errors = server.null_id_errors[before:]
        assert [e["error"]["code"] for e in errors] == [-32600]
    else:
        assert check_answer(server.wait(answered_id)) == -32600


def test_a_lone_surrogate_in_a_document_still_completes(server: RawServer) -> None:
    """JSON may carry a lone surrogate escape (JavaScript strings can hold one): it broke the tokenizer."""
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "method": "textDocument/didOpen",
            "params": {
                "textDocument": {
                    "uri": "file:///lone.py",
                    "languageId": "python",
                    "version": 1,
                    "text": "x = '\ud83d'\ny = ",
                }
            },
        }
    ).encode()
    write_raw(server, frame(body))
    assert server.inline("file:///lone.py", 1, 4) == ["a + b"]
    prompt = server.prompt("file:///lone.py", 1, 4)
    assert prompt is not None and "\ud83d" in prompt["prompt"]
