#!/usr/bin/env bash
# Install code-server 4.100.3 (VS Code 1.100, Node 20) from npm for the VS Code end-to-end test.
#
# A plain `npm install code-server` fails here: its install scripts fetch prebuilt binaries. Instead this
# installs with --ignore-scripts, builds the native modules against Debian's Node headers (`npm rebuild`),
# repeats that inside lib/vscode and lib/vscode/extensions (what code-server's own postinstall.sh does),
# and puts Debian's ripgrep where @vscode/ripgrep would download its own.
#
# Needs (Debian): nodejs 20 with headers in /usr/include/node, build-essential pkg-config libkrb5-dev
# libxkbfile-dev libsecret-1-dev libx11-dev ripgrep (and chromium to run the test).
#
# Usage: install-code-server.sh [PREFIX]     default PREFIX: ~/.cache/refact-lsp/code-server-4.100.3 (under
# $XDG_CACHE_HOME when set): outside the checkout, so that every clone on the machine (CI's) shares it
# The last line printed is the path of the code-server executable.
set -euo pipefail

VERSION=4.100.3
PREFIX=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/refact-lsp/code-server-$VERSION}
mkdir -p "$PREFIX"
PREFIX=$(cd "$PREFIX" && pwd)
CS="$PREFIX/node_modules/code-server"
VSCODE="$CS/lib/vscode"
EXE="$PREFIX/node_modules/.bin/code-server"

if [ -f "$PREFIX/.installed-$VERSION" ] && [ -x "$EXE" ]; then
    echo "code-server $VERSION already installed in $PREFIX" >&2
    echo "$EXE"
    exit 0
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" = 20 ] || { echo "code-server $VERSION needs Node 20, found $(node --version)" >&2; exit 1; }
RG=$(command -v rg) || { echo "ripgrep (rg) not found: install Debian's ripgrep" >&2; exit 1; }
[ -f /usr/include/node/node.h ] || { echo "Node headers missing in /usr/include/node" >&2; exit 1; }

export npm_config_nodedir=/usr          # compile native modules against the system Node headers
export npm_config_yes=true              # node-pty's postinstall runs `npx node-gyp`
export npm_config_fund=false npm_config_audit=false npm_config_update_notifier=false
export ELECTRON_SKIP_BINARY_DOWNLOAD=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1

step() { echo "== $*" >&2; }

cd "$PREFIX"
[ -f package.json ] || echo '{"private": true}' > package.json
step "npm install code-server@$VERSION --ignore-scripts"
npm install --no-save --ignore-scripts --omit=dev "code-server@$VERSION" >&2

# code-server's own dependencies: argon2 is the only native one. (Not `npm rebuild` without a name: that
# would run code-server's postinstall.sh, which installs lib/vscode with scripts and downloads ripgrep.)
step "npm rebuild argon2"
npm rebuild argon2 >&2

step "lib/vscode: npm install --ignore-scripts, Debian's rg, npm rebuild"
(cd "$VSCODE" && npm install --omit=dev --ignore-scripts >&2)
# @vscode/ripgrep's postinstall exits early when its bin/ folder exists.
mkdir -p "$VSCODE/node_modules/@vscode/ripgrep/bin"
cp "$RG" "$VSCODE/node_modules/@vscode/ripgrep/bin/rg"
(cd "$VSCODE" && npm rebuild >&2)

# The rest of code-server's postinstall.sh: links VS Code expects.
ln -sfn node_modules "$VSCODE/node_modules.asar"
ln -sfn code-linux.sh "$VSCODE/bin/remote-cli/code-server"
ln -sfn browser-linux.sh "$VSCODE/bin/helpers/browser.sh"

step "lib/vscode/extensions: npm install --ignore-scripts, npm rebuild"
(cd "$VSCODE/extensions" && npm install --omit=dev --ignore-scripts >&2 && npm rebuild >&2)

# Sanity: it starts and reports its version (XDG dirs kept out of the user's home).
tmp=$(mktemp -d)
XDG_CONFIG_HOME=$tmp XDG_DATA_HOME=$tmp "$EXE" --version >&2
rm -rf "$tmp"
touch "$PREFIX/.installed-$VERSION"
echo "$EXE"
