--- The refact-lsp client configuration shared by `lsp/refact.lua` (vim.lsp.config) and
--- `lua/lspconfig/configs/refact.lua` (nvim-lspconfig's legacy `require('lspconfig').refact.setup{}`).
local M = {}

--- Server settings sent as `initializationOptions` (names as in the server's settings, e.g.
--- `model`, `device`, `dtype`, `maxNewTokens`, `temperature`, `debounceMs`, `multiline`).
--- Empty: the server's defaults (and its command line / environment, e.g. REFACT_LSP_MODEL).
M.init_options = {}

M.cmd = { 'refact-lsp' }

--- One server process for every buffer and project: each process loads the model, so never start
--- a second one for another root. Not a client that is stopping (`:LspRestart`, `client:stop()`): a
--- buffer given to it would stay without one once it exited.
function M.reuse_client(client, config)
  return client.name == config.name and not client:is_stopped()
end

--- Whether the client starts for `bufnr` (`root_dir` of vim.lsp.config): not in a buffer without a name,
--- which Neovim sends as `file://`, one URI for all of them (two would overwrite each other's text on the
--- server); it starts there once the buffer has a name (`refact.rename`). The root is then found from
--- `root_markers`.
function M.root_dir(bufnr, on_dir)
  local nameless = require('refact.rename').nameless
  if vim.api.nvim_buf_get_name(bufnr) ~= '' then
    nameless[bufnr] = nil
    on_dir()
  else
    nameless[bufnr] = true
  end
end

--- The configuration table for `vim.lsp.config('refact', ...)` (Neovim 0.11+).
function M.lsp_config()
  return {
    cmd = vim.deepcopy(M.cmd),
    -- No `filetypes`: code completion applies to every file.
    root_markers = { '.git' },
    root_dir = M.root_dir,
    reuse_client = M.reuse_client,
    init_options = vim.deepcopy(M.init_options),
    settings = { refact = vim.empty_dict() },
  }
end

return M
