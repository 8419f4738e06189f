/**
 * The server's stderr in the output channel, each line at the level it carries, and its last lines kept for the
 * message shown when the server fails to start.
 */
import * as readline from 'readline';
import type { Readable } from 'stream';
import type { LogOutputChannel } from 'vscode';

/** refact-lsp's log records (`refact_lsp/cli.py`): `2026-01-31 12:00:00,123 INFO refact_lsp.server: text`. */
const RECORD = /^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)? (DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL|FATAL) (.*)$/;

type Level = 'debug' | 'info' | 'warn' | 'error';

const LEVELS: Record<string, Level> = {
    DEBUG: 'debug',
    INFO: 'info',
    WARNING: 'warn',
    WARN: 'warn',
    ERROR: 'error',
    CRITICAL: 'error',
    FATAL: 'error',
};

/** The level a stderr line is logged at, and the text (a record loses its timestamp: the channel adds one). */
export function classify(line: string, previous: Level | undefined): { level: Level; text: string } {
    const record = RECORD.exec(line);
    if (record) {
        return { level: LEVELS[record[1]], text: record[2] };
    }
    if (line.startsWith('Traceback (most recent call last)')) {
        return { level: 'error', text: line };
    }
    // A record's continuation (a traceback under `log.exception`) goes with it; anything else the server wrote
    // before its first record (Python's own errors: a missing module, a bad option) is an error.
    return { level: previous ?? 'error', text: line };
}

/** What one server process wrote to stderr. */
export class ServerStderr {
    private static readonly KEEP = 20;
    private readonly lines: string[] = [];
    private level: Level | undefined;
    private readonly closed: Promise<void>;

    constructor(input: Readable, channel: LogOutputChannel) {
        const reader = readline.createInterface({ input, crlfDelay: Infinity, terminal: false, historySize: 0 });
        this.closed = new Promise((resolve) => reader.on('close', resolve));
        reader.on('line', (line) => {
            const { level, text } = classify(line, this.level);
            this.level = level;
            channel[level](text);
            if (text.trim()) {
                this.lines.push(text);
                this.lines.splice(0, this.lines.length - ServerStderr.KEEP);
            }
        });
    }

    /** The last `count` non-empty lines, after the stream ended or `waitMs` passed (a dying process's last
     * lines may arrive after the client noticed that the connection closed). */
    async tail(count: number, waitMs = 1000): Promise<string[]> {
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<void>((resolve) => {
            timer = setTimeout(resolve, waitMs);
        });
        await Promise.race([this.closed, timeout]);
        clearTimeout(timer);
        return this.lines.slice(-count);
    }
}
