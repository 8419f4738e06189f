"""VS Code extension: the .vsix builds (every run) and works in real VS Code (code-server, behind a flag).

The end-to-end tests run code-server 4.100.3 (VS Code 1.100) in headless Chromium with the packaged extension
and the real server on scripted checkpoints, in one session: ghost text appears, Tab accepts, Ctrl+S saves,
Accept Next Word and Accept Next Line take part of a suggestion and leave the rest, two restarts in a row
leave one server. They take about half a minute plus a one-time install of code-server, so they run only
with ``REFACT_LSP_VSCODE_E2E=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXTENSION = REPO / "editors" / "vscode"
E2E = EXTENSION / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
E2E_FLAG = "REFACT_LSP_VSCODE_E2E"

pytestmark = pytest.mark.editor


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Runs a command; a failure fails the test with the command's output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def vsix() -> Path:
    """The packaged extension, built by .ci/build-vscode (npm ci + tsc + vsce package)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not installed: cannot build the VS Code extension")
    out = _run(["bash", str(REPO / ".ci" / "build-vscode")], cwd=REPO, timeout=600)
    path = Path(out.strip().splitlines()[-1])
    assert path.is_file(), out
    return path


def test_vsix_holds_a_runnable_extension(vsix: Path) -> None:
    with zipfile.ZipFile(vsix) as archive:
        names = set(archive.namelist())
        manifest = json.loads(archive.read("extension/package.json"))
    assert manifest["main"] == "./out/extension.js"
    assert "extension/out/extension.js" in names
    # One esbuild bundle: vscode-languageclient is inside it, no node_modules, no sources.
    assert not any(name.startswith(("extension/node_modules/", "extension/src/")) for name in names), names

    # engines.vscode admits VS Code 1.100 (what code-server 4.100.3 runs).
    engine = re.fullmatch(r"\^(\d+)\.(\d+)\.\d+", manifest["engines"]["vscode"])
    assert engine and (int(engine[1]), int(engine[2])) <= (1, 100)

    properties = manifest["contributes"]["configuration"]["properties"]
    for name in (
        "serverCommand",
        "model",
        "device",
        "dtype",
        "maxNewTokens",
        "temperature",
        "debounceMs",
        "multiline",
    ):
        assert f"refact.{name}" in properties
    commands = {c["command"] for c in manifest["contributes"]["commands"]}
    assert {"refact.toggleCompletions", "refact.showStats", "refact.showPrompt"} <= commands


def test_bundled_extension_loads_without_node_modules(vsix: Path, tmp_path: Path) -> None:
    """The unpacked .vsix needs no module but `vscode` (a stub stands in for the host here)."""
    with zipfile.ZipFile(vsix) as archive:
        archive.extractall(tmp_path)
    entry = tmp_path / "extension" / "out" / "extension.js"
    # The stub exports every name the bundle reads from `vscode`; each is a value on which any property
    # access, call or `new` gives the same value again: only loading is tested here.
    # The bundle reaches `vscode` under many aliases: export every name read after a dot...
    names = sorted(set(re.findall(r"\.([A-Za-z_]\w*)", entry.read_text())) - {"__esModule", "default"})
    (tmp_path / "vscode-stub.js").write_text(
        "const any = new Proxy(function () {}, { get: (t, p) => p === Symbol.toPrimitive ? () => '' : any,"
        " apply: () => any, construct: () => any });\n"
        f"for (const name of {json.dumps(names)}) exports[name] = any;\n"
    )
    script = (
        "const Module = require('module');"
        "const resolve = Module._resolveFilename;"
        "Module._resolveFilename = function (request, ...rest) {"
        "  if (request === 'vscode') return require.resolve('./vscode-stub.js');"
        "  if (!Module.isBuiltin(request) && !request.startsWith('.') && !request.startsWith('/'))"
        "    throw new Error('the bundle requires ' + request);"
        "  return resolve.call(this, request, ...rest); };"
        f"const ext = require({json.dumps(str(entry))});"
        "console.log(typeof ext.activate, typeof ext.deactivate);"
    )
    out = _run(["node", "-e", script], cwd=tmp_path, timeout=60)
    assert out.strip().splitlines()[-1] == "function function"


# VS Code's layered settings, as far as `refact.enable` goes: a workspace value overrides the user's.
LAYERED_SETTINGS_MOCK = """
const store = { global: {}, workspace: JSON.parse(process.env.WORKSPACE) };
module.exports = {
  ConfigurationTarget: { Global: 1, Workspace: 2, WorkspaceFolder: 3 },
  workspace: { getConfiguration: (section) => ({
    get: (key, fallback) => { const k = section + '.' + key;
      return k in store.workspace ? store.workspace[k] : k in store.global ? store.global[k] : fallback; },
    inspect: (key) => ({ globalValue: store.global[section + '.' + key],
                         workspaceValue: store.workspace[section + '.' + key] }),
    update: async (key, value, target) => {
      (target === 1 ? store.global : store.workspace)[section + '.' + key] = value; },
  }) },
  store,
};
"""


