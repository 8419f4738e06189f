#!/usr/bin/env node
// End-to-end test of the Refact extension in real VS Code: code-server 4.100.3 (VS Code 1.100) driven by
// Debian's headless Chromium through playwright-core (which never downloads a browser here).
//
// Scenario: fresh code-server and profiles; install the .vsix; open a file; wait for the status bar to say
// the model is ready; type; the scripted checkpoint's completion appears as ghost text; Tab accepts; Ctrl+S
// saves; the file on disk holds the completion; optionally, partial accepts (Accept Next Word / Line, then
// Tab for the rest) in other files; the extension's commands; two restarts in a row leave one server process.
//
// Usage: node vscode-e2e.mjs --config CONFIG.json
//   CONFIG: {
//     codeServer: path of the code-server executable,
//     vsix: path of the .vsix,
//     serverCommand: ["python", "-m", "refact_lsp", "--model", CHECKPOINT],
//     workDir: an empty folder for profiles, workspace and logs,
//     fileName: "main.py", initialText: "...", typeText: "...",
//     expectedGhost: the ghost text to wait for, expectedFile: the file's text after Tab and Ctrl+S,
//     settings: extra VS Code user settings (optional), keybindings: user keybindings (optional),
//     partialAccepts: cases run after the save (optional), each {
//       name, fileName, initialText, typeText, model: a checkpoint to switch to first (optional),
//       expectedGhost: the whole ghost text, acceptKey: e.g. "Control+ArrowRight" (Accept Next Word),
//       expectedGhostAfterPartial, expectedFileAfterPartial: ghost text and file after that key and Ctrl+S,
//       restKeys: the keys that accept the rest (optional, default ["Tab"]),
//       expectedFile: the file after those keys and Ctrl+S },
//     serverMarker: an argument of the server command (e.g. CHECKPOINT) that finds its processes in /proc;
//       given, the scenario ends with "Refact: Restart Server" twice in a row and counts the servers (optional),
//     chromium: "/usr/bin/chromium" (optional), timeoutMs: overall limit (optional, default 240000)
//   }
// Prints one JSON line `RESULT {...}` (timings, ghost text, file text, screenshots) and exits 0 on success.
// Screenshots (one per step, plus `failure.png`) go to WORKDIR/screenshots.
import { spawn, execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as fs from 'node:fs/promises';
import * as net from 'node:net';
import * as path from 'node:path';
import { chromium } from 'playwright-core';

const execFileAsync = promisify(execFile);
const started = Date.now();
const timings = {};
const mark = (name) => {
    timings[name] = (Date.now() - started) / 1000;
    log(`${name} at ${timings[name].toFixed(1)} s`);
};
const log = (message) => process.stderr.write(`[vscode-e2e] ${message}\n`);

function parseArgs() {
    const index = process.argv.indexOf('--config');
    if (index < 0 || !process.argv[index + 1]) {
        throw new Error('usage: node vscode-e2e.mjs --config CONFIG.json');
    }
    return process.argv[index + 1];
}

async function freePort() {
    return new Promise((resolve, reject) => {
        const server = net.createServer();
        server.unref();
        server.on('error', reject);
        server.listen(0, '127.0.0.1', () => {
            const { port } = server.address();
            server.close(() => resolve(port));
        });
    });
}

async function waitFor(what, check, timeoutMs, intervalMs = 200) {
    const deadline = Date.now() + timeoutMs;
    let last;
    while (Date.now() < deadline) {
        last = await check();
        if (last) {
            return last;
        }
        await new Promise((resolve) => setTimeout(resolve, intervalMs));
    }
    throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Environment for code-server: its XDG folders inside the work folder, nothing written to $HOME. */
function isolatedEnv(workDir) {
    const env = { ...process.env };
    env.XDG_CONFIG_HOME = path.join(workDir, 'xdg-config');
    env.XDG_DATA_HOME = path.join(workDir, 'xdg-data');
    env.XDG_CACHE_HOME = path.join(workDir, 'xdg-cache');
    delete env.VSCODE_IPC_HOOK_CLI;
    return env;
}

/** The last lines of the extension's output channel (client log and the server's stderr), for failures. */
/** Process ids of the language servers: processes whose arguments hold `marker` and `refact_lsp`. */
async function serverPids(marker) {
    const pids = [];
    for (const entry of await fs.readdir('/proc')) {
        if (!/^\d+$/.test(entry)) {
            continue;
        }
        try {
            const args = (await fs.readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0');
            if (args.includes(marker) && args.includes('refact_lsp')) {
                pids.push(entry);
            }
        } catch {
            // gone meanwhile
        }
    }
    return pids;
}

async function extensionLogTail(userData, lines = 60) {
    try {
        const logs = await fs.readdir(path.join(userData, 'logs'), { recursive: true });
        const file = logs.find((name) => name.endsWith(path.join('refact-lsp.refact-lsp', 'Refact LSP.log')));
        if (!file) {
            return '(no Refact LSP log)';
        }
        const text = await fs.readFile(path.join(userData, 'logs', file), 'utf8');
        return text.split('\n').filter((line) => !/^\s+at /.test(line)).slice(-lines).join('\n');
    } catch (error) {
        return `(log unreadable: ${error})`;
    }
}

async function main() {
    const config = JSON.parse(await fs.readFile(parseArgs(), 'utf8'));
    const timeoutMs = config.timeoutMs ?? 240_000;
    const work = path.resolve(config.workDir);
    const dirs = {
        userData: path.join(work, 'user-data'),
        extensions: path.join(work, 'extensions'),
        workspace: path.join(work, 'workspace'),
        browser: path.join(work, 'chromium-profile'),
        screenshots: path.join(work, 'screenshots'),
    };
    for (const dir of Object.values(dirs)) {
        await fs.mkdir(dir, { recursive: true });
    }
    const env = isolatedEnv(work);
    const filePath = path.join(dirs.workspace, config.fileName);
    await fs.writeFile(filePath, config.initialText);
    for (const step of config.partialAccepts ?? []) {
        await fs.writeFile(path.join(dirs.workspace, step.fileName), step.initialText);
    }

    const settings = {
        // Ghost text is hidden while the suggest widget is open: keep the widget away.
        'editor.quickSuggestions': { other: 'off', comments: 'off', strings: 'off' },
        'editor.suggestOnTriggerCharacters': false,
        'editor.inlineSuggest.enabled': true,
        'refact.serverCommand': config.serverCommand,
        'refact.temperature': 0,
        'refact.trace.server': 'messages',
        'files.autoSave': 'off',
        'workbench.startupEditor': 'none',
        'workbench.tips.enabled': false,
        'workbench.enableExperiments': false,
        'security.workspace.trust.enabled': false,
        'telemetry.telemetryLevel': 'off',
        'extensions.autoCheckUpdates': false,
        'extensions.autoUpdate': false,
        'update.mode': 'none',
        ...(config.settings ?? {}),
    };
    await fs.mkdir(path.join(dirs.userData, 'User'), { recursive: true });
    await fs.writeFile(path.join(dirs.userData, 'User', 'settings.json'), JSON.stringify(settings, null, 2));
    await fs.writeFile(
        path.join(dirs.userData, 'User', 'keybindings.json'),
        JSON.stringify(config.keybindings ?? [], null, 2),
    );

    const profileArgs = ['--user-data-dir', dirs.userData, '--extensions-dir', dirs.extensions];
    log(`installing ${config.vsix}`);
    const install = await execFileAsync(config.codeServer, [...profileArgs, '--install-extension', config.vsix], {
        env,
        timeout: 120_000,
    });
    log(install.stdout.trim());
    mark('extension_installed');

    const port = await freePort();
    const codeServerLog = await fs.open(path.join(work, 'code-server.log'), 'w');
    const codeServer = spawn(
        config.codeServer,
        [
            ...profileArgs,
            '--config', path.join(work, 'code-server.yaml'),
            '--auth', 'none',
            '--bind-addr', `127.0.0.1:${port}`,
            '--disable-telemetry',
            '--disable-update-check',
            '--disable-workspace-trust',
            '--disable-getting-started-override',
            '--ignore-last-opened',
            dirs.workspace,
        ],
        { env, detached: true, stdio: ['ignore', codeServerLog.fd, codeServerLog.fd] },
    );
    let browser;
    const screenshots = [];
    let page;
    const shoot = async (name) => {
        if (!page) {
            return;
        }
        const file = path.join(dirs.screenshots, `${String(screenshots.length + 1).padStart(2, '0')}-${name}.png`);
        try {
            await page.screenshot({ path: file, timeout: 10_000 });
            screenshots.push(file);
        } catch (error) {
            log(`screenshot ${name} failed: ${error}`);
        }
    };
    const overall = setTimeout(() => {
        log(`overall timeout ${timeoutMs} ms`);
        void shoot('failure-timeout').finally(() => process.exit(3));
    }, timeoutMs);

    const result = { ok: false, timings, port };
    try {
        const url = `http://127.0.0.1:${port}/`;
        await waitFor('code-server to answer', async () => {
            try {
                const response = await fetch(`${url}healthz`);
                return response.ok;
            } catch {
                return false;
            }
        }, 60_000);
        mark('code_server_up');

        browser = await chromium.launchPersistentContext(dirs.browser, {
            executablePath: config.chromium ?? '/usr/bin/chromium',
            headless: true,
            viewport: { width: 1400, height: 900 },
            args: [
                '--headless',
                '--no-sandbox',
                '--disable-gpu',
                '--disable-quic',
                '--no-first-run',
                '--disable-background-networking',
                '--disable-component-update',
                '--disable-sync',
            ],
        });
        page = browser.pages()[0] ?? (await browser.newPage());
        page.on('pageerror', (error) => log(`page error: ${error.message}`));
        await page.goto(`${url}?folder=${encodeURIComponent(dirs.workspace)}`);
        await page.locator('.monaco-workbench').waitFor({ timeout: 60_000 });
        mark('workbench_loaded');

        // Open the file with Quick Open.
        await page.locator('.part.editor').waitFor({ timeout: 30_000 });
        const quickInput = page.locator('.quick-input-widget input');
        const openFile = async (name) => {
            await page.keyboard.press('Control+P');
            await quickInput.waitFor({ timeout: 30_000 });
            await quickInput.fill(name);
            await page.locator('.quick-input-list .monaco-list-row', { hasText: name }).first().waitFor({
                timeout: 30_000,
            });
            await page.keyboard.press('Enter');
            await page.locator('.tabs-container .tab.active', { hasText: name }).waitFor({ timeout: 30_000 });
        };
        await openFile(config.fileName);
        const editor = page.locator('.editor-instance .monaco-editor').first();
        await editor.waitFor({ timeout: 30_000 });
        mark('file_opened');
        await shoot('file-opened');

        // The extension's status bar item reports the model state from refact.stats.
        const statusItem = page.locator('.statusbar-item', { hasText: 'Refact:' }).first();
        await statusItem.waitFor({ timeout: 60_000 });
        mark('status_item_shown');
        await waitFor('the status bar to say "Refact: ready"', async () => {
            const text = (await statusItem.textContent()) ?? '';
            if (/Refact: error/.test(text)) {
                throw new Error(`status bar reports an error: ${text}`);
            }
            return /Refact: ready/.test(text);
        }, 180_000, 250);
        result.statusReady = await statusItem.textContent();
        mark('model_ready');
        await shoot('model-ready');

        // Cursor to the end of the file, then type.
        await editor.locator('.view-lines').click();
        await page.keyboard.press('Control+End');
        await page.keyboard.type(config.typeText, { delay: 40 });
        mark('typed');

        const ghost = page.locator('.ghost-text-decoration, .ghost-text-decoration-preview, .ghost-text');
        result.ghostText = await waitFor('ghost text', async () => {
            const parts = await ghost.allTextContents();
            const text = parts.join('').replace(/\u00a0/g, ' ');
            return text.length > 0 && text.includes(config.expectedGhost.trim()) ? text : false;
        }, 60_000, 100);
        mark('ghost_text_shown');
        await shoot('ghost-text');
        result.statusAfterCompletion = await statusItem.textContent();

        // Tab accepts; the saved file below shows what it inserted. (The server may already show the next
        // suggestion at the new cursor: the scripted checkpoint suggests its text again, so no wait for the
        // ghost text to go.)
        await page.keyboard.press('Tab');
        mark('accepted');
        await page.keyboard.press('Control+S');
        result.fileText = await waitFor('the file on disk to hold the completion', async () => {
            const text = await fs.readFile(filePath, 'utf8');
            return text === config.expectedFile ? text : false;
        }, 15_000, 100).catch(async (error) => {
            result.fileText = await fs.readFile(filePath, 'utf8');
            throw new Error(`${error.message}; file holds ${JSON.stringify(result.fileText)}`);
        });
        mark('saved');
        await shoot('saved');

        const runCommand = async (title) => {
            await page.keyboard.press('Control+Shift+P');
            await quickInput.waitFor({ timeout: 10_000 });
            await quickInput.fill(`>${title}`);
            await page.locator('.quick-input-list .monaco-list-row', { hasText: title }).first().waitFor({
                timeout: 10_000,
            });
            await page.keyboard.press('Enter');
        };

        // Partial accepts: each case opens its file (switching the model first, if it says so), types, waits
        // for the suggestion, accepts its first word or line, saves, then checks that the file holds just
        // that part and that the rest is still shown as ghost text; Tab accepts the rest, and the saved file
        // holds the whole completion once.
        // The ghost text on the cursor line (one part, or parts around text it leaves, like a ")"), then the
        // lines below it (a view zone, before the inline parts in the DOM), one "\n" before each.
        const ghostNow = async () => {
            const inline = await page.locator('.ghost-text-decoration, .ghost-text-decoration-preview').allTextContents();
            const below = await page.locator('.ghost-text').evaluateAll((spans) => {
                const lines = new Map(); // a line's spans (one per token) joined
                for (const span of spans) {
                    const line = span.closest('.view-line') ?? span;
                    lines.set(line, (lines.get(line) ?? '') + span.textContent);
                }
                return [...lines.values()];
            });
            return [inline.join(''), ...below].join('\n').replace(/\u00a0/g, ' ');
        };
        const saveAndRead = async (file, expected, what) => {
            await page.keyboard.press('Control+S');
            return waitFor(what, async () => {
                const text = await fs.readFile(file, 'utf8');
                return text === expected ? text : false;
            }, 15_000, 100).catch(async (error) => {
                throw new Error(`${error.message}; file holds ${JSON.stringify(await fs.readFile(file, 'utf8'))}`);
            });
        };
        const useModel = async (model) => {
            // In the workspace's settings (code-server does not notice a change of the user's settings file).
            // The server reloads on workspace/didChangeConfiguration; its stats say when the model is loaded.
            await fs.mkdir(path.join(dirs.workspace, '.vscode'), { recursive: true });
            await fs.writeFile(
                path.join(dirs.workspace, '.vscode', 'settings.json'),
                JSON.stringify({ 'refact.model': model }, null, 2),
            );
            await waitFor(`the server to load ${model}`, async () => {
                await runCommand('Refact: Show Server Stats');
                await page.locator('.tabs-container .tab.active', { hasText: 'refact-stats.json' }).waitFor({
                    timeout: 10_000,
                });
                await page.keyboard.press('Control+End'); // the model's block is near the end
                const lines = await page
                    .locator('.editor-group-container.active .monaco-editor .view-lines')
                    .first()
                    .innerText();
                await page.keyboard.press('Control+W');
                const text = lines.replace(/\u00a0/g, ' ');
                const loaded = text.includes(`"source": ${JSON.stringify(model)}`) && text.includes('"state": "ready"');
                if (!loaded) {
                    log(`stats: ${text.split('\n').filter((line) => /"(source|state)"/.test(line)).join(' ')}`);
                }
                return loaded;
            }, 60_000, 500);
        };
        const partialAccept = async (step) => {
            const file = path.join(dirs.workspace, step.fileName); // written with the main file
            if (step.model) {
                await useModel(step.model);
            }
            await openFile(step.fileName);
            await page.locator('.editor-group-container.active .monaco-editor .view-lines').first().click();
            await page.keyboard.press('Control+End');
            await page.keyboard.type(step.typeText, { delay: 40 });
            const out = { name: step.name };
            out.ghostText = await waitFor(`ghost text ${JSON.stringify(step.expectedGhost)}`, async () => {
                const text = await ghostNow();
                return text === step.expectedGhost ? text : false;
            }, 60_000, 100).catch(async (error) => {
                throw new Error(`${step.name}: ${error.message}; ghost text ${JSON.stringify(await ghostNow())}`);
            });
            await shoot(`${step.name}-ghost`);
            await page.keyboard.press(step.acceptKey);
            out.ghostAfterPartial = await waitFor('the rest of the suggestion as ghost text', async () => {
                const text = await ghostNow();
                return text === step.expectedGhostAfterPartial ? text : false;
            }, 10_000, 100).catch(async (error) => {
                throw new Error(`${step.name}: ${error.message}; ghost text ${JSON.stringify(await ghostNow())}`);
            });
            out.fileAfterPartial = await saveAndRead(file, step.expectedFileAfterPartial, `${step.name}: the part`);
            await shoot(`${step.name}-partial`);
            // Saving keeps the suggestion: the rest is still shown, and Tab accepts it.
            out.ghostAfterSave = await ghostNow();
            for (const key of step.restKeys ?? ['Tab']) {
                await page.keyboard.press(key);
            }
            out.fileText = await saveAndRead(file, step.expectedFile, `${step.name}: the whole completion`);
            await shoot(`${step.name}-accepted`);
            return out;
        };
        if (config.partialAccepts?.length) {
            result.partialAccepts = [];
            for (const step of config.partialAccepts) {
                try {
                    result.partialAccepts.push(await partialAccept(step));
                } catch (error) {
                    // Recorded for the step; the scenario goes on (the commands and restarts are checked too).
                    result.partialAccepts.push({ name: step.name, error: String(error?.stack ?? error) });
                    log(`partial accept ${step.name} FAILED: ${error}`);
                    await shoot(`${step.name}-failure`);
                    await page.keyboard.press('Escape');
                }
                mark(`partial_${step.name}`);
            }
            await page.locator('.tabs-container .tab', { hasText: config.fileName }).click(); // back to it
        }

        // The extension's commands, through the command palette.
        const activeEditorText = async (tabTitle) => {
            await page.locator('.tabs-container .tab.active', { hasText: tabTitle }).waitFor({ timeout: 20_000 });
            return waitFor(`text in ${tabTitle}`, async () => {
                const lines = await page
                    .locator('.editor-group-container.active .monaco-editor .view-lines')
                    .first()
                    .innerText();
                return lines.trim().length > 0 ? lines.replace(/\u00a0/g, ' ') : false;
            }, 10_000);
        };
        await editor.locator('.view-lines').click();
        await page.keyboard.press('Control+End');
        await runCommand('Refact: Show Prompt at Cursor');
        result.promptView = await activeEditorText('prompt main.py');
        mark('prompt_shown');
        await shoot('prompt');
        await runCommand('Refact: Show Server Stats');
        result.statsView = await activeEditorText('refact-stats.json');
        mark('stats_shown');
        await shoot('stats');
        await runCommand('Refact: Toggle Inline Completions');
        result.statusToggledOff = await waitFor('the status bar to say (off)', async () => {
            const text = (await statusItem.textContent()) ?? '';
            return text.includes('(off)') ? text : false;
        }, 10_000);
        mark('toggled_off');
        if (config.serverMarker) {
            // Two restarts in a row: they take turns, so one server runs afterwards (not one per restart).
            const before = await serverPids(config.serverMarker);
            result.serversBeforeRestart = before.length;
            await runCommand('Refact: Restart Server');
            await runCommand('Refact: Restart Server');
            await waitFor('a new server to be ready', async () => {
                const pids = await serverPids(config.serverMarker);
                const text = (await statusItem.textContent()) ?? '';
                return pids.length > 0 && !pids.some((pid) => before.includes(pid)) && /Refact: ready/.test(text);
            }, 60_000, 250);
            // A server that does not stop is killed 2 s after the stop; one started too many would run on.
            await new Promise((resolve) => setTimeout(resolve, 3000));
            result.serversAfterRestarts = (await serverPids(config.serverMarker)).length;
            result.statusAfterRestarts = await statusItem.textContent();
            mark('restarted_twice');
        }
        result.ok = true;
    } catch (error) {
        result.error = String(error?.stack ?? error);
        log(`FAILED: ${result.error}`);
        await shoot('failure');
        result.extensionLog = await extensionLogTail(dirs.userData);
        log(`Refact LSP output (last lines):\n${result.extensionLog}`);
    } finally {
        clearTimeout(overall);
        result.screenshots = screenshots;
        if (browser) {
            await browser.close().catch(() => undefined);
        }
        // code-server, its extension host and the language server share the process group.
        try {
            process.kill(-codeServer.pid, 'SIGTERM');
            await new Promise((resolve) => setTimeout(resolve, 1500));
            process.kill(-codeServer.pid, 'SIGKILL');
        } catch {
            // already gone
        }
        await codeServerLog.close();
        result.seconds = (Date.now() - started) / 1000;
        process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
        process.exit(result.ok ? 0 : 1);
    }
}

main().catch((error) => {
    log(String(error?.stack ?? error));
    process.exit(2);
});
