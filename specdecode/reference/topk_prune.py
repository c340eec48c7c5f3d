"""Pure-PyTorch reference of per-prompt top-k pruning: the spec in code (rules in ``docs/ops.md``).

Both kernels (C++ in ``csrc/topk_prune.cpp``, Triton in ``kernels/topk_prune.py``) must equal it
exactly. The keep counts of a rejection rate are ``specdecode.core.num_keep_from_alpha``.

**Top-k pruning.** ``N`` candidates are split into ``P`` contiguous groups (one per prompt) of
sizes ``group_sizes``. Group ``g`` keeps its ``num_keep[g]`` best candidates by reward, ranked by
this strict total order ("a beats b"):

1. a number beats NaN (NaN ranks below every number, ``-inf`` included);
2. between two numbers the larger wins; ``-0.0`` and ``+0.0`` are equal;
3. otherwise (equal values, or both NaN) the lower index wins.

Rewards are compared in float32 (fp16/bf16 widen exactly). The result is a ``[N]`` bool mask;
``kept_indices = mask.nonzero()`` is then ascending, so survivors keep their order and groups
stay contiguous, and group ``g`` keeps exactly ``num_keep[g]`` rows.

**Keep counts from a rejection rate α.** ``num_keep[g] = max(1, ⌈(1−α)·n_g⌉)`` for a non-empty
group and 0 for an empty one, computed *exactly*: α is taken as the decimal number Python prints
for it (``str``), so ``α = 0.7`` means 7/10 and ``(1−0.7)·10`` is 3, not the float
``3.0000000000000004`` (which a float ``ceil`` would turn into 4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rank_order(rewards: torch.Tensor) -> torch.Tensor:
    """Indices of ``rewards`` (1-D) from best to worst in the order defined above."""
    values = rewards.float()
    is_nan = torch.isnan(values)
    # Stable sorts: first by value (NaN parked at -inf, ties in index order), then numbers before
    # NaNs -- so a real -inf still beats a NaN, and each tie class stays in index order.
    by_value = torch.sort(torch.where(is_nan, float("-inf"), values), descending=True, stable=True).indices
    by_nan = torch.sort(is_nan[by_value].to(torch.uint8), stable=True).indices
    return by_value[by_nan]


def topk_prune(
    rewards: torch.Tensor, group_sizes: Sequence[int] | torch.Tensor, num_keep: Sequence[int] | torch.Tensor
) -> torch.Tensor:
    """``[N]`` bool: True for the ``num_keep[g]`` best candidates of every group ``g``."""
    sizes = [int(n) for n in group_sizes]
    keeps = [int(k) for k in num_keep]
    if len(sizes) != len(keeps):
        raise ValueError("group_sizes and num_keep differ in length")
    if sum(sizes) != rewards.numel():
        raise ValueError("group_sizes do not sum to the number of rewards")
    mask = torch.zeros(rewards.numel(), dtype=torch.bool)
    start = 0
    for size, keep in zip(sizes, keeps):
        if not 0 <= keep <= size:
            raise ValueError(f"num_keep {keep} is outside [0, {size}]")
        best = rank_order(rewards[start : start + size].cpu())[:keep]
        mask[start + best] = True
        start += size
    return mask.to(rewards.device)
