"""``python -m refact_lsp``: same as the ``refact-lsp`` console script."""

from refact_lsp.cli import main

if __name__ == "__main__":
    main()