@pytest.mark.parametrize("workspace", [{}, {"refact.enable": True}])
def test_toggling_completions_writes_where_it_takes_effect(
    vsix: Path, tmp_path: Path, workspace: dict
) -> None:
    """``setCompletionsEnabled`` (the toggle command) in the workspace's settings when they set
    ``refact.enable`` (the user's would be overridden), else in the user's."""
    (tmp_path / "vscode.js").write_text(LAYERED_SETTINGS_MOCK)
    bundle = tmp_path / "settings.js"
    esbuild = REPO / "editors" / "vscode" / "node_modules" / ".bin" / "esbuild"
    source = REPO / "editors" / "vscode" / "src" / "settings.ts"
    bundling = [str(esbuild), str(source), "--bundle", "--platform=node", "--external:vscode"]
    _run([*bundling, f"--outfile={bundle}"], cwd=tmp_path, timeout=60)
    script = (
        "const Module = require('module'); const resolve = Module._resolveFilename;"
        "Module._resolveFilename = function (r, ...rest) {"
        "  return r === 'vscode' ? require.resolve('./vscode.js') : resolve.call(this, r, ...rest); };"
        "const s = require('./settings.js');"
        "s.setCompletionsEnabled(false).then(() => console.log(JSON.stringify("
        "  { enabled: s.completionsEnabled(), store: require('./vscode.js').store })));"
    )
    env = {**os.environ, "WORKSPACE": json.dumps(workspace)}
    out = _run(["node", "-e", script], cwd=tmp_path, timeout=60, env=env)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["enabled"] is False
    where = "workspace" if workspace else "global"
    assert result["store"][where] == {"refact.enable": False}


# `vscode` for activate() and the restart command; any other name is an inert value. The top-level names are
# own properties, since the bundle copies the module's names.
RESTART_VSCODE_MOCK = """
const any = new Proxy(function () {}, { get: (t, p) => p === Symbol.toPrimitive ? () => '' : any,
  set: () => true, apply: () => any, construct: () => any });
const inert = (object) => new Proxy(object, { get: (t, p) => (p in t ? t[p] : any) });
const disposable = { dispose() {} };
const commands = {};
const log = [];
const channel = inert({ warn: (m) => log.push('warn: ' + m), error: (m) => log.push('error: ' + m) });
class EventEmitter { constructor() { this.event = () => disposable; } fire() {} dispose() {} }
module.exports = {
  EventEmitter, StatusBarAlignment: any, ThemeColor: any, MarkdownString: any, ViewColumn: any, Uri: any,
  commands: inert({ registerCommand: (name, fn) => { commands[name] = fn; return disposable; } }),
  window: inert({ createOutputChannel: () => channel }),
  workspace: inert({
    getConfiguration: () => inert({ get: (key, fallback) => fallback }),
    onDidChangeConfiguration: () => disposable,
    registerTextDocumentContentProvider: () => disposable,
  }),
  commandHandlers: commands,
  log,
};
"""

# vscode-languageclient's LanguageClient as far as starting and stopping go, with its rules: start() spawns
# the server at once and resolves after `initialize`; stop() rejects unless the client is running (also while
# it is starting); a crashed server is restarted by the client itself (Running -> Starting -> Running).
LANGUAGECLIENT_MOCK = """
const State = { Stopped: 1, Running: 2, Starting: 3, StartFailed: 4 };
const clients = [];
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
class LanguageClient {
  constructor() {
    this.state = State.Stopped;
    this.serverAlive = false;
    this.listeners = [];
    clients.push(this);
  }
  onDidChangeState(listener) { this.listeners.push(listener); return { dispose() {} }; }
  setState(state) {
    const oldState = this.state;
    this.state = state;
    for (const listener of this.listeners) listener({ oldState, newState: state });
  }
  start() {
    if (this.state === State.Starting) return this.starting;
    this.setState(State.Starting);
    this.serverAlive = true;
    this.starting = sleep(30).then(() => this.setState(State.Running));
    return this.starting;
  }
  crashAndRestart() {
    this.setState(State.Starting);
    this.starting = sleep(30).then(() => this.setState(State.Running));
  }
  stop() {
    if (this.stopping) return this.stopping;
    if (this.state !== State.Running) {
      return Promise.reject(new Error(`Client is not running and can't be stopped. State: ${this.state}`));
    }
    this.stopping = sleep(30).then(() => {
      this.serverAlive = false;
      this.stopping = undefined;
      this.setState(State.Stopped);
    });
    return this.stopping;
  }
  async sendRequest() { return { model: { state: 'ready' } }; }
  async sendNotification() {}
}
module.exports = {
  LanguageClient, State, clients,
  DidChangeConfigurationNotification: { type: {} },
  ExecuteCommandRequest: { type: {} },
  TransportKind: { stdio: 0 },
};
"""

