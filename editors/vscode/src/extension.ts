/**
 * Refact LSP for VS Code: starts `refact-lsp` over stdio with vscode-languageclient 11, whose inline
 * completion feature turns the server's `textDocument/inlineCompletion` answers into ghost text (Tab accepts).
 * Adds a status bar item (model state, last latency) and commands for `refact.stats` and `refact.prompt`.
 */
import type { ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as readline from 'readline';
import * as vscode from 'vscode';
import {
    CloseAction,
    DidChangeConfigurationNotification,
    ErrorAction,
    type ErrorHandler,
    ExecuteCommandRequest,
    LanguageClient,
    type LanguageClientOptions,
    type MessageTransports,
    type ServerOptions,
    State,
    TransportKind,
} from 'vscode-languageclient/node';
import {
    completionsEnabled,
    SECTION,
    type ServerSettings,
    serverCommand,
    serverSettings,
    setCompletionsEnabled,
} from './settings';
import { ServerStderr } from './serverlog';
import { modelStatus, StatusBar } from './status';

const VIEW_SCHEME = 'refact-view';
/** The documents the server is sent and completes: files and untitled ones (not notebook cells, diff
 * views, outputs or this extension's own views). */
const DOCUMENT_SELECTOR = [{ scheme: 'file' }, { scheme: 'untitled' }];
/** Poll `refact.stats` this often while the model downloads or loads, and this often once it settled. */
const POLL_BUSY_MS = 500;
const POLL_IDLE_MS = 10_000;
/** After a completion answer (the model state may have changed), not after every keystroke. */
const POLL_AFTER_ANSWER_MS = 1_000;
/** Lines of the server's stderr in the message about a failed start. */
const FAILURE_LINES = 6;

/**
 * The language client, quiet while the server has not answered `initialize` since the client (re)started it: a
 * failed start is reported once, by `startFailed`, instead of by each of the client's own error messages.
 */
class RefactLanguageClient extends LanguageClient {
    /** The server reached Running since the client last started (or restarted) it. */
    running = false;
    /** This start's failure was reported. */
    failureReported = false;
    /** The server process last started, and its stderr (the client forgets the process when it stops it). */
    process: ChildProcess | undefined;
    stderr: ServerStderr | undefined;

    protected override async createMessageTransports(encoding: string): Promise<MessageTransports> {
        const transports = await super.createMessageTransports(encoding);
        this.process = this.serverProcess;
        return transports;
    }

    override error(message: string, data?: unknown, showNotification: boolean | 'force' = true): void {
        super.error(message, data, this.running ? showNotification : false);
    }
}

let client: RefactLanguageClient | undefined;
/**
 * Starting, restarting and stopping the server take turns on this chain, so that one client (one server
 * process) exists at a time: a restart that began while another was still stopping or starting the server
 * waits for it instead of starting a second server next to it.
 */
let lifecycle: Promise<void> = Promise.resolve();
/** Restarts asked for and not begun yet: one that another follows only stops, the last one starts. */
let pendingRestarts = 0;
/** Set by `deactivate`: no restart starts a server any more. */
let deactivated = false;
let output: vscode.LogOutputChannel;
/** Where the server runs: the extension's global storage folder, never the workspace (see `serverWorkingDir`). */
let serverCwd: string;
let status: StatusBar;
let pollTimer: NodeJS.Timeout | undefined;
let pollDue = 0;
/** Settings last sent to the server, so that unrelated configuration changes send nothing. */
let lastSentSettings = '';
const views = new Map<string, string>();
const viewChanged = new vscode.EventEmitter<vscode.Uri>();

export async function activate(context: vscode.ExtensionContext): Promise<void> {
    output = vscode.window.createOutputChannel('Refact LSP', { log: true });
    status = new StatusBar('refact.menu');
    status.setEnabled(completionsEnabled());
    serverCwd = serverWorkingDir(context);
    context.subscriptions.push(
        output,
        status,
        viewChanged,
        { dispose: () => stopPolling() },
        vscode.workspace.registerTextDocumentContentProvider(VIEW_SCHEME, {
            onDidChange: viewChanged.event,
            provideTextDocumentContent: (uri) => views.get(uri.toString()) ?? '',
        }),
        vscode.commands.registerCommand('refact.toggleCompletions', toggleCompletions),
        vscode.commands.registerCommand('refact.showStats', showStats),
        vscode.commands.registerCommand('refact.showPrompt', showPrompt),
        vscode.commands.registerCommand('refact.restartServer', restartServer),
        vscode.commands.registerCommand('refact.menu', showMenu),
        vscode.workspace.onDidChangeConfiguration(async (event) => {
            if (event.affectsConfiguration(`${SECTION}.enable`)) {
                status.setEnabled(completionsEnabled());
            }
            if (event.affectsConfiguration(`${SECTION}.serverCommand`)) {
                await restartServer();
            }
        }),
    );
    await inTurn(startClient);
}

export async function deactivate(): Promise<void> {
    deactivated = true;
    stopPolling();
    await inTurn(stopClient);
}

/**
 * The server's working folder: the extension's global storage (created if missing). Not the workspace folder
 * (the language client's default), where a file such as `random.py` or `signal.py` would shadow the standard
 * library module for a server started as `python -m refact_lsp`.
 */
function serverWorkingDir(context: vscode.ExtensionContext): string {
    const dir = context.globalStorageUri?.fsPath;
    if (dir) {
        try {
            fs.mkdirSync(dir, { recursive: true });
            return dir;
        } catch (error) {
            output.warn(`cannot create ${dir}: ${errorMessage(error)}; the server runs in the home folder`);
        }
    }
    return os.homedir();
}

/** Runs `task` after every start, restart and stop asked for before it has finished. */
function inTurn(task: () => Promise<void>): Promise<void> {
    const turn = lifecycle.then(task);
    lifecycle = turn.catch((error) => output.error(`Refact server start/stop: ${errorMessage(error)}`));
    return turn;
}

async function startClient(): Promise<void> {
    let command: string[];
    try {
        command = serverCommand();
    } catch (error) {
        reportStartFailure(errorMessage(error));
        void vscode.window.showErrorMessage(`Refact: ${errorMessage(error)}`);
        return;
    }
    const serverOptions: ServerOptions = {
        command: command[0],
        args: command.slice(1),
        transport: TransportKind.stdio, // appends --stdio
        // PYTHONSAFEPATH (Python 3.11+): `python -m` does not put the working folder first on sys.path either.
        options: { cwd: serverCwd, env: { ...process.env, PYTHONSAFEPATH: '1' } },
    };
    // Until the server answered `initialize`, a connection error or close is a failed start: reported once (with
    // the server's last stderr lines) and not retried, since the same command would fail again. Later, the
    // client's default handling: restart a crashed server, up to 4 times in 3 minutes.
    let defaultHandler: ErrorHandler | undefined;
    const defaults = () => (defaultHandler ??= newClient.createDefaultErrorHandler());
    const errorHandler: ErrorHandler = {
        error: (error, message, count) => {
            if (newClient.running) {
                return defaults().error(error, message, count);
            }
            return { action: ErrorAction.Continue, handled: true }; // the close that follows reports it
        },
        closed: () => {
            if (newClient.running) {
                return defaults().closed();
            }
            const server = newClient.process;
            const reason = async () => `the server exited while starting${await exitStatus(server)}`;
            void startFailed(newClient, command, reason);
            return { action: CloseAction.DoNotRestart, handled: true };
        },
    };
    const clientOptions: LanguageClientOptions = {
        documentSelector: DOCUMENT_SELECTOR,
        outputChannel: output,
        errorHandler,
        initializationFailedHandler: (error) => {
            output.error(`initialize failed: ${errorMessage(error)}`);
            return false; // no retry: the client stops the server, `startFailed` reports it
        },
        stdioOptions: {
            stdout: (input, channel) => {
                readline
                    .createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 })
                    .on('line', (line) => channel.info(line));
            },
            // Each line at the level of the server's log record (it logs INFO and DEBUG lines to stderr too).
            stderr: (input, channel) => {
                newClient.stderr = new ServerStderr(input, channel);
            },
        },
        initializationOptions: () => {
            const settings = serverSettings();
            lastSentSettings = JSON.stringify(settings);
            return settings;
        },
        synchronize: { configurationSection: SECTION },
        middleware: {
            provideInlineCompletionItems: async (document, position, context, token, next) => {
                if (!completionsEnabled()) {
                    return null;
                }
                const started = performance.now();
                const result = await next(document, position, context, token);
                if (!token.isCancellationRequested) {
                    status.setLatency(performance.now() - started);
                    pollWithin(POLL_AFTER_ANSWER_MS);
                }
                return result;
            },
            // Ghost text is how VS Code shows these suggestions; the same suggestion as a completion list item
            // (the server offers one for editors without inline completion) would only duplicate it and run the
            // model a second time per keystroke.
            provideCompletionItem: () => undefined,
            workspace: {
                // Send only the settings the server knows, only when they changed, and keep falsy values
                // (the default sync drops `temperature: 0`).
                didChangeConfiguration: async () => {
                    const settings = settingsToSend();
                    if (settings !== undefined && client) {
                        await client.sendNotification(DidChangeConfigurationNotification.type, {
                            settings: { [SECTION]: settings },
                        });
                        schedulePoll(200); // a new model, device or dtype reloads: show it soon
                    }
                },
                configuration: async (params, token, next) => {
                    const answer = await next(params, token);
                    if (!Array.isArray(answer)) {
                        return answer;
                    }
                    const settings = serverSettings();
                    return answer.map((value, i) => {
                        const section = params.items[i]?.section;
                        if (section === SECTION) {
                            return settings;
                        }
                        if (section?.startsWith(`${SECTION}.`)) {
                            return settings[section.slice(SECTION.length + 1)] ?? value;
                        }
                        return value;
                    });
                },
            },
        },
    };

    const newClient = new RefactLanguageClient('refact', 'Refact LSP', serverOptions, clientOptions);
    client = newClient;
    newClient.onDidChangeState((event) => {
        if (event.newState === State.Starting) {
            newClient.running = false;
            newClient.failureReported = false;
        } else if (event.newState === State.Running) {
            newClient.running = true;
        }
        if (client !== newClient) {
            return;
        }
        if (event.newState === State.Stopped || event.newState === State.StartFailed) {
            stopPolling();
            if (!newClient.failureReported) {
                status.setStatus({ state: 'stopped' }); // a failed start keeps its error
            }
        } else if (event.newState === State.Starting) {
            status.setStatus({ state: 'starting' });
        } else if (event.newState === State.Running) {
            schedulePoll(0); // also after the client restarted a crashed server
        }
    });
    status.setStatus({ state: 'starting' });
    try {
        await newClient.start();
    } catch (error) {
        await startFailed(newClient, command, () => errorMessage(error));
    }
}

