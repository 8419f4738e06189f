"""refact-lsp: AI code completion from Refact-1.6B-fim, served over LSP from the editor's own process.

Importing this package is cheap (no torch, no transformers): the language server must answer
``initialize`` at once. The ``gpt_refact`` model classes are registered with transformers' Auto
classes as soon as transformers is imported, whether that happened before or after this import,
so ``AutoModelForCausalLM.from_pretrained(folder)`` works after ``import refact_lsp``.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

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