# Restarts that overlap, at each stage of another restart; after each, how many servers are alive.
RESTART_DRIVER = """
const Module = require('module');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (request, ...rest) {
  if (request === 'vscode') return require.resolve('./vscode.js');
  if (request === 'vscode-languageclient/node') return require.resolve('./languageclient.js');
  return resolve.call(this, request, ...rest);
};
const vscode = require('./vscode.js');
const { clients } = require('./languageclient.js');
const ext = require('./extension.js');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const alive = () => clients.filter((c) => c.serverAlive).length;
(async () => {
  const result = {};
  const activated = ext.activate({ subscriptions: [] });
  const restart = vscode.commandHandlers['refact.restartServer'];
  await sleep(10);
  await restart();  // while the first server starts
  await activated;
  result.duringFirstStart = alive();
  await Promise.all([restart(), restart()]);  // "Restart Server" twice, two saves of refact.serverCommand
  result.twoAtOnce = alive();
  const a = restart();
  await sleep(10);  // the first restart is stopping the server
  await Promise.all([a, restart()]);
  result.whileStopping = alive();
  const b = restart();
  await sleep(45);  // the first restart is starting the new server
  await Promise.all([b, restart()]);
  result.whileStarting = alive();
  clients[clients.length - 1].crashAndRestart();
  await restart();  // while the client restarts its crashed server
  result.whileClientRestarts = alive();
  result.newestAlive = clients[clients.length - 1].serverAlive;
  const c = restart();
  await ext.deactivate();
  await c;
  result.afterDeactivate = alive();
  result.log = vscode.log;
  console.log(JSON.stringify(result));
  process.exit(0);
})().catch((error) => { console.error(error); process.exit(1); });
"""


def test_overlapping_restarts_leave_one_server(vsix: Path, tmp_path: Path) -> None:
    """``extension.ts`` against a mock language client: restarts that overlap (asked for while another
    restart stops or starts the server, or while the client restarts a crashed one) take turns, so one server
    runs after them; none after ``deactivate``."""
    (tmp_path / "vscode.js").write_text(RESTART_VSCODE_MOCK)
    (tmp_path / "languageclient.js").write_text(LANGUAGECLIENT_MOCK)
    (tmp_path / "driver.js").write_text(RESTART_DRIVER)
    esbuild = REPO / "editors" / "vscode" / "node_modules" / ".bin" / "esbuild"
    source = REPO / "editors" / "vscode" / "src" / "extension.ts"
    external = ["--external:vscode", "--external:vscode-languageclient/node"]
    bundling = [str(esbuild), str(source), "--bundle", "--platform=node", *external]
    _run([*bundling, f"--outfile={tmp_path / 'extension.js'}"], cwd=tmp_path, timeout=60)
    out = _run(["node", "driver.js"], cwd=tmp_path, timeout=60)
    result = json.loads(out.strip().splitlines()[-1])
    assert result == {
        "duringFirstStart": 1,
        "twoAtOnce": 1,
        "whileStopping": 1,
        "whileStarting": 1,
        "whileClientRestarts": 1,
        "newestAlive": True,
        "afterDeactivate": 0,
        "log": [],  # no "not running and can't be stopped"
    }


# The server's settings in package.json, against what the server checks (refact_lsp/service/settings.py).
CLIENT_ONLY_SETTINGS = {"refact.enable", "refact.serverCommand", "refact.trace.server"}
JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


def _contributed() -> dict[str, dict]:
    manifest = json.loads((EXTENSION / "package.json").read_text())
    return manifest["contributes"]["configuration"]["properties"]


def _accepted(key: str, value: object) -> bool:
    from refact_lsp.service.settings import SettingsError, _check

    try:
        _check(key, value)
    except SettingsError:
        return False
    return True


def test_package_json_contributes_every_server_setting() -> None:
    """Each server setting is a VS Code setting ``refact.<name>`` with the server's type and default, and
    the range, choices or pattern that ``settings._check`` accepts (so VS Code flags what the server would
    reject); no other ``refact.*`` setting but the extension's own."""
    import dataclasses

    from refact_lsp.service import settings

    properties = _contributed()
    fields = [f.name for f in dataclasses.fields(settings.Settings)]
    assert set(properties) - CLIENT_ONLY_SETTINGS == {f"refact.{name}" for name in fields}
    defaults = settings.Settings()
    for name in fields:
        schema = properties[f"refact.{name}"]
        value_type = type(getattr(defaults, name))
        assert schema["type"] == JSON_TYPES[value_type], name
        if name == "model":
            assert schema["default"] == ""  # empty: sent as null, the server's default (or its --model)
        else:
            assert schema["default"] == getattr(defaults, name), name
            assert _accepted(name, schema["default"]), name
        if schema["type"] in ("integer", "number"):
            low = schema.get("minimum", schema.get("exclusiveMinimum"))
            high = schema["maximum"]
            step = 1 if schema["type"] == "integer" else 1e-6
            assert _accepted(name, high) and not _accepted(name, high + step), name
            if "exclusiveMinimum" in schema:
                assert not _accepted(name, low) and _accepted(name, low + step), name
            else:
                assert _accepted(name, low) and not _accepted(name, low - step), name
        if "enum" in schema:
            choices = {"dtype": settings.DTYPES, "multiline": settings.CHOICES, "midLine": settings.CHOICES}
            assert set(schema["enum"]) == set(choices[name]), name
            assert len(schema.get("enumDescriptions", schema["enum"])) == len(schema["enum"]), name
        if name == "languages":
            assert schema["additionalProperties"] == {"type": "boolean"}
    device = re.compile(properties["refact.device"]["pattern"])
    samples = ("auto", "cpu", "mps", "cuda", "cuda:0", "cuda:12", "gpu", "cuda:", "cuda:x", "cpu0", "tpu", "")
    for value in samples:
        assert bool(device.search(value)) == _accepted("device", value), value
    assert "int8" in properties["refact.dtype"]["enum"]
    # The trace setting tells what the language client does: the channel's log level turns tracing on and off.
    trace = properties["refact.trace.server"]
    assert trace["enum"] == ["messages", "verbose"] and "Trace" in trace["markdownDescription"]


