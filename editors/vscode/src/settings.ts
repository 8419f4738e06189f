/** The `refact.*` VS Code settings and what the server is told about them. */
import * as os from 'os';
import * as vscode from 'vscode';

export const SECTION = 'refact';

/** `refact.*` settings of the extension itself: never sent to the server. */
export const CLIENT_ONLY_KEYS: readonly string[] = ['enable', 'serverCommand', 'trace'];

/**
 * The server's settings (`refact_lsp/service/settings.py`, LSP names), each contributed in package.json with the
 * server's default, so that VS Code gives every one of them (its default where the user set none).
 */
export const SERVER_KEYS: readonly string[] = [
    'model',
    'device',
    'dtype',
    'maxNewTokens',
    'temperature',
    'topP',
    'debounceMs',
    'multiline',
    'midLine',
    'contextTokens',
    'languages',
    'kvReuse',
    'completionCache',
    'speculative',
    'allowPickle',
];

/**
 * Settings for the server (LSP names), sent as initializationOptions, didChangeConfiguration and the answer to
 * workspace/configuration: the whole `refact` section but the client's own keys. `model` null is the server's
 * default (its `--model`, else the Refact model), also after the user clears it.
 */
export type ServerSettings = { model: string | null } & Record<string, unknown>;

/**
 * The server's settings from the VS Code configuration: every key of the `refact` section but
 * `CLIENT_ONLY_KEYS` (the contributed ones, and any other key the user set: the server ignores, and logs,
 * keys it does not know). An empty `model` is null (the server's default); a leading `~` in it is expanded.
 */
export function serverSettings(): ServerSettings {
    const config = vscode.workspace.getConfiguration(SECTION);
    const keys = new Set<string>(SERVER_KEYS);
    // VS Code's configuration object also holds the section's values as properties (next to get/has/...).
    for (const [key, value] of Object.entries(config)) {
        if (typeof value !== 'function') {
            keys.add(key);
        }
    }
    const settings: ServerSettings = { model: null };
    for (const key of keys) {
        if (CLIENT_ONLY_KEYS.includes(key)) {
            continue;
        }
        const value = config.get<unknown>(key);
        if (value !== undefined) {
            settings[key] = value;
        }
    }
    const model = typeof settings.model === 'string' ? settings.model.trim() : '';
    settings.model = model ? expandHome(model) : null;
    return settings;
}

export function completionsEnabled(): boolean {
    return vscode.workspace.getConfiguration(SECTION).get<boolean>('enable', true);
}

/**
 * Sets `refact.enable` where it takes effect: in the workspace's settings when they set it (they override
 * the user's), else in the user's settings.
 */
export async function setCompletionsEnabled(enabled: boolean): Promise<void> {
    const config = vscode.workspace.getConfiguration(SECTION);
    const inWorkspace = config.inspect<boolean>('enable')?.workspaceValue !== undefined;
    const target = inWorkspace ? vscode.ConfigurationTarget.Workspace : vscode.ConfigurationTarget.Global;
    await config.update('enable', enabled, target);
}

/**
 * `refact.serverCommand` as [command, ...args]: an array is taken as is, a string is split on whitespace.
 * A leading `~` is expanded. The language client appends `--stdio`.
 */
export function serverCommand(): string[] {
    const raw = vscode.workspace.getConfiguration(SECTION).get<string | string[]>('serverCommand', ['refact-lsp']);
    const parts = (Array.isArray(raw) ? raw : String(raw).trim().split(/\s+/))
        .map((part) => String(part))
        .filter((part) => part.length > 0)
        .map(expandHome);
    if (parts.length === 0) {
        throw new Error('refact.serverCommand is empty: set it to e.g. ["refact-lsp"]');
    }
    return parts;
}

function expandHome(path: string): string {
    return path === '~' || path.startsWith('~/') ? os.homedir() + path.slice(1) : path;
}
