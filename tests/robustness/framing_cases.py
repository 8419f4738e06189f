"""Corrupt framing the server must resynchronize after (shared by ``test_framing.py`` and ``bench/fuzz.py``).

A wrong ``Content-Length`` loses the message it frames (there is no id to answer, or a parse error with a
null id), but never the messages after it: the server finds the next header and goes on.
"""

from __future__ import annotations

import json
from typing import Any

from .fuzz_cases import SANITY_POSITION, SANITY_URI, SCRIPTED_TEXT, check_answer
from .rpc import RawServer


def write_raw(server: RawServer, data: bytes) -> None:
    """Bytes on the server's stdin as they are (no framing added)."""
    stdin = server.process.stdin
    assert stdin is not None
    with server._write_lock:
        stdin.write(data)
        stdin.flush()


def _body(msg_id: Any) -> bytes:
    params = {"command": "refact.stats", "arguments": []}
    return json.dumps(
        {"jsonrpc": "2.0", "id": msg_id, "method": "workspace/executeCommand", "params": params}
    ).encode()


def corruptions(body: bytes) -> dict[str, bytes]:
    """Ways to frame ``body`` wrongly, by name."""
    n = len(body)
    return {
        "non-numeric length": b"Content-Length: 12x\r\n\r\n" + body,
        "negative length": b"Content-Length: -%d\r\n\r\n" % n + body,
        "short length": b"Content-Length: %d\r\n\r\n" % (n // 2) + body,
        "long length, junk after": b"Content-Length: %d\r\n\r\n" % (n + 7) + body + b"garbage",
        "huge length": b"Content-Length: %d\r\n\r\n" % 10**15 + body,
        "no header": body,
        "garbage between frames": b"\x00\xff garbage \r\n",
        "only headers": b"Content-Type: application/vscode-jsonrpc\r\n\r\n",
    }


def corrupt_framing_round(server: RawServer, tag: Any) -> dict[str, int]:
    """Each corruption, then a well-framed request that must be answered; returns id-null errors seen."""
    before = len(server.null_id_errors)
    for name, data in corruptions(_body(f"lost-{tag}")).items():
        write_raw(server, data)
        msg_id = server.request("workspace/executeCommand", {"command": "refact.stats", "arguments": []})
        answer = server.wait(msg_id)
        assert check_answer(answer) is None, (name, answer)
    # lenient but valid framing: any header case, extra headers, no space after the colon
    for msg_id, header in (
        (f"lower-{tag}", b"content-length:%d\r\n\r\n"),
        (
            f"extra-{tag}",
            b"Content-Type: application/vscode-jsonrpc; charset=utf-8\r\nContent-Length: %d\r\nX: 1\r\n\r\n",
        ),
    ):
        body = _body(msg_id)
        write_raw(server, header % len(body) + body)
        assert check_answer(server.wait(msg_id)) is None
    assert server.inline(SANITY_URI, *SANITY_POSITION) == [SCRIPTED_TEXT]
    assert not server.duplicates
    new = server.null_id_errors[before:]
    assert all(e["error"]["code"] in (-32700, -32600) for e in new), new
    return {"null_errors": len(new)}
