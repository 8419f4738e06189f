"""Prompts and completions through the real server as VS Code (utf-16), Neovim (utf-8) and Emacs (utf-32).

One server process per client, shared by the module's tests. The scripted checkpoint answers
every FIM prompt with ``SCRIPTED_TEXT``, so completion text and ranges are exact.
"""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio
from lsprotocol import types

from refact_lsp.service.prompt import WINDOW_HEADROOM

from .lsp_session import (
    BASE_SETTINGS,
    CLIENTS,
    SCRIPTED_TEXT,
    Checkpoints,
    Session,
    selected_item,
    start_session,
    stop_session,
    units,
    uri_of,
)

SINGLE_TEXT = "import os\n\ndef add(a, b):\n    return \n\nprint(add(1, 2))\n"
MULTI_TEXT = "def add(a, b):\n    \nprint(1)\n"
ASTRAL_LINE = 'label = "😀 é 𝄞"; total = '


@pytest_asyncio.fixture(scope="module", params=list(CLIENTS))
async def session(request: pytest.FixtureRequest, checkpoints: Checkpoints):
    client, encodings, _ = CLIENTS[request.param]
    s = await start_session(
        client, encodings=encodings, model=checkpoints.scripted, initialization_options=dict(BASE_SETTINGS)
    )
    s.name = request.param  # type: ignore[attr-defined]
    stats = await s.wait_model()
    assert stats["model"]["state"] == "ready", stats["model"]
    yield s
    await stop_session(s)


def tokens_of(text: str) -> int:
    from refact_lsp.dev.checkpoints import fixture_tokenizer_path
    from refact_lsp.engine.tokenizer import RefactTokenizer

    return len(RefactTokenizer.from_file(fixture_tokenizer_path()).encode_text(text))


def fim(prefix: str, suffix: str) -> str:
    return f"<fim_suffix>{suffix}<fim_prefix>{prefix}<fim_middle>"


async def test_the_server_picks_the_expected_position_encoding(session: Session) -> None:
    assert session.encoding == CLIENTS[session.name][2]  # type: ignore[attr-defined]


def expected_prompt(prefix: str, suffix: str, mode: str) -> dict:
    """What ``refact.prompt`` must answer: the FIM text, its token count (3 special tokens) and the mode."""
    return {"prompt": fim(prefix, suffix), "tokens": tokens_of(prefix) + tokens_of(suffix) + 3, "mode": mode}


async def test_single_line_prompt_is_exact(session: Session) -> None:
    uri = uri_of("single.py")
    session.open(uri, SINGLE_TEXT)
    answer = await session.prompt(uri, 3, len("    return "))
    assert answer == expected_prompt(
        "import os\n\ndef add(a, b):\n    return ", "\nprint(add(1, 2))\n", "single"
    )


async def test_multi_line_prompt_is_exact(session: Session) -> None:
    uri = uri_of("multi.py")
    session.open(uri, MULTI_TEXT)
    answer = await session.prompt(uri, 1, 4)
    assert answer == expected_prompt("def add(a, b):\n", "    \nprint(1)\n", "multi")


async def test_inline_completion_text_and_range_in_the_negotiated_encoding(session: Session) -> None:
    uri = uri_of("astral.py")
    session.open(uri, f"def f():\n    {ASTRAL_LINE}\n")
    cursor = units(f"    {ASTRAL_LINE}", session.encoding)
    items = await session.inline(uri, 1, cursor)
    assert len(items) == 1
    assert items[0].insert_text == SCRIPTED_TEXT
    position = types.Position(line=1, character=cursor)
    assert items[0].range == types.Range(start=position, end=position)
    answer = await session.prompt(uri, 1, cursor)
    assert answer["prompt"].endswith(f"    {ASTRAL_LINE}<fim_middle>")


async def test_completion_offers_the_same_suggestion_as_a_text_edit(session: Session) -> None:
    uri = uri_of("single.py")
    session.open(uri, SINGLE_TEXT)
    result = await session.completion(uri, 3, len("    return "))
    assert result.is_incomplete is True
    assert len(result.items) == 1
    item = result.items[0]
    assert item.label == SCRIPTED_TEXT
    assert item.insert_text_format == types.InsertTextFormat.PlainText
    assert item.insert_text_mode == types.InsertTextMode.AsIs  # not the client's adjustIndentation
    position = types.Position(line=3, character=len("    return "))
    assert item.text_edit == types.TextEdit(
        range=types.Range(start=position, end=position), new_text=SCRIPTED_TEXT
    )


