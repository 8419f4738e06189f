--- Ghost text for Neovim 0.11, which has no vim.lsp.inline_completion: after a pause in insert mode,
--- ask `textDocument/inlineCompletion`, show the first item with extmarks (inline virtual text for
--- the cursor line, virtual lines for the rest), accept it with a key, drop it on any other edit,
--- cursor move or leaving insert mode. Answers to outdated requests are dropped. Like Copilot.vim, nothing
--- is shown while the insert-mode completion menu is open (`pumvisible()`): opening it drops the ghost,
--- and the accept key does what it did before.
---
--- Accepting goes through keys (`accept_keys`): a <Del> for each character right of the cursor that
--- the item types again, then a paste of its text (nvim_paste). That text is literal (no autoindent,
--- auto-pairs or 'expandtab'), is one undo step with the rest of the insert, and is in the redo
--- register, so `.` repeats it. Accepting part of it (`accept_word_keys`, `accept_line_keys`) pastes
--- that part the same way and shows the rest at once, as if the part had been typed.
local M = {}

local api = vim.api
local ns = api.nvim_create_namespace('refact.ghost')
local INLINE_TRIGGER_AUTOMATIC = 2

---@class refact.ghost.Suggestion
---@field row integer 0-based
---@field col integer byte column of the cursor when shown
---@field start_col integer byte column where the item's range starts
---@field end_col integer byte column where it ends (>= the cursor: auto-closed characters it re-types)
---@field lines string[] the item's text, split in lines
---@field tick integer b:changedtick when shown

---@class refact.ghost.State
---@field client_id integer
---@field opts table
---@field timer uv.uv_timer_t?
---@field seq integer number of the latest request; answers to older ones are dropped
---@field request_id integer? the client's id of the request in flight
---@field shown refact.ghost.Suggestion?

---@type table<integer, refact.ghost.State>
local states = {}

local function item_text(item)
  local text = item.insertText
  if type(text) == 'table' then -- StringValue (snippet): shown and inserted as plain text
    text = text.value
  end
  return type(text) == 'string' and text or nil
end

local function pum_visible()
  return vim.fn.pumvisible() == 1
end

