"""Pure-PyTorch reference of in-place KV-cache compaction: the spec in code.

Both kernels (C++ in ``csrc/compact_kv.cpp``, Triton in ``kernels/compact_kv.py``) must equal it
exactly. For ascending, distinct ``kept_indices`` (length ``N'``), row ``kept_indices[i]`` along
``batch_dim`` moves to row ``i``; rows ``[N', B)`` are left as they were. The result is the tensor
narrowed to its first ``N'`` rows; those rows equal ``index_select`` of the original. The rules
are stated in ``docs/ops.md``.
"""

from __future__ import annotations

import torch


def compact_kv(tensor: torch.Tensor, kept_indices: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """Out-of-place reference: the rows the compacted tensor's first ``N'`` rows must hold."""
    return tensor.index_select(batch_dim, kept_indices.to(tensor.device))
