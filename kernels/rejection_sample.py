"""Triton kernel for lossless speculative sampling: acceptance + residual/bonus sampling, fused.

The algorithm and the random stream are those of ``specdecode/reference/rejection_sample.py``. One
program verifies one row: it gathers ``q`` and ``p`` at the K draft tokens (a full pass over
``q_i`` only for greedy rows, to find ``argmax q_i``), stops at the first rejection, then streams
the single target row (and draft row) it samples from. ``max(0, q - p)`` is never materialised.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import is_interpreting
from ._aot import AotCase

# 2**-24: uniforms are the top 24 bits of a Philox word, exact in float32.
_UNIFORM_SCALE = tl.constexpr(1.0 / 16777216.0)


@triton.jit
def _uniform(seed, slot, stream_row, offset):
    """Philox4x32-10 on the counter (slot, stream_row, offset_lo, offset_hi); float32 in [0, 1)."""
    slot = tl.to_tensor(slot)  # a plain int under the interpreter
    word, _, _, _ = tl.philox(
        seed, slot.to(tl.uint32), stream_row.to(tl.uint32), offset.to(tl.uint32), (offset >> 32).to(tl.uint32)
    )
    return (word >> 8).to(tl.float32) * _UNIFORM_SCALE


@triton.jit
def _nan_safe_argmax(row_ptr, V, BLOCK_V: tl.constexpr):
    """First index of the maximum of row_ptr[0:V], NaN ignored; 0 if there is no number."""
    best = -float("inf")
    best_id = 0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        values = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float32)
        values = tl.where(values == values, values, -float("inf"))
        tile_max, tile_arg = tl.max(values, 0, return_indices=True, return_indices_tie_break_left=True)
        # Strict '>' keeps the earlier tile on ties: the first maximum wins, as in torch.argmax.
        better = tile_max > best
        best = tl.where(better, tile_max, best)
        best_id = tl.where(better, start + tile_arg, best_id)
    return best_id


@triton.jit
def _weights(q_row, p_row, one_hot_id, offs, q_limit, p_limit, HAS_DRAFT_PROBS: tl.constexpr):
    """max(0, q - p) on one tile, NaN -> 0. Entries at offs >= q_limit read as 0; p is dense for
    offs < p_limit (p_limit = 0: no draft row), or one-hot at one_hot_id.

    Limits are integer bounds rather than a scalar flag and-ed into the mask: cheaper, and the
    interpreter rejects masks broadcast from a scalar."""
    diff = tl.load(q_row + offs, mask=offs < q_limit, other=0.0).to(tl.float32)
    if HAS_DRAFT_PROBS:
        diff = diff - tl.load(p_row + offs, mask=offs < p_limit, other=0.0).to(tl.float32)
    diff = diff - tl.where(offs == one_hot_id, 1.0, 0.0)
    return tl.where(diff > 0, diff, 0.0)


@triton.jit
def _sample_inverse_cdf(q_row, p_row, one_hot_id, p_limit, u, V, HAS_DRAFT_PROBS: tl.constexpr, BLOCK_V: tl.constexpr):
    """Smallest v with w_v > 0 and cumsum(w)_v > u * sum(w); -1 if sum(w) is not positive."""
    total = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        total += tl.sum(_weights(q_row, p_row, one_hot_id, offs, V, p_limit, HAS_DRAFT_PROBS), 0)
    threshold = u * total
    running = 0.0
    found = -1
    last_positive = -1
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        # Once found, the remaining tiles read nothing (limit 0); the loop stays for the compiler.
        limit = tl.where(found < 0, V, 0)
        w = _weights(q_row, p_row, one_hot_id, offs, limit, tl.minimum(limit, p_limit), HAS_DRAFT_PROBS)
        # A parallel scan can give a zero weight a slightly larger prefix than its predecessor,
        # so a hit also needs w > 0: a token with no residual mass is never emitted.
        hit = (running + tl.cumsum(w, 0) > threshold) & (w > 0)
        first_hit = tl.min(tl.where(hit, offs, V), 0)
        found = tl.where((found < 0) & (first_hit < V), first_hit, found)
        last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0, offs, -1), 0))
        running += tl.sum(w, 0)
    # Rounding can leave the threshold above every prefix: fall back to the last positive weight.
    sample = tl.where(found >= 0, found, last_positive)
    return tl.where(total > 0, sample, -1)


@triton.jit
def _rejection_sample_kernel(
    draft_ids_ptr,  # [B, K] int64, contiguous
    draft_probs_ptr,  # [B, K, V] (unit stride in V), or any pointer when not HAS_DRAFT_PROBS
    target_probs_ptr,  # [B, K+1, V] (unit stride in V)
    greedy_ptr,  # [B] bool
    seeds_ptr,  # [1] or [B] int64
    offsets_ptr,  # [1] or [B] int64
    token_ids_ptr,  # [B, K+1] int64 out
    num_accepted_ptr,  # [B] int64 out
    K,
    V,
    draft_stride_b,
    draft_stride_k,
    target_stride_b,
    target_stride_k,
    SEED_PER_ROW: tl.constexpr,
    OFFSET_PER_ROW: tl.constexpr,
    HAS_DRAFT_PROBS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    # int64 row: row * stride overflows int32 once B*(K+1)*V > 2**31.
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(seeds_ptr + row * SEED_PER_ROW)
    offset = tl.load(offsets_ptr + row * OFFSET_PER_ROW)
    # One seed for the batch: the row index separates the rows' streams. Per-row seeds: it must
    # not, so a request draws the same numbers whatever batch it lands in.
    stream_row = row * (1 - SEED_PER_ROW)
    is_greedy = tl.load(greedy_ptr + row) != 0
    target_row0 = target_probs_ptr + row * target_stride_b
    draft_row0 = draft_probs_ptr + row * draft_stride_b
    draft_ids_row = draft_ids_ptr + row * K

    num_accepted = 0
    still_accepting = True
    for i in range(0, K):
        draft = tl.load(draft_ids_row + i)
        accept = still_accepting & (draft >= 0) & (draft < V)  # placeholders are rejected
        if is_greedy:
            if accept:  # the argmax pass is skipped once the row has stopped
                accept = draft == _nan_safe_argmax(target_row0 + i * target_stride_k, V, BLOCK_V)
        else:
            safe_draft = tl.where(accept, draft, 0)
            q_x = tl.load(target_row0 + i * target_stride_k + safe_draft).to(tl.float32)
            p_x = 1.0
            if HAS_DRAFT_PROBS:
                p_x = tl.load(draft_row0 + i * draft_stride_k + safe_draft).to(tl.float32)
            # Strict '<', division-free: a token with q(x) = 0 is never accepted, even at u = 0.
            accept = accept & (_uniform(seed, i, stream_row, offset) * p_x < q_x)
        still_accepting = accept
        num_accepted += accept.to(tl.int32)

    q_j = target_row0 + num_accepted * target_stride_k
    if is_greedy:
        emitted = _nan_safe_argmax(q_j, V, BLOCK_V).to(tl.int64)
    else:
        draft_j = tl.load(draft_ids_row + num_accepted, mask=num_accepted < K, other=-1)
        has_draft = (draft_j >= 0) & (draft_j < V)
        one_hot_id = -1
        if not HAS_DRAFT_PROBS:
            one_hot_id = tl.where(has_draft, draft_j, -1)
        # Only read when has_draft; clamped so the pointer stays inside the tensor when K = 0.
        p_j = draft_row0 + tl.maximum(tl.minimum(num_accepted, K - 1), 0) * draft_stride_k
        u = _uniform(seed, K, stream_row, offset)
        p_limit = tl.where(has_draft, V, 0)
        emitted = _sample_inverse_cdf(q_j, p_j, one_hot_id, p_limit, u, V, HAS_DRAFT_PROBS, BLOCK_V).to(tl.int64)
        if (emitted < 0) & has_draft:  # zero residual mass (q == p): sample the target row
            emitted = _sample_inverse_cdf(q_j, p_j, -1, 0, u, V, HAS_DRAFT_PROBS, BLOCK_V).to(tl.int64)
        emitted = tl.maximum(emitted, 0)  # no positive mass at all (NaN/zero row): stay in [0, V)

    positions = tl.arange(0, BLOCK_K)
    drafts = tl.load(draft_ids_row + positions, mask=positions < K, other=-1)
    tokens = tl.where(positions < num_accepted, drafts, tl.where(positions == num_accepted, emitted, -1))
    tl.store(token_ids_ptr + row * (K + 1) + positions, tokens, mask=positions < K + 1)
    tl.store(num_accepted_ptr + row, num_accepted.to(tl.int64))


def default_block_v(vocab_size: int, element_size: int = 4, interpreting: bool | None = None) -> int:
    """Tile width over the vocabulary: 8 KiB of probabilities per tile (2048 fp32 or 4096
    bf16/fp16 lanes), so every thread of 8 warps loads 16 contiguous bytes per row even on
    64-wide AMD wavefronts, with no spills on sm_80/sm_90/gfx942 (4 warps spilled on sm_80).
    The interpreter pays per tile, so it takes the whole row."""
    interpreting = is_interpreting() if interpreting is None else interpreting
    cap = 65536 if interpreting else 8192 // element_size
    return min(triton.next_power_of_2(vocab_size), cap)


NUM_WARPS = 8


def rejection_sample(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the verifier. Arguments as ``torch.ops.specdecode.rejection_sample`` (already
    checked by the caller): ``draft_token_ids [B, K]`` int64 contiguous, probabilities with unit
    stride in V, ``greedy [B]`` bool, ``seeds``/``offsets`` int64 ``[1]`` or ``[B]``.

    Returns ``(token_ids [B, K+1] int64, num_accepted [B] int64)``."""
    batch_size, num_drafts = draft_token_ids.shape
    vocab_size = target_probs.shape[-1]
    device = target_probs.device
    token_ids = torch.empty((batch_size, num_drafts + 1), dtype=torch.int64, device=device)
    num_accepted = torch.empty((batch_size,), dtype=torch.int64, device=device)
    if batch_size == 0:
        return token_ids, num_accepted
    has_draft_probs = draft_probs is not None
    draft = draft_probs if has_draft_probs else target_probs
    _rejection_sample_kernel[(batch_size,)](
        draft_token_ids,
        draft,
        target_probs,
        greedy,
        seeds,
        offsets,
        token_ids,
        num_accepted,
        num_drafts,
        vocab_size,
        draft.stride(0) if has_draft_probs else 0,
        draft.stride(1) if has_draft_probs else 0,
        target_probs.stride(0),
        target_probs.stride(1),
        SEED_PER_ROW=int(seeds.numel() != 1),
        OFFSET_PER_ROW=int(offsets.numel() != 1),
        HAS_DRAFT_PROBS=has_draft_probs,
        BLOCK_V=block_v or default_block_v(vocab_size, target_probs.element_size()),
        BLOCK_K=triton.next_power_of_2(num_drafts + 1),
        num_warps=NUM_WARPS,
    )
    return token_ids, num_accepted


