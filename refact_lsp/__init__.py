"""refact-lsp: AI code completion from Refact-1.6B-fim, served over LSP from the editor's own process.

Importing this package is cheap (no torch, no transformers): the language server must answer
``initialize`` at once. The ``gpt_refact`` model classes are registered with transformers' Auto
classes as soon as transformers is imported, whether that happened before or after this import,
so ``AutoModelForCausalLM.from_pretrained(folder)`` works after ``import refact_lsp``.
"""

from __future__ import annotations

import os
import sys

# ``python -m refact_lsp`` puts the working directory first on sys.path, and editors start a language server
# in the user's project: a random.py or inspect.py there would be imported instead of the standard
# library's, here already (importlib.abc imports tempfile, and with it random). While ``-m`` locates this
# package, argv[0] is "-m"; the package's own modules are found through its __path__ from now on.
# (PYTHONSAFEPATH=1 or ``python -P`` do the same for all of Python.)
if (
    sys.argv[:1] == ["-m"]
    and sys.path
    and os.path.realpath(sys.path[0] or ".") == os.path.realpath(os.getcwd())
):
    del sys.path[0]

import importlib.abc  # noqa: E402 - after the working directory left sys.path
import importlib.util  # noqa: E402

__version__ = "0.1.0"


def register_model() -> None:
    """Register ``gpt_refact`` with transformers' Auto classes (idempotent)."""
    from refact_lsp.engine.registration import register

    register()


class _RegisterAfterTransformersImport(importlib.abc.MetaPathFinder):
    """Runs :func:`register_model` right after ``transformers`` finishes importing.

    Python has no post-import hook; this finder wraps the real loader of ``transformers`` once
    and removes itself. It is the only import-time trick in the project.
    """

    def find_spec(self, fullname, path, target=None):  # noqa: D401 - importlib protocol
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original_exec = loader.exec_module

        def exec_module(module):
            original_exec(module)
            register_model()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "transformers" in sys.modules:
    register_model()
elif not any(isinstance(f, _RegisterAfterTransformersImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformersImport())
