--- The suggestion in the completion menu, through vim.lsp.completion (`textDocument/completion`).
---
--- Neovim 0.11 inserts only the first word of a plain-text item's `textEdit.newText` and ignores the
--- part of its range right of the cursor. Refact items are whole continuations ("a + b)" over an
--- auto-closed ")"), so `convert` makes the menu word the item's first line (less the characters
--- right of the cursor that it re-types), and a CompleteDone handler inserts the remaining lines
--- and removes re-typed characters that were not already stripped.
local M = {}

local api = vim.api

--- Marks the items this server sends (`detail`): convert leaves other servers' items alone.
local DETAIL = 'Refact'

local function byte_col(line, character, encoding)
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and math.min(col, #line) or #line
end

--- vim.lsp.completion's `convert` for the buffer: the complete-item fields of a Refact item.
---@param encoding string
---@return fun(item: lsp.CompletionItem): table
function M.converter(encoding)
  return function(item)
    local edit = item.textEdit
    if item.detail ~= DETAIL or not edit or not edit.newText or not edit.range then
      return {}
    end
    local row, col = unpack(api.nvim_win_get_cursor(0))
    local line = api.nvim_get_current_line()
    local range = edit.range.range or edit.range -- TextEdit or InsertReplaceEdit
    local covered = ''
    if range['end'].line == row - 1 then
      covered = line:sub(col + 1, math.max(col, byte_col(line, range['end'].character, encoding)))
    end
    -- In the document's line ending: a 'fileformat' dos buffer is sent with "\r\n" (mac: "\r").
    local text = edit.newText:gsub('\r\n?', '\n')
    local lines = vim.split(text, '\n', { plain = true })
    local delete = covered
    if covered ~= '' and vim.endswith(lines[#lines], covered) then
      lines[#lines] = lines[#lines]:sub(1, -#covered - 1)
      delete = ''
    end
    -- Read back by the CompleteDone handler (the item is the one in user_data.nvim.lsp).
    item._refact = { rest = vim.list_slice(lines, 2), delete = delete }
    return { word = lines[1], abbr = item.label, menu = '[Refact]', info = text }
  end
end

local ns = api.nvim_create_namespace('refact.menu')

--- Finishes the item inserted at the mark `mark_id` (where the cursor was at CompleteDone): accepted
--- with <C-y>, or 'discard': the single match that the default 'completeopt' (no menuone) inserts at
--- once, followed by <Esc> or more typing.
local function on_complete_done(bufnr, completed, mark_id)
  local extra = vim.tbl_get(completed, 'user_data', 'nvim', 'lsp', 'completion_item', '_refact')
  if not api.nvim_buf_is_valid(bufnr) then
    return
  end
  local mark = api.nvim_buf_get_extmark_by_id(bufnr, ns, mark_id, {})
  api.nvim_buf_del_extmark(bufnr, ns, mark_id)
  if not extra or not mark[1] or api.nvim_get_current_buf() ~= bufnr then
    return
  end
  local row, col = mark[1], mark[2]
  local cursor = api.nvim_win_get_cursor(0)
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local word = completed.word or ''
  if line:sub(col - #word + 1, col) ~= word then
    return -- the text changed since the item was inserted
  end
  local delete_to = col
  if extra.delete ~= '' and line:sub(col + 1, col + #extra.delete) == extra.delete then
    delete_to = col + #extra.delete
  end
  if #extra.rest == 0 and delete_to == col then
    return
  end
  if cursor[1] - 1 == row and cursor[2] == col and vim.startswith(api.nvim_get_mode().mode, 'i') then
    -- Still inserting right after the word: as keys, part of the insert, so that `.` repeats it all.
    local text = #extra.rest > 0 and '\n' .. table.concat(extra.rest, '\n') or ''
    local keys = require('refact.ghost').insert_keys(bufnr, text, line:sub(col + 1, delete_to))
    api.nvim_feedkeys(keys, 'ni', false)
    return
  end
  -- The rest of the first line is already in; '' ends it, then the following lines.
  api.nvim_buf_set_text(bufnr, row, col, row, delete_to, vim.list_extend({ '' }, extra.rest))
  if #extra.rest > 0 then
    local last = extra.rest[#extra.rest]
    if cursor[1] - 1 == row and cursor[2] == col then -- still in insert mode right after the word
      api.nvim_win_set_cursor(0, { row + #extra.rest + 1, #last })
    elseif
      cursor[1] - 1 == row
      and cursor[2] == col - 1
      and not vim.startswith(api.nvim_get_mode().mode, 'i')
    then
      -- <Esc> right after the word: on the last character, as if the whole item had been typed
      api.nvim_win_set_cursor(0, { row + #extra.rest + 1, math.max(#last - 1, 0) })
    end
  end
end

--- Enables the completion menu of `client` in `bufnr`.
function M.enable(client, bufnr)
  vim.lsp.completion.enable(true, client.id, bufnr, {
    convert = M.converter(client.offset_encoding or 'utf-16'),
  })
  api.nvim_create_autocmd('CompleteDone', {
    group = api.nvim_create_augroup('refact.menu.' .. bufnr, { clear = true }),
    buffer = bufnr,
    callback = function()
      if vim.tbl_get(vim.v.completed_item or {}, 'user_data', 'nvim', 'lsp', 'completion_item', '_refact') then
        -- After Vim has finished the completion: editing the buffer inside CompleteDone confuses it.
        local item, reason = vim.v.completed_item, api.nvim_get_vvar('event').reason
        if reason ~= 'accept' and reason ~= 'discard' then
          return -- <C-e>: the item is taken out again
        end
        -- Where the item ends now: the cursor may have moved by the time the callback runs (<Esc>).
        local row, col = unpack(api.nvim_win_get_cursor(0))
        local mark_id = api.nvim_buf_set_extmark(bufnr, ns, row - 1, col, { right_gravity = false })
        vim.schedule(function()
          on_complete_done(bufnr, item, mark_id)
        end)
      end
    end,
  })
end

return M
