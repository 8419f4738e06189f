"""Emacs: editors/emacs/refact-lsp.el in real Emacs 30 (``emacs --batch``, eglot built in).

One Emacs process runs ``emacs_scenario.el``: it starts the real server through the
``eglot-server-programs`` entry that refact-lsp.el adds (on a scripted checkpoint), completes with
``completion-at-point`` (eglot's textDocument/completion), and types with ``execute-kbd-macro`` so that
``refact-lsp-inline-mode``'s keymap and ``post-command-hook`` run as for a user: the overlay appears,
TAB accepts it, typing drops it, a stale answer is not shown. Each test checks one step's observations.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.editor

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIR = REPO / "editors" / "emacs"
SCENARIO = Path(__file__).with_name("emacs_scenario.el")
MIN_EMACS = (29, 1)  # refact-lsp.el's Package-Requires; the test targets Emacs 30 (bookworm-backports)
TIMEOUT_S = 240
#: Where company, evil and goto-chg are found (Debian's elpa-src layout): .ci/install-editors unpacks Debian's
#: elpa-company, elpa-evil and elpa-goto-chg into .tools/elpa (not installed: Debian's elpa packages go with
#: Debian's own Emacs); else the system's, if those packages are installed. Without them their steps report
#: skipped.
ELPA_FOLDERS = (
    REPO / ".tools" / "elpa" / "usr" / "share" / "emacs" / "site-lisp" / "elpa-src",
    Path("/usr/share/emacs/site-lisp/elpa-src"),
)
VERSION_SEXP = '(format "%d.%d" emacs-major-version emacs-minor-version)'


def _emacs_version(binary: str) -> tuple[int, int]:
    out = subprocess.run(
        [binary, "-Q", "--batch", "--eval", f"(princ {VERSION_SEXP})"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    major, minor = out.strip().split(".")
    return int(major), int(minor)


@pytest.fixture(scope="module")
def results(
    scripted_server,
    multiline_closer_model: Path,
    call_closer_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict:
    """The observations of every scenario step, from one `emacs --batch` run."""
    binary = shutil.which("emacs")
    if binary is None:
        pytest.skip("emacs not found: .ci/install-editors installs Emacs 30 from bookworm-backports")
    version = _emacs_version(binary)
    if version < MIN_EMACS:
        pytest.skip(f"Emacs {version[0]}.{version[1]} is older than 29.1 (eglot built in)")
    workdir = tmp_path_factory.mktemp("emacs")
    env = {
        **os.environ,
        **scripted_server.env,
        "REFACT_TEST_COMMAND": json.dumps(scripted_server.command),
        "REFACT_TEST_SETTINGS": json.dumps(scripted_server.settings),
        "REFACT_TEST_DIR": str(workdir),
        "REFACT_TEST_SINGLE_LINE_MODEL": str(scripted_server.single_line_model),
        "REFACT_TEST_MULTILINE_MODEL": str(scripted_server.multiline_model),
        "REFACT_TEST_CLOSER_MODEL": str(scripted_server.closer_model),
        "REFACT_TEST_MULTILINE_CLOSER_MODEL": str(multiline_closer_model),
        "REFACT_TEST_CALL_CLOSER_MODEL": str(call_closer_model),
    }
    elpa = next((folder for folder in ELPA_FOLDERS if folder.is_dir()), None)
    if elpa is not None:
        env["REFACT_TEST_ELPA"] = str(elpa)
    cmd = [binary, "--batch", "-Q", "-L", str(PACKAGE_DIR), "-l", str(SCENARIO)]
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=TIMEOUT_S, check=False)
    stdout = proc.stdout.decode("utf-8", "replace")
    stderr = proc.stderr.decode("utf-8", "replace")
    match = re.search(r"^REFACT-RESULTS:(.*)$", stdout, re.MULTILINE)
    if match is None:
        pytest.fail(f"emacs exited {proc.returncode} without results\n{stdout[-4000:]}\n{stderr[-4000:]}")
    return json.loads(match[1])


def _step(results: dict, name: str) -> dict:
    step = results[name]
    assert "error" not in step, f"{name}: {step['error']}"
    return step


def test_eglot_starts_refact_lsp_from_eglot_server_programs(results: dict) -> None:
    step = _step(results, "attach")
    stats_buffer = step.pop("stats_buffer")
    # M-x refact-lsp-stats before any completion: the empty objects are shown as {} (jsonrpc reads them as
    # nil, as it reads null), the null values as null
    stats = json.loads(stats_buffer)
    assert stats["stop_reasons"] == {}
    assert stats["latency_ms"] == {}
    assert stats["last_run"] is None
    assert stats["model"]["state"] == "ready"
    assert step == {
        "class": "refact-lsp-server",
        "server_name": "refact-lsp",
        "encoding": "utf-8",  # Emacs 30 offers utf-32, utf-8, utf-16; the server prefers utf-8
        "inline_provider": True,
        "inline_mode": True,  # switched on by eglot-managed-mode-hook
        "model_state": "ready",
        "stats_command_state": "ready",  # M-x refact-lsp-stats
        "prompt_command_mode": "multi",  # M-x refact-lsp-show-prompt on the empty line after "x = 1"
    }


def test_completion_at_point_inserts_the_scripted_completion(results: dict, scripted_server) -> None:
    step = _step(results, "capf")
    # A non-ASCII character left of the cursor: positions must agree on the negotiated encoding.
    assert step["text"] == f'def add(a, b):\n    x = "héllo" + {scripted_server.single_line_text}'
    assert step["point_at_end"] is True


def test_completion_at_point_completes_at_the_end_of_a_word(results: dict, scripted_server) -> None:
    """eglot filters items by the symbol at point: the item starts at that word, so it is inserted."""
    step = _step(results, "capf_word")
    assert step["text"] == f'def add(a, b):\n    x = "héllo" + tötal{scripted_server.single_line_text}'
    assert step["point_at_end"] is True


def test_completion_at_point_completes_names_with_dashes_in_css_and_lisp(
    results: dict, scripted_server
) -> None:
    step = _step(results, "capf_names_with_dashes")
    text = scripted_server.single_line_text
    assert step == {"css": f"a {{\n  background-co{text}", "elisp": f"(defun f ()\n  (my-fu{text}"}


def test_modes_served_through_prog_mode_send_their_lsp_language_id(results: dict) -> None:
    """``js-json-mode`` was sent as "js-json" (the mode's name): the server's ``languages`` setting knows
    JSON as "json"."""
    assert _step(results, "language_ids") == {
        "js-json-mode": "json",
        "makefile-gmake-mode": "makefile",
        "cperl-mode": "perl",
        "css-mode": "css",
    }


def test_commands_in_a_buffer_eglot_does_not_manage_say_so(results: dict) -> None:
    step = _step(results, "unmanaged")
    assert step == {
        "server": None,
        "show_prompt": "refact-lsp is not running in this buffer",
        "request": "no error",
    }


def test_overlay_appears_and_tab_accepts_it(results: dict, scripted_server) -> None:
    step = _step(results, "inline")
    assert step["text_with_ghost"] == "def add(a, b):\n    return ", "the overlay must not change the text"
    assert step["ghost"] == {"text": scripted_server.single_line_text, "pos": step["point_with_ghost"]}
    assert step["tab_without_ghost"] == "indent-for-tab-command"
    assert step["tab_with_ghost"] == "refact-lsp-inline-accept"
    assert step["text"] == f"def add(a, b):\n    return {scripted_server.single_line_text}"
    assert step["point_at_end"] is True
    assert step["ghost_after"] is None


def test_typing_drops_the_overlay(results: dict, scripted_server) -> None:
    step = _step(results, "dismiss")
    assert step["ghost"]["text"] == scripted_server.single_line_text
    assert step["ghost_after_typing"] is None
    assert step["text"] == "def add(a, b):\n    return x"


def test_a_stale_answer_is_not_shown(results: dict, scripted_server) -> None:
    step = _step(results, "stale")
    assert step["stale_ghost"] is None
    assert step["same_seq"] is True
    assert step["fresh_ghost"]["text"] == scripted_server.single_line_text


def test_multiline_overlay_and_completion_at_point(results: dict, scripted_server) -> None:
    step = _step(results, "multiline")
    expected = f"def add(a, b):\n{scripted_server.multiline_text}"
    # The indentation typed before asking is not repeated in the ghost text.
    assert step["ghost"] == {"text": "return a + b\n    # done", "pos": len("def add(a, b):\n    ") + 1}
    assert step["text"] == expected
    assert step["capf_text"] == expected


def test_an_auto_closed_paren_the_suggestion_types_is_shown_once(results: dict) -> None:
    """``def f(|)`` + ``x):``: the server's range covers the real ")"; the overlays show "x" before it
    and ":" after it, and TAB gives the same line."""
    step = _step(results, "closer")
    assert step["displayed"] == "def f(x):"
    assert step["text"] == "def f(x):"


def test_a_multiline_suggestion_hides_the_auto_closed_paren_it_types(results: dict) -> None:
    """``x = foo(|)`` + ``a,\n    b)`` (multiline "always"): the ghost text is one piece, so the real ")"
    that it replaces is hidden while it is shown (not ``x = foo(a,\n    b))``), shown again when the ghost
    text goes, and TAB gives what was shown."""
    step = _step(results, "multiline_closer")
    assert step["displayed"] == "x = foo(a,\n    b)"
    assert step["displayed_dismissed"] == "x = foo()"
    assert step["overlays_dismissed"] == 0
    assert step["text"] == "x = foo(a,\n    b)"
    assert step["displayed_accepted"] == step["text"]
    assert step["overlays_accepted"] == 0


def test_a_move_of_point_asks_on_idle(results: dict, scripted_server) -> None:
    """A command that only moves point (C-e to the end of a line, C-b C-f back) asks on idle as an edit does
    (copilot.el asks after any command), but not while the ghost text is shown there, nor again for the text
    and point of the last request."""
    step = _step(results, "move")
    suggestion = scripted_server.single_line_text
    assert step["ghost_at_end"] == {"text": suggestion, "pos": step["end"]}
    assert step["asked_while_shown"] is False
    assert step["ghost_back"] == {"text": suggestion, "pos": step["end"]}
    assert step["asked_same_state_again"] is False


def test_show_prompt_where_the_server_completes_nothing(results: dict) -> None:
    """M-x refact-lsp-show-prompt mid-line (refact.prompt answers null): a message, no error."""
    step = _step(results, "prompt_none")
    assert step["returned"] is None
    assert step["message"] == "refact-lsp: no completion here (mode: none)"


def test_show_prompt_while_the_model_loads_says_why(results: dict) -> None:
    """M-x refact-lsp-show-prompt before the model is ready: the server's reason as a user-error, not
    ``jsonrpc-error: "request id=84 failed:", (jsonrpc-error-code . -32803), ...``."""
    step = _step(results, "prompt_loading")
    assert step == {"signal": "user-error", "message": "refact-lsp: the model is not ready (state loading)"}


def test_a_new_idle_delay_reaches_the_shared_timer(results: dict) -> None:
    """The idle timer exists once inline mode is on; customize (its :set) re-creates it at once, a plain setq
    after the next command in an inline-mode buffer; one timer all along."""
    step = _step(results, "idle_delay")
    assert step["before"] == pytest.approx(0.01)
    assert step["customized"] == 0.5
    assert step["after_setq"] == 0.25
    assert step["timers"] == 1


def test_an_edit_from_outside_a_command_never_loses_tab(results: dict, scripted_server) -> None:
    """A timer or process (an async formatter, auto-revert) edits the buffer while the ghost text is shown:
    an edit elsewhere leaves the suggestion, moved with the text, and TAB accepts it; an edit where it goes
    drops it at once and TAB indents; when point moved, TAB (``<tab>``) runs what it runs without it."""
    step = _step(results, "async_edit")
    suggestion = scripted_server.single_line_text

    elsewhere = step["elsewhere"]
    assert elsewhere["ghost"]["text"] == suggestion
    moved_by = len("import os\n")
    assert elsewhere["ghost_after_edit"] == {"text": suggestion, "pos": elsewhere["ghost"]["pos"] + moved_by}
    assert elsewhere["tab_after_edit"] == "refact-lsp-inline-accept"
    assert elsewhere["text"] == f"import os\ndef add(a, b):\n    return {suggestion}"
    assert elsewhere["indents"] == 0
    assert elsewhere["ghost_after"] is None

    at_point = step["at_point"]
    assert at_point["ghost"]["text"] == suggestion
    assert at_point["ghost_after_edit"] is None
    assert at_point["overlays_after_edit"] == 0
    assert at_point["tab_after_edit"] == "indent-for-tab-command"
    assert at_point["indents"] == 1  # the keypress is not lost
    assert suggestion not in at_point["text"]

    moved = step["moved"]
    assert moved["ghost_after_edit"] == moved["ghost"]
    assert moved["tab_after_edit"] == "refact-lsp-inline-accept"
    assert moved["indents"] == 1
    assert moved["text"] == "def add(a, b):\n    return "
    assert moved["ghost_after"] is None


def _step_or_skip(results: dict, name: str) -> dict:
    step = _step(results, name)
    if "skipped" in step:
        pytest.skip(step["skipped"])
    return step


def test_completion_preview_mode_shows_the_suggestion_once(results: dict, scripted_server) -> None:
    """Emacs 30's ``completion-preview-mode`` previews the server's completion item (the only candidate) at
    point: the ghost text must not show the same text a second time (``return tota + ba + b``); TAB is the
    preview's then."""
    step = _step(results, "completion_preview")
    text = scripted_server.single_line_text
    assert step["shown"] == [text]
    assert step["ghost"] is None
    assert step["asked_on_idle"] is False
    assert step["tab"] == "completion-preview-insert"
    assert step["text"] == f"def add(a, b):\n    total = a\n    return tot{text}"


