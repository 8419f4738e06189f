"""Model lifecycle and scheduling through one real server process (VS Code's capabilities).

The tests run in file order on one server: it starts with a model that does not exist, is then
pointed at a scripted checkpoint through settings, later at a looping one. Each test states the
model it needs with :func:`use_model`, so a failure in one does not cascade silently.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import pytest_asyncio
from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcRequestCancelled

from .lsp_session import (
    BASE_SETTINGS,
    LOOPING_TEXT,
    MULTILINE_TEXT,
    READY_TIMEOUT_S,
    SCRIPTED_TEXT,
    Checkpoints,
    Session,
    selected_item,
    shadowing_project,
    start_session,
    stop_session,
    uri_of,
)

DOC = uri_of("lifecycle.py")
TEXT = "def add(a, b):\n    return \n"
CURSOR = (1, len("    return "))


@pytest_asyncio.fixture(scope="module")
async def session(checkpoints: Checkpoints, tmp_path_factory: pytest.TempPathFactory):
    # started in a project with a random.py, an inspect.py, ...: every test here also shows that the
    # server (torch and transformers included) imports none of them
    s = await start_session(
        "visual-studio-code",
        model=checkpoints.missing,
        initialization_options=dict(BASE_SETTINGS),
        configuration=dict(BASE_SETTINGS),
        cwd=shadowing_project(tmp_path_factory.mktemp("project")),
    )
    s.open(DOC, TEXT)
    yield s
    await stop_session(s)


async def use_model(session: Session, model: Path, **settings) -> dict:
    """Points the server at ``model`` (and other settings) and waits until it is ready."""
    before = await session.stats()
    session.configure({"model": str(model), **settings})
    if before["model"]["source"] == str(model) and before["model"]["state"] == "ready":
        await asyncio.sleep(0.2)
        return await session.stats()
    stats = await session.wait_for(
        lambda s: s["model"]["source"] == str(model) and s["model"]["state"] in ("ready", "error"),
        what=f"{model} to load",
    )
    assert stats["model"]["state"] == "ready", stats["model"]
    return stats


async def _progress_ended(session: Session, count: int) -> None:
    """Until the client has ``count`` progress tokens and the last one has ended."""
    while True:
        reports = list(session.client.progress_reports.values())
        if len(reports) >= count and isinstance(reports[-1][-1], types.WorkDoneProgressEnd):
            return
        await asyncio.sleep(0.02)


async def test_a_missing_model_is_shown_and_the_server_keeps_serving(session: Session) -> None:
    stats = await session.wait_model()
    assert stats["model"]["state"] == "error"
    assert "does-not-exist" in stats["model"]["error"]
    errors = [m for m in session.client.messages if m.type == types.MessageType.Error]
    assert len(errors) == 1 and "does-not-exist" in errors[0].message
    # Completion requests are answered, empty, while no model works.
    assert await session.inline(DOC, *CURSOR) == []
    assert list((await session.completion(DOC, *CURSOR)).items) == []
    assert (await session.stats())["requests"] >= 2


async def test_the_first_load_reported_progress_that_ended_in_failure(session: Session) -> None:
    await asyncio.wait_for(_progress_ended(session, count=1), READY_TIMEOUT_S)
    reports = list(session.client.progress_reports.values())
    assert len(reports) == 1
    kinds = [type(r).__name__ for r in reports[0]]
    assert kinds[0] == "WorkDoneProgressBegin" and kinds[-1] == "WorkDoneProgressEnd"
    assert reports[0][-1].message == "failed"


async def test_configuring_a_working_model_reloads_with_progress(session: Session, checkpoints) -> None:
    await use_model(session, checkpoints.scripted)
    # the model's state is "ready" as the load ends; its progress ends a moment later, from a queue
    await asyncio.wait_for(_progress_ended(session, count=2), READY_TIMEOUT_S)
    reports = list(session.client.progress_reports.values())
    assert len(reports) == 2
    load = reports[1]
    assert isinstance(load[0], types.WorkDoneProgressBegin)
    assert any(isinstance(r, types.WorkDoneProgressReport) and r.message.startswith("load") for r in load)
    assert isinstance(load[-1], types.WorkDoneProgressEnd) and load[-1].message == "ready"
    items = await session.inline(DOC, *CURSOR)
    assert [i.insert_text for i in items] == [SCRIPTED_TEXT]


async def test_settings_change_what_is_suggested(session: Session, checkpoints) -> None:
    await use_model(session, checkpoints.scripted)
    session.configure({"languages": {"*": True, "python": False}})
    await asyncio.sleep(0.2)
    assert await session.inline(DOC, *CURSOR) == []
    assert await session.prompt(DOC, *CURSOR) is None  # "no completion here", as the editors' commands say
    session.configure({"languages": {"*": True}})
    await asyncio.sleep(0.2)
    assert [i.insert_text for i in await session.inline(DOC, *CURSOR)] == [SCRIPTED_TEXT]
    # maxNewTokens reaches the engine: 2 tokens of "a + b" are "a +".
    session.configure({"maxNewTokens": 2})
    await asyncio.sleep(0.2)
    assert [i.insert_text for i in await session.inline(DOC, *CURSOR)] == ["a +"]
    session.configure({"maxNewTokens": 50})
    await asyncio.sleep(0.2)
    # A bad value is reported and left out.
    before = len(session.client.messages)
    session.configure({"maxNewTokens": "many"})
    await session.wait_for(lambda _s: len(session.client.messages) > before, 10, "a settings error")
    assert "maxNewTokens" in session.client.messages[-1].message
    session.configure({"maxNewTokens": 50})
    assert [i.insert_text for i in await session.inline(DOC, *CURSOR)] == [SCRIPTED_TEXT]


async def test_typing_the_suggestion_is_answered_from_the_cache(session: Session, checkpoints) -> None:
    await use_model(session, checkpoints.scripted, completionCache=True)
    uri = uri_of("typed-ahead.py")
    session.open(uri, TEXT)
    assert [i.insert_text for i in await session.inline(uri, *CURSOR)] == [SCRIPTED_TEXT]
    before = await session.stats()
    line, character = CURSOR
    at = types.Position(line=line, character=character)
    session.change(
        uri, [types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text="a ")]
    )
    items = await session.inline(uri, line, character + 2)
    after = await session.stats()
    assert [i.insert_text for i in items] == [SCRIPTED_TEXT[2:]]
    assert after["cache_hits"] - before["cache_hits"] == 1
    assert after["model_runs"] == before["model_runs"]


@pytest.mark.parametrize("eol", ["\n", "\r\n"])
async def test_a_multi_line_suggestion_replaces_the_typed_indentation(
    session: Session, checkpoints, eol
) -> None:
    await use_model(session, checkpoints.multiline)
    uri = uri_of(f"multi-{len(eol)}.py")
    session.open(uri, eol.join(["def add(a, b):", "    ", "print(add(1, 2))", ""]))
    start, cursor = types.Position(line=1, character=0), types.Position(line=1, character=4)
    items = await session.inline(uri, 1, 4)
    assert [(i.insert_text, i.range) for i in items] == [
        (MULTILINE_TEXT.replace("\n", eol), types.Range(start=start, end=cursor))
    ]
    # the model went on with a line out of the block (the second document's request is a cache hit):
    # the run stopped at that line's first token
    assert (await session.stats())["stop_reasons"].get("decided", 0) >= 1
    result = await session.completion(uri, 1, 4)
    assert [(i.label, i.text_edit.new_text) for i in result.items] == [
        ("return a + b", MULTILINE_TEXT.replace("\n", eol))
    ]


@pytest.mark.parametrize("cursor", [4, 0])
async def test_a_multi_line_suggestion_on_a_blank_line_leaves_no_whitespace_behind(
    session: Session, checkpoints, cursor: int
) -> None:
    """The cursor inside a whitespace-only line (an editor keeps the column when moving onto it): the
    suggestion replaces the whole line, so none of its indentation trails the suggestion once accepted."""
    await use_model(session, checkpoints.multiline)
    uri = uri_of(f"blank-line-{cursor}.py")
    lines = ["def add(a, b):", " " * 8, "print(add(1, 2))", ""]
    session.open(uri, "\n".join(lines))
    accepted = "\n".join([lines[0], MULTILINE_TEXT, *lines[2:]])

    def apply(r: types.Range, new_text: str) -> str:
        line = lines[1]
        return "\n".join(
            [lines[0], line[: r.start.character] + new_text + line[r.end.character :], *lines[2:]]
        )

    items = await session.inline(uri, 1, cursor)
    assert [apply(i.range, i.insert_text) for i in items] == [accepted]
    result = await session.completion(uri, 1, cursor)
    assert [apply(i.text_edit.range, i.text_edit.new_text) for i in result.items] == [accepted]


async def test_the_rest_of_the_line_the_suggestion_types_again_is_not_left_behind(
    session: Session, tmp_path: Path
) -> None:
    """``for x in range(|):`` (the ``)`` auto-closed, the ``:`` typed): a single-line prompt leaves the rest
    of the line out, so the model writes ``10): print(x)``; accepting it must not leave the line's own
    ``:`` behind (``for x in range(10): print(x):``), in ghost text and completion items alike."""
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    await use_model(session, write_scripted_checkpoint(tmp_path / "rest", "10): print(x)"))
    uri = uri_of("rest-of-line.py")
    line = "for x in range():"
    session.open(uri, line + "\n")
    cursor = len("for x in range(")
    accepted = "for x in range(10): print(x)"
    items = await session.inline(uri, 0, cursor)
    assert [
        line[: i.range.start.character] + i.insert_text + line[i.range.end.character :] for i in items
    ] == [accepted]
    result = await session.completion(uri, 0, cursor)
    edits = [i.text_edit for i in result.items]
    assert [line[: e.range.start.character] + e.new_text + line[e.range.end.character :] for e in edits] == [
        accepted
    ]


async def test_a_burst_is_collapsed_by_the_debounce_into_one_model_run(session: Session, checkpoints) -> None:
    await use_model(session, checkpoints.scripted, debounceMs=300, completionCache=False)
    uri = uri_of("burst.py")
    session.open(uri, TEXT)
    line, character = CURSOR
    before = await session.stats()
    burst = []
    for typed in range(5):  # typing spaces: each request for a newer text
        if typed:
            at = types.Position(line=line, character=character + typed - 1)
            session.change(
                uri, [types.TextDocumentContentChangePartial(range=types.Range(start=at, end=at), text=" ")]
            )
        burst.append(asyncio.ensure_future(session.inline(uri, line, character + typed)))
        await asyncio.sleep(0.01)
    results = await asyncio.gather(*burst)
    after = await session.stats()
    assert [[i.insert_text for i in r] for r in results] == [[]] * 4 + [[SCRIPTED_TEXT]]
    assert after["model_runs"] - before["model_runs"] == 1
    assert after["superseded"] - before["superseded"] == 4
    session.configure({"debounceMs": 0, "completionCache": True})


async def test_ghost_text_and_completion_items_asked_together_share_one_run(
    session: Session, checkpoints
) -> None:
    """Neovim with nvim-cmp or blink.cmp beside ghost text, or a client whose quick suggestions fire on
    each keystroke, ask for both at the same place: neither answer is lost to the other."""
    await use_model(session, checkpoints.scripted, debounceMs=25, completionCache=False)
    before = await session.stats()
    inline, completion = await asyncio.gather(session.inline(DOC, *CURSOR), session.completion(DOC, *CURSOR))
    after = await session.stats()
    assert [i.insert_text for i in inline] == [SCRIPTED_TEXT]
    assert [i.text_edit.new_text for i in completion.items] == [SCRIPTED_TEXT]
    assert after["model_runs"] - before["model_runs"] == 1
    assert after["superseded"] == before["superseded"]
    session.configure({"debounceMs": 0, "completionCache": True})


async def test_ghost_text_for_the_popups_selected_item_does_not_supersede_the_items(
    session: Session, checkpoints
) -> None:
    """With the completion popup open, a client asks for items and for ghost text after the selected one:
    two requests for the same place, both current."""
    await use_model(session, checkpoints.scripted, debounceMs=25, completionCache=False)
    uri, _start, cursor, selected = selected_item(session, "selected.py")
    before = await session.stats()
    completion, inline = await asyncio.gather(
        session.completion(uri, 1, cursor), session.inline(uri, 1, cursor, selected)
    )
    after = await session.stats()
    assert [i.text_edit.new_text for i in completion.items] == ["ad" + SCRIPTED_TEXT]
    assert [i.insert_text for i in inline] == ["add_numbers(" + SCRIPTED_TEXT]
    assert after["superseded"] == before["superseded"]
    assert after["model_runs"] - before["model_runs"] == 2
    session.configure({"debounceMs": 0, "completionCache": True})


async def test_cancelling_one_of_two_requests_sharing_a_run_leaves_the_other_its_answer(
    session: Session, checkpoints
) -> None:
    await use_model(session, checkpoints.looping, maxNewTokens=2000, debounceMs=0, completionCache=False)
    before = await session.stats()
    cancelled = asyncio.ensure_future(
        session.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, session.inline_params(DOC, *CURSOR), msg_id="one-of-two"
        )
    )
    await _wait_until_generating(session)
    kept = asyncio.ensure_future(session.completion(DOC, *CURSOR))
    await session.wait_for(lambda s: s["requests"] - before["requests"] == 2, 10, "the second request")
    session.client.cancel_request(types.CancelParams(id="one-of-two"))
    with pytest.raises(JsonRpcRequestCancelled):
        await cancelled
    [item] = (await kept).items
    after = await session.stats()
    assert LOOPING_TEXT.startswith(item.text_edit.new_text[: len(LOOPING_TEXT)].rstrip())
    assert after["model_runs"] - before["model_runs"] == 1
    assert after["last_run"]["stop_reason"] != "cancelled"
    session.configure({"maxNewTokens": 50})


async def _wait_until_generating(session: Session) -> dict:
    return await session.wait_for(lambda s: s["busy"], 30, "a generation to start")


async def test_cancel_request_stops_the_generation(session: Session, checkpoints) -> None:
    max_new = 3000
    await use_model(session, checkpoints.looping, maxNewTokens=max_new, debounceMs=0)
    before = await session.stats()
    request = asyncio.ensure_future(
        session.client.protocol.send_request_async(
            types.TEXT_DOCUMENT_INLINE_COMPLETION, session.inline_params(DOC, *CURSOR), msg_id="cancel-me"
        )
    )
    await _wait_until_generating(session)
    session.client.cancel_request(types.CancelParams(id="cancel-me"))
    with pytest.raises(JsonRpcRequestCancelled):
        await request
    after = await session.wait_for(
        lambda s: s["model_runs"] > before["model_runs"] and not s["busy"], 30, "the generation to stop"
    )
    assert after["cancellations"] - before["cancellations"] == 1
    assert after["last_run"]["stop_reason"] == "cancelled"
    assert 0 < after["last_run"]["generated_tokens"] < max_new


async def test_a_newer_request_supersedes_without_cancel(session: Session, checkpoints) -> None:
    await use_model(session, checkpoints.looping, maxNewTokens=3000, debounceMs=0, completionCache=False)
    before = await session.stats()
    old = asyncio.ensure_future(session.inline(DOC, *CURSOR))
    await _wait_until_generating(session)
    session.configure({"maxNewTokens": 4})  # the newer request ends on its own
    await asyncio.sleep(0.2)
    new = await session.inline(DOC, *CURSOR)
    assert await old == []
    after = await session.stats()
    assert len(new) == 1 and LOOPING_TEXT.startswith(new[0].insert_text[:4])
    assert after["superseded"] - before["superseded"] == 1
    assert after["stop_reasons"].get("cancelled", 0) - before["stop_reasons"].get("cancelled", 0) == 1
    assert after["model_runs"] - before["model_runs"] == 2


async def test_bad_requests_get_errors_and_the_server_lives_on(session: Session, checkpoints) -> None:
    with pytest.raises(JsonRpcException):
        await session.command("refact.prompt", {"textDocument": {}})
    with pytest.raises(JsonRpcException):
        await session.command(
            "refact.prompt",
            {"textDocument": {"uri": "file:///not-open.py"}, "position": {"line": 0, "character": 0}},
        )
    with pytest.raises(JsonRpcException):
        await session.raw_request(types.TEXT_DOCUMENT_INLINE_COMPLETION, {"textDocument": 5, "position": "x"})
    with pytest.raises(JsonRpcException):
        await session.raw_request("textDocument/completion", None)
    with pytest.raises(JsonRpcException):
        await session.raw_request("refact/unknownMethod", {})
    # Unknown documents and bad notifications are answered empty or ignored.
    assert await session.inline("file:///never-opened.py", 0, 0) == []
    session.client.protocol._send_data(
        {"jsonrpc": "2.0", "method": "textDocument/didChange", "params": {"textDocument": "bad"}}
    )
    # Positions far outside the document are clamped, not errors.
    assert isinstance(await session.inline(DOC, 999, 999), list)
    assert (await session.stats())["model"]["state"] == "ready"
    # A second initialize is refused; the session's position encoding and settings stay.
    encoding = session.encoding
    with pytest.raises(JsonRpcException, match="once"):
        await session.raw_request(
            types.INITIALIZE,
            {
                "processId": None,
                "rootUri": None,
                "capabilities": {
                    "general": {"positionEncodings": ["utf-32" if encoding != "utf-32" else "utf-16"]}
                },
                "initializationOptions": {"maxNewTokens": 1},
            },
        )
    await use_model(session, checkpoints.scripted)
    assert [i.insert_text for i in await session.inline(DOC, *CURSOR)] == [SCRIPTED_TEXT]
