/** The status bar item: model state (downloading, loading, ready, error) and the last completion latency. */
import * as vscode from 'vscode';

/** What `refact.stats` tells about the model, read leniently (missing fields stay undefined). */
export interface ModelStatus {
    state?: string;
    error?: string;
    source?: string;
    device?: string;
    /** The server's own time for its last answer, and its p50/p95 (`last_latency_ms`, `latency_ms.total`). */
    serverLastMs?: number;
    serverP50Ms?: number;
    serverP95Ms?: number;
}

/** The model part of a `refact.stats` answer: `{"model": {"state", "error", ...}}` or flat `model_state`. */
export function modelStatus(stats: unknown): ModelStatus {
    const root = isObject(stats) ? stats : {};
    const model = isObject(root.model) ? root.model : {};
    const text = (...values: unknown[]) => {
        const found = values.find((value) => typeof value === 'string' && value.length > 0);
        return found as string | undefined;
    };
    const number = (value: unknown) => (typeof value === 'number' ? value : undefined);
    const latency = isObject(root.latency_ms) && isObject(root.latency_ms.total) ? root.latency_ms.total : {};
    return {
        serverLastMs: number(root.last_latency_ms),
        serverP50Ms: number(latency.p50),
        serverP95Ms: number(latency.p95),
        state: text(model.state, root.model_state, root.modelState, root.state),
        error: text(model.error, root.model_error, root.modelError, root.error),
        source: text(model.source, model.name, typeof root.model === 'string' ? root.model : undefined),
        device: text(model.device, root.device),
    };
}

function isObject(value: unknown): value is Record<string, unknown> {
    return typeof value === 'object' && value !== null && !Array.isArray(value);
}

const ICONS: Record<string, string> = {
    starting: '$(loading~spin)',
    unloaded: '$(circle-outline)',
    downloading: '$(cloud-download)',
    loading: '$(loading~spin)',
    ready: '$(sparkle)',
    error: '$(error)',
    stopped: '$(debug-disconnect)',
};

export class StatusBar implements vscode.Disposable {
    private readonly item: vscode.StatusBarItem;
    private status: ModelStatus = { state: 'starting' };
    private latencyMs: number | undefined;
    private enabled = true;

    constructor(command: string) {
        this.item = vscode.window.createStatusBarItem('refact.status', vscode.StatusBarAlignment.Right, 100);
        this.item.name = 'Refact';
        this.item.command = command;
        this.render();
        this.item.show();
    }

    get state(): string | undefined {
        return this.status.state;
    }

    setStatus(status: ModelStatus): void {
        this.status = status;
        this.render();
    }

    setLatency(ms: number): void {
        this.latencyMs = ms;
        this.render();
    }

    setEnabled(enabled: boolean): void {
        this.enabled = enabled;
        this.render();
    }

    private render(): void {
        const state = this.status.state ?? 'unknown';
        const latency = state === 'ready' && this.latencyMs !== undefined ? ` ${Math.round(this.latencyMs)} ms` : '';
        const icon = this.enabled ? (ICONS[state] ?? '$(question)') : '$(circle-slash)';
        const off = this.enabled ? '' : ' (off)';
        this.item.text = `${icon} Refact: ${state}${latency}${off}`;

        const tooltip = new vscode.MarkdownString(undefined, true);
        tooltip.appendMarkdown(`**Refact** — model ${state}`);
        if (this.status.source) {
            tooltip.appendMarkdown(`\n\nModel: \`${this.status.source}\``);
        }
        if (this.status.device) {
            tooltip.appendMarkdown(` on \`${this.status.device}\``);
        }
        if (this.status.error) {
            tooltip.appendMarkdown('\n\nError: ');
            tooltip.appendText(this.status.error);
        }
        if (this.latencyMs !== undefined) {
            tooltip.appendMarkdown(`\n\nLast completion: ${Math.round(this.latencyMs)} ms (request to answer)`);
        }
        const { serverLastMs, serverP50Ms, serverP95Ms } = this.status;
        if (serverLastMs !== undefined) {
            tooltip.appendMarkdown(`\n\nServer: last ${Math.round(serverLastMs)} ms`);
            if (serverP50Ms !== undefined && serverP95Ms !== undefined) {
                tooltip.appendMarkdown(`, p50 ${Math.round(serverP50Ms)} ms, p95 ${Math.round(serverP95Ms)} ms`);
            }
        }
        tooltip.appendMarkdown(`\n\nInline completions ${this.enabled ? 'on' : 'off'}. Click for actions.`);
        this.item.tooltip = tooltip;
        this.item.backgroundColor =
            state === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
    }

    dispose(): void {
        this.item.dispose();
    }
}