def test_company_shows_the_suggestion_once(results: dict, scripted_server) -> None:
    """company (default frontends) previews its only candidate, the server's completion item, at point once
    it begins: the ghost text shown before goes (not ``return tota + ba + b``), and TAB is company's."""
    step = _step_or_skip(results, "company")
    text = scripted_server.single_line_text
    assert step["candidates"] == [f"tot{text}"]
    assert step["shown"] == [text]
    assert step["ghost"] is None
    assert step["tab"] == "company-complete-common"
    assert step["text"] == f"def add(a, b):\n    total = a\n    return tot{text}"


def test_evil_normal_state_asks_nothing_and_shows_nothing(results: dict, scripted_server) -> None:
    """evil: moving in normal state (``j`` onto a blank line) neither asks nor shows ghost text (it would push
    the lines below down, and TAB there is ``evil-jump-forward``); insert state does, and TAB accepts there;
    back to normal state the ghost text goes."""
    step = _step_or_skip(results, "evil")
    assert step["normal"] == {"state": "normal", "asked": False, "ghost": None}
    assert step["insert"]["state"] == "insert"
    assert step["insert"]["ghost"]["text"] == scripted_server.multiline_text
    assert step["escaped"] == {"state": "normal", "ghost": None}
    assert step["text"] == f"def add(a, b):\n{scripted_server.multiline_text}\n    x = 1\n"


