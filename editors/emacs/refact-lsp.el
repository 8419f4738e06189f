;;; refact-lsp.el --- Completion from refact-lsp via eglot -*- lexical-binding: t; -*-

;; Version: 0.1.0
;; Package-Requires: ((emacs "29.1"))
;; Keywords: convenience, languages, tools
;; SPDX-License-Identifier: BSD-3-Clause

;;; Commentary:

;; refact-lsp is a language server that completes code with Refact-1.6B-fim
;; running inside it.  This file connects it to Emacs through eglot:
;;
;; - it adds refact-lsp to `eglot-server-programs' for `refact-lsp-major-modes',
;;   with `refact-lsp-initialization-options' sent as initializationOptions, so
;;   M-x eglot (or `eglot-ensure') starts it, and `completion-at-point' offers
;;   its suggestion through eglot's textDocument/completion;
;; - eglot has no inline completion, so `refact-lsp-inline-mode' asks
;;   textDocument/inlineCompletion when Emacs is idle after an edit, shows the
;;   suggestion as an overlay (ghost text), TAB accepts it (M-f its next
;;   word, C-e its next line, the rest staying shown), and any other
;;   command that edits or moves point drops it, as does an edit of the text
;;   it replaces made outside a command (a timer, a process: an async
;;   formatter, auto-revert); when it can no longer be accepted, TAB does
;;   what it does without it.  It is switched on in buffers that eglot
;;   manages with refact-lsp (`refact-lsp-inline-auto-enable').
;;
;; eglot runs one server per buffer: in the major modes given to refact-lsp,
;; refact-lsp replaces the language server eglot would otherwise start.

;;; Code:

