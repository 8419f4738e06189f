"""Test-wide setup: without a GPU, Triton kernels run in Triton's CPU interpreter (read when the kernels
are defined, so before any test module imports them)."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