/**
 * A start that did not reach Running (the server could not be run, exited, or failed `initialize`): the status
 * bar shows the error and one message gives the server's last stderr lines, whichever of the client's
 * error paths reports it first.
 */
async function startFailed(
    failed: RefactLanguageClient,
    command: string[],
    reason: () => string | Promise<string>,
): Promise<void> {
    if (failed.failureReported || client !== failed || deactivated) {
        return;
    }
    failed.failureReported = true;
    status.setStatus({ state: 'error', error: 'the server did not start' }); // the details follow
    // (Waits for the end of the server's stderr, whose last lines may come after the connection closed.)
    const lines = (await failed.stderr?.tail(FAILURE_LINES)) ?? [];
    if (client !== failed || deactivated) {
        return;
    }
    const detail = lines.length > 0 ? lines.join('\n') : await reason();
    reportStartFailure(`the server ${JSON.stringify(command)} did not start: ${detail}`);
    const choice = await vscode.window.showErrorMessage(
        `Refact: the server did not start (${command.join(' ')}):\n${detail}`,
        'Show Log',
        'Open Settings',
    );
    if (choice === 'Show Log') {
        output.show();
    } else if (choice === 'Open Settings') {
        await vscode.commands.executeCommand('workbench.action.openSettings', `${SECTION}.serverCommand`);
    }
}