async def test_a_completion_item_starts_at_the_word_before_the_cursor(session: Session) -> None:
    """eglot (and company or corfu through it) filters items by the symbol at point: at the end of a word
    the item's range starts at that word, and its text and label start with it."""
    uri = uri_of("word.py")
    line = '    s = "😀"; total = café'
    session.open(uri, f"def f():\n{line}\n")
    cursor = units(line, session.encoding)
    result = await session.completion(uri, 1, cursor)
    [item] = result.items
    start = types.Position(line=1, character=units('    s = "😀"; total = ', session.encoding))
    assert item.text_edit == types.TextEdit(
        range=types.Range(start=start, end=types.Position(line=1, character=cursor)),
        new_text="café" + SCRIPTED_TEXT,
    )
    assert item.label == item.filter_text == "café" + SCRIPTED_TEXT
    [inline] = await session.inline(uri, 1, cursor)  # the inline item stays at the cursor
    assert (inline.insert_text, inline.range.start.character) == (SCRIPTED_TEXT, cursor)


async def test_a_change_sent_right_behind_a_request_does_not_move_it(session: Session) -> None:
    """A client that does not cancel its request when the user types on: the answer is for the text and the
    position the request was sent for (its range contains that position, as the specification asks)."""
    uri = uri_of("behind.py")
    session.open(uri, SINGLE_TEXT)
    cursor = types.Position(line=3, character=len("    return "))
    top = types.Range(start=types.Position(line=0, character=0), end=types.Position(line=0, character=0))
    two_lines = types.Range(start=top.start, end=types.Position(line=2, character=0))
    for _ in range(3):
        pending = asyncio.ensure_future(session.completion(uri, cursor.line, cursor.character))
        await asyncio.sleep(0)  # the request is written
        session.change(uri, [types.TextDocumentContentChangePartial(range=top, text="# new\n\n")])
        [item] = (await pending).items
        assert item.text_edit == types.TextEdit(
            range=types.Range(start=cursor, end=cursor), new_text=SCRIPTED_TEXT
        )
        session.change(uri, [types.TextDocumentContentChangePartial(range=two_lines, text="")])


async def test_incremental_edits_use_the_negotiated_encoding(session: Session) -> None:
    uri = uri_of("edits.py")
    session.open(uri, f"{ASTRAL_LINE}\n")
    # Insert "x" right after the emoji, then replace "é" by "e", both addressed in the client's units.
    after_emoji = units('label = "😀', session.encoding)
    session.change(
        uri,
        [
            types.TextDocumentContentChangePartial(
                range=types.Range(
                    start=types.Position(line=0, character=after_emoji),
                    end=types.Position(line=0, character=after_emoji),
                ),
                text="x",
            )
        ],
    )
    e_start = units('label = "😀x ', session.encoding)
    session.change(
        uri,
        [
            types.TextDocumentContentChangePartial(
                range=types.Range(
                    start=types.Position(line=0, character=e_start),
                    end=types.Position(line=0, character=e_start + units("é", session.encoding)),
                ),
                text="e",
            )
        ],
    )
    expected_line = 'label = "😀x e 𝄞"; total = '
    answer = await session.prompt(uri, 0, units(expected_line, session.encoding))
    assert answer["prompt"] == fim(expected_line, "")  # the last line has no line break after it


async def test_selected_completion_item_is_completed_as_if_inserted(session: Session) -> None:
    uri, start, cursor, selected = selected_item(session, "selected.py")
    items = await session.inline(uri, 1, cursor, selected)
    assert len(items) == 1
    assert items[0].insert_text == "add_numbers(" + SCRIPTED_TEXT
    assert items[0].range == types.Range(
        start=types.Position(line=1, character=start), end=types.Position(line=1, character=cursor)
    )


async def test_the_prompt_of_a_large_file_fills_the_budget_around_the_cursor(session: Session) -> None:
    uri = uri_of("large.py")
    lines = [f"value_{i} = {i} * {i}" for i in range(20000)]
    lines[10000] = "result = "
    session.open(uri, "\n".join(lines) + "\n")
    answer = await session.prompt(uri, 10000, len("result = "))
    budget = 4096 - 50  # contextTokens - maxNewTokens
    # A fresh window leaves 1/16 of the budget free (room to type without moving the window).
    filled = budget - budget // WINDOW_HEADROOM - 2 * tokens_of("\nvalue_10000 = 10000 * 10000")
    assert filled <= answer["tokens"] <= budget
    prompt = answer["prompt"]
    assert prompt.endswith("value_9999 = 9999 * 9999\nresult = <fim_middle>")
    assert prompt.startswith("<fim_suffix>value_10001 = 10001 * 10001\n")
    # Lines are taken alternately above and below: as many of each, give or take one.
    above = prompt.split("<fim_prefix>")[1].count("\n")
    below = prompt.split("<fim_prefix>")[0].count("\n")
    assert abs(above - below) <= 1


async def test_crlf_documents_give_the_model_plain_newlines(session: Session) -> None:
    uri = uri_of("crlf.py")
    session.open(uri, SINGLE_TEXT.replace("\n", "\r\n"))
    answer = await session.prompt(uri, 3, len("    return "))
    assert "\r" not in answer["prompt"]
    assert answer["prompt"] == fim("import os\n\ndef add(a, b):\n    return ", "\nprint(add(1, 2))\n")
    items = await session.inline(uri, 3, len("    return "))
    assert [i.insert_text for i in items] == [SCRIPTED_TEXT]