(require 'cl-lib)
(require 'eglot)
(require 'jsonrpc)

(defgroup refact-lsp nil
  "AI code completion from refact-lsp through eglot."
  :group 'eglot
  :prefix "refact-lsp-")

(defcustom refact-lsp-command '("refact-lsp")
  "Command that starts the server: program and arguments (stdio)."
  :type '(repeat string))

(defcustom refact-lsp-initialization-options nil
  "Server settings sent as initializationOptions, as a plist.
Names as in the server's settings, e.g.
  (:model \"smallcloudai/Refact-1_6B-fim\" :device \"cuda\"
   :temperature 0.2 :maxNewTokens 50 :multiline \"auto\").
Use :json-false for false.  nil: the server's defaults."
  :type 'plist)

(defcustom refact-lsp-major-modes
  '(python-mode python-ts-mode
    (js-mode :language-id "javascript")
    (js-ts-mode :language-id "javascript")
    (typescript-ts-mode :language-id "typescript")
    (tsx-ts-mode :language-id "typescriptreact")
    c-mode c-ts-mode
    (c++-mode :language-id "cpp") (c++-ts-mode :language-id "cpp")
    go-mode go-ts-mode rust-mode rust-ts-mode java-mode java-ts-mode
    ruby-mode ruby-ts-mode
    (sh-mode :language-id "shellscript")
    (bash-ts-mode :language-id "shellscript")
    lua-mode php-mode
    prog-mode)
  "Major modes (`eglot-server-programs' syntax) served by refact-lsp.
Modes derived from one in the list are included.  The languageId sent is the
one of the first matching entry, so keep `prog-mode' last, as the catch-all:
a buffer it serves is sent with the languageId of its own major mode
\(`css-mode' gives \"css\", see `refact-lsp--language-id').  Call
`refact-lsp-register' after changing it."
  :type '(repeat sexp))

(defcustom refact-lsp-inline-auto-enable t
  "Non-nil: turn on `refact-lsp-inline-mode' in buffers served by refact-lsp."
  :type 'boolean)

(defvar refact-lsp-inline--timer nil
  "The idle timer shared by every buffer.")

(defvar refact-lsp-inline--timer-delay nil
  "The idle time `refact-lsp-inline--timer' was made with.")

(defun refact-lsp-inline--set-idle-delay (symbol value)
  "Set SYMBOL to VALUE and re-create the idle timer with it.
The :set of `refact-lsp-inline-idle-delay', used by `customize' and `setopt'."
  (set-default symbol value)
  (when refact-lsp-inline--timer
    (refact-lsp-inline--ensure-timer)))

(defcustom refact-lsp-inline-idle-delay 0.15
  "Seconds of idle time after an edit before asking for a suggestion.
A new value takes effect at once when set with `customize' or `setopt',
and after the next command in a buffer with `refact-lsp-inline-mode'
when set with `setq'."
  :type 'number
  :set #'refact-lsp-inline--set-idle-delay)

(defun refact-lsp-inline-completion-ui-active-p ()
  "Non-nil while company or `completion-preview-mode' shows completions at point.
Both show the server's suggestion too (it is their candidate, through
eglot's textDocument/completion) and take TAB, so ghost text would show
it a second time."
  (or (bound-and-true-p company-candidates)
      (bound-and-true-p completion-preview-active-mode)))

(defun refact-lsp-inline-evil-not-inserting-p ()
  "Non-nil in an evil state other than insert, replace or emacs (normal, visual).
There, moving point would ask for suggestions and show them, and TAB is
evil's (`evil-jump-forward'), never an accept."
  (and (bound-and-true-p evil-local-mode)
       (not (memq (bound-and-true-p evil-state) '(insert replace emacs)))))

(defcustom refact-lsp-inline-inhibit-predicates
  '(refact-lsp-inline-completion-ui-active-p
    refact-lsp-inline-evil-not-inserting-p)
  "Functions of no argument, called in the buffer: while one returns non-nil,
no suggestion is asked for or shown there, and one shown goes."
  :type '(repeat function))

(defface refact-lsp-ghost-face '((t :inherit shadow))
  "Face of the suggestion shown at point.")

;;;; The server

(defclass refact-lsp-server (eglot-lsp-server) ()
  :documentation "refact-lsp, as eglot sees it.")

(cl-defmethod eglot-initialization-options ((_server refact-lsp-server))
  "`refact-lsp-initialization-options', read when the server starts."
  (or refact-lsp-initialization-options (make-hash-table :size 0)))

(defun refact-lsp--contact (&rest _)
  "The eglot contact for refact-lsp, from `refact-lsp-command' at start."
  (cons 'refact-lsp-server refact-lsp-command))

(defun refact-lsp--eglot-entry-p (entry)
  "Non-nil if ENTRY of `eglot-server-programs' is the one this package added."
  (eq (cdr-safe entry) #'refact-lsp--contact))

(defconst refact-lsp--language-ids
  '((js-json-mode . "json") (js-jsx-mode . "javascriptreact")
    (cperl-mode . "perl") (objc-mode . "objective-c")
    (opascal-mode . "pascal") (delphi-mode . "pascal") (go-mod-ts-mode . "go.mod")
    (makefile-gmake-mode . "makefile") (makefile-bsdmake-mode . "makefile")
    (makefile-automake-mode . "makefile") (makefile-makepp-mode . "makefile")
    (makefile-imake-mode . "makefile"))
  "LSP languageIds of major modes served through `prog-mode' whose names do not
give it (`js-json-mode' is JSON, not \"js-json\").")

(defun refact-lsp--language-id (language-id-function &rest args)
  "Around `eglot--languageId': a buffer's own language where it is served
through the catch-all `prog-mode' entry, not \"prog\".  The languageId of
its major mode instead (`css-mode' gives \"css\", `emacs-lisp-mode'
\"emacs-lisp\", `js-json-mode' \"json\": see `refact-lsp--language-ids'), as
eglot derives it for a listed mode: the server's
`languages' setting and its idea of a word (names with \"-\" in CSS and
Lisp) depend on it.  LANGUAGE-ID-FUNCTION is the advised function, ARGS its
arguments."
  (let ((id (apply language-id-function args)))
    (if (and (equal id "prog")
             (cl-typep (or (car args) (eglot-current-server)) 'refact-lsp-server))
        (or (get major-mode 'eglot-language-id)
            (alist-get major-mode refact-lsp--language-ids)
            (replace-regexp-in-string "\\(?:-ts\\)?-mode\\'" ""
                                      (symbol-name major-mode)))
      id)))

(when (fboundp 'eglot--languageId)
  (advice-add 'eglot--languageId :around #'refact-lsp--language-id))

;;;###autoload
(defun refact-lsp-register ()
  "Put refact-lsp first in `eglot-server-programs' for `refact-lsp-major-modes'.
Call it again after changing `refact-lsp-major-modes'."
  (interactive)
  (setq eglot-server-programs
        (cons (cons refact-lsp-major-modes #'refact-lsp--contact)
              (cl-remove-if #'refact-lsp--eglot-entry-p
                            eglot-server-programs))))

(defun refact-lsp--server ()
  "The refact-lsp server of the current buffer, or nil.
Nil in a buffer eglot does not manage (`*scratch*', say), even where a
server runs for its project and mode: eglot has not opened it there."
  (let ((server (and (bound-and-true-p eglot--managed-mode)
                     (eglot-current-server))))
    (and (cl-typep server 'refact-lsp-server) server)))

(defun refact-lsp--execute (command &optional arguments)
  "Run the server COMMAND with ARGUMENTS (a vector) and return its result.
An error answer (the model not ready yet, say) is a `user-error' with the
server's message."
  (let ((server (or (refact-lsp--server)
                    (user-error "refact-lsp is not running in this buffer"))))
    (condition-case err
        (jsonrpc-request server :workspace/executeCommand
                         (list :command command :arguments (or arguments [])))
      (jsonrpc-error
       (user-error "refact-lsp: %s"
                   (or (alist-get 'jsonrpc-error-message (cdr err))
                       (error-message-string err)))))))

(defconst refact-lsp--stats-objects '(:stop_reasons :latency_ms)
  "Keys of the refact.stats answer whose values are always JSON objects.
jsonrpc reads an empty object as nil, as it reads null: these are shown
as {} when nil (no request completed yet), not as null.")

(defun refact-lsp--stats-json (stats)
  "STATS (the refact.stats answer, a plist) as JSON text.
The values of `refact-lsp--stats-objects' that jsonrpc read as nil are
empty objects."
  (let ((shown (copy-sequence stats)))
    (dolist (key refact-lsp--stats-objects)
      (when (and (plist-member shown key) (null (plist-get shown key)))
        (setq shown (plist-put shown key (make-hash-table :size 0)))))
    (json-encode shown)))

(defun refact-lsp-stats ()
  "Show refact-lsp's statistics and model state (the refact.stats command)."
  (interactive)
  (let ((stats (refact-lsp--execute "refact.stats")))
    (with-current-buffer (get-buffer-create "*refact-lsp stats*")
      (let ((inhibit-read-only t))
        (erase-buffer)
        (insert (refact-lsp--stats-json stats))
        (json-pretty-print-buffer))
      (special-mode)
      (display-buffer (current-buffer)))
    stats))

(defun refact-lsp-show-prompt ()
  "Show the prompt refact-lsp builds at point (the refact.prompt command).
Where the server completes nothing (it answers null, e.g. in the middle of
a word), say so in the echo area and return nil."
  (interactive)
  (unless (refact-lsp--server)
    (user-error "refact-lsp is not running in this buffer"))
  (eglot--signal-textDocument/didChange)
  (let* ((answer (refact-lsp--execute
                  "refact.prompt" (vector (eglot--TextDocumentPositionParams))))
         (prompt (plist-get answer :prompt)))
    (if (not (stringp prompt))
        (progn (message "refact-lsp: no completion here (mode: none)")
               nil)
      (with-current-buffer (get-buffer-create "*refact-lsp prompt*")
        (let ((inhibit-read-only t))
          (erase-buffer)
          (insert (format "mode: %s, %s tokens\n\n"
                          (plist-get answer :mode) (plist-get answer :tokens)))
          (insert prompt))
        (special-mode)
        (display-buffer (current-buffer)))
      answer)))

;;;; Inline suggestions

(defvar refact-lsp-inline-mode)

(defvar-local refact-lsp-inline--overlays nil
  "Overlays showing the current suggestion.")

(defvar-local refact-lsp-inline--suggestion nil
  "The suggestion shown: plist (:beg :end :text :replaced :offset).
Accepting replaces BEG..END (markers) with TEXT.  REPLACED is the text
from BEG to END and OFFSET the distance from BEG to point when it was
shown: it can be accepted while both still hold, whatever else changed.")

(defvar-local refact-lsp-inline--visible nil
  "Non-nil while a suggestion is shown: `refact-lsp-inline-active-map' is on.")

(defvar-local refact-lsp-inline--seq 0
  "Number of the latest request; answers to older ones are dropped.")

(defvar-local refact-lsp-inline--edited nil
  "Non-nil when a command edited the buffer or moved point since the last request.")

(defvar-local refact-lsp-inline--asked-state nil
  "(TICK . POINT) of the last request, or nil: not asked again on idle.")

(defvar-local refact-lsp-inline--last-state nil
  "(TICK . POINT) after the previous command.")

(defvar-local refact-lsp-inline--command-tick nil
  "`buffer-chars-modified-tick' before the running command, or nil.")

(defun refact-lsp-inline--at-line-end-filter (command)
  "COMMAND, unless text that the suggestion shown leaves stays right of point.
The :filter of C-e in `refact-lsp-inline-active-map': with the suggestion
shown before such text (\"foo(|)\" showing \"a + b\" before the real
\")\"), the end of the line is after that text, and C-e goes there
\(the key's binding without the map, `move-end-of-line').  Characters the
suggestion types again (an auto-closed paren it covers) and blanks are no
such text."
  (let* ((suggestion refact-lsp-inline--suggestion)
         (end (and suggestion (marker-position (plist-get suggestion :end)))))
    (if (and end
             (save-excursion
               (goto-char (max (point) (min end (line-end-position))))
               (skip-chars-forward " \t")
               (not (eolp))))
        nil
      command)))

(defvar refact-lsp-inline-active-map
  (let ((map (make-sparse-keymap)))
    (define-key map (kbd "TAB") #'refact-lsp-inline-accept)
    (define-key map [tab] #'refact-lsp-inline-accept)
    ;; Part of it, as copilot.el users bind it: the motion over the ghost
    ;; text that the key makes over real text.
    (define-key map (kbd "M-f") #'refact-lsp-inline-accept-word)
    ;; C-e only where point is at the end of the line's text (right of it
    ;; only what the suggestion replaces, or blanks): there it moves over
    ;; the ghost text.  Before other text it is `move-end-of-line'.
    (define-key map (kbd "C-e")
                '(menu-item "" refact-lsp-inline-accept-line
                            :filter refact-lsp-inline--at-line-end-filter))
    map)
  "Keys active while a suggestion is shown (above major and minor mode maps).
When the suggestion can no longer be accepted, each runs what it runs
without the suggestion.")

(defconst refact-lsp-inline--accept-commands
  '(refact-lsp-inline-accept refact-lsp-inline-accept-word
    refact-lsp-inline-accept-line)
  "Commands that insert the suggestion shown, or part of it.")

(defvar refact-lsp-inline--emulation-alist
  `((refact-lsp-inline--visible . ,refact-lsp-inline-active-map)))

(add-to-list 'emulation-mode-map-alists 'refact-lsp-inline--emulation-alist)

(defun refact-lsp-inline--range-region (range)
  "RANGE (an LSP Range) as (BEG . END) in the current buffer."
  (if (fboundp 'eglot-range-region)
      (eglot-range-region range)
    (with-no-warnings (eglot--range-region range))))

(defun refact-lsp-inline-dismiss ()
  "Drop the suggestion shown, if any."
  (interactive)
  (mapc #'delete-overlay refact-lsp-inline--overlays)
  (when-let ((suggestion refact-lsp-inline--suggestion))
    (set-marker (plist-get suggestion :beg) nil)
    (set-marker (plist-get suggestion :end) nil))
  (setq refact-lsp-inline--overlays nil
        refact-lsp-inline--suggestion nil
        refact-lsp-inline--visible nil))

(defun refact-lsp-inline--inhibited-p ()
  "Non-nil if one of `refact-lsp-inline-inhibit-predicates' says so."
  (run-hook-with-args-until-success 'refact-lsp-inline-inhibit-predicates))

(defun refact-lsp-inline--inhibit ()
  "Drop the suggestion, for `refact-lsp-inline-inhibit-predicates'.
Ask again on idle once they let it, for the same text and point too."
  (refact-lsp-inline-dismiss)
  (setq refact-lsp-inline--edited t
        refact-lsp-inline--asked-state nil))

(defun refact-lsp-inline--recheck (&rest _)
  "Drop the suggestion shown if `refact-lsp-inline-inhibit-predicates' now
say so: after each command, and on `company-completion-started-hook', as
company begins on a timer, after the suggestion was shown."
  (when (and refact-lsp-inline--visible (refact-lsp-inline--inhibited-p))
    (refact-lsp-inline--inhibit)))

(defun refact-lsp-inline--ghost (text typed covered)
  "The pieces of TEXT to show, a list: the first at point, one more after
each character of COVERED.
TYPED is the text from the item's range start to point, COVERED the text
from point to the range end: characters right of point that the suggestion
types again (an auto-closed paren), which stay where they are, so the
pieces are TEXT cut at those characters, in order.  Only one piece, all of
TEXT after TYPED, when TEXT has several lines or does not type COVERED's
characters in order: the caller then hides COVERED while it is shown.
nil if TEXT does not continue TYPED."
  (when (string-prefix-p typed text)
    (let ((ghost (substring text (length typed)))
          (pieces nil)
          (start 0))
      (if (or (string-empty-p covered) (string-search "\n" ghost))
          (list ghost)
        (catch 'unmatched
          (dolist (char (string-to-list covered))
            (let ((at (string-search (char-to-string char) ghost start)))
              (unless at (throw 'unmatched (list ghost)))
              (push (substring ghost start at) pieces)
              (setq start (1+ at))))
          (nreverse (cons (substring ghost start) pieces)))))))

(defun refact-lsp-inline--show (item)
  "Show ITEM (an InlineCompletionItem) at point."
  (let* ((insert (plist-get item :insertText))
         (text (if (stringp insert) insert (plist-get insert :value)))
         (range (plist-get item :range))
         (region (if range
                     (refact-lsp-inline--range-region range)
                   (cons (point) (point))))
         (beg (car region))
         (end (cdr region)))
    (when (and (stringp text) (not (string-empty-p text))
               (<= beg (point) end)
               (= (line-number-at-pos beg) (line-number-at-pos end)))
      (refact-lsp-inline--display text beg end))))

(defun refact-lsp-inline--display (text beg end)
  "Show TEXT, which replaces BEG..END, at point, if it continues BEG..point.
Point is in BEG..END; that region may span lines after a partial accept."
  (let ((pieces (refact-lsp-inline--ghost
                 text
                 (buffer-substring-no-properties beg (point))
                 (buffer-substring-no-properties (point) end))))
    (when (and pieces (not (string-empty-p (apply #'concat pieces))))
      (refact-lsp-inline-dismiss)
      ;; A piece before each covered character, the last one after them all.
      (let ((at (point)) (overlays nil))
        (dolist (piece pieces)
          (unless (string-empty-p piece)
            (setq piece (propertize piece 'face 'refact-lsp-ghost-face))
            ;; Keep the cursor before the ghost text, where typing goes.
            (when (= at (point)) (put-text-property 0 1 'cursor t piece))
            (let ((overlay (make-overlay at at nil nil t)))
              (overlay-put overlay 'after-string piece)
              (overlay-put overlay 'refact-lsp t)
              (overlay-put overlay 'priority 1000)
              (push overlay overlays)))
          (setq at (1+ at)))
        ;; Shown in one piece (a multi-line suggestion) while it replaces
        ;; characters right of point, e.g. an auto-closed paren that it
        ;; types again: hide them while it is shown, so that the screen
        ;; shows what accepting gives.  `display' rather than `invisible':
        ;; it does not depend on `buffer-invisibility-spec'.
        (when (and (null (cdr pieces)) (< (point) end))
          (let ((hidden (make-overlay (point) end nil t nil)))
            (overlay-put hidden 'display "")
            (overlay-put hidden 'refact-lsp-covered t)
            (push hidden overlays)))
        ;; Markers follow edits elsewhere; text inserted at either end
        ;; goes inside, so that it counts as an edit of the replaced text.
        (setq refact-lsp-inline--overlays overlays
              refact-lsp-inline--suggestion
              (list :beg (copy-marker beg) :end (copy-marker end t)
                    :text text
                    :replaced (buffer-substring-no-properties beg end)
                    :offset (- (point) beg))
              refact-lsp-inline--visible t)))))

(defun refact-lsp-inline--intact-p (suggestion)
  "Non-nil if the text that SUGGESTION would replace is as when shown."
  (let ((beg (marker-position (plist-get suggestion :beg)))
        (end (marker-position (plist-get suggestion :end))))
    (and beg end (<= beg end)
         (equal (buffer-substring-no-properties beg end)
                (plist-get suggestion :replaced)))))

(defun refact-lsp-inline--acceptable-p (suggestion)
  "Non-nil if SUGGESTION can be accepted: its text intact, point where it was."
  (and suggestion
       (refact-lsp-inline--intact-p suggestion)
       (= (point) (+ (plist-get suggestion :beg)
                     (plist-get suggestion :offset)))))

(defun refact-lsp-inline--after-change (&rest _)
  "Drop the suggestion when the text it would replace changes.
On `after-change-functions': catches edits made outside a command (a timer,
a process filter), which `post-command-hook' does not see.  Edits elsewhere
leave it, as the markers follow them.  Accepting drops the suggestion before
inserting, so its own insertion finds nothing to drop."
  (when-let ((suggestion refact-lsp-inline--suggestion))
    (unless (refact-lsp-inline--intact-p suggestion)
      (refact-lsp-inline-dismiss))))

(defun refact-lsp-inline--fallback-command (keys)
  "The command KEYS run when no suggestion is shown, or nil.
Call after `refact-lsp-inline-dismiss', which turns off
`refact-lsp-inline-active-map'.  A function key with no binding of its
own (<tab>) is looked up as it translates (TAB), as the command loop does."
  (let ((command (key-binding keys t)))
    (unless command
      (let ((translated (lookup-key local-function-key-map keys)))
        (when (and (arrayp translated) (not (equal translated keys)))
          (setq command (key-binding translated t)))))
    (and (commandp command)
         (not (memq command refact-lsp-inline--accept-commands))
         command)))

(defun refact-lsp-inline--on-answer (result)
  "Show the first item of RESULT (InlineCompletionList or array of items)."
  (let* ((items (if (vectorp result) result (plist-get result :items)))
         (item (and (vectorp items) (> (length items) 0) (aref items 0))))
    (when item
      (if (refact-lsp-inline--inhibited-p)
          (refact-lsp-inline--inhibit)
        (refact-lsp-inline--show item)))))

(defun refact-lsp-inline-request ()
  "Ask for a suggestion at point.
It is shown when the answer comes, if the buffer and point did not change."
  (interactive)
  (when-let ((server (refact-lsp--server)))
    ;; eglot sends didChange on a timer and never cancels requests: flush
    ;; the edits first so the server completes the text as it is now.
    (eglot--signal-textDocument/didChange)
    (setq refact-lsp-inline--edited nil
          refact-lsp-inline--asked-state
          (cons (buffer-chars-modified-tick) (point)))
    (let ((buffer (current-buffer))
          (seq (cl-incf refact-lsp-inline--seq))
          (tick (buffer-chars-modified-tick))
          (pos (point)))
      (jsonrpc-async-request
       server :textDocument/inlineCompletion
       (append (eglot--TextDocumentPositionParams)
               (list :context
                     (list :triggerKind
                           (if (called-interactively-p 'any) 1 2))))
       :success-fn
       (lambda (result)
         (when (buffer-live-p buffer)
           (with-current-buffer buffer
             ;; Stale answers (a newer request, an edit or a move since)
             ;; are dropped.
             (when (and refact-lsp-inline-mode
                        (= seq refact-lsp-inline--seq)
                        (= tick (buffer-chars-modified-tick))
                        (= pos (point)))
               (refact-lsp-inline--on-answer result)))))
       :error-fn #'ignore
       :timeout-fn #'ignore))))

(defun refact-lsp-inline--next-word (text)
  "The next word of TEXT, as VS Code and Copilot take it: the whitespace
that starts it (line breaks too), then a run of word characters (letters,
digits, \"_\") or else of other characters (punctuation)."
  (save-match-data
    (string-match "\\`[ \t\n\r\f]*\\(?:[[:alnum:]_]+\\|[^[:alnum:]_ \t\n\r\f]+\\)?" text)
    (match-string 0 text)))

(defun refact-lsp-inline--next-line (text)
  "The next line of TEXT: up to its first line break; from a line break,
that break and the line after it."
  (save-match-data
    (string-match "\\`\n?[^\n]*" text)
    (match-string 0 text)))

(defun refact-lsp-inline--consumed (covered piece)
  "How many characters at the start of COVERED PIECE types, in order.
COVERED is the text right of point that the suggestion replaces (an
auto-closed paren), PIECE the part of the suggestion taken."
  (let ((consumed 0) (from 0))
    (while (and (< consumed (length covered))
                (let ((at (string-search
                           (char-to-string (aref covered consumed))
                           piece from)))
                  (when at (setq consumed (1+ consumed) from (1+ at)))))
      nil)
    consumed))

(defun refact-lsp-inline--accept (take interactive)
  "Insert the suggestion shown at point, or part of it.
TAKE: nil for all of it, else a function that gives the part to insert
of the rest of its text (`refact-lsp-inline--next-word',
`refact-lsp-inline--next-line').  The rest stays shown, as if the part
had been typed; the last part is a full accept.
If it can no longer be accepted (point moved, or the text it replaces
changed, outside a command), drop it and, when INTERACTIVE, run the
command the keys that called this one run without it, so that the key is
not lost."
  (let* ((suggestion refact-lsp-inline--suggestion)
         (acceptable (refact-lsp-inline--acceptable-p suggestion))
         (beg (and acceptable (marker-position (plist-get suggestion :beg))))
         (end (and acceptable (marker-position (plist-get suggestion :end))))
         (text (plist-get suggestion :text))
         (rest (and acceptable
                    (substring text (plist-get suggestion :offset))))
         (piece (and rest take (funcall take rest)))
         ;; The characters right of point that the suggestion types again
         ;; (an auto-closed paren), and how many of them PIECE types (in
         ;; order, as the ghost text is cut at them).
         (covered (and piece (buffer-substring-no-properties (point) end)))
         (consumed (if piece (refact-lsp-inline--consumed covered piece) 0))
         (keys (this-command-keys-vector)))
    (refact-lsp-inline-dismiss)
    (cond
     ((and acceptable
           (or (null piece) (string-empty-p piece)
               (>= (length piece) (length rest))
               ;; The last part shown: what is left after it is only the
               ;; characters right of point that it types again, which
               ;; no ghost text shows.  As TAB: point goes after them.
               (equal (substring rest (length piece))
                      (substring covered consumed))))
      (delete-region beg end)
      (goto-char beg)
      (insert text))
     (acceptable
      ;; Part of it, as if typed: the covered characters that this part
      ;; types again are replaced, the others stay, and so does the text
      ;; after them.  One command: one undo step.
      (delete-region (point) (+ (point) consumed))
      (insert piece)
      ;; Point stays before the characters that a multi-line rest hides
      ;; (`display' ""), where typing goes: no adjustment out of them.
      (setq disable-point-adjustment t)
      (refact-lsp-inline--display
       text beg (+ end (- (length piece) consumed))))
     ;; Only for the keys of `refact-lsp-inline-active-map' (not M-x).
     (interactive
      (when-let ((command (and (memq (lookup-key refact-lsp-inline-active-map
                                                 keys)
                                     refact-lsp-inline--accept-commands)
                               (refact-lsp-inline--fallback-command keys))))
        (setq this-command command)
        (call-interactively command nil keys))))))

(defun refact-lsp-inline-accept ()
  "Insert the suggestion shown at point.
If it can no longer be accepted (point moved, or the text it replaces
changed, outside a command), drop it and run the command the keys that
called this one run without it, so that TAB is not lost."
  (interactive)
  (refact-lsp-inline--accept nil (called-interactively-p 'any)))

(defun refact-lsp-inline-accept-word ()
  "Insert the next word of the suggestion shown at point.
The whitespace before it (line breaks too), then a run of word characters
or else of punctuation, as VS Code and copilot.el take a word.  The rest
stays shown, as if the word had been typed; characters right of point
that the suggestion types again (an auto-closed paren) stay until the
word types them.  The last word inserts what `refact-lsp-inline-accept'
does.  When the suggestion can no longer be accepted, drop it and run
what the keys run without it (M-f: `forward-word')."
  (interactive)
  (refact-lsp-inline--accept #'refact-lsp-inline--next-word
                             (called-interactively-p 'any)))

(defun refact-lsp-inline-accept-line ()
  "Insert the rest of the current line of the suggestion shown at point.
At the end of one of its lines, the line break and the next line.
Otherwise as `refact-lsp-inline-accept-word' (C-e: `move-end-of-line').
C-e runs it only where point is at the end of the line's text: see
`refact-lsp-inline--at-line-end-filter'."
  (interactive)
  (refact-lsp-inline--accept #'refact-lsp-inline--next-line
                             (called-interactively-p 'any)))

(defun refact-lsp-inline--pre-command ()
  "Note the buffer's tick before a command.
For `refact-lsp-inline--post-command'."
  (setq refact-lsp-inline--command-tick (buffer-chars-modified-tick)))

(defun refact-lsp-inline--post-command ()
  "Drop the suggestion after a command that edits or moves point.
Edits made between commands (a timer, a process) are not the command's:
`refact-lsp-inline--after-change' judges those.  Note edits and moves of
point for the idle timer, and follow a new idle delay."
  (refact-lsp-inline--ensure-timer)
  (let ((tick (buffer-chars-modified-tick))
        (command-tick refact-lsp-inline--command-tick))
    (setq refact-lsp-inline--command-tick nil)
    (refact-lsp-inline--recheck)
    (when (and refact-lsp-inline--visible
               (or (eq this-command 'keyboard-quit)
                   (and (not (memq this-command
                                   refact-lsp-inline--accept-commands))
                        (or (and command-tick (/= tick command-tick))
                            (not (refact-lsp-inline--acceptable-p
                                  refact-lsp-inline--suggestion))))))
      (refact-lsp-inline-dismiss))
    (let ((state (cons tick (point))))
      (unless (equal state refact-lsp-inline--last-state)
        ;; An edit or a move of point (C-e to the end of a line): ask on idle.
        (when refact-lsp-inline--last-state
          (setq refact-lsp-inline--edited t))
        (setq refact-lsp-inline--last-state state)))))

(defun refact-lsp-inline--ensure-timer ()
  "Make the shared idle timer, or make it again after a new idle delay.
The delay is the default value of `refact-lsp-inline-idle-delay'."
  (let ((delay (default-value 'refact-lsp-inline-idle-delay)))
    ;; A value that is not a number keeps the running timer: an error here
    ;; would take `refact-lsp-inline--post-command' off `post-command-hook'.
    (when (or (null refact-lsp-inline--timer)
              (and (numberp delay)
                   (not (equal delay refact-lsp-inline--timer-delay))))
      (when refact-lsp-inline--timer
        (cancel-timer refact-lsp-inline--timer))
      (setq refact-lsp-inline--timer
            (run-with-idle-timer delay t #'refact-lsp-inline--on-idle)
            refact-lsp-inline--timer-delay delay))))

(defun refact-lsp-inline--on-idle ()
  "Idle timer: ask for a suggestion after an edit or a move of point.
Not again for the text and point of the last request, nor while a
suggestion is shown or `refact-lsp-inline-inhibit-predicates' say no."
  (when (and refact-lsp-inline-mode refact-lsp-inline--edited
             (not (equal (cons (buffer-chars-modified-tick) (point))
                         refact-lsp-inline--asked-state))
             (not refact-lsp-inline--visible)
             (not buffer-read-only) (not (minibufferp))
             (not (refact-lsp-inline--inhibited-p)))
    (refact-lsp-inline-request)))

;;;###autoload
(define-minor-mode refact-lsp-inline-mode
  "Show refact-lsp's suggestion at point while typing; TAB accepts it.
Needs a buffer managed by eglot with refact-lsp."
  :lighter " Refact"
  (if refact-lsp-inline-mode
      (progn
        (setq refact-lsp-inline--last-state
              (cons (buffer-chars-modified-tick) (point)))
        (add-hook 'pre-command-hook #'refact-lsp-inline--pre-command nil t)
        (add-hook 'post-command-hook #'refact-lsp-inline--post-command nil t)
        (add-hook 'after-change-functions #'refact-lsp-inline--after-change
                  nil t)
        (add-hook 'company-completion-started-hook #'refact-lsp-inline--recheck
                  nil t)
        (refact-lsp-inline--ensure-timer))
    (remove-hook 'pre-command-hook #'refact-lsp-inline--pre-command t)
    (remove-hook 'post-command-hook #'refact-lsp-inline--post-command t)
    (remove-hook 'after-change-functions #'refact-lsp-inline--after-change t)
    (remove-hook 'company-completion-started-hook #'refact-lsp-inline--recheck t)
    (refact-lsp-inline-dismiss)))

(defun refact-lsp-inline--maybe-enable ()
  "On `eglot-managed-mode-hook': follow eglot in buffers served by refact-lsp."
  (cond ((and (bound-and-true-p eglot--managed-mode)
              refact-lsp-inline-auto-enable
              (refact-lsp--server))
         (refact-lsp-inline-mode 1))
        (refact-lsp-inline-mode
         (refact-lsp-inline-mode -1))))

(add-hook 'eglot-managed-mode-hook #'refact-lsp-inline--maybe-enable)

(refact-lsp-register)

(provide 'refact-lsp)
;;; refact-lsp.el ends here