# A stand-in `vscode` module for the real bundled extension and vscode-languageclient (after the reviewer's
# harness). Settings as VS Code gives them: package.json defaults (VSCODE_DEFAULTS) under the user's
# (VSCODE_CONFIG), objects merged, and the section's values also as properties of the configuration object.
STANDIN_VSCODE = r"""
const events = [];
const log = (...a) => events.push(a.join(' '));
const mkEvent = () => {
  const ls = [];
  const ev = (l) => {
    ls.push(l);
    return { dispose() { const i = ls.indexOf(l); if (i >= 0) ls.splice(i, 1); } };
  };
  ev.fire = (x) => ls.slice().forEach((l) => l(x));
  return ev;
};
const any = new Proxy(function () {}, {
  get: (t, p) => (p === 'then' ? undefined : p === Symbol.toPrimitive ? () => '' : any),
  set: () => true, apply: () => any, construct: () => any,
});
const inert = (o) => new Proxy(o, { get: (t, p) => (p in t ? t[p] : p === 'then' ? undefined : any) });
const disposable = { dispose() {} };
class EventEmitter { constructor() { this.event = mkEvent(); } fire(x) { this.event.fire(x); } dispose() {} }
const LogLevel = { Off: 0, Trace: 1, Debug: 2, Info: 3, Warning: 4, Error: 5 };
const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v);
const defaults = JSON.parse(process.env.VSCODE_DEFAULTS || '{}');
const user = JSON.parse(process.env.VSCODE_CONFIG || '{}');
const merged = {};
for (const k of new Set([...Object.keys(defaults), ...Object.keys(user)])) {
  const both = isObject(defaults[k]) && isObject(user[k]);
  merged[k] = both ? { ...defaults[k], ...user[k] } : k in user ? user[k] : defaults[k];
}
const valueAt = (path) => {
  if (path in merged) return merged[path];
  const sub = Object.keys(merged).filter((k) => k.startsWith(path + '.'));
  if (!sub.length) return undefined;
  const o = {};
  for (const k of sub) {
    const parts = k.slice(path.length + 1).split('.');
    let t = o;
    for (const p of parts.slice(0, -1)) t = t[p] = t[p] || {};
    t[parts[parts.length - 1]] = merged[k];
  }
  return o;
};
const getConfiguration = (section) => {
  const full = (key) => (section ? section + '.' + key : key);
  return Object.assign({}, section ? valueAt(section) || {} : {}, {
    get: (key, fallback) => { const v = valueAt(full(key)); return v === undefined ? fallback : v; },
    has: (key) => valueAt(full(key)) !== undefined,
    inspect: () => ({}),
    update: async () => {},
  });
};
const channel = (name) => inert({
  name, logLevel: LogLevel.Info, onDidChangeLogLevel: mkEvent(), show() {}, dispose() {},
  trace: (m) => log('[trace]', m), debug: (m) => log('[debug]', m), info: (m) => log('[info]', m),
  warn: (m) => log('[warn]', m), error: (m) => log('[error]', m),
  append: (m) => log('[append]', m), appendLine: (m) => log('[append]', m),
});
const statusItems = [];
const commandHandlers = {};
class Uri {
  constructor(scheme, path) { this.scheme = scheme; this.path = path; this.fsPath = path; }
  static file(p) { return new Uri('file', p); }
  static parse(s) { return new Uri(s.split(':')[0], s.slice(s.indexOf(':') + 1)); }
  static from(o) { return new Uri(o.scheme, o.path); }
  toString() { return this.scheme + '://' + this.path; }
  with() { return this; }
}
class Disposable {
  constructor(f) { this.dispose = f; }
  static from(...d) { return { dispose() { d.forEach((x) => x.dispose()); } }; }
}
class MarkdownString {
  constructor() { this.value = ''; }
  appendMarkdown(s) { this.value += s; return this; }
  appendText(s) { this.value += s; return this; }
}
module.exports = inert({
  EventEmitter, LogLevel, Uri, Disposable, MarkdownString,
  StatusBarAlignment: { Left: 1, Right: 2 }, ThemeColor: class { constructor(id) { this.id = id; } },
  ViewColumn: { Beside: -2 }, ConfigurationTarget: { Global: 1, Workspace: 2 },
  version: '1.100.0', env: inert({ appName: 'stand-in', language: 'en', machineId: 'x', sessionId: 'y' }),
  commands: inert({
    registerCommand: (n, f) => { commandHandlers[n] = f; return disposable; },
    executeCommand: async (n, ...a) => (commandHandlers[n] ? commandHandlers[n](...a) : undefined),
  }),
  window: inert({
    createOutputChannel: (name) => channel(name),
    createStatusBarItem: () => {
      const item = inert({ show() {}, dispose() {}, hide() {} });
      statusItems.push(item);
      return item;
    },
    showErrorMessage: async (m, ...items) => { log('SHOW-ERROR', m, JSON.stringify(items)); },
    showWarningMessage: async (m) => { log('SHOW-WARN', m); },
    showInformationMessage: async (m) => { log('SHOW-INFO', m); },
    setStatusBarMessage: () => disposable,
    withProgress: async (o, task) =>
      task({ report() {} }, { isCancellationRequested: false, onCancellationRequested: () => disposable }),
    visibleTextEditors: [],
    get activeTextEditor() { return globalThis.activeTextEditor; },
    onDidChangeActiveTextEditor: mkEvent(), onDidChangeVisibleTextEditors: mkEvent(),
    tabGroups: inert({ all: [], onDidChangeTabs: mkEvent(), onDidChangeTabGroups: mkEvent() }),
  }),
  workspace: inert({
    getConfiguration, onDidChangeConfiguration: mkEvent(), textDocuments: [], notebookDocuments: [],
    workspaceFolders: [{ uri: Uri.file(process.env.WORKSPACE_DIR), name: 'workspace', index: 0 }],
    registerTextDocumentContentProvider: () => disposable,
    onDidOpenTextDocument: mkEvent(), onDidCloseTextDocument: mkEvent(), onDidChangeTextDocument: mkEvent(),
    onDidSaveTextDocument: mkEvent(), onWillSaveTextDocument: mkEvent(),
    onDidChangeWorkspaceFolders: mkEvent(), onDidCreateFiles: mkEvent(), onDidRenameFiles: mkEvent(),
    onDidDeleteFiles: mkEvent(), onWillCreateFiles: mkEvent(), onWillRenameFiles: mkEvent(),
    onWillDeleteFiles: mkEvent(), onDidOpenNotebookDocument: mkEvent(), onDidCloseNotebookDocument: mkEvent(),
    onDidChangeNotebookDocument: mkEvent(), onDidSaveNotebookDocument: mkEvent(),
  }),
  languages: inert({
    match: (selector, doc) => (selector.some((f) => !f.scheme || f.scheme === doc.uri.scheme) ? 10 : 0),
    registerInlineCompletionItemProvider: () => disposable,
    registerCompletionItemProvider: () => disposable,
    createDiagnosticCollection: () => inert({ dispose() {}, clear() {}, set() {} }),
  }),
  InlineCompletionTriggerKind: { Invoke: 0, Automatic: 1 },
  _events: events, _status: statusItems,
});
"""