/** The settings for the server, or undefined when they equal what it was last sent. */
function settingsToSend(): ServerSettings | undefined {
    const settings = serverSettings();
    const json = JSON.stringify(settings);
    if (json === lastSentSettings) {
        return undefined;
    }
    lastSentSettings = json;
    return settings;
}

/** ` (exit code N)` or ` (SIGNAL)` once `server` exited (waiting a second for it), else nothing. */
async function exitStatus(server: ChildProcess | undefined): Promise<string> {
    if (server && server.exitCode === null && server.signalCode === null) {
        await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, 1000);
            server.once('exit', () => {
                clearTimeout(timer);
                resolve();
            });
        });
    }
    const code = server?.exitCode ?? server?.signalCode;
    if (code === null || code === undefined) {
        return '';
    }
    return typeof code === 'number' ? ` (exit code ${code})` : ` (${code})`;
}

/** A start failure in the log and the status bar (whose error state stays until the next start). */
function reportStartFailure(message: string): void {
    output.error(message);
    status.setStatus({
        state: 'error',
        error: `${message}. Set "refact.serverCommand" to the command that starts refact-lsp.`,
    });
}

/** Stops the client and its server; only called in turn (`inTurn`). */
async function stopClient(): Promise<void> {
    const old = client;
    client = undefined;
    if (old) {
        try {
            if (old.state === State.Starting) {
                // The client refuses to stop while starting (e.g. restarting a crashed server): let it finish.
                await old.start().catch(() => undefined);
            }
            if (old.state !== State.StartFailed) {
                // (A failed start left no server: the client stopped it, and it refuses to stop again.)
                await old.stop(2000);
            }
        } catch (error) {
            output.warn(`stopping the server: ${error}`);
        }
    }
}