def test_accept_word_twice_then_the_rest(results: dict, scripted_server) -> None:
    """M-f takes the next word ("a", then " +"), the rest stays shown as if typed, TAB inserts it; undo
    takes back each accept in one step."""
    step = _step(results, "accept_word")
    head = "def add(a, b):\n    return "
    assert step["binding"] == "refact-lsp-inline-accept-word"
    assert step["first"] == {
        "text": head + "a",
        "point": len(head + "a"),
        "ghost": [" + b"],
        "displayed": head + "a + b",
    }
    assert step["second"] == {
        "text": head + "a +",
        "point": len(head + "a +"),
        "ghost": [" b"],
        "displayed": head + "a + b",
    }
    assert step["rest"] == {
        "text": head + scripted_server.single_line_text,
        "point": len(head + "a + b"),
        "ghost": [],
        "displayed": head + "a + b",
    }
    assert step["undone"] == head + "a"


def test_accept_line_of_a_multiline_suggestion(results: dict, scripted_server) -> None:
    """C-e takes the rest of the first line (the next line stays shown), then the line break and the
    next line: what TAB gives."""
    step = _step(results, "accept_line")
    first_line, second_line = scripted_server.multiline_text.split("\n")
    head = "def add(a, b):\n"
    assert step["first"] == {
        "text": head + first_line,
        "point": len(head + first_line),
        "ghost": ["\n" + second_line],
        "displayed": head + first_line + "\n" + second_line,
    }
    assert step["last"]["text"] == head + scripted_server.multiline_text
    assert step["last"]["point"] == len(head + scripted_server.multiline_text)
    assert step["last"]["ghost"] == []