STANDIN_DRIVER = r"""
const Module = require('module');
const resolve = Module._resolveFilename;
Module._resolveFilename = function (r, ...rest) {
  return r === 'vscode' ? require.resolve('./vscode.js') : resolve.call(this, r, ...rest);
};
const vscode = require('./vscode.js');
const ext = require('./extension.js');
(async () => {
  await ext.activate({ subscriptions: [], globalStorageUri: vscode.Uri.file(process.env.STORAGE_DIR) });
  await new Promise((r) => setTimeout(r, Number(process.env.WAIT_MS)));
  for (const scheme of (process.env.SHOW_PROMPT_IN || '').split(',').filter(Boolean)) {
    globalThis.activeTextEditor = {
      document: { uri: new vscode.Uri(scheme, '/workspace/x.py'), fileName: '/workspace/x.py' },
      selection: { active: { line: 0, character: 0 } },
    };
    await vscode.commands.executeCommand('refact.showPrompt');
  }
  const status = vscode._status[0].text;
  await ext.deactivate();
  console.log(JSON.stringify({ status, events: vscode._events }));
  process.exit(0);
})().catch((error) => { console.error(error); process.exit(1); });
"""

# A language server (stdlib only) that records how it was started, what it was sent and asks for
# `workspace/configuration`; FAKE_MODE `fail` dies at startup with a traceback, `crash-then-fail` crashes once
# it ran, then dies at startup like `fail`.
FAKE_SERVER = r"""
import json, os, sys
out, mode = os.environ["FAKE_OUT"], os.environ["FAKE_MODE"]
with open(os.path.join(out, "spawns.jsonl"), "a") as f:
    f.write(json.dumps({"cwd": os.getcwd(), "PYTHONSAFEPATH": os.environ.get("PYTHONSAFEPATH")}) + "\n")
with open(os.path.join(out, "spawns.jsonl")) as f:
    spawns = len(f.readlines())

def log(level, text):
    sys.stderr.write(f"2026-01-31 12:00:00,123 {level} fake.server: {text}\n")
    sys.stderr.flush()

def record(name, value):
    with open(os.path.join(out, name), "w") as f:
        json.dump(value, f)

if mode == "fail" or (mode == "crash-then-fail" and spawns > 1):
    log("INFO", "starting")
    sys.stderr.write('Traceback (most recent call last):\n  File "<fake>", line 1, in <module>\n')
    sys.stderr.write("ModuleNotFoundError: No module named 'fake_missing'\n")
    sys.exit(1)

def read():
    length = 0
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            sys.exit(0)
        if not line.strip():
            return json.loads(sys.stdin.buffer.read(length))
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)

def send(message):
    body = json.dumps({"jsonrpc": "2.0", **message}).encode()
    sys.stdout.buffer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    sys.stdout.buffer.flush()

while True:
    message = read()
    method = message.get("method")
    if method == "initialize":
        record("initializationOptions.json", message["params"].get("initializationOptions"))
        send({"id": message["id"], "result": {"capabilities": {}}})
    elif method == "initialized":
        log("DEBUG", "a debug line")
        log("INFO", "an info line")
        log("WARNING", "a warning line")
        items = [{"section": "refact"}, {"section": "refact.midLine"}, {"section": "refact.topP"}]
        send({"id": "cfg", "method": "workspace/configuration", "params": {"items": items}})
    elif method is None and message.get("id") == "cfg":
        record("configuration.json", message.get("result"))
        if mode == "crash-then-fail":
            log("ERROR", "crashing")
            sys.exit(1)
    elif method == "exit":
        sys.exit(0)
    elif "id" in message and method is not None:  # shutdown, refact.stats
        send({"id": message["id"], "result": None if method == "shutdown" else {"model": {"state": "ready"}}})
"""