async function restartServer(): Promise<void> {
    pendingRestarts++;
    await inTurn(async () => {
        pendingRestarts--;
        stopPolling();
        await stopClient();
        if (pendingRestarts === 0 && !deactivated) {
            await startClient();
        }
    });
}

async function executeServerCommand(command: string, args: unknown[] = []): Promise<unknown> {
    if (!client || client.state !== State.Running) {
        throw new Error('the Refact server is not running');
    }
    return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
}

function schedulePoll(delayMs: number): void {
    stopPolling();
    pollDue = Date.now() + delayMs;
    pollTimer = setTimeout(() => void pollStats(), delayMs);
}

/** A poll within `delayMs` (one already due sooner stays): at most one `refact.stats` a while per burst. */
function pollWithin(delayMs: number): void {
    if (pollTimer === undefined || pollDue > Date.now() + delayMs) {
        schedulePoll(delayMs);
    }
}

function stopPolling(): void {
    if (pollTimer !== undefined) {
        clearTimeout(pollTimer);
        pollTimer = undefined;
    }
}

async function pollStats(): Promise<void> {
    pollTimer = undefined;
    if (!client || client.state !== State.Running) {
        return;
    }
    try {
        status.setStatus(modelStatus(await executeServerCommand('refact.stats')));
    } catch (error) {
        output.warn(`refact.stats failed: ${error}`);
    }
    const settled = status.state === 'ready' || status.state === 'error';
    if (pollTimer === undefined) {
        schedulePoll(settled ? POLL_IDLE_MS : POLL_BUSY_MS);
    }
}

