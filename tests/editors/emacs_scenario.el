;;; emacs_scenario.el --- drives refact-lsp.el in `emacs --batch' for tests/editors/test_emacs.py -*- lexical-binding: t; -*-

;; Reads its parameters from environment variables (set by the test), runs each step against the real
;; server and prints one JSON object, {"STEP": {...observations...} | {"error": "..."}}, on a line
;; starting with REFACT-RESULTS: the test asserts on it.  Typing goes through `execute-kbd-macro', so
;; keymaps and `post-command-hook' run as they do for a user.

(require 'cl-lib)
(require 'json)
(require 'refact-lsp)

(defvar scenario-results nil "Alist of (STEP . OBSERVATIONS).")
(defconst scenario-timeout 60 "Seconds to wait for anything.")

(defun scenario-env (name)
  (or (getenv name) (error "Environment variable %s not set" name)))

(setq refact-lsp-command (json-parse-string (scenario-env "REFACT_TEST_COMMAND") :array-type 'list)
      refact-lsp-initialization-options
      (json-parse-string (scenario-env "REFACT_TEST_SETTINGS") :object-type 'plist)
      ;; No delay in starting: the test calls the idle function itself.
      refact-lsp-inline-idle-delay 0.01
      eglot-sync-connect scenario-timeout
      eglot-connect-timeout scenario-timeout
      eglot-events-buffer-config '(:size 2000000 :format full))

(defvar scenario-dir (file-name-as-directory (scenario-env "REFACT_TEST_DIR")))

(defun scenario-wait (predicate what)
  "Process server output until PREDICATE returns non-nil; return its value or signal WHAT timed out."
  (let ((deadline (+ (float-time) scenario-timeout)) value)
    (while (and (not (setq value (funcall predicate))) (< (float-time) deadline))
      (accept-process-output nil 0.05))
    (or value (error "Timed out waiting for %s" what))))

(defmacro scenario-step (name &rest body)
  "Run BODY (returning a plist of observations) and record it, or the error, under NAME."
  (declare (indent 1))
  `(push (cons ,name (condition-case err (progn ,@body)
                       (error (list :error (error-message-string err)))))
         scenario-results))

