"""Register ``gpt_refact`` with transformers' Auto classes, so remote code is never needed."""

from __future__ import annotations

import sys

_registered = False


def _mid_import(module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    return mod is not None and not hasattr(mod, name)


def register() -> None:
    """Idempotent: ``AutoConfig`` and ``AutoModelForCausalLM`` resolve ``gpt_refact`` to our classes.

    ``refact_lsp`` calls this as soon as transformers is imported, which can happen while config.py or
    model.py is itself being imported; then this returns and those modules call it when they are complete.
    """
    global _registered
    if _registered:
        return
    if _mid_import("refact_lsp.engine.config", "GPTRefactConfig") or _mid_import(
        "refact_lsp.engine.model", "GPTRefactForCausalLM"
    ):
        return
    _registered = True
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from refact_lsp.engine.config import GPTRefactConfig
    from refact_lsp.engine.model import GPTRefactForCausalLM

    if "gpt_refact" not in CONFIG_MAPPING:
        AutoConfig.register("gpt_refact", GPTRefactConfig)
    AutoModelForCausalLM.register(GPTRefactConfig, GPTRefactForCausalLM, exist_ok=True)
