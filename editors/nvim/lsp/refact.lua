-- refact-lsp for Neovim's built-in client (0.11+):
--   vim.lsp.enable('refact')
-- Override anything with vim.lsp.config('refact', { cmd = ..., init_options = { temperature = 0.2 } }).
-- Completion menus, ghost text (0.11) or vim.lsp.inline_completion (0.12+) are switched on when the
-- client attaches, by plugin/refact.lua (see require('refact').setup()).
return require('refact.config').lsp_config()