_PROB_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}


def aot_cases() -> list[AotCase]:
    """The launches the verifier makes at realistic sizes (K = 4 and 8; Llama-2/3 and Qwen vocabularies)."""
    cases = []
    for vocab_size in (32000, 128256, 151936):
        for dtype, has_draft_probs in ((torch.float32, True), (torch.bfloat16, True), (torch.float32, False)):
            prob = _PROB_TYPES[dtype]
            signature = {
                "draft_ids_ptr": "*i64",
                "draft_probs_ptr": prob,
                "target_probs_ptr": prob,
                "greedy_ptr": "*i1",
                "seeds_ptr": "*i64",
                "offsets_ptr": "*i64",
                "token_ids_ptr": "*i64",
                "num_accepted_ptr": "*i64",
                "K": "i32",
                "V": "i32",
                "draft_stride_b": "i64",
                "draft_stride_k": "i32",
                "target_stride_b": "i64",
                "target_stride_k": "i32",
                "SEED_PER_ROW": "constexpr",
                "OFFSET_PER_ROW": "constexpr",
                "HAS_DRAFT_PROBS": "constexpr",
                "BLOCK_V": "constexpr",
                "BLOCK_K": "constexpr",
            }
            constexprs = {
                "SEED_PER_ROW": 1,
                "OFFSET_PER_ROW": 1,
                "HAS_DRAFT_PROBS": has_draft_probs,
                "BLOCK_V": default_block_v(vocab_size, dtype.itemsize, interpreting=False),
                "BLOCK_K": 8,
            }
            name = f"rejection_sample[V={vocab_size},{str(dtype)[6:]},{'dense' if has_draft_probs else 'one-hot'}]"
            cases.append(
                AotCase(
                    name,
                    _rejection_sample_kernel,
                    signature,
                    constexprs,
                    NUM_WARPS,
                    divisible_by_16=(
                        "draft_probs_ptr",
                        "target_probs_ptr",
                        "V",
                        "draft_stride_b",
                        "draft_stride_k",
                        "target_stride_b",
                        "target_stride_k",
                    ),
                )
            )
    return cases
