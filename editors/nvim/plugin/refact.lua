-- Loaded at startup by any plugin manager: hooks refact-lsp clients on attach and adds commands.
-- Starting the server is up to the user: require('refact').setup() or vim.lsp.enable('refact').
if vim.g.loaded_refact then
  return
end
vim.g.loaded_refact = true

vim.api.nvim_set_hl(0, 'RefactGhost', { link = 'Comment', default = true })

local group = vim.api.nvim_create_augroup('refact', { clear = true })

-- Insert-mode <Plug> mappings for your own keys (`imap <C-Right> <Plug>(refact-accept-word)`): accept the
-- whole suggestion, its next word, its next line. With nothing shown they type nothing.
local plugs = { ['refact-accept'] = false, ['refact-accept-word'] = 'word', ['refact-accept-line'] = 'line' }
for name, part in pairs(plugs) do
  vim.keymap.set('i', '<Plug>(' .. name .. ')', function()
    return require('refact').accept_keys(part or nil) or ''
  end, { expr = true, replace_keycodes = false, desc = 'refact-lsp: ' .. name:gsub('-', ' ') })
end

vim.api.nvim_create_autocmd('LspAttach', {
  group = group,
  callback = function(args)
    local refact = require('refact')
    local client = vim.lsp.get_client_by_id(args.data.client_id)
    if refact.is_refact(client) then
      refact.attach(client, args.buf)
    end
  end,
})

-- Renamed buffers, and buffers that get their first name (lua/refact/rename.lua)
vim.api.nvim_create_autocmd('BufFilePre', {
  group = group,
  callback = function(args)
    require('refact.rename').before(args.buf)
  end,
})
vim.api.nvim_create_autocmd({ 'BufFilePost', 'BufAdd' }, {
  group = group,
  callback = function(args)
    if package.loaded['refact.rename'] then -- (else no client was ever configured: nothing to do)
      require('refact.rename').after(args.buf)
    end
  end,
})

local function refact_client()
  local clients = vim.lsp.get_clients({ bufnr = 0 })
  for _, client in ipairs(clients) do
    if require('refact').is_refact(client) then
      return client
    end
  end
  vim.notify('refact-lsp is not attached to this buffer', vim.log.levels.WARN)
end

local function show(title, value)
  local lines = { title }
  vim.list_extend(lines, vim.split(type(value) == 'string' and value or vim.inspect(value), '\n'))
  vim.notify(table.concat(lines, '\n'), vim.log.levels.INFO)
end

vim.api.nvim_create_user_command('RefactStats', function()
  local client = refact_client()
  if client then
    client:request('workspace/executeCommand', { command = 'refact.stats', arguments = {} }, function(err, result)
      show('refact.stats', err or result)
    end, 0)
  end
end, { desc = 'Show refact-lsp statistics and model state' })

--- The position :RefactPrompt asks about: the cursor, or in Normal mode on the last character of a
--- line the position after it, where `a` would type (the cursor goes back onto that character when
--- insert mode ends, e.g. after typing a line and <Esc>).
local function prompt_position(client)
  local params = vim.lsp.util.make_position_params(0, client.offset_encoding)
  local row, col = unpack(vim.api.nvim_win_get_cursor(0))
  local line = vim.api.nvim_get_current_line()
  local char = vim.fn.matchstr(line, ('\\%%%dc.'):format(col + 1)) -- with its composing characters
  if vim.api.nvim_get_mode().mode == 'n' and char ~= '' and col + #char == #line then
    params.position.character = vim.lsp.util.character_offset(0, row - 1, #line, client.offset_encoding)
  end
  return params
end

vim.api.nvim_create_user_command('RefactPrompt', function()
  local client = refact_client()
  if client then
    local params = prompt_position(client)
    client:request('workspace/executeCommand', { command = 'refact.prompt', arguments = { params } }, function(err, result)
      if err then
        show('refact.prompt', err)
      elseif type(result) ~= 'table' or type(result.prompt) ~= 'string' then
        vim.notify('refact.prompt: no completion here (mode: none)', vim.log.levels.INFO)
      else
        show(('refact.prompt (mode %s, %s tokens)'):format(result.mode, result.tokens), result.prompt)
      end
    end, vim.api.nvim_get_current_buf())
  end
end, { desc = 'Show the prompt refact-lsp builds at the cursor' })
