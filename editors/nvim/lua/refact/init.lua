--- refact-lsp for Neovim: starts the client (vim.lsp.enable) and, when it attaches to a buffer,
--- switches on the completion menu (vim.lsp.completion) and inline suggestions
--- (vim.lsp.inline_completion on 0.12+, the `refact.ghost` extmark module on 0.11).
local M = {}

--- Server name reported in `initialize`'s serverInfo: how an attached client is recognised,
--- whatever name it was configured under.
M.server_name = 'refact-lsp'

---@class refact.Options
M.defaults = {
  --- Call vim.lsp.enable('refact') from setup().
  enable = true,
  --- Server command (nil: lsp/refact.lua's, i.e. `refact-lsp` on $PATH).
  cmd = nil,
  --- initializationOptions: the server's settings (model, device, dtype, maxNewTokens, temperature,
  --- debounceMs, multiline, ...). nil: server defaults.
  settings = nil,
  completion = {
    --- Offer the suggestion in the completion menu (<C-x><C-o>, vim.lsp.completion.get()). The menu
    --- opens only when asked: the server has no trigger characters (ghost text is what comes by itself).
    enabled = true,
  },
  inline = {
    --- Show suggestions as ghost text while typing.
    enabled = true,
    --- Insert-mode key that accepts the suggestion; when nothing is shown it types itself.
    --- false: no mapping (call require('refact').accept() from your own).
    accept_key = '<Tab>',
    --- Insert-mode keys that accept the next word / the next line of the suggestion (the rest stays
    --- shown), as in Copilot.vim; when nothing is shown they do what they did before. false: no mapping
    --- (map `<Plug>(refact-accept-word)`, `<Plug>(refact-accept-line)` or call accept_word()/accept_line()).
    accept_word_key = '<M-Right>',
    accept_line_key = '<M-C-Right>',
    --- Pause after the last keystroke before asking (ms). Neovim 0.11's ghost text only.
    delay_ms = 75,
    --- Highlight group of the ghost text (0.11).
    hl_group = 'RefactGhost',
  },
}

M.options = vim.deepcopy(M.defaults)

local function has_native_inline()
  return vim.lsp.inline_completion ~= nil and vim.lsp.inline_completion.enable ~= nil
end

--- Configures the plugin; with `enable` (default) also calls vim.lsp.enable('refact').
---@param opts? refact.Options
function M.setup(opts)
  M.options = vim.tbl_deep_extend('force', vim.deepcopy(M.defaults), opts or {})
  if M.options.completion.autotrigger ~= nil then
    if M.options.completion.autotrigger then
      vim.notify_once(
        'refact: completion.autotrigger is gone: it never opened the menu (refact-lsp sends no trigger'
          .. ' characters). Suggestions come by themselves as ghost text; open the menu with <C-x><C-o>.',
        vim.log.levels.WARN
      )
    end
    M.options.completion.autotrigger = nil
  end
  local overrides = {}
  if M.options.cmd then
    overrides.cmd = M.options.cmd
  end
  if M.options.settings then
    overrides.init_options = M.options.settings
    overrides.settings = { refact = M.options.settings }
  end
  if next(overrides) then
    vim.lsp.config('refact', overrides)
  end
  if M.options.enable then
    vim.lsp.enable('refact')
  end
end

--- True if `client` is a refact-lsp client.
---@param client vim.lsp.Client?
function M.is_refact(client)
  return client ~= nil and client.server_info ~= nil and client.server_info.name == M.server_name
end

--- The accept mappings: option, description, the <Plug> name of the copy of what the key did before.
local ACCEPT = {
  all = {
    key = 'accept_key',
    desc = 'Accept the Refact suggestion',
    fallback = '<Plug>(refact-accept-fallback)',
  },
  word = {
    key = 'accept_word_key',
    desc = 'Accept the next word of the Refact suggestion',
    fallback = '<Plug>(refact-accept-word-fallback)',
  },
  line = {
    key = 'accept_line_key',
    desc = 'Accept the next line of the Refact suggestion',
    fallback = '<Plug>(refact-accept-line-fallback)',
  },
}

