"""Optional compiled extension (csrc/): loaded if built, never required. See csrc/README in docs/kernels.md."""
from __future__ import annotations

import torch


def has(op: str) -> bool:
    return False