def _run_extension(
    tmp_path: Path, mode: str, config: dict, wait_ms: int, show_prompt_in: tuple[str, ...] = ()
) -> dict:
    """The bundled ``extension.ts`` (with the real vscode-languageclient) in the stand-in ``vscode`` against
    the fake server: the status bar text at the end, the log and messages, and what the server recorded."""
    (tmp_path / "vscode.js").write_text(STANDIN_VSCODE)
    (tmp_path / "driver.js").write_text(STANDIN_DRIVER)
    (tmp_path / "fake_server.py").write_text(FAKE_SERVER)
    (tmp_path / "workspace").mkdir()
    (tmp_path / "server-out").mkdir()
    esbuild = EXTENSION / "node_modules" / ".bin" / "esbuild"
    bundling = [str(esbuild), str(EXTENSION / "src" / "extension.ts"), "--bundle", "--platform=node"]
    _run([*bundling, "--external:vscode", f"--outfile={tmp_path / 'extension.js'}"], cwd=tmp_path, timeout=60)
    defaults = {key: schema.get("default") for key, schema in _contributed().items()}
    user = {"refact.serverCommand": [sys.executable, str(tmp_path / "fake_server.py")], **config}
    env = {
        **os.environ,
        "VSCODE_DEFAULTS": json.dumps(defaults),
        "VSCODE_CONFIG": json.dumps(user),
        "WORKSPACE_DIR": str(tmp_path / "workspace"),
        "STORAGE_DIR": str(tmp_path / "storage"),  # missing: the extension creates it
        "FAKE_OUT": str(tmp_path / "server-out"),
        "FAKE_MODE": mode,
        "WAIT_MS": str(wait_ms),
        "SHOW_PROMPT_IN": ",".join(show_prompt_in),  # schemes of editors to run "Show Prompt" in
    }
    out = _run(["node", "driver.js"], cwd=tmp_path, timeout=60, env=env)
    result = json.loads(out.strip().splitlines()[-1])
    recorded = tmp_path / "server-out"
    result["spawns"] = [json.loads(line) for line in (recorded / "spawns.jsonl").read_text().splitlines()]
    for name in ("initializationOptions", "configuration"):
        path = recorded / f"{name}.json"
        result[name] = json.loads(path.read_text()) if path.exists() else None
    return result


def test_extension_sends_every_server_setting_and_runs_the_server_outside_the_workspace(
    vsix: Path, tmp_path: Path
) -> None:
    """The whole ``refact`` section but the extension's own keys goes to the server, in
    ``initializationOptions`` and as the answer to ``workspace/configuration``; the server runs in the
    extension's storage folder with PYTHONSAFEPATH=1 (a workspace ``random.py`` cannot shadow the standard
    library); its stderr is logged at each record's level."""
    from refact_lsp.service.settings import Settings, unknown_keys

    config = {
        "refact.temperature": 0,
        "refact.midLine": "never",
        "refact.contextTokens": 2048,
        "refact.kvReuse": False,
        "refact.languages": {"markdown": False},
        "refact.aNewerServerSetting": 7,
        "refact.trace.server": "verbose",
        "refact.enable": True,
    }
    result = _run_extension(tmp_path, "serve", config, wait_ms=2500)
    sent = result["initializationOptions"]
    assert set(sent) == set(Settings().to_lsp()) | {"aNewerServerSetting"}, sent
    assert sent["model"] is None and sent["temperature"] == 0 and sent["midLine"] == "never"
    assert sent["contextTokens"] == 2048 and sent["kvReuse"] is False
    assert sent["languages"] == {"*": True, "markdown": False}
    assert unknown_keys(sent) == ["aNewerServerSetting"]
    assert Settings.from_lsp(sent).topP == 1.0  # every value the extension sends is valid
    assert result["configuration"] == [sent, "never", 1]
    assert result["spawns"] == [{"cwd": str(tmp_path / "storage"), "PYTHONSAFEPATH": "1"}]
    events = result["events"]
    for line in (
        "[debug] fake.server: a debug line",
        "[info] fake.server: an info line",
        "[warn] fake.server: a warning line",
    ):
        assert line in events, events
    assert not any(e.startswith("[error]") or e.startswith("SHOW-") for e in events), events
    assert "Refact: ready" in result["status"]