(defun scenario-open (file text &optional mode)
  "Visit FILE in `scenario-dir' holding TEXT in MODE (python-mode), point at the end, managed by eglot."
  (let ((path (expand-file-name file scenario-dir)))
    (with-temp-file path (insert text))
    (find-file path)
    (funcall (or mode #'python-mode))
    (goto-char (point-max))
    (unless (eglot-current-server)
      (apply #'eglot (eglot--guess-contact)))
    (scenario-wait (lambda () (and eglot--managed-mode (refact-lsp--server))) "eglot to manage the buffer")
    (current-buffer)))

(defun scenario-stats ()
  (jsonrpc-request (refact-lsp--server) :workspace/executeCommand '(:command "refact.stats" :arguments [])))

(defun scenario-use-model (model &rest settings)
  "Switch the server's model (and SETTINGS, a plist) with workspace/didChangeConfiguration and wait until
it is loaded."
  (jsonrpc-notify (refact-lsp--server) :workspace/didChangeConfiguration
                  (list :settings (list :refact (append (list :model model) settings))))
  (scenario-wait (lambda ()
                   (let ((stats (scenario-stats)))
                     (and (equal (plist-get stats :model_state) "ready")
                          (equal (plist-get (plist-get stats :model) :source) model))))
                 (format "the server to load %s" model)))

(defun scenario-ghost ()
  "The ghost text shown at point, or nil."
  (let ((overlay (cl-find-if (lambda (o) (overlay-get o 'refact-lsp)) (overlays-in (point-min) (point-max)))))
    (and overlay (list :text (substring-no-properties (overlay-get overlay 'after-string))
                       :pos (overlay-start overlay)))))

(defun scenario-displayed (&optional beg end)
  "The text from BEG to END (default: the line at point) as displayed: with the ghost overlays' strings where
they are, without the characters that overlays hide (`display' \"\" or `invisible')."
  (let ((beg (or beg (line-beginning-position)))
        (end (or end (line-end-position)))
        (parts nil))
    (dotimes (i (1+ (- end beg)))
      (let ((pos (+ beg i)))
        (dolist (overlay (overlays-in pos pos))
          (when (and (overlay-get overlay 'refact-lsp) (= (overlay-start overlay) (overlay-end overlay) pos))
            (push (substring-no-properties (overlay-get overlay 'after-string)) parts)))
        (when (and (< pos end) (not (invisible-p pos)) (not (equal (get-char-property pos 'display) "")))
          (push (buffer-substring-no-properties pos (1+ pos)) parts))))
    (apply #'concat (nreverse parts))))

(defun scenario-overlays ()
  "How many overlays refact-lsp.el put in the buffer (the ghost text and the characters it hides)."
  (cl-count-if (lambda (o) (or (overlay-get o 'refact-lsp) (overlay-get o 'refact-lsp-covered)))
               (overlays-in (point-min) (point-max))))

(defun scenario-last-message ()
  "The last line of *Messages*."
  (with-current-buffer (messages-buffer)
    (save-excursion
      (goto-char (point-max))
      (skip-chars-backward "\n")
      (buffer-substring-no-properties (line-beginning-position) (point)))))

(defun scenario-timer-delay ()
  "The idle time of refact-lsp's shared idle timer."
  (float-time (timer--time refact-lsp-inline--timer)))

(defun scenario-type (keys)
  (execute-kbd-macro (kbd keys)))

(defun scenario-ask ()
  "What the idle timer does after an edit."
  (refact-lsp-inline--on-idle))

(defun scenario-buffer-text ()
  (buffer-substring-no-properties (point-min) (point-max)))

(scenario-step "attach"
  (scenario-open "first.py" "x = 1\n")
  (let* ((server (refact-lsp--server))
         (stats (scenario-wait (lambda ()
                                 (let ((s (scenario-stats)))
                                   (and (equal (plist-get s :model_state) "ready") s)))
                               "the model to load")))
    (list :class (symbol-name (eieio-object-class server))
          :server_name (plist-get (eglot--server-info server) :name)
          :encoding (plist-get (eglot--capabilities server) :positionEncoding)
          :inline_provider (and (plist-member (eglot--capabilities server) :inlineCompletionProvider) t)
          :inline_mode (and refact-lsp-inline-mode t)
          :model_state (plist-get stats :model_state)
          ;; The user commands (they also display a buffer).
          :stats_command_state (plist-get (refact-lsp-stats) :model_state)
          :stats_buffer (with-current-buffer "*refact-lsp stats*"
                          (buffer-substring-no-properties (point-min) (point-max)))
          :prompt_command_mode (plist-get (refact-lsp-show-prompt) :mode))))

(scenario-step "capf"
  (scenario-open "capf.py" "def add(a, b):\n    x = \"h\u00e9llo\" + ")
  (completion-at-point)
  (list :text (scenario-buffer-text) :point_at_end (= (point) (point-max))))

(scenario-step "capf_word"
  (scenario-open "capf_word.py" "def add(a, b):\n    x = \"h\u00e9llo\" + t\u00f6tal")
  (completion-at-point)
  (list :text (scenario-buffer-text) :point_at_end (= (point) (point-max))))

(scenario-step "capf_names_with_dashes"
  ;; served through the catch-all prog-mode entry: sent with the buffer's own languageId ("css",
  ;; "emacs-lisp"), for which the server's item starts at the whole name eglot filters by
  (let ((css (progn (scenario-open "capf_names.css" "a {\n  background-co" #'css-mode)
                    (completion-at-point)
                    (scenario-buffer-text)))
        (elisp (progn (scenario-open "capf_names.el" "(defun f ()\n  (my-fu" #'emacs-lisp-mode)
                      (completion-at-point)
                      (scenario-buffer-text))))
    (list :css css :elisp elisp)))

(scenario-step "language_ids"
  ;; the languageId eglot sends (didOpen) for modes served through the catch-all prog-mode entry whose
  ;; names do not give it, and for one whose name does
  (cl-loop for (file mode) in '(("data.json" js-json-mode) ("GNUmakefile" makefile-gmake-mode)
                                ("script.pl" cperl-mode) ("style.css" css-mode))
           append (progn (scenario-open file "x" mode)
                         (list (intern (format ":%s" mode)) (eglot--languageId)))))

(scenario-step "unmanaged"
  ;; a buffer eglot does not manage, in the project and mode of the running server (*scratch*-like):
  ;; the commands say so, and the inline mode's idle request does nothing
  (with-current-buffer (get-buffer-create "*refact-unmanaged*")
    (setq default-directory scenario-dir)
    (python-mode)
    (insert "def add(a, b):\n    return ")
    (list :server (and (refact-lsp--server) t)
          :show_prompt (condition-case err (progn (refact-lsp-show-prompt) "no error")
                         (error (error-message-string err)))
          :request (condition-case err (progn (refact-lsp-inline-request) "no error")
                     (error (error-message-string err))))))

(scenario-step "inline"
  (scenario-open "inline.py" "def add(a, b):\n    retur")
  (let ((before-key (key-binding (kbd "TAB"))))
    (scenario-type "n SPC")
    (scenario-ask)
    (let* ((ghost (scenario-wait #'scenario-ghost "the ghost text"))
           (point-with-ghost (point))
           (text-with-ghost (scenario-buffer-text))
           (shown-key (key-binding (kbd "TAB"))))
      (scenario-type "TAB")
      (list :ghost ghost :point_with_ghost point-with-ghost
            :text_with_ghost text-with-ghost
            :tab_without_ghost (format "%s" before-key) :tab_with_ghost (format "%s" shown-key)
            :text (scenario-buffer-text)
            :point_at_end (= (point) (point-max))
            :ghost_after (scenario-ghost)))))

(scenario-step "dismiss"
  (scenario-open "dismiss.py" "def add(a, b):\n    return")
  (scenario-type "SPC")
  (scenario-ask)
  (let ((ghost (scenario-wait #'scenario-ghost "the ghost text")))
    (scenario-type "x")
    (list :ghost ghost :ghost_after_typing (scenario-ghost) :text (scenario-buffer-text))))

(scenario-step "stale"
  (scenario-open "stale.py" "def add(a, b):\n    return ")
  ;; The answer to this request arrives after the buffer changed: it must not be shown.
  (refact-lsp-inline-request)
  (insert "z")
  (let ((seq refact-lsp-inline--seq))
    (scenario-wait (lambda () (zerop (jsonrpc-continuation-count (refact-lsp--server)))) "the answer")
    (accept-process-output nil 0.2)
    (let ((stale (scenario-ghost)))
      ;; A request for the current text is shown.
      (refact-lsp-inline-request)
      (list :stale_ghost stale :same_seq (= seq (1- refact-lsp-inline--seq))
            :fresh_ghost (scenario-wait #'scenario-ghost "the ghost text for the current text")))))

(scenario-step "multiline"
  (scenario-use-model (scenario-env "REFACT_TEST_MULTILINE_MODEL"))
  (unwind-protect
      (progn
        (scenario-open "multi.py" "def add(a, b):\n   ")
        (scenario-type "SPC")
        (scenario-ask)
        (let ((ghost (scenario-wait #'scenario-ghost "the multi-line ghost text")))
          (scenario-type "TAB")
          (let ((inline-text (scenario-buffer-text)))
            (scenario-open "multi_capf.py" "def add(a, b):\n    ")
            (completion-at-point)
            (list :ghost ghost :text inline-text :capf_text (scenario-buffer-text)))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

(scenario-step "closer"
  (scenario-use-model (scenario-env "REFACT_TEST_CLOSER_MODEL"))
  (unwind-protect
      (progn
        (scenario-open "closer.py" "def f()")
        (backward-char 1)  ; inside the auto-closed parens
        (scenario-type "y DEL")
        (scenario-ask)
        (scenario-wait #'scenario-ghost "the ghost text")
        (let ((displayed (scenario-displayed)))
          (scenario-type "TAB")
          (list :displayed displayed :text (scenario-buffer-text))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

(scenario-step "multiline_closer"
  ;; multiline "always": inside the auto-closed "()" the suggestion "a,\n    b)" types the ")" again on its
  ;; second line; the real ")" is hidden while the ghost text is shown.
  (scenario-use-model (scenario-env "REFACT_TEST_MULTILINE_CLOSER_MODEL") :multiline "always")
  (unwind-protect
      (progn
        (scenario-open "ml_closer.py" "x = foo()")
        (backward-char 1)
        (scenario-type "y DEL")
        (scenario-ask)
        (scenario-wait #'scenario-ghost "the ghost text")
        (let ((displayed (scenario-displayed (point-min) (point-max))))
          (scenario-type "C-b")  ; a move drops the ghost text: the ")" shows again
          (let ((dismissed (scenario-displayed (point-min) (point-max)))
                (overlays-dismissed (scenario-overlays)))
            (scenario-type "C-f")
            (refact-lsp-inline-request)
            (scenario-wait #'scenario-ghost "the ghost text again")
            (scenario-type "TAB")
            (list :displayed displayed
                  :displayed_dismissed dismissed :overlays_dismissed overlays-dismissed
                  :text (scenario-buffer-text) :displayed_accepted (scenario-displayed (point-min) (point-max))
                  :overlays_accepted (scenario-overlays)))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL") :multiline "auto")))

;; A command that only moves point (no edit) asks on idle too, as after an edit.
(defun scenario-answer ()
  "Wait until the server answered every request; the ghost text shown then, or nil."
  (scenario-wait (lambda () (zerop (jsonrpc-continuation-count (refact-lsp--server)))) "the answer")
  (accept-process-output nil 0.2)
  (scenario-ghost))

(scenario-step "move"
  (scenario-open "move.py" "def add(a, b):\n    return \n")
  (goto-char (point-min))
  (forward-line 1)
  (scenario-type "C-e")  ; to the end of "    return ": a move, no edit
  (scenario-ask)
  (let ((at-end (scenario-answer)) (end (point)) (seq refact-lsp-inline--seq))
    (scenario-ask)  ; nothing changed and the ghost text is shown: no new request
    (let ((seq-shown refact-lsp-inline--seq))
      (scenario-type "C-b")  ; drops the ghost text
      (scenario-ask)
      (scenario-answer)
      (scenario-type "C-f")  ; back to the end of the line
      (scenario-ask)
      (let ((back (scenario-answer)) (seq-back refact-lsp-inline--seq))
        (scenario-type "C-b C-f")  ; away and back to the state just asked for, no idle between
        (scenario-ask)
        (list :ghost_at_end at-end :end end
              :asked_while_shown (if (/= seq seq-shown) t :json-false)
              :ghost_back back
              :asked_same_state_again (if (/= seq-back refact-lsp-inline--seq) t :json-false))))))

(scenario-step "prompt_none"
  ;; Mid-line ("    return a|b"): the server completes nothing and refact.prompt answers null.
  (scenario-open "prompt_none.py" "def add(a, b):\n    return ab\n")
  (goto-char (point-min))
  (search-forward "return a")
  (let ((returned (call-interactively #'refact-lsp-show-prompt)))
    (list :returned returned :message (scenario-last-message))))

(scenario-step "prompt_loading"
  ;; M-x refact-lsp-show-prompt while the model loads (a new `model' setting): the server's reason as a
  ;; user-error, not jsonrpc's raw error data.
  (scenario-open "prompt_loading.py" "def add(a, b):\n    return ")
  (jsonrpc-notify (refact-lsp--server) :workspace/didChangeConfiguration
                  (list :settings (list :refact (list :model (scenario-env "REFACT_TEST_MULTILINE_MODEL")))))
  (unwind-protect
      (condition-case err
          (progn (call-interactively #'refact-lsp-show-prompt) (list :error nil))
        (error (list :signal (symbol-name (car err)) :message (error-message-string err))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

(scenario-step "idle_delay"
  ;; The shared idle timer exists (inline mode is on): a new delay must reach it.
  (scenario-open "idle_delay.py" "x = 1\n")
  (unwind-protect
      (let ((before (scenario-timer-delay)))
        (customize-set-variable 'refact-lsp-inline-idle-delay 0.5)
        (let ((customized (scenario-timer-delay)))
          (setq refact-lsp-inline-idle-delay 0.25)
          (scenario-type "C-a")  ; any command in a buffer with inline mode
          (list :before before :customized customized :after_setq (scenario-timer-delay)
                :timers (cl-count #'refact-lsp-inline--on-idle timer-idle-list :key #'timer--function))))
    (customize-set-variable 'refact-lsp-inline-idle-delay 0.01)))

;; Edits from outside a command: a timer (or a process filter: an async formatter, auto-revert).
(defun scenario-from-timer (function)
  "Call FUNCTION in the current buffer from a timer, outside any command, and wait until it ran."
  (let ((buffer (current-buffer)) (done nil))
    (run-at-time 0 nil (lambda () (with-current-buffer buffer (funcall function)) (setq done t)))
    (scenario-wait (lambda () done) "the timer")))

(defvar scenario-indents 0 "Calls of `indent-for-tab-command' (TAB without the ghost text).")

(defun scenario-count-indent (&rest _)
  (cl-incf scenario-indents))

(defun scenario-ghost-then (file edit &optional keys)
  "Show the ghost text in FILE, call EDIT from a timer, then type KEYS (TAB); the observations."
  (scenario-open file "def add(a, b):\n    return")
  (scenario-type "SPC")
  (scenario-ask)
  (let ((ghost (scenario-wait #'scenario-ghost "the ghost text")))
    (scenario-from-timer edit)
    (let ((after-edit (scenario-ghost))
          (overlays (scenario-overlays))
          (key (format "%s" (key-binding (kbd "TAB")))))
      (setq scenario-indents 0)
      ;; `execute-kbd-macro' runs `post-command-hook' once before the first key, which a TAB typed after a
      ;; timer does not: without it here, TAB meets the suggestion as the timer left it.
      (let ((post-command-hook (remq #'refact-lsp-inline--post-command post-command-hook)))
        (scenario-type (or keys "TAB")))
      (list :ghost ghost :ghost_after_edit after-edit :tab_after_edit key
            :overlays_after_edit overlays
            :indents scenario-indents :text (scenario-buffer-text) :ghost_after (scenario-ghost)))))

(scenario-step "async_edit"
  (advice-add 'indent-for-tab-command :before #'scenario-count-indent)
  (unwind-protect
      (list
       ;; A line inserted above: the ghost text moves with the text and TAB accepts it.
       :elsewhere (scenario-ghost-then "async_elsewhere.py"
                                       (lambda () (save-excursion (goto-char (point-min)) (insert "import os\n"))))
       ;; Text inserted at point, where the suggestion goes: it is dropped at once, TAB indents.
       :at_point (scenario-ghost-then "async_at_point.py" (lambda () (insert "x")))
       ;; Point moved (no text changed): the suggestion cannot be accepted there; <tab> (the key of a
       ;; graphical frame, bound in the ghost text's keymap only) runs what TAB runs without it.
       :moved (scenario-ghost-then "async_moved.py" (lambda () (back-to-indentation)) "<tab>"))
    (advice-remove 'indent-for-tab-command #'scenario-count-indent)))

;; Other completion UIs at point: Emacs 30's `completion-preview-mode' (built in), company (if installed).
;; They show the server's suggestion too (its completion item, the only candidate) and take TAB.
(defun scenario-after-strings ()
  "The after-strings of every overlay at point (the ghost text's and other packages' previews)."
  (mapcar (lambda (o) (substring-no-properties (overlay-get o 'after-string)))
          (cl-remove-if-not (lambda (o) (and (overlay-get o 'after-string) (= (overlay-start o) (point))))
                            (overlays-in (point) (point)))))

(defun scenario-type-tab-at-once ()
  "Type TAB as right after the last command: without the run of `post-command-hook' that
`execute-kbd-macro' makes before the first key, in which company and completion-preview (whose hooks run
after any command) would take down what they show."
  (let ((post-command-hook nil))
    (scenario-type "TAB")))

(scenario-step "completion_preview"
  ;; "tot": completion-preview shows the completion item's rest after the command; the idle request and an
  ;; answer that arrives while it is shown must not add the same text again as ghost text.
  (scenario-open "completion_preview.py" "def add(a, b):\n    total = a\n    return ")
  (completion-preview-mode 1)
  (unwind-protect
      (progn
        (scenario-type "t o t")
        (let ((seq refact-lsp-inline--seq))
          (scenario-ask)
          (let ((asked (/= seq refact-lsp-inline--seq)))
            (refact-lsp-inline-request)  ; an answer that comes while the preview is shown
            (scenario-answer)
            (let ((shown (scenario-after-strings))
                  (ghost (scenario-ghost))
                  (tab (format "%s" (key-binding (kbd "TAB")))))
              (scenario-type-tab-at-once)
              (list :asked_on_idle (if asked t :json-false) :shown (vconcat shown) :ghost ghost
                    :tab tab :text (scenario-buffer-text))))))
    (completion-preview-mode -1)))

(defvar scenario-elpa (getenv "REFACT_TEST_ELPA")
  "A folder of package folders (Debian's elpa-src layout) holding company, evil and goto-chg, or nil.")
(when (and scenario-elpa (file-directory-p scenario-elpa))
  (dolist (dir (directory-files scenario-elpa t "\\`[^.]"))
    (when (file-directory-p dir) (add-to-list 'load-path dir))))

(scenario-step "company"
  ;; company begins on its timer, after the ghost text is shown: one display of the suggestion, TAB company's.
  (if (not (require 'company nil t))
      (list :skipped "company not installed (.ci/install-editors puts it in .tools/elpa)")
    (scenario-open "company.py" "def add(a, b):\n    total = a\n    return ")
    (setq-local company-idle-delay 0.05 company-minimum-prefix-length 3)
    (company-mode 1)
    (unwind-protect
        (progn
          (scenario-type "t o t")
          (scenario-ask)
          (scenario-answer)
          (scenario-wait (lambda () company-candidates) "company to begin")
          (accept-process-output nil 0.3)
          (let ((candidates (vconcat company-candidates))
                (shown (scenario-after-strings))
                (ghost (scenario-ghost))
                (tab (format "%s" (key-binding (kbd "TAB")))))
            (scenario-type-tab-at-once)
            (list :candidates candidates :shown (vconcat shown) :ghost ghost :tab tab
                  :text (scenario-buffer-text))))
      (company-mode -1))))

(scenario-step "evil"
  ;; evil's normal state: moving over a blank line asks nothing and shows nothing (TAB there is
  ;; `evil-jump-forward', never an accept); insert state asks and TAB accepts; back to normal state (ESC
  ;; that leaves point where it is) drops the ghost text.
  (if (not (require 'evil nil t))
      (list :skipped "evil not installed (.ci/install-editors puts it in .tools/elpa)")
    (scenario-use-model (scenario-env "REFACT_TEST_MULTILINE_MODEL"))
    (unwind-protect
        (progn
          (scenario-open "evil.py" "def add(a, b):\n\n    x = 1\n")
          (evil-local-mode 1)
          (setq-local evil-move-cursor-back nil)
          (goto-char (point-min))
          (evil-normal-state)
          (scenario-type "j")
          (let ((seq refact-lsp-inline--seq))
            (scenario-ask)
            (let ((normal (list :state (symbol-name evil-state) :asked (if (/= seq refact-lsp-inline--seq) t :json-false)
                                :ghost (scenario-answer))))
              (scenario-type "i")
              (scenario-ask)
              (let ((insert (list :state (symbol-name evil-state) :ghost (scenario-answer))))
                (scenario-type "<escape>")
                (let ((escaped (list :state (symbol-name evil-state) :ghost (scenario-ghost))))
                  (scenario-type "i")
                  (scenario-ask)
                  (scenario-answer)
                  (scenario-type "TAB")
                  (list :normal normal :insert insert :escaped escaped :text (scenario-buffer-text)))))))
      (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL")))))

;; Accepting part of a suggestion: M-f a word, C-e a line; the rest stays shown as if typed.
(defun scenario-all-ghost ()
  "The strings of every ghost overlay, in buffer order."
  (mapcar (lambda (o) (substring-no-properties (overlay-get o 'after-string)))
          (sort (cl-remove-if-not (lambda (o) (overlay-get o 'refact-lsp)) (overlays-in (point-min) (point-max)))
                (lambda (a b) (< (overlay-start a) (overlay-start b))))))

(defun scenario-observe ()
  "Text, point (from the buffer's start, 0-based), ghost strings and the whole buffer as displayed."
  (list :text (scenario-buffer-text) :point (- (point) (point-min)) :ghost (vconcat (scenario-all-ghost))
        :displayed (scenario-displayed (point-min) (point-max))))

(scenario-step "accept_word"
  (scenario-open "accept_word.py" "def add(a, b):\n    retur")
  (scenario-type "n SPC")
  (scenario-ask)
  (scenario-wait #'scenario-ghost "the ghost text")
  (let ((binding (format "%s" (key-binding (kbd "M-f")))))
    (scenario-type "M-f")
    (let ((first (scenario-observe)))
      (scenario-type "M-f")
      (let ((second (scenario-observe)))
        (scenario-type "TAB")
        (let ((rest (scenario-observe)))
          (scenario-type "C-/ C-/")  ; TAB undone, then the second word: one step each
          (list :binding binding :first first :second second :rest rest :undone (scenario-buffer-text)))))))

(scenario-step "accept_line"
  (scenario-use-model (scenario-env "REFACT_TEST_MULTILINE_MODEL"))
  (unwind-protect
      (progn
        (scenario-open "accept_line.py" "def add(a, b):\n   ")
        (scenario-type "SPC")
        (scenario-ask)
        (scenario-wait #'scenario-ghost "the multi-line ghost text")
        (scenario-type "C-e")
        (let ((first (scenario-observe)))
          (scenario-type "C-e")
          (list :first first :last (scenario-observe))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

(scenario-step "accept_word_closer"
  (scenario-use-model (scenario-env "REFACT_TEST_CLOSER_MODEL"))
  (unwind-protect
      (progn
        (scenario-open "accept_word_closer.py" "def f()")
        (backward-char 1)
        (scenario-type "y DEL")
        (scenario-ask)
        (scenario-wait #'scenario-ghost "the ghost text")
        (scenario-type "M-f")
        (let ((first (scenario-observe)))
          (scenario-type "M-f")
          (list :first first :last (scenario-observe))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

(defun scenario-ghost-in-call (file)
  "Open FILE as \"x = foo()\" with point inside the parens, ask, and wait for the ghost text."
  (scenario-open file "x = foo()")
  (backward-char 1)
  (scenario-type "y DEL")
  (scenario-ask)
  (scenario-wait #'scenario-ghost "the ghost text"))

(scenario-step "accept_multiline_closer"
  ;; "x = foo(|)" + "a,\n    b)": taken by words and lines, the real ")" is kept once until the last part.
  (scenario-use-model (scenario-env "REFACT_TEST_MULTILINE_CLOSER_MODEL") :multiline "always")
  (unwind-protect
      (progn
        (scenario-ghost-in-call "accept_ml_closer.py")
        (scenario-type "M-f")
        (let ((word (scenario-observe)))
          (scenario-type "C-e")
          (let ((line (scenario-observe)))
            (scenario-type "C-e")
            (let ((last (scenario-observe)))
              (scenario-ghost-in-call "accept_ml_closer_words.py")
              (scenario-type "M-f M-f M-f")
              (list :word word :line line :last last :words (scenario-observe))))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL") :multiline "auto")))

;; "x = foo(|)" + "a, b)": the ghost text is "a, b" before the real ")"; its last word is the last part.
(scenario-step "accept_last_word_closer"
  (scenario-use-model (scenario-env "REFACT_TEST_CALL_CLOSER_MODEL"))
  (unwind-protect
      (cl-flet ((start (file) (scenario-ghost-in-call file) (scenario-observe)))
        (let ((shown (start "accept_last_word_closer.py")))
          (scenario-type "M-f M-f")
          (let ((second (scenario-observe)))
            (scenario-type "M-f")
            (let ((last (scenario-observe)))
              (scenario-type "C-/")
              (let ((undone (list :text (scenario-buffer-text) :point (- (point) (point-min)))))
                (start "accept_last_word_closer_tab.py")
                (scenario-type "TAB")
                (list :shown shown :second second :last last :undone undone
                      :tab_point (- (point) (point-min))))))))
    (scenario-use-model (scenario-env "REFACT_TEST_SINGLE_LINE_MODEL"))))

;; "x = foo(|)" + "a + b": the suggestion does not type the real ")" right of point, so the line's end is after
;; it, and C-e goes there.
(scenario-step "accept_line_mid_line"
  (scenario-open "accept_line_mid_line.py" "x = foo()\ny = 2\n")
  (goto-char (point-min))
  (end-of-line)
  (backward-char 1)
  (scenario-type "y DEL")
  (scenario-ask)
  (scenario-wait #'scenario-ghost "the ghost text")
  (let ((shown (scenario-observe))
        (binding (format "%s" (key-binding (kbd "C-e")))))
    (scenario-type "C-e")
    (list :shown shown :binding binding :after (scenario-observe)
          :line_end (- (line-end-position) (point-min)))))

(scenario-step "accept_word_nothing_shown"
  ;; No suggestion: M-f and C-e move as always.  A suggestion shown, then point moved by a timer: the
  ;; keys are refact-lsp's, but they drop it and move as always.
  (scenario-open "accept_nothing.py" "def add(a, b):\n    retur\nfoo bar\n")
  (goto-char (point-min))
  (forward-line 2)
  (let ((start (point)))
    (scenario-type "M-f")
    (let ((after-word (- (point) start)))
      (scenario-type "C-e")
      (let ((after-line (- (point) start)))
        (goto-char (point-min))
        (forward-line 1)
        (scenario-type "C-e n SPC")
        (scenario-ask)
        (scenario-wait #'scenario-ghost "the ghost text")
        (let ((binding (format "%s %s" (key-binding (kbd "M-f")) (key-binding (kbd "C-e")))))
          (goto-char (1- (point)))  ; a timer moving point: the suggestion no longer applies
          (scenario-type "M-f")
          (let ((moved-word (- (point) (line-beginning-position))))
            (list :after_word after-word :after_line after-line :binding binding :moved_word moved-word
                  :ghost (scenario-ghost) :text (scenario-buffer-text))))))))

(let ((coding-system-for-write 'utf-8))
  (princ (concat "REFACT-RESULTS:"
                 (decode-coding-string
                  (json-serialize (mapcar (lambda (r) (cons (intern (car r)) (cdr r))) scenario-results)
                                  :null-object nil :false-object :json-false)
                  'utf-8)
                 "\n")))
(ignore-errors (eglot-shutdown-all))
(kill-emacs 0)