def test_accept_word_keeps_an_auto_closed_paren_once(results: dict) -> None:
    """``def f(|)`` + ``x):``: M-f puts "x" before the real ")" (kept once, ":" still shown after it);
    the last word "):" types over it as TAB does."""
    step = _step(results, "accept_word_closer")
    assert step["first"] == {
        "text": "def f(x)",
        "point": len("def f(x"),
        "ghost": [":"],
        "displayed": "def f(x):",
    }
    assert step["last"]["text"] == "def f(x):"
    assert step["last"]["point"] == len("def f(x):")
    assert step["last"]["ghost"] == []


def test_accept_word_and_line_keep_a_multiline_suggestions_paren_once(results: dict) -> None:
    """``x = foo(|)`` + ``a,\\n    b)``: parts taken by M-f and C-e keep the real ")" after point, once (and
    hidden while the rest is shown); the last line gives what TAB gives."""
    step = _step(results, "accept_multiline_closer")
    full = "x = foo(a,\n    b)"
    assert step["word"] == {
        "text": "x = foo(a)",
        "point": len("x = foo(a"),
        "ghost": [",\n    b)"],
        "displayed": full,
    }
    assert step["line"] == {
        "text": "x = foo(a,)",
        "point": len("x = foo(a,"),
        "ghost": ["\n    b)"],
        "displayed": full,
    }
    assert step["last"]["text"] == full
    assert step["last"]["point"] == len(full)
    # words across the line break: the last one ("\n    b", all that is shown) is the last part, as TAB
    assert step["words"]["text"] == full
    assert step["words"]["point"] == len(full)
    assert step["words"]["ghost"] == []


