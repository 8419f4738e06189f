--- The suggestion in the completion menu, through vim.lsp.completion (`textDocument/completion`).
---
--- Neovim 0.11 inserts only the first word of a plain-text item's `textEdit.newText` and ignores the
--- part of its range right of the cursor. Refact items are whole continuations ("a + b)" over an
--- auto-closed ")"), so a CompleteDone handler finishes the insertion from what Vim inserted (the
--- `word`) and the item's textEdit: it inserts the rest, further lines included, and removes the
--- characters right of the cursor that the item types again. That works whoever set the buffer's
--- `convert` (vim.lsp.completion keeps the first enable's); ours, when it is the one, only makes the
--- menu word the item's first line (less the characters right of the cursor that it re-types).
local M = {}

local api = vim.api

--- Marks the items this server sends (`detail`): convert and CompleteDone leave other servers' items alone.
local DETAIL = 'Refact'

local function byte_col(line, character, encoding)
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and math.min(col, #line) or #line
end

--- The range of an item's textEdit (a TextEdit, or an InsertReplaceEdit's `replace`).
local function edit_range(edit)
  return edit.range or edit.replace
end

--- vim.lsp.completion's `convert` for the buffer: the complete-item fields of a Refact item. Used only
--- when this plugin's enable is the buffer's first (the CompleteDone handler does not rely on it).
---@param encoding string
---@return fun(item: lsp.CompletionItem): table
function M.converter(encoding)
  return function(item)
    local edit = item.textEdit
    if item.detail ~= DETAIL or not edit or not edit.newText or not edit_range(edit) then
      return {}
    end
    local row, col = unpack(api.nvim_win_get_cursor(0))
    local line = api.nvim_get_current_line()
    local range = edit_range(edit)
    local covered = ''
    if range['end'].line == row - 1 then
      covered = line:sub(col + 1, math.max(col, byte_col(line, range['end'].character, encoding)))
    end
    -- In the document's line ending: a 'fileformat' dos buffer is sent with "\r\n" (mac: "\r").
    local text = edit.newText:gsub('\r\n?', '\n')
    local lines = vim.split(text, '\n', { plain = true })
    if covered ~= '' and vim.endswith(lines[#lines], covered) then
      lines[#lines] = lines[#lines]:sub(1, -#covered - 1)
    end
    return { word = lines[1], abbr = item.label, menu = '[Refact]', info = text }
  end
end

local ns = api.nvim_create_namespace('refact.menu')

--- Per buffer: where the cursor was when a refact-lsp client asked for the completion items last
--- answered (the position their ranges are relative to): { row (0-based), col (byte), line, encoding }.
--- The menu shows those items until a newer request is answered: the server's lists are incomplete, so
--- typing with the menu open asks again, and an item accepted before that answer is from the older list.
---@type table<integer, { row: integer, col: integer, line: string, encoding: string }>
local requested = {}

--- Per buffer, per "client_id:request_id": the same for the requests in flight.
---@type table<integer, table<string, { row: integer, col: integer, line: string, encoding: string }>>
local in_flight = {}

local function is_refact_client(client_id)
  return require('refact').is_refact(client_id and vim.lsp.get_client_by_id(client_id))
end

--- The LSP item of a complete-item (v:completed_item) if it is a Refact one.
local function refact_item(completed)
  local lsp = vim.tbl_get(completed or {}, 'user_data', 'nvim', 'lsp') or {}
  local item = lsp.completion_item
  if
    type(item) == 'table'
    and item.detail == DETAIL
    and type(item.textEdit) == 'table'
    and type(item.textEdit.newText) == 'string'
    and edit_range(item.textEdit)
    and is_refact_client(lsp.client_id)
  then
    return item
  end
end

--- Finishes the item inserted at the mark `mark_id` (where the cursor was at CompleteDone): accepted
--- with <C-y>, or 'discard': the single match that the default 'completeopt' (no menuone) inserts at
--- once, followed by <Esc> or more typing. Vim has put the complete-item's `word` in place of the text
--- from the completion start to the cursor, whatever `convert` made of the item (the first word of the
--- text by default): the rest of the item's text goes in after it, and the characters right of the
--- cursor that the item's range covers (it types them again) are removed.
local function on_complete_done(bufnr, completed, mark_id, request)
  if not api.nvim_buf_is_valid(bufnr) then
    return
  end
  local mark = api.nvim_buf_get_extmark_by_id(bufnr, ns, mark_id, {})
  api.nvim_buf_del_extmark(bufnr, ns, mark_id)
  local item = refact_item(completed)
  if not item or not mark[1] or not request or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local row, col = mark[1], mark[2]
  local range = edit_range(item.textEdit)
  if range.start.line ~= row or range['end'].line ~= row or request.row ~= row then
    return -- the server's ranges are on the cursor line
  end
  -- The line as the server saw it: the item replaces [start, stop) of it; the cursor was at `asked`.
  local before, asked = request.line, request.col
  local start = math.min(byte_col(before, range.start.character, request.encoding), asked)
  local stop = math.max(byte_col(before, range['end'].character, request.encoding), asked)
  local cursor = api.nvim_win_get_cursor(0)
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local word = completed.word or ''
  local from = col - #word -- where Vim put the word; the line left of it is as it was
  if from < 0 or line:sub(from + 1, col) ~= word or line:sub(1, from) ~= before:sub(1, from) then
    return -- the text changed since the item was inserted
  end
  local text = item.textEdit.newText:gsub('\r\n?', '\n') -- the document's line ending (dos, mac)
  local covered = before:sub(asked + 1, stop)
  if line:sub(col + 1, col + #covered) ~= covered then
    covered = '' -- no longer right of the word
  end
  -- What the item makes of the line from `left` on, and what is there now up to the cursor.
  local left = math.min(from, start)
  local want = before:sub(left + 1, start) .. text
  local have = line:sub(left + 1, col)
  local at, rest, delete = col, nil, covered
  if vim.startswith(want, have) then
    rest = want:sub(#have + 1)
    if delete ~= '' and vim.endswith(rest, delete) then
      rest, delete = rest:sub(1, -#delete - 1), '' -- the characters typed again stay as they are
    end
    if rest == '' and delete == '' then
      return
    end
    if cursor[1] - 1 == row and cursor[2] == col and vim.startswith(api.nvim_get_mode().mode, 'i') then
      -- Still inserting right after the word: as keys, part of the insert, so that `.` repeats it all.
      local keys = require('refact.ghost').insert_keys(bufnr, rest, delete)
      api.nvim_feedkeys(keys, 'ni', false)
      return
    end
  else
    at, rest = left, want -- the word is not how the item starts (another `convert`): replaced
  end
  local lines = vim.split(rest, '\n', { plain = true })
  api.nvim_buf_set_text(bufnr, row, at, row, col + #delete, lines)
  local last_row = row + #lines -- 1-based
  local last_col = (#lines == 1 and at or 0) + #lines[#lines]
  if cursor[1] - 1 == row and cursor[2] == col then -- still in insert mode right after the word
    api.nvim_win_set_cursor(0, { last_row, last_col })
  elseif
    cursor[1] - 1 == row
    and cursor[2] == col - 1
    and not vim.startswith(api.nvim_get_mode().mode, 'i')
  then
    -- <Esc> right after the word: on the last character, as if the whole item had been typed
    api.nvim_win_set_cursor(0, { last_row, math.max(last_col - 1, 0) })
  end
end

--- Enables the completion menu of `client` in `bufnr`.
function M.enable(client, bufnr)
  -- vim.lsp.completion keeps one state per buffer, made by the first enable in it: its `convert` and
  -- whether typing a trigger character asks for completion (autotrigger), for every client enabled in
  -- the buffer. refact-lsp has no trigger characters, so autotrigger asks nothing of it; it is on so
  -- that a server enabled after this one with autotrigger (Neovim's `:h lsp-attach` example) keeps it.
  vim.lsp.completion.enable(true, client.id, bufnr, {
    autotrigger = true,
    convert = M.converter(client.offset_encoding or 'utf-16'),
  })
  local group = api.nvim_create_augroup('refact.menu.' .. bufnr, { clear = true })
  api.nvim_create_autocmd('LspRequest', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      local request = args.data.request or {}
      if request.method ~= 'textDocument/completion' or not is_refact_client(args.data.client_id) then
        return
      end
      local key = args.data.client_id .. ':' .. args.data.request_id
      local sent = in_flight[bufnr] or {}
      in_flight[bufnr] = sent
      if request.type == 'pending' then
        if api.nvim_get_current_buf() == bufnr then
          -- Sent from the cursor (vim.lsp.completion asks at the current window's cursor).
          local row, col = unpack(api.nvim_win_get_cursor(0))
          local c = vim.lsp.get_client_by_id(args.data.client_id)
          sent[key] = {
            row = row - 1,
            col = col,
            line = api.nvim_get_current_line(),
            encoding = c and c.offset_encoding or 'utf-16',
          }
        end
      elseif request.type == 'complete' then
        -- Answered: its items are the menu's from now on (vim.lsp.completion shows them next).
        requested[bufnr] = sent[key] or requested[bufnr]
        sent[key] = nil
      else -- 'cancel': a newer request replaces it, its items are never shown
        sent[key] = nil
      end
    end,
  })
  api.nvim_create_autocmd('CompleteDone', {
    group = group,
    buffer = bufnr,
    callback = function()
      local completed = vim.v.completed_item
      if refact_item(completed) then
        -- After Vim has finished the completion: editing the buffer inside CompleteDone confuses it.
        local reason = api.nvim_get_vvar('event').reason
        if reason ~= 'accept' and reason ~= 'discard' then
          return -- <C-e>: the item is taken out again
        end
        -- Where the item ends now: the cursor may have moved by the time the callback runs (<Esc>).
        local row, col = unpack(api.nvim_win_get_cursor(0))
        local mark_id = api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, { right_gravity = false })
        local request = requested[bufnr]
        vim.schedule(function()
          on_complete_done(bufnr, completed, mark_id, request)
        end)
      end
    end,
  })
  api.nvim_create_autocmd('BufWipeout', {
    group = group,
    buffer = bufnr,
    callback = function()
      requested[bufnr] = nil
      in_flight[bufnr] = nil
    end,
  })
end

return M
