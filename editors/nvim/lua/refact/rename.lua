--- Buffers that get a new name. Neovim 0.11 keeps sending a renamed buffer (`:file`, `:saveas`) under
--- its old URI, a document the server does not hold any more once the old name's buffer is gone, so the
--- client leaves the buffer before the rename (didClose of the old URI) and comes back right after it
--- (didOpen of the new one). A buffer the client was not started in for want of a name
--- (`config.root_dir`) is started in once it has one (`:file name`, `:saveas name`, `:write name`).
local M = {}

--- Buffers the client was not started in because they had no name (bufnr -> true).
M.nameless = {}

local left = {} -- bufnr -> id of the refact-lsp client that left the buffer for its rename

--- BufFilePre: the refact-lsp client leaves `bufnr` while it still has its old name.
---@param bufnr integer
function M.before(bufnr)
  for _, client in ipairs(vim.lsp.get_clients({ bufnr = bufnr })) do
    if require('refact').is_refact(client) then
      left[bufnr] = client.id
      vim.lsp.buf_detach_client(bufnr, client.id)
    end
  end
end

--- BufFilePost, BufAdd (`:write name` in a buffer without one): the client comes back to `bufnr`, or
--- starts in it if it had no name before.
---@param bufnr integer
function M.after(bufnr)
  local id = left[bufnr]
  left[bufnr] = nil
  if vim.api.nvim_buf_get_name(bufnr) == '' then
    return
  end
  local client = id and vim.lsp.get_client_by_id(id)
  if client and not client:is_stopped() then
    vim.lsp.buf_attach_client(bufnr, client.id)
  elseif M.nameless[bufnr] then
    M.nameless[bufnr] = nil
    -- what vim.lsp.enable runs on FileType decides again, now that the buffer has a name
    pcall(vim.api.nvim_exec_autocmds, 'FileType', { group = 'nvim.lsp.enable', buffer = bufnr })
  end
end

return M