--- Byte column of an LSP character offset in `line`.
local function byte_col(line, character, encoding)
  local ok, col = pcall(vim.str_byteindex, line, encoding, character, false)
  return ok and math.min(col, #line) or #line
end

--- Nothing is asked for a buffer that cannot be edited ('readonly', 'nomodifiable'): a help page,
--- a file opened with :view.
local function editable(bufnr)
  return not vim.bo[bufnr].readonly and vim.bo[bufnr].modifiable
end

--- `text` with its tabs expanded to spaces as they would be drawn from display column `from` (0-based)
--- ('tabstop', 'vartabstop'): inline virtual text draws a literal tab one cell wide.
local function expand_tabs(text, from)
  if not text:find('\t', 1, true) then
    return text
  end
  local out, width = {}, from
  for part, tab in text:gmatch('([^\t]*)(\t?)') do
    if part ~= '' then
      table.insert(out, part)
      width = width + vim.fn.strdisplaywidth(part, width)
    end
    if tab ~= '' then
      local n = vim.fn.strdisplaywidth('\t', width)
      table.insert(out, (' '):rep(n))
      width = width + n
    end
  end
  return table.concat(out)
end

local function cancel_request(bufnr, state)
  if state.request_id then
    local client = vim.lsp.get_client_by_id(state.client_id)
    if client then
      client:cancel_request(state.request_id)
    end
    state.request_id = nil
  end
end

--- Removes the ghost text of `bufnr` (the suggestion is forgotten).
function M.clear(bufnr)
  local state = states[bufnr]
  if state then
    state.shown = nil
  end
  if api.nvim_buf_is_valid(bufnr) then
    api.nvim_buf_clear_namespace(bufnr, ns, 0, -1)
  end
end

--- The suggestion shown in `bufnr`, if any.
---@return refact.ghost.Suggestion?
function M.current(bufnr)
  local state = states[bufnr]
  return state and state.shown
end

--- The first line's ghost cut at the characters right of the cursor that the item types again
--- (`covered`: an auto-closed ")"), which stay where they are: a piece before each of them and one
--- after them all. nil when they are not all in the text, in order.
---@return string[]?
local function pieces_around(ghost_first, covered)
  local pieces, from = {}, 1
  for i = 1, #covered do
    local at = ghost_first:find(covered:sub(i, i), from, true)
    if not at then
      return nil
    end
    table.insert(pieces, ghost_first:sub(from, at - 1))
    from = at + 1
  end
  table.insert(pieces, ghost_first:sub(from))
  return pieces
end

local function render(bufnr, suggestion, cursor_col, hl_group)
  local line = api.nvim_buf_get_lines(bufnr, suggestion.row, suggestion.row + 1, true)[1]
  local typed = line:sub(suggestion.start_col + 1, cursor_col)
  local covered = line:sub(cursor_col + 1, suggestion.end_col)
  local first = suggestion.lines[1]
  if first:sub(1, #typed) ~= typed then
    return false -- the item does not continue what is typed: nothing sensible to show
  end
  local ghost_first = first:sub(#typed + 1)
  local rest = vim.list_slice(suggestion.lines, 2)
  -- Single line: characters right of the cursor that the item types again (e.g. an auto-closed ")")
  -- stay where they are; the ghost shows what goes before each of them, and what goes after them all.
  local pieces = #rest == 0 and covered ~= '' and pieces_around(ghost_first, covered) or { ghost_first }
  if table.concat(pieces) == '' and #rest == 0 then
    return false
  end
  -- Tabs as spaces, from where each piece is drawn: after the line up to the cursor, the pieces before
  -- it and the characters between them.
  local from = vim.fn.strdisplaywidth(line:sub(1, cursor_col))
  for i, piece in ipairs(pieces) do
    pieces[i] = expand_tabs(piece, from)
    from = from + vim.fn.strdisplaywidth(pieces[i], from)
    if i < #pieces then
      from = from + vim.fn.strdisplaywidth(covered:sub(i, i), from)
    end
  end
  local virt_lines, tail = nil, line:sub(cursor_col + 1)
  if #rest > 0 then
    virt_lines = vim.tbl_map(function(l)
      return { { expand_tabs(l, 0), hl_group } }
    end, rest)
    -- Several lines: accepting moves what is right of the cursor, less the characters the item types
    -- again, after its last line. Shown there (as text, not ghost), and blanked out on the cursor line.
    local after = line:sub(suggestion.end_col + 1)
    if after ~= '' then
      table.insert(virt_lines[#virt_lines], { after })
    end
  end
  for i, piece in ipairs(pieces) do
    -- right_gravity on the mark at the cursor: Neovim then draws the cursor before its text (after it
    -- otherwise, as if the suggestion were typed). Typing there drops the ghost anyway.
    local mark = { virt_text_pos = 'inline', hl_mode = 'combine', right_gravity = i == 1 }
    if piece ~= '' then
      mark.virt_text = { { piece, hl_group } }
    end
    if i == 1 then
      mark.virt_lines = virt_lines
    end
    if mark.virt_text or mark.virt_lines then
      api.nvim_buf_set_extmark(bufnr, ns, suggestion.row, cursor_col + i - 1, mark)
    end
  end
  if virt_lines and tail ~= '' then
    -- Blanks over the text right of the cursor (drawn after the inline ghost, so from its end).
    -- `from`: where the ghost ends (pieces holds ghost_first alone here).
    api.nvim_buf_set_extmark(bufnr, ns, suggestion.row, cursor_col, {
      virt_text = { { (' '):rep(vim.fn.strdisplaywidth(tail, from)) } },
      virt_text_pos = 'overlay',
    })
  end
  return true
end

local function on_answer(bufnr, seq, tick, row, col, encoding, result)
  local state = states[bufnr]
  if not state or state.seq ~= seq or not api.nvim_buf_is_valid(bufnr) then
    return -- superseded or detached
  end
  state.request_id = nil
  local cursor = api.nvim_win_get_cursor(0)
  if
    api.nvim_get_current_buf() ~= bufnr
    or api.nvim_buf_get_changedtick(bufnr) ~= tick
    or cursor[1] - 1 ~= row
    or cursor[2] ~= col
    or not vim.startswith(api.nvim_get_mode().mode, 'i')
  then
    return -- stale: the buffer or the cursor changed meanwhile
  end
  if pum_visible() then
    return -- the completion menu is open: no ghost over or beside it (CompleteDone asks again)
  end
  local items = result and (result.items or result) or {}
  local item = items[1]
  local text = item and item_text(item)
  if not text or text == '' then
    return
  end
  local line = api.nvim_buf_get_lines(bufnr, row, row + 1, true)[1]
  local start_col, end_col = col, col
  if item.range then
    if item.range.start.line ~= row or item.range['end'].line ~= row then
      return -- only edits on the cursor line are shown
    end
    start_col = byte_col(line, item.range.start.character, encoding)
    end_col = byte_col(line, item.range['end'].character, encoding)
    if start_col > col or end_col < col then
      return
    end
  end
  M.clear(bufnr)
  local suggestion = {
    row = row,
    col = col,
    start_col = start_col,
    end_col = end_col,
    -- In the document's line ending: a 'fileformat' dos buffer is sent with "\r\n" (mac: "\r").
    lines = vim.split((text:gsub('\r\n?', '\n')), '\n', { plain = true }),
    tick = tick,
  }
  if render(bufnr, suggestion, col, state.opts.hl_group) then
    state.shown = suggestion
  end
end

--- Asks the server for a suggestion at the cursor of the current window (which shows `bufnr`).
function M.request(bufnr)
  local state = states[bufnr]
  local client = state and vim.lsp.get_client_by_id(state.client_id)
  if not client or api.nvim_get_current_buf() ~= bufnr or not editable(bufnr) then
    return
  end
  cancel_request(bufnr, state)
  state.seq = state.seq + 1
  local seq = state.seq
  local encoding = client.offset_encoding or 'utf-16'
  local params = vim.lsp.util.make_position_params(0, encoding)
  params.context = { triggerKind = INLINE_TRIGGER_AUTOMATIC }
  local row, col = unpack(api.nvim_win_get_cursor(0))
  local tick = api.nvim_buf_get_changedtick(bufnr)
  state.asked = { row, col, tick }
  -- The real buffer number (not 0): the client then flushes pending didChange notifications first.
  local ok, request_id = client:request('textDocument/inlineCompletion', params, function(err, result)
    if err then
      if state.seq == seq then
        state.request_id = nil
      end
      return
    end
    on_answer(bufnr, seq, tick, row - 1, col, encoding, result)
  end, bufnr)
  state.request_id = ok and request_id or nil
end

--- Schedules a request after the configured pause; each call restarts the pause.
function M.schedule(bufnr)
  local state = states[bufnr]
  if not state or not editable(bufnr) then
    return
  end
  state.timer = state.timer or vim.uv.new_timer()
  state.timer:stop()
  state.timer:start(state.opts.delay_ms, 0, vim.schedule_wrap(function()
    if states[bufnr] and vim.startswith(api.nvim_get_mode().mode, 'i') and not pum_visible() then
      M.request(bufnr)
    end
  end))
end

--- Drops the suggestion and any pending or running request.
function M.dismiss(bufnr)
  local state = states[bufnr]
  if state then
    if state.timer then
      state.timer:stop()
    end
    state.seq = state.seq + 1
    cancel_request(bufnr, state)
  end
  M.clear(bufnr)
end

--- The text that the keys of `accept_keys` paste: { bufnr, text, shown? }; `shown`: the rest of a
--- partly accepted suggestion, shown again once the text is in.
local queued = nil

--- The next word of `text` (`accept_word`), as VS Code and Copilot take it: the whitespace that starts
--- it (line breaks too), then a run of word characters (letters, digits, "_", any non-ASCII byte) or
--- else of other characters (punctuation).
local function next_word(text)
  local space = text:match('^%s*')
  local rest = text:sub(#space + 1)
  return space .. (rest:match('^[%w_\128-\255]+') or rest:match('^[^%w_%s\128-\255]+') or '')
end

--- The next line of `text` (`accept_line`): up to its first line break; from a line break, that break
--- and the line after it.
local function next_line(text)
  return text:match('^\n?[^\n]*')
end

M.next_word = next_word
M.next_line = next_line

--- Keys that insert the suggestion shown in `bufnr` (0: current) as if typed, so that `.` repeats
--- them: a <Del> for each character right of the cursor that the item types again, then a paste of
--- the rest of its text (`insert_queued`). They are meant to run at once, not remapped: returned by
--- an <expr> mapping or fed to the front of the typeahead. Drops the suggestion; nil if none was
--- shown, it no longer applies or the completion menu is open (the key is the menu's then). Works while
--- text is locked (an <expr> mapping).
--- `take`: for a partial accept (`accept_word`, `accept_line`), gives the piece of the rest of the
--- suggestion to insert (`next_word`, `next_line`); the rest stays shown, as if the piece was typed, and
--- taking the last piece is a full accept.
---@param take? fun(text: string): string
---@return string?
function M.accept_keys(bufnr, take)
  bufnr = bufnr == 0 and api.nvim_get_current_buf() or bufnr
  if pum_visible() then
    return nil
  end
  local suggestion = M.current(bufnr)
  if not suggestion then
    return nil
  end
  M.dismiss(bufnr)
  local row, col = unpack(api.nvim_win_get_cursor(0))
  if
    api.nvim_get_current_buf() ~= bufnr
    or api.nvim_buf_get_changedtick(bufnr) ~= suggestion.tick
    or row - 1 ~= suggestion.row
    or col ~= suggestion.col
  then
    return nil
  end
  local line = api.nvim_buf_get_lines(bufnr, suggestion.row, suggestion.row + 1, true)[1]
  local covered = line:sub(col + 1, suggestion.end_col)
  local lines = vim.deepcopy(suggestion.lines)
  lines[1] = lines[1]:sub(col - suggestion.start_col + 1) -- the part typed before the cursor is there
  local text = table.concat(lines, '\n')
  local piece = take and take(text) or text
  -- The characters right of the cursor that this piece types again (in order, as the ghost text is cut
  -- at them).
  local consumed, from = 0, 1
  while consumed < #covered do
    local at = piece:find(covered:sub(consumed + 1, consumed + 1), from, true)
    if not at then
      break
    end
    consumed, from = consumed + 1, at + 1
  end
  if piece == '' or #piece >= #text or text:sub(#piece + 1) == covered:sub(consumed + 1) then
    -- The whole rest, or the last piece shown: after it only the characters right of the cursor that
    -- it types again (an auto-closed ")"), which no ghost shows. A full accept: the cursor after them.
    return M.insert_keys(bufnr, text, covered)
  end
  -- Part of it, as if typed: the covered characters that this piece types again are replaced, the
  -- others stay; the rest is shown again after it.
  local rest = {
    row = suggestion.row,
    col = col + #piece,
    start_col = suggestion.start_col,
    end_col = suggestion.end_col + #piece - consumed,
    lines = suggestion.lines,
  }
  local breaks = select(2, piece:gsub('\n', ''))
  if breaks > 0 then -- on a later line, which the piece starts: the item's lines from that one
    local last = piece:match('[^\n]*$')
    rest.row, rest.col, rest.start_col = suggestion.row + breaks, #last, 0
    rest.end_col = #last + #covered - consumed
    rest.lines = vim.list_slice(suggestion.lines, breaks + 1)
  end
  local keys = M.insert_keys(bufnr, piece, covered:sub(1, consumed))
  queued.shown = rest
  return keys
end

--- Keys that delete `covered` (the characters right of the cursor) and paste `text` in insert mode, as
--- part of the insert (so `.` repeats them). Also used by the completion menu (menu.lua).
---@return string
function M.insert_keys(bufnr, text, covered)
  queued = { bufnr = bufnr, text = text }
  local delete = ('<Del>'):rep(vim.fn.strchars(covered, true))
  return vim.keycode(delete .. "<Cmd>lua require('refact.ghost').insert_queued()<CR>")
end

--- Pastes the text queued by `accept_keys` at the cursor (the end of those keys).
function M.insert_queued()
  local item = queued
  queued = nil
  if item and item.text ~= '' and api.nvim_get_current_buf() == item.bufnr then
    -- In insert mode the paste is part of the insert: literal, one undo step, repeated by `.`.
    api.nvim_paste(item.text, false, -1)
    local rest, state = item.shown, states[item.bufnr]
    local row, col = unpack(api.nvim_win_get_cursor(0))
    if rest and state and row - 1 == rest.row and col == rest.col then
      -- A partial accept: the rest, as if the piece had been typed (TextChangedI keeps it).
      rest.tick = api.nvim_buf_get_changedtick(item.bufnr)
      if render(item.bufnr, rest, col, state.opts.hl_group) then
        state.shown = rest
      end
    end
  end
end

--- Inserts the shown suggestion: feeds `accept_keys` to the front of the typeahead, so the text goes
--- in right after the current mapping (also an <expr> one). Returns false if none is shown (or it no
--- longer applies).
---@return boolean
---@param take? fun(text: string): string the piece to take (`accept_keys`); nil: all of it
function M.accept(bufnr, take)
  local keys = M.accept_keys(bufnr, take)
  if not keys then
    return false
  end
  api.nvim_feedkeys(keys, 'ni', false)
  return true
end

--- Keys that insert the next word of the suggestion shown (`accept_keys`); nil if none is shown.
---@return string?
function M.accept_word_keys(bufnr)
  return M.accept_keys(bufnr, next_word)
end

--- Keys that insert the rest of the suggestion's current line, or from its end the line break and the
--- next line (`accept_keys`); nil if none is shown.
---@return string?
function M.accept_line_keys(bufnr)
  return M.accept_keys(bufnr, next_line)
end

--- Starts ghost text in `bufnr` for `client`.
function M.attach(client, bufnr, opts)
  if states[bufnr] then
    states[bufnr].client_id = client.id
    return
  end
  states[bufnr] = { client_id = client.id, opts = opts, seq = 0 }
  local group = api.nvim_create_augroup('refact.ghost.' .. bufnr, { clear = true })
  api.nvim_create_autocmd('TextChangedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      local shown = M.current(bufnr)
      if shown and shown.tick == api.nvim_buf_get_changedtick(bufnr) then
        return -- the rest of a partly accepted suggestion, shown after that edit
      end
      M.dismiss(bufnr)
      M.schedule(bufnr)
    end,
  })
  api.nvim_create_autocmd('CompleteDone', {
    group = group,
    buffer = bufnr,
    callback = function()
      if not M.current(bufnr) then
        M.schedule(bufnr) -- runs once the menu is gone, in insert mode only
      end
    end,
  })
  -- Like Copilot, a suggestion also comes without an edit: on entering insert mode and after moving the
  -- cursor (after the same pause). Not again where the last request was, for the same text.
  api.nvim_create_autocmd('InsertEnter', {
    group = group,
    buffer = bufnr,
    callback = function()
      M.schedule(bufnr)
    end,
  })
  api.nvim_create_autocmd('CursorMovedI', {
    group = group,
    buffer = bufnr,
    callback = function()
      local cursor = api.nvim_win_get_cursor(0)
      local shown = M.current(bufnr)
      if shown then
        if shown.row == cursor[1] - 1 and shown.col == cursor[2] then
          return -- still where it is shown (after a partial accept too)
        end
        local mark = api.nvim_buf_get_extmarks(bufnr, ns, 0, -1, {})[1]
        if mark and mark[2] == cursor[1] - 1 and mark[3] == cursor[2] then
          return
        end
        M.dismiss(bufnr)
      end
      local asked = states[bufnr] and states[bufnr].asked
      if
        not asked
        or asked[1] ~= cursor[1]
        or asked[2] ~= cursor[2]
        or asked[3] ~= api.nvim_buf_get_changedtick(bufnr)
      then
        M.schedule(bufnr)
      end
    end,
  })
  -- Also the completion menu: its edits (<C-n> inserting a match) fire TextChangedP, not TextChangedI,
  -- and opening it may change nothing (completeopt noinsert). Nothing is shown while it is open; asked
  -- again once it closes (CompleteDone above).
  api.nvim_create_autocmd({ 'InsertLeave', 'BufLeave', 'TextChangedP', 'CompleteChanged' }, {
    group = group,
    buffer = bufnr,
    callback = function()
      M.dismiss(bufnr)
    end,
  })
  -- <C-c> leaves insert mode without InsertLeave; <C-o> runs a normal-mode command from it. Also from
  -- insert-mode completion ('ic', 'ix': after <C-n>, <C-x><C-o>).
  api.nvim_create_autocmd('ModeChanged', {
    group = group,
    pattern = 'i*:*',
    callback = function()
      if not vim.startswith(vim.v.event.new_mode, 'i') and api.nvim_get_current_buf() == bufnr then
        M.dismiss(bufnr)
      end
    end,
  })
  api.nvim_create_autocmd('LspDetach', {
    group = group,
    buffer = bufnr,
    callback = function(args)
      if args.data.client_id == client.id then
        M.detach(bufnr)
      end
    end,
  })
end

--- Stops ghost text in `bufnr`.
function M.detach(bufnr)
  local state = states[bufnr]
  if not state then
    return
  end
  M.dismiss(bufnr)
  if state.timer then
    state.timer:close()
  end
  states[bufnr] = nil
  pcall(api.nvim_del_augroup_by_name, 'refact.ghost.' .. bufnr)
end

M.namespace = ns

return M
