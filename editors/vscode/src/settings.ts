/** The `refact.*` VS Code settings and what the server is told about them. */
import * as os from 'os';
import * as vscode from 'vscode';

export const SECTION = 'refact';

/** Settings the server understands (LSP names), sent as initializationOptions and didChangeConfiguration. */
export interface ServerSettings {
    /** null: the server's default (its `--model`, else the Refact model), also after the user clears it. */
    model: string | null;
    device: string;
    dtype: string;
    maxNewTokens: number;
    temperature: number;
    debounceMs: number;
    multiline: string;
}

/** The server's settings from the VS Code configuration; an empty `model` is null (the server's default). */
export function serverSettings(): ServerSettings {
    const config = vscode.workspace.getConfiguration(SECTION);
    const settings: ServerSettings = {
        model: null,
        device: config.get<string>('device', 'auto'),
        dtype: config.get<string>('dtype', 'auto'),
        maxNewTokens: config.get<number>('maxNewTokens', 50),
        temperature: config.get<number>('temperature', 0.2),
        debounceMs: config.get<number>('debounceMs', 25),
        multiline: config.get<string>('multiline', 'auto'),
    };
    const model = config.get<string>('model', '').trim();
    if (model) {
        settings.model = expandHome(model);
    }
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
