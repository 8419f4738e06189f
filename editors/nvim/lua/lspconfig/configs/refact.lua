-- refact-lsp for nvim-lspconfig's `require('lspconfig').refact.setup({})` (nvim-lspconfig finds this
-- file on the runtimepath by name). Users of Neovim 0.11+ can use vim.lsp.enable('refact') instead.
local base = require('refact.config')

return {
  default_config = {
    cmd = vim.deepcopy(base.cmd),
    filetypes = nil, -- every filetype
    root_dir = function(fname)
      return vim.fs.root(fname, { '.git' }) or vim.fn.getcwd()
    end,
    single_file_support = true,
    reuse_client = base.reuse_client,
    init_options = vim.deepcopy(base.init_options),
    settings = { refact = vim.empty_dict() },
  },
  docs = {
    description = 'refact-lsp: AI code completion with Refact-1.6B-fim running inside the server.',
  },
}