def test_the_last_word_shown_before_an_auto_closed_paren_accepts_it_all(results: dict) -> None:
    """``x = foo(|)`` + ``a, b)``: the ghost text is "a, b" before the real ")". The third M-f takes " b", the
    last of what is shown: that is TAB, so point goes after the ")" it types again (it stayed before it, the
    suggestion gone: the next M-f then moved to the next word); undo takes back that accept alone."""
    step = _step(results, "accept_last_word_closer")
    assert step["shown"]["ghost"] == ["a, b"]
    assert step["shown"]["displayed"] == "x = foo(a, b)"
    assert step["second"] == {
        "text": "x = foo(a,)",
        "point": len("x = foo(a,"),
        "ghost": [" b"],
        "displayed": "x = foo(a, b)",
    }
    assert step["last"] == {
        "text": "x = foo(a, b)",
        "point": len("x = foo(a, b)"),
        "ghost": [],
        "displayed": "x = foo(a, b)",
    }
    assert step["tab_point"] == len("x = foo(a, b)")
    assert step["undone"] == {"text": "x = foo(a,)", "point": len("x = foo(a,")}


def test_c_e_before_text_the_suggestion_leaves_moves_to_the_end_of_the_line(
    results: dict, scripted_server
) -> None:
    """``x = foo(|)`` + ``a + b``: the real ")" stays right of the ghost text, so the end of the line is after
    it and C-e goes there (``move-end-of-line``, the suggestion dropped), instead of inserting "a + b" before
    the ")". Where the rest of the line is what the suggestion types again, C-e takes a line of it
    (``test_accept_word_and_line_keep_a_multiline_suggestions_paren_once``)."""
    step = _step(results, "accept_line_mid_line")
    text = "x = foo()\ny = 2\n"
    assert step["shown"]["ghost"] == [scripted_server.single_line_text]
    assert step["shown"]["text"] == text
    assert step["binding"] == "move-end-of-line"
    assert step["after"] == {
        "text": text,
        "point": len("x = foo()"),
        "ghost": [],
        "displayed": text,
    }


def test_accept_word_and_line_keys_move_when_nothing_is_shown(results: dict) -> None:
    step = _step(results, "accept_word_nothing_shown")
    assert step["after_word"] == len("foo")  # forward-word
    assert step["after_line"] == len("foo bar")  # move-end-of-line
    assert step["binding"] == "refact-lsp-inline-accept-word refact-lsp-inline-accept-line"
    # the suggestion no longer applies (point moved outside a command): M-f drops it and is forward-word
    assert step["ghost"] is None
    assert step["text"] == "def add(a, b):\n    return \nfoo bar\n"
    assert step["moved_word"] == len("foo")
