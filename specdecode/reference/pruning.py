"""Pure-PyTorch reference of the Speculative Rejection ops (SPEC.md §2–3): the spec in code.

Both kernels of each op (C++ in ``csrc/topk_prune.cpp`` / ``csrc/compact_kv.cpp``, Triton in
``kernels/topk_prune.py`` / ``kernels/compact_kv.py``) must equal these functions exactly.

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

**Compaction.** For ascending, distinct ``kept_indices`` (length ``N'``), row ``kept_indices[i]``
along ``batch_dim`` moves to row ``i``; rows ``[N', B)`` are left as they were. The result is the
tensor narrowed to its first ``N'`` rows; those rows equal ``index_select`` of the original.
"""
from __future__ import annotations

import functools
from decimal import Decimal
from fractions import Fraction
from numbers import Real
from typing import Sequence

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


def topk_prune_mask(rewards: torch.Tensor, group_sizes: Sequence[int] | torch.Tensor,
                    num_keep: Sequence[int] | torch.Tensor) -> torch.Tensor:
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
        best = rank_order(rewards[start:start + size].cpu())[:keep]
        mask[start + best] = True
        start += size
    return mask.to(rewards.device)


# A run reuses a few rates, and parsing the decimal costs microseconds. typed: the float 0.1 and
# the Fraction equal to it are equal keys, but not the same alpha here (1/10 vs its binary value).
@functools.lru_cache(maxsize=64, typed=True)
def exact_fraction(alpha: Real) -> Fraction:
    """α as an exact rational: a float (Python's, or a numpy float16/32/64) by the shortest decimal
    that prints for it, so 0.7 is 7/10 -- also for ``numpy.float32(0.7)``, whose binary value is
    0.699999988..."""
    if isinstance(alpha, (int, Fraction, Decimal)):
        return Fraction(alpha)  # already exact
    return Fraction(str(alpha))  # str of a float is its shortest round-trip decimal


def num_keep_from_alpha(group_sizes: Sequence[int], alpha: Real) -> list[int]:
    """``max(1, ⌈(1−α)·n⌉)`` per non-empty group, 0 for an empty one, in exact arithmetic."""
    keep_fraction = 1 - exact_fraction(alpha)
    numerator, denominator = keep_fraction.numerator, keep_fraction.denominator
    # ceil(numerator * n / denominator) in integers: exact, and fast for thousands of groups.
    return [max(1, -((-numerator * int(n)) // denominator)) if n > 0 else 0 for n in group_sizes]


def compact(tensor: torch.Tensor, kept_indices: torch.Tensor, batch_dim: int) -> torch.Tensor:
    """Out-of-place reference: the rows the compacted tensor's first ``N'`` rows must hold."""
    return tensor.index_select(batch_dim, kept_indices.to(tensor.device))
