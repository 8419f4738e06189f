"""Reading greedy picks back from the device without stalling it: each pick is copied into pinned host
memory behind the work queued on the device, and the host waits for that copy alone, while the steps
queued after it go on."""

from __future__ import annotations

import torch

from refact_lsp.engine.cuda_graph import picked_token


class PickReadback:
    """Two host buffers taking turns: pick ``n`` (a :func:`~refact_lsp.engine.cuda_graph.greedy_pick`
    output) goes to buffer ``n % 2``, so the copy of pick ``n + 1`` may be queued before pick ``n`` is
    read. On CUDA the buffers are pinned and each copy records an event; elsewhere copies are immediate."""

    def __init__(self, device: torch.device):
        cuda = device.type == "cuda"
        self._host = [torch.empty(2, dtype=torch.float32, pin_memory=cuda) for _ in range(2)]
        self._done = [torch.cuda.Event() for _ in range(2)] if cuda else None

    def start(self, n: int, picked: torch.Tensor) -> None:
        """Queue the copy of pick ``n`` (``[2]`` float32 on the device) behind the device's queued work."""
        self._host[n % 2].copy_(picked, non_blocking=self._done is not None)
        if self._done is not None:
            self._done[n % 2].record()

    def take(self, n: int) -> int:
        """Pick ``n``'s token, once its copy is done. ``ValueError`` when its logit is NaN (no token), as
        :func:`~refact_lsp.engine.generate.sample_next` raises."""
        if self._done is not None:
            self._done[n % 2].synchronize()
        return picked_token(*self._host[n % 2].tolist())