def test_show_prompt_in_a_document_the_server_is_not_sent_says_so(vsix: Path, tmp_path: Path) -> None:
    """A notebook cell or a diff's other side: an information message, not the server's error."""
    result = _run_extension(
        tmp_path, "serve", {}, wait_ms=1500, show_prompt_in=("vscode-notebook-cell", "git")
    )
    assert _messages(result["events"]) == [
        f"SHOW-INFO Refact: no completions in this kind of document ({scheme}); only in files and untitled "
        "documents."
        for scheme in ("vscode-notebook-cell", "git")
    ]


def _messages(events: list[str]) -> list[str]:
    return [e for e in events if e.startswith(("SHOW-ERROR", "SHOW-WARN", "SHOW-INFO"))]


def test_server_that_fails_to_start_gives_one_message_and_no_restart(vsix: Path, tmp_path: Path) -> None:
    """A server that dies at startup: one error message with its last stderr lines (and Show Log), no
    restarts, and the status bar stays at error; its traceback is logged as errors, its INFO record as
    info."""
    result = _run_extension(tmp_path, "fail", {}, wait_ms=3000)
    assert len(result["spawns"]) == 1
    messages = _messages(result["events"])
    assert len(messages) == 1, messages
    assert "No module named 'fake_missing'" in messages[0] and "Show Log" in messages[0]
    assert "Refact: error" in result["status"]
    assert "[info] fake.server: starting" in result["events"]
    assert "[error] ModuleNotFoundError: No module named 'fake_missing'" in result["events"]


def test_server_that_crashed_is_restarted_once_a_failed_restart_stops(vsix: Path, tmp_path: Path) -> None:
    """A server that crashes after it started is restarted by the client; a restart that fails at startup is
    reported once and not retried."""
    result = _run_extension(tmp_path, "crash-then-fail", {}, wait_ms=3500)
    assert len(result["spawns"]) == 2
    messages = _messages(result["events"])
    assert len(messages) == 1 and "No module named 'fake_missing'" in messages[0], messages
    assert "Refact: error" in result["status"]


def _e2e_prerequisites() -> str | None:
    """Why the code-server test cannot run here, or None."""
    if os.environ.get(E2E_FLAG) != "1":
        return f"set {E2E_FLAG}=1 to run the code-server end-to-end tests (about 30 s)"
    if shutil.which("node") is None:
        return "node not installed"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} missing: apt-get install chromium"
    if shutil.which("rg") is None:
        return "ripgrep missing: apt-get install ripgrep"
    return None


# Partial accepts of the scripted completions (tests/editors/conftest.py): Accept Next Word (Ctrl+Right, VS
# Code's default key) on "a + b", and on "x):" typed inside an auto-closed "()" (the item's range covers the
# ")", so VS Code shows "x" before it and ":" after it); Accept Next Line (our key Alt+L) on the multi-line
# "    return a + b\n    # done" whose range starts at column 0. Each: the file holds just the accepted part,
# the rest is still ghost text, Tab accepts it (two Tabs for the indented next line: see restKeys) and the
# file holds the whole completion once.
ACCEPT_NEXT_LINE_KEY = {
    "key": "alt+l",
    "command": "editor.action.inlineSuggest.acceptNextLine",
    "when": "inlineSuggestionVisible && !editorReadonly",
}


def _partial_accepts(scripted_server) -> list[dict]:
    single, closer, multi = (
        scripted_server.single_line_text,
        scripted_server.closer_text,
        scripted_server.multiline_text,
    )
    assert (single, closer, multi) == ("a + b", "x):", "    return a + b\n    # done")
    return [
        {
            "name": "word",
            "fileName": "word.py",
            "initialText": "def add(a, b):\n",
            "typeText": "    return ",
            "expectedGhost": "a + b",
            "acceptKey": "Control+ArrowRight",
            "expectedGhostAfterPartial": " + b",
            "expectedFileAfterPartial": "def add(a, b):\n    return a",
            "expectedFile": "def add(a, b):\n    return a + b",
        },
        {
            "name": "word_closer",
            "model": str(scripted_server.closer_model),
            "fileName": "closer.py",
            "initialText": "x = 1\n",
            "typeText": "def f(",  # VS Code closes the paren: def f(|)
            "expectedGhost": "x:",  # "x" left of the ")", ":" right of it
            "acceptKey": "Control+ArrowRight",
            "expectedGhostAfterPartial": ":",
            "expectedFileAfterPartial": "x = 1\ndef f(x)",
            "expectedFile": "x = 1\ndef f(x):",
        },
        {
            # The same, but the rest (":" right of the ")") by Accept Next Word too.
            "name": "word_closer_twice",
            "fileName": "closer2.py",
            "initialText": "x = 1\n",
            "typeText": "def f(",
            "expectedGhost": "x:",
            "acceptKey": "Control+ArrowRight",
            "expectedGhostAfterPartial": ":",
            "expectedFileAfterPartial": "x = 1\ndef f(x)",
            "restKeys": ["Control+ArrowRight"],
            "expectedFile": "x = 1\ndef f(x):",
        },
        {
            "name": "line",
            "model": str(scripted_server.multiline_model),
            "fileName": "lines.py",
            "initialText": "def add(a, b):\n",
            "typeText": "    ",
            "expectedGhost": "return a + b\n    # done",
            "acceptKey": "Alt+L",
            "expectedGhostAfterPartial": "    # done",
            "expectedFileAfterPartial": "def add(a, b):\n    return a + b\n",
            # The rest, "    # done", starts with a tab's worth of indentation at column 0 of an empty
            # line: VS Code's Tab indents there (its inlineSuggestionHasIndentationLessThanTabSize rule, for
            # any provider), the ghost text "# done" stays, and the second Tab accepts it.
            "restKeys": ["Tab", "Tab"],
            "expectedFile": "def add(a, b):\n    return a + b\n    # done",
        },
    ]