--- Keeps what `key` did in insert mode in `bufnr` before this plugin maps it (the buffer's own mapping,
--- else a global one) as the buffer's FALLBACK mapping, a copy with everything Vim keeps of it (`<SID>`,
--- `<expr>`, a Lua callback, remap or not). Returns a function for the <expr> accept mapping that does
--- it again, right where the key was typed (ahead of any keys typed after it): the keys to return.
--- `kind`: an entry of ACCEPT.
local function fallback(key, bufnr, kind)
  local FALLBACK = kind.fallback
  vim.api.nvim_buf_call(bufnr, function()
    local before = vim.fn.maparg(key, 'i', false, true)
    if not vim.tbl_isempty(before) and before.desc == kind.desc then
      return -- attached before (a restarted client): the copy, if any, is in place
    end
    pcall(vim.keymap.del, 'i', FALLBACK, { buffer = bufnr })
    if not vim.tbl_isempty(before) then
      before.lhs, before.lhsraw, before.lhsrawalt, before.buffer = FALLBACK, vim.keycode(FALLBACK), nil, 1
      if before.noremap == 0 and vim.startswith(vim.keycode(before.rhs or ''), vim.keycode(key)) then
        before.noremap = 1 -- `imap <Tab> <Tab>x`: Vim does not remap the leading key (no loop back here)
      end
      vim.fn.mapset('i', false, before)
    end
  end)
  return function()
    local copy = vim.api.nvim_buf_call(bufnr, function()
      return vim.fn.maparg(FALLBACK, 'i', false, true)
    end)
    if vim.tbl_isempty(copy) then
      return vim.keycode(key) -- the accept mapping does not remap: the key itself
    end
    -- The copy must be remapped, the accept mapping's keys must not: run it next, from the typeahead.
    vim.api.nvim_feedkeys(vim.keycode(FALLBACK), 'mi', false)
    return ''
  end
end

--- Keys that accept the suggestion shown in the current buffer (nil if none), for an <expr> mapping.
--- `part`: 'word' or 'line' for part of it (Neovim 0.11's ghost text only: 0.12's has no partial accept).
---@param part? 'word'|'line'
---@return string?
function M.accept_keys(part)
  if has_native_inline() then
    if part then
      return nil
    end
    return vim.lsp.inline_completion.get() and '' or nil -- applied once the mapping is done
  end
  local ghost = require('refact.ghost')
  local take = part == 'word' and ghost.next_word or part == 'line' and ghost.next_line or nil
  return ghost.accept_keys(vim.api.nvim_get_current_buf(), take)
end

local function map_accept(bufnr)
  for part, kind in pairs(ACCEPT) do
    local key = M.options.inline[kind.key]
    if key then
      part = part ~= 'all' and part or nil
      local otherwise = fallback(key, bufnr, kind)
      -- An <expr> mapping: the suggestion goes in as keys (repeated by `.`), the fallback where the key was.
      vim.keymap.set('i', key, function()
        return M.accept_keys(part) or otherwise()
      end, { buffer = bufnr, expr = true, replace_keycodes = false, desc = kind.desc })
    end
  end
end

--- Accepts the suggestion shown in the current buffer (the text goes in right after the calling
--- mapping, an <expr> one too, and `.` repeats it). Returns false if none was shown.
---@return boolean
function M.accept()
  if has_native_inline() then
    return vim.lsp.inline_completion.get() and true or false
  end
  return require('refact.ghost').accept(vim.api.nvim_get_current_buf())
end

--- Accepts the next word of the suggestion shown in the current buffer: the whitespace before it and a
--- run of word characters, or of punctuation (as VS Code and Copilot). The rest stays shown, as if the
--- word had been typed; the last word is a full accept(). Returns false if none was shown (and on
--- Neovim 0.12+, whose own ghost text has no partial accept).
---@return boolean
function M.accept_word()
  return not has_native_inline() and require('refact.ghost').accept(0, require('refact.ghost').next_word)
end

--- Accepts the rest of the current line of the suggestion shown in the current buffer; at its end, the
--- line break and the next line. Otherwise as accept_word().
---@return boolean
function M.accept_line()
  return not has_native_inline() and require('refact.ghost').accept(0, require('refact.ghost').next_line)
end

--- Called on LspAttach for refact-lsp clients (plugin/refact.lua).
---@param client vim.lsp.Client
---@param bufnr integer
function M.attach(client, bufnr)
  local opts = M.options
  if opts.completion.enabled and client.server_capabilities.completionProvider then
    require('refact.menu').enable(client, bufnr)
  end
  if opts.inline.enabled and client.server_capabilities.inlineCompletionProvider then
    if has_native_inline() then
      vim.lsp.inline_completion.enable(true, { bufnr = bufnr, client_id = client.id })
    else
      require('refact.ghost').attach(client, bufnr, opts.inline)
    end
    map_accept(bufnr)
  end
end

return M
