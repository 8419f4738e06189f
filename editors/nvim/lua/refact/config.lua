--- The refact-lsp client configuration shared by `lsp/refact.lua` (vim.lsp.config) and
--- `lua/lspconfig/configs/refact.lua` (nvim-lspconfig's legacy `require('lspconfig').refact.setup{}`).
local M = {}

--- Server settings sent as `initializationOptions` (names as in the server's settings, e.g.
--- `model`, `device`, `dtype`, `maxNewTokens`, `temperature`, `debounceMs`, `multiline`).
--- Empty: the server's defaults (and its command line / environment, e.g. REFACT_LSP_MODEL).
M.init_options = {}

M.cmd = { 'refact-lsp' }

--- One server process for every buffer and project: each process loads the model, so never start
--- a second one for another root.
function M.reuse_client(client, config)
  return client.name == config.name
end

--- The configuration table for `vim.lsp.config('refact', ...)` (Neovim 0.11+).
function M.lsp_config()
  return {
    cmd = vim.deepcopy(M.cmd),
    -- No `filetypes`: code completion applies to every file.
    root_markers = { '.git' },
    reuse_client = M.reuse_client,
    init_options = vim.deepcopy(M.init_options),
    settings = { refact = vim.empty_dict() },
  }
end

return M