@pytest.fixture(scope="module")
def code_server_run(
    vsix: Path, scripted_server, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, Path]:
    """One code-server session (its driver's RESULT, its work folder) for the end-to-end tests."""
    reason = _e2e_prerequisites()
    if reason:
        pytest.skip(reason)
    install = subprocess.run(
        ["bash", str(E2E / "install-code-server.sh")],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    if install.returncode != 0:
        pytest.skip(f"code-server could not be installed:\n{install.stderr[-3000:]}")
    code_server = install.stdout.strip().splitlines()[-1]
    if not (E2E / "node_modules" / "playwright-core").is_dir():
        env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
        _run(["npm", "ci", "--ignore-scripts", "--no-fund", "--no-audit"], cwd=E2E, timeout=300, env=env)

    tmp_path = tmp_path_factory.mktemp("code-server")
    checkpoint = scripted_server.single_line_model
    completion = scripted_server.single_line_text
    config = {
        "codeServer": code_server,
        "vsix": str(vsix),
        # PYTHONPATH: the server from this checkout even where the package is not installed (the extension
        # starts the server in its storage folder, with PYTHONSAFEPATH=1).
        "serverCommand": [
            "env",
            f"PYTHONPATH={REPO}",
            sys.executable,
            "-m",
            "refact_lsp",
            "--model",
            str(checkpoint),
        ],
        "serverMarker": str(checkpoint),  # finds the server processes: two restarts in a row leave one
        "workDir": str(tmp_path / "run"),
        "fileName": "main.py",
        "initialText": "def add(a, b):\n",
        "typeText": "    return ",
        "expectedGhost": completion,
        "expectedFile": f"def add(a, b):\n    return {completion}",
        "keybindings": [ACCEPT_NEXT_LINE_KEY],
        "partialAccepts": _partial_accepts(scripted_server),
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.run(
        ["node", str(E2E / "vscode-e2e.mjs"), "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    result_line = next((line for line in proc.stdout.splitlines() if line.startswith("RESULT ")), None)
    assert result_line, f"no RESULT from the driver (exit {proc.returncode})\n{proc.stderr[-6000:]}"
    result = json.loads(result_line[len("RESULT ") :])
    print(json.dumps(result, indent=2))
    result["stderr"] = proc.stderr[-6000:]
    result["config"] = config
    return result, tmp_path


def _assert_ok(result: dict) -> None:
    assert result["ok"], (
        f"{result.get('error')}\nscreenshots: {result.get('screenshots')}\n{result['stderr']}"
    )


@pytest.mark.slow
def test_code_server_ghost_text_tab_save(code_server_run: tuple[dict, Path]) -> None:
    result, tmp_path = code_server_run
    _assert_ok(result)
    config = result["config"]
    completion = config["expectedGhost"]
    assert completion in result["ghostText"]
    assert re.search(r"Refact: ready \d+ ms", result["statusAfterCompletion"])
    assert (tmp_path / "run" / "workspace" / "main.py").read_text() == config["expectedFile"]
    # The commands: the prompt at the cursor (Refact's SPM order), the stats JSON, the toggle.
    prompt = result["promptView"]
    assert prompt.startswith("<fim_suffix>") and prompt.rstrip().endswith("<fim_middle>")
    assert f"return {completion}" in prompt
    assert result["statsView"].lstrip().startswith("{")
    assert "(off)" in result["statusToggledOff"]
    # "Refact: Restart Server" twice in a row: one server process before and after, and it is ready.
    assert result["serversBeforeRestart"] == 1
    assert result["serversAfterRestarts"] == 1
    assert re.search(r"Refact: ready", result["statusAfterRestarts"])


@pytest.mark.slow
def test_code_server_accept_next_word_and_line(code_server_run: tuple[dict, Path]) -> None:
    """Accept Next Word / Accept Next Line on our items (a plain one, one whose range covers an auto-closed
    ")", a multi-line one from column 0): the file holds exactly the accepted part, then the whole completion
    once after Tab; the rest stayed ghost text in between (also after the save)."""
    result, tmp_path = code_server_run
    _assert_ok(result)
    steps = {step["name"]: step for step in result["config"]["partialAccepts"]}
    assert [r["name"] for r in result["partialAccepts"]] == list(steps)
    for run in result["partialAccepts"]:
        assert "error" not in run, f"{run['error']}\nscreenshots: {result['screenshots']}\n{result['stderr']}"
        step = steps[run["name"]]
        assert run["ghostText"] == step["expectedGhost"]
        assert run["ghostAfterPartial"] == step["expectedGhostAfterPartial"]
        assert run["fileAfterPartial"] == step["expectedFileAfterPartial"]
        assert run["ghostAfterSave"] == step["expectedGhostAfterPartial"]
        assert (tmp_path / "run" / "workspace" / step["fileName"]).read_text() == step["expectedFile"]
