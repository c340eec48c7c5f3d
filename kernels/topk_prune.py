"""Triton kernel for batched per-prompt top-k reward pruning (``topk_prune``).

The ranking is ``specdecode/reference/topk_prune.py``: per group the ``num_keep`` best rewards,
NaN below every number, ties to the lower index. One program prunes one group, by radix
selection instead of a sort, so a group of any size streams through fixed-size tiles:

1. Map each reward to an unsigned 32-bit key whose integer order is the reward order (the same
   key as ``csrc/topk_prune.cpp``): NaN -> 0, ``-0.0`` -> ``+0.0``, negatives bit-inverted,
   positives offset by 2^31. Keys are held in int64 so no unsigned arithmetic is needed.
2. Find ``T``, the k-th largest key, bit by bit from the top: ``T`` is the largest value with
   ``count(key >= T) >= k`` (32 counting passes over the group).
3. Keep every key ``> T``, plus the first ``k - count(key > T)`` keys equal to ``T`` in index
   order (a running prefix count over tiles): the lower index wins ties.

Out-of-range inputs (``num_keep`` outside ``[0, n_g]``, group sizes negative, larger than N or
not summing to N, even sums that wrap int64) cannot make the kernel read or write outside its
tensors: sizes are clamped to ``[0, N]`` before the starts are summed, ``k`` is clamped, and
every access is masked by N.
The public wrapper rejects such inputs before launching.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import is_interpreting
from ._aot import AotCase


@triton.jit
def _reward_keys(rewards_ptr, offs, valid):
    """Order-preserving int64 keys in [0, 2^32) of the rewards at offs (0 where not valid)."""
    x = tl.load(rewards_ptr + offs, mask=valid, other=0.0).to(tl.float32)
    x = tl.where(x == 0.0, 0.0, x)  # -0.0 ties with +0.0
    bits = x.to(tl.int32, bitcast=True)
    unsigned = bits.to(tl.int64) & 0xFFFFFFFF
    key = tl.where(bits < 0, 0xFFFFFFFF - unsigned, unsigned + 0x80000000)
    key = tl.where(x != x, 0, key)  # NaN: below -inf (whose key is 0x007FFFFF)
    return tl.where(valid, key, 0)


@triton.jit
def _topk_prune_kernel(
    rewards_ptr, group_starts_ptr, group_sizes_ptr, num_keep_ptr, keep_mask_ptr, N, BLOCK: tl.constexpr
):
    group = tl.program_id(0)
    start = tl.load(group_starts_ptr + group)
    size = tl.load(group_sizes_ptr + group)
    size = tl.maximum(tl.minimum(size, N - start), 0)  # never past N, even for bad group_sizes
    keep = tl.maximum(tl.minimum(tl.load(num_keep_ptr + group), size), 0)
    lanes = tl.arange(0, BLOCK)

    # Step 2: the largest T with count(key >= T) >= keep. keep = 0 gives T = 2^32 - 1 and keeps
    # nothing below (no key reaches it: +inf maps to 0xFF800000, NaN to 0).
    threshold = tl.zeros((), dtype=tl.int64)
    step = tl.full((), 0x80000000, tl.int64)
    for _ in range(32):
        candidate = threshold + step
        count = tl.zeros((), dtype=tl.int64)
        for tile in range(0, size, BLOCK):
            offs = tile + lanes
            valid = offs < size
            keys = _reward_keys(rewards_ptr, start + offs, valid)
            count += tl.sum(((keys >= candidate) & valid).to(tl.int64), axis=0)
        threshold = tl.where(count >= keep, candidate, threshold)
        step = step >> 1

    above = tl.zeros((), dtype=tl.int64)
    for tile in range(0, size, BLOCK):
        offs = tile + lanes
        valid = offs < size
        keys = _reward_keys(rewards_ptr, start + offs, valid)
        above += tl.sum(((keys > threshold) & valid).to(tl.int64), axis=0)
    ties_to_keep = keep - above

    # Step 3: ties at T go to the lowest indices: an exclusive prefix count carried across tiles.
    ties_before = tl.zeros((), dtype=tl.int64)
    for tile in range(0, size, BLOCK):
        offs = tile + lanes
        valid = offs < size
        keys = _reward_keys(rewards_ptr, start + offs, valid)
        is_tie = ((keys == threshold) & valid).to(tl.int64)
        tie_rank = ties_before + tl.cumsum(is_tie, axis=0) - is_tie
        kept = (keys > threshold) | ((is_tie != 0) & (tie_rank < ties_to_keep))
        tl.store(keep_mask_ptr + start + offs, kept.to(tl.int8), mask=valid)
        ties_before += tl.sum(is_tie, axis=0)


NUM_WARPS = 4


def default_block(interpreting: bool | None = None) -> int:
    """Tile width over a group. 1024 lanes at 4 warps hold a group of up to 1024 candidates in
    one tile on GPU; the interpreter pays per tile, so it takes bigger ones."""
    interpreting = is_interpreting() if interpreting is None else interpreting
    return 4096 if interpreting else 1024


def topk_prune(
    rewards: torch.Tensor, group_sizes: torch.Tensor, num_keep: torch.Tensor, block: int | None = None
) -> torch.Tensor:
    """Launch the pruner. Arguments as ``torch.ops.specdecode.topk_prune`` (already checked
    by the caller): ``rewards [N]`` float32/float16/bfloat16, ``group_sizes [P]`` and
    ``num_keep [P]`` int64 on the same device. Returns the ``[N]`` bool keep mask. No host sync:
    group starts are an on-device cumulative sum."""
    rewards = rewards.contiguous()
    group_sizes = group_sizes.contiguous()
    num_keep = num_keep.contiguous()
    keep_mask = torch.zeros(rewards.shape, dtype=torch.bool, device=rewards.device)
    num_groups = group_sizes.numel()
    if num_groups == 0 or rewards.numel() == 0:
        return keep_mask
    # The values are not checked here (that needs a host sync): sizes are clamped to [0, N] first,
    # so the cumulative sum cannot wrap to a negative start, and the kernel clamps each group to
    # [start, N). Bad sizes give an unspecified mask, never an access outside the tensors.
    group_sizes = group_sizes.clamp(0, rewards.numel())
    group_starts = torch.cumsum(group_sizes, 0) - group_sizes
    _topk_prune_kernel[(num_groups,)](
        rewards,
        group_starts,
        group_sizes,
        num_keep,
        keep_mask.view(torch.int8),
        rewards.numel(),
        BLOCK=block or default_block(),
        num_warps=NUM_WARPS,
    )
    return keep_mask


_REWARD_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def aot_cases() -> list[AotCase]:
    """The launches the pruner makes: every reward dtype at the GPU tile width."""
    cases = []
    for dtype, pointer_type in _REWARD_TYPES.items():
        signature = {
            "rewards_ptr": pointer_type,
            "group_starts_ptr": "*i64",
            "group_sizes_ptr": "*i64",
            "num_keep_ptr": "*i64",
            "keep_mask_ptr": "*i8",
            "N": "i32",
            "BLOCK": "constexpr",
        }
        cases.append(
            AotCase(
                f"topk_prune[{str(dtype)[6:]}]",
                _topk_prune_kernel,
                signature,
                {"BLOCK": default_block(interpreting=False)},
                NUM_WARPS,
                divisible_by_16=("rewards_ptr", "group_starts_ptr", "group_sizes_ptr", "num_keep_ptr", "keep_mask_ptr"),
            )
        )
    return cases
