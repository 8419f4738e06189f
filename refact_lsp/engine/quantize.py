"""CPU int8: PyTorch's dynamic quantization of every ``nn.Linear`` (weights int8 per output channel,
activations stay float32 and are quantized on the fly per call).

The embedding and the norms stay float32. ``torch.ao.quantization`` is deprecated in favour of torchao, but
still ships with torch and needs no extra dependency; its warnings are silenced here.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantize_int8(model: nn.Module) -> nn.Module:
    """Quantize ``model``'s Linear layers in place (float32 CPU model in, the same object out)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    first = next(model.parameters())
    if first.device.type != "cpu" or first.dtype != torch.float32:
        raise ValueError(f"int8 quantization needs a float32 CPU model, not {first.dtype} on {first.device}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model