async function toggleCompletions(): Promise<void> {
    await setCompletionsEnabled(!completionsEnabled());
    const enabled = completionsEnabled(); // what is in effect now
    status.setEnabled(enabled);
    if (!enabled) {
        await vscode.commands.executeCommand('editor.action.inlineSuggest.hide');
    }
    vscode.window.setStatusBarMessage(`Refact inline completions ${enabled ? 'on' : 'off'}`, 3000);
}

/** Opens `text` in a read-only editor named `name` (its extension picks the language). */
async function showView(name: string, text: string): Promise<void> {
    const uri = vscode.Uri.from({ scheme: VIEW_SCHEME, path: `/${name}` });
    views.set(uri.toString(), text);
    viewChanged.fire(uri);
    const document = await vscode.workspace.openTextDocument(uri);
    await vscode.window.showTextDocument(document, { preview: true, viewColumn: vscode.ViewColumn.Beside });
}

async function showStats(): Promise<void> {
    try {
        const stats = await executeServerCommand('refact.stats');
        status.setStatus(modelStatus(stats));
        await showView('refact-stats.json', JSON.stringify(stats, null, 2) + '\n');
    } catch (error) {
        void vscode.window.showErrorMessage(`Refact: ${errorMessage(error)}`);
    }
}

async function showPrompt(): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    if (!editor || !client) {
        void vscode.window.showWarningMessage('Refact: open a file and put the cursor where to complete.');
        return;
    }
    if (vscode.languages.match(DOCUMENT_SELECTOR, editor.document) === 0) {
        // a notebook cell, a diff's other side, an output: the server does not have it
        void vscode.window.showInformationMessage(
            `Refact: no completions in this kind of document (${editor.document.uri.scheme}); only in files and untitled documents.`,
        );
        return;
    }
    const converter = client.code2ProtocolConverter;
    try {
        const answer = (await executeServerCommand('refact.prompt', [
            {
                textDocument: { uri: converter.asUri(editor.document.uri) },
                position: converter.asPosition(editor.selection.active),
            },
        ])) as { prompt?: string; tokens?: number; mode?: string } | null;
        if (!answer || typeof answer.prompt !== 'string') {
            void vscode.window.showInformationMessage('Refact: no completion at this position (mode: none).');
            return;
        }
        const where = `${path.basename(editor.document.fileName)}:${editor.selection.active.line + 1}`;
        await showView(`prompt ${where} (${answer.mode}, ${answer.tokens} tokens).txt`, answer.prompt);
    } catch (error) {
        void vscode.window.showErrorMessage(`Refact: ${errorMessage(error)}`);
    }
}

async function showMenu(): Promise<void> {
    const items: (vscode.QuickPickItem & { command: string })[] = [
        {
            label: completionsEnabled() ? '$(circle-slash) Disable inline completions' : '$(check) Enable inline completions',
            command: 'refact.toggleCompletions',
        },
        { label: '$(graph) Show server stats', command: 'refact.showStats' },
        { label: '$(code) Show prompt at cursor', command: 'refact.showPrompt' },
        { label: '$(debug-restart) Restart server', command: 'refact.restartServer' },
        { label: '$(output) Show log', command: 'refact.showLog' },
        { label: '$(gear) Settings', command: 'refact.openSettings' },
    ];
    const choice = await vscode.window.showQuickPick(items, { title: 'Refact' });
    if (choice?.command === 'refact.showLog') {
        output.show();
    } else if (choice?.command === 'refact.openSettings') {
        await vscode.commands.executeCommand('workbench.action.openSettings', `@ext:refact-lsp.refact-lsp`);
    } else if (choice) {
        await vscode.commands.executeCommand(choice.command);
    }
}

function errorMessage(error: unknown): string {
    return error instanceof Error ? error.message : String(error);
}
