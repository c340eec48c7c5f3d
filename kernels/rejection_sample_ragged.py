"""Triton kernel of the ragged verifier: flattened drafts, probabilities or logits, fused.

The algorithm and the random stream are those of ``specdecode/reference/rejection_sample_ragged.py``
(the padded verifier's chain on each request's own rows). One program verifies one request: it
finds its rows from the running totals (clamped, so unchecked values never read outside the
tensors), walks its drafts, stops at the first rejection, then streams the one target row (and
draft row) it samples from. From logits, a row's softmax statistics (max and 1 / sum, one
online pass) are computed where the row is needed and probabilities are recomputed tile by tile:
``[N, V]`` probabilities are never written.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._aot import AotCase
from .rejection_sample import _nan_safe_argmax, _uniform, default_block_v

NUM_WARPS = 8
# Tiles of 2048 lanes whatever the dtype: 8 per thread at 8 warps, so 16-bit rows still load 16
# bytes per thread, and a float32 target beside a bf16 draft (or two bf16 rows, whose 4096-lane
# tiles spilled on sm_80) keeps its registers.
_TILE_ELEMENT_BYTES = 4


@triton.jit
def _softmax_stats(row_ptr, V, temperature, IS_LOGITS: tl.constexpr, BLOCK_V: tl.constexpr):
    """(max, 1 / sum) of softmax(row / T) in one online pass, NaN ignored; (0, 1) for probabilities."""
    row_max = -float("inf")
    row_sum = 0.0
    if IS_LOGITS:
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            x = tl.load(row_ptr + offs, mask=offs < V, other=-float("inf")).to(tl.float32) / temperature
            x = tl.where(x == x, x, -float("inf"))
            new_max = tl.maximum(row_max, tl.max(x, 0))
            shift = tl.where(new_max == -float("inf"), 0.0, new_max)  # an all -inf prefix: no NaN
            row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(x - shift), 0)
            row_max = new_max
        return row_max, 1.0 / row_sum
    else:
        return tl.full([], 0.0, tl.float32), tl.full([], 1.0, tl.float32)


@triton.jit
def _probs(row_ptr, offs, limit, temperature, row_max, inv_sum, IS_LOGITS: tl.constexpr):
    """Probabilities of one tile (0 at offs >= limit): as stored, or softmax from the statistics."""
    if IS_LOGITS:
        x = tl.load(row_ptr + offs, mask=offs < limit, other=-float("inf")).to(tl.float32) / temperature
        return tl.where(offs < limit, tl.exp(x - row_max) * inv_sum, 0.0)
    else:
        return tl.load(row_ptr + offs, mask=offs < limit, other=0.0).to(tl.float32)


@triton.jit
def _prob_at(row_ptr, index, temperature, row_max, inv_sum, IS_LOGITS: tl.constexpr):
    value = tl.load(row_ptr + index).to(tl.float32)
    if IS_LOGITS:
        value = tl.exp(value / temperature - row_max) * inv_sum
    return value


@triton.jit
def _weights(
    q_row,
    q_max,
    q_inv_sum,
    p_row,
    p_max,
    p_inv_sum,
    one_hot_id,
    offs,
    q_limit,
    p_limit,
    temperature,
    HAS_DRAFT: tl.constexpr,
    DRAFT_IS_LOGITS: tl.constexpr,
    TARGET_IS_LOGITS: tl.constexpr,
):
    """max(0, q - p - [v == one_hot_id]) on one tile, NaN -> 0; p is read for offs < p_limit only."""
    diff = _probs(q_row, offs, q_limit, temperature, q_max, q_inv_sum, TARGET_IS_LOGITS)
    if HAS_DRAFT:
        diff = diff - _probs(p_row, offs, p_limit, temperature, p_max, p_inv_sum, DRAFT_IS_LOGITS)
    diff = diff - tl.where(offs == one_hot_id, 1.0, 0.0)
    return tl.where(diff > 0, diff, 0.0)


@triton.jit
def _sample_inverse_cdf(
    q_row,
    q_max,
    q_inv_sum,
    p_row,
    p_max,
    p_inv_sum,
    one_hot_id,
    p_limit,
    u,
    V,
    temperature,
    HAS_DRAFT: tl.constexpr,
    DRAFT_IS_LOGITS: tl.constexpr,
    TARGET_IS_LOGITS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Smallest v with w_v > 0 and cumsum(w)_v > u * sum(w); -1 if sum(w) is not positive
    (the padded kernel's scan, on probabilities computed tile by tile)."""
    total = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        w = _weights(
            q_row,
            q_max,
            q_inv_sum,
            p_row,
            p_max,
            p_inv_sum,
            one_hot_id,
            offs,
            V,
            p_limit,
            temperature,
            HAS_DRAFT,
            DRAFT_IS_LOGITS,
            TARGET_IS_LOGITS,
        )
        total += tl.sum(w, 0)
    threshold = u * total
    running = 0.0
    found = -1
    last_positive = -1
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        limit = tl.where(found < 0, V, 0)  # once found, the remaining tiles read nothing
        w = _weights(
            q_row,
            q_max,
            q_inv_sum,
            p_row,
            p_max,
            p_inv_sum,
            one_hot_id,
            offs,
            limit,
            tl.minimum(limit, p_limit),
            temperature,
            HAS_DRAFT,
            DRAFT_IS_LOGITS,
            TARGET_IS_LOGITS,
        )
        # A parallel scan can give a zero weight a slightly larger prefix than its predecessor,
        # so a hit also needs w > 0: a token with no residual mass is never emitted.
        hit = (running + tl.cumsum(w, 0) > threshold) & (w > 0)
        first_hit = tl.min(tl.where(hit, offs, V), 0)
        found = tl.where((found < 0) & (first_hit < V), first_hit, found)
        last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0, offs, -1), 0))
        running += tl.sum(w, 0)
    sample = tl.where(found >= 0, found, last_positive)
    return tl.where(total > 0, sample, -1)


@triton.jit
def _rejection_sample_ragged_kernel(
    draft_ids_ptr,  # [N] int32/int64
    cu_ptr,  # [B] int32/int64 inclusive running totals
    draft_ptr,  # [N, V] probabilities or logits (unit stride in V); any pointer when not HAS_DRAFT
    target_ptr,  # [N, V] or [N + B, V] (unit stride in V)
    bonus_ptr,  # [B] int32/int64; any pointer when not HAS_BONUS_IDS
    greedy_ptr,  # [B] bool
    temperature_ptr,  # [B] float32; any pointer when not HAS_TEMPERATURE
    seeds_ptr,  # [1] or [B] int64
    offsets_ptr,  # [1] or [B] int64
    token_ids_ptr,  # [B, max_K + 1] int32/int64 out
    num_accepted_ptr,  # [B] int32/int64 out
    N,
    V,
    max_K,
    draft_stride,
    target_stride,
    SEED_PER_ROW: tl.constexpr,
    OFFSET_PER_ROW: tl.constexpr,
    HAS_DRAFT: tl.constexpr,
    DRAFT_IS_LOGITS: tl.constexpr,
    TARGET_IS_LOGITS: tl.constexpr,
    HAS_TEMPERATURE: tl.constexpr,
    HAS_BONUS_IDS: tl.constexpr,
    INTERLEAVED: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 once rows * V > 2**31
    # The request's drafts [start, start + K), clamped: unchecked running totals stay in bounds.
    end = tl.minimum(tl.maximum(tl.load(cu_ptr + b).to(tl.int64), 0), N)
    previous = tl.load(cu_ptr + b - 1, mask=b > 0, other=0).to(tl.int64)
    start = tl.minimum(tl.maximum(previous, 0), end)
    num_drafts = tl.minimum(end - start, max_K)
    first_target_row = start + b * INTERLEAVED
    seed = tl.load(seeds_ptr + b * SEED_PER_ROW)
    offset = tl.load(offsets_ptr + b * OFFSET_PER_ROW)
    stream_row = b * (1 - SEED_PER_ROW)  # per-request seeds: the request's place does not matter
    is_greedy = tl.load(greedy_ptr + b) != 0
    temperature = 1.0
    if HAS_TEMPERATURE:
        temperature = tl.load(temperature_ptr + b)
        is_greedy = is_greedy | ~(temperature > 0)  # T = 0 (or NaN): greedy, never a division by it
        temperature = tl.where(temperature > 0, temperature, 1.0)

    num_accepted = 0
    still_accepting = True
    for i in range(0, max_K):
        in_request = i < num_drafts
        draft = tl.load(draft_ids_ptr + start + i, mask=in_request, other=-1).to(tl.int64)
        accept = still_accepting & in_request & (draft >= 0) & (draft < V)  # placeholders are rejected
        q_row = target_ptr + (first_target_row + i) * target_stride
        if accept:  # rows after the first rejection are never read
            if is_greedy:
                accept = draft == _nan_safe_argmax(q_row, V, BLOCK_V)
            else:
                q_max, q_inv_sum = _softmax_stats(q_row, V, temperature, TARGET_IS_LOGITS, BLOCK_V)
                q_x = _prob_at(q_row, draft, temperature, q_max, q_inv_sum, TARGET_IS_LOGITS)
                p_x = 1.0
                if HAS_DRAFT:
                    p_row = draft_ptr + (start + i) * draft_stride
                    p_max, p_inv_sum = _softmax_stats(p_row, V, temperature, DRAFT_IS_LOGITS, BLOCK_V)
                    p_x = _prob_at(p_row, draft, temperature, p_max, p_inv_sum, DRAFT_IS_LOGITS)
                # Strict '<', division-free: a token with q(x) = 0 is never accepted, even at u = 0.
                accept = _uniform(seed, i, stream_row, offset) * p_x < q_x
        still_accepting = accept
        num_accepted += accept.to(tl.int32)

    j = num_accepted.to(tl.int64)
    use_bonus_id = (j == num_drafts) & (HAS_BONUS_IDS != 0)
    emitted = tl.full([], 0, tl.int64)
    if use_bonus_id:  # the caller's bonus token; no bonus row exists to read
        bonus = tl.load(bonus_ptr + b).to(tl.int64)
        emitted = tl.where((bonus >= 0) & (bonus < V), bonus, 0)
    else:
        q_j = target_ptr + (first_target_row + j) * target_stride
        if is_greedy:
            emitted = _nan_safe_argmax(q_j, V, BLOCK_V).to(tl.int64)
        else:
            draft_j = tl.load(draft_ids_ptr + start + j, mask=j < num_drafts, other=-1).to(tl.int64)
            has_draft = (draft_j >= 0) & (draft_j < V)
            one_hot_id = -1
            if not HAS_DRAFT:
                one_hot_id = tl.where(has_draft, draft_j, -1)
            # Read only when has_draft; clamped so the pointer stays inside the tensor.
            p_j = draft_ptr + tl.minimum(start + j, tl.maximum(N - 1, 0)) * draft_stride
            p_limit = tl.where(has_draft, V, 0)
            q_max, q_inv_sum = _softmax_stats(q_j, V, temperature, TARGET_IS_LOGITS, BLOCK_V)
            p_max = tl.full([], 0.0, tl.float32)
            p_inv_sum = tl.full([], 1.0, tl.float32)
            if HAS_DRAFT:
                if has_draft:
                    p_max, p_inv_sum = _softmax_stats(p_j, V, temperature, DRAFT_IS_LOGITS, BLOCK_V)
            u = _uniform(seed, num_drafts, stream_row, offset)
            emitted = _sample_inverse_cdf(
                q_j,
                q_max,
                q_inv_sum,
                p_j,
                p_max,
                p_inv_sum,
                one_hot_id,
                p_limit,
                u,
                V,
                temperature,
                HAS_DRAFT,
                DRAFT_IS_LOGITS,
                TARGET_IS_LOGITS,
                BLOCK_V,
            ).to(tl.int64)
            if (emitted < 0) & has_draft:  # zero residual mass (q == p): sample the target row
                emitted = _sample_inverse_cdf(
                    q_j,
                    q_max,
                    q_inv_sum,
                    p_j,
                    p_max,
                    p_inv_sum,
                    -1,
                    0,
                    u,
                    V,
                    temperature,
                    HAS_DRAFT,
                    DRAFT_IS_LOGITS,
                    TARGET_IS_LOGITS,
                    BLOCK_V,
                ).to(tl.int64)
            emitted = tl.maximum(emitted, 0)  # no positive mass at all (NaN/zero row): stay in [0, V)

    positions = tl.arange(0, BLOCK_K)
    drafts = tl.load(draft_ids_ptr + start + positions, mask=positions < num_drafts, other=-1).to(tl.int64)
    tokens = tl.where(positions < j, drafts, tl.where(positions == j, emitted, -1))
    tl.store(token_ids_ptr + b * (max_K + 1) + positions, tokens, mask=positions < max_K + 1)
    tl.store(num_accepted_ptr + b, j)


def rejection_sample_ragged(
    draft_token_ids: torch.Tensor,
    cu_num_draft_tokens: torch.Tensor,
    draft: torch.Tensor | None,
    target: torch.Tensor,
    bonus_token_ids: torch.Tensor | None,
    greedy: torch.Tensor,
    temperature: torch.Tensor | None,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    max_num_draft_tokens: int,
    draft_is_logits: bool,
    target_is_logits: bool,
    out_dtype: torch.dtype,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the ragged verifier. Arguments as ``torch.ops.specdecode.rejection_sample_ragged``
    (already checked by the caller: shapes, dtypes, unit stride in V; values may be anything).

    Returns ``(token_ids [B, max_K + 1], num_accepted [B])`` in ``out_dtype``."""
    batch_size, num_tokens = cu_num_draft_tokens.shape[0], draft_token_ids.shape[0]
    vocab_size = target.shape[1]
    device = target.device
    token_ids = torch.empty((batch_size, max_num_draft_tokens + 1), dtype=out_dtype, device=device)
    num_accepted = torch.empty((batch_size,), dtype=out_dtype, device=device)
    if batch_size == 0:
        return token_ids, num_accepted
    has_draft = draft is not None
    has_temperature = temperature is not None
    _rejection_sample_ragged_kernel[(batch_size,)](
        draft_token_ids,
        cu_num_draft_tokens,
        draft if has_draft else target,
        target,
        bonus_token_ids if bonus_token_ids is not None else cu_num_draft_tokens,
        greedy,
        temperature if has_temperature else seeds,
        seeds,
        offsets,
        token_ids,
        num_accepted,
        num_tokens,
        vocab_size,
        max_num_draft_tokens,
        draft.stride(0) if has_draft else 0,
        target.stride(0),
        SEED_PER_ROW=int(seeds.numel() != 1),
        OFFSET_PER_ROW=int(offsets.numel() != 1),
        HAS_DRAFT=has_draft,
        DRAFT_IS_LOGITS=bool(draft_is_logits and has_draft),
        TARGET_IS_LOGITS=bool(target_is_logits),
        HAS_TEMPERATURE=has_temperature,
        HAS_BONUS_IDS=int(bonus_token_ids is not None),
        INTERLEAVED=int(target.shape[0] == num_tokens + batch_size),
        BLOCK_V=block_v or default_block_v(vocab_size, _TILE_ELEMENT_BYTES),
        BLOCK_K=triton.next_power_of_2(max_num_draft_tokens + 1),
        num_warps=NUM_WARPS,
    )
    return token_ids, num_accepted


_FLOAT_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}

# (name, target dtype, target is logits, draft dtype or None, draft is logits, bonus ids given)
_AOT_CONFIGS = [
    ("vllm-v1", torch.float32, True, torch.float32, False, True),  # draft probs, target logits, bonus ids
    ("mrv2", torch.float32, True, torch.bfloat16, True, False),  # bf16 draft logits, fp32 target, bonus rows
    ("ngram", torch.float32, True, None, False, True),  # one-hot drafts
    ("probs-bf16", torch.bfloat16, False, torch.bfloat16, False, False),
]


def aot_cases() -> list[AotCase]:
    """The launches at vLLM-typical sizes: Llama-2/3 and Qwen vocabularies, max_K = 4."""
    cases = []
    for vocab_size in (32000, 128256, 151936):
        for name, target_dtype, target_logits, draft_dtype, draft_logits, bonus_ids in _AOT_CONFIGS:
            target_type = _FLOAT_TYPES[target_dtype]
            signature = {
                "draft_ids_ptr": "*i32",
                "cu_ptr": "*i32",
                "draft_ptr": _FLOAT_TYPES[draft_dtype] if draft_dtype else target_type,
                "target_ptr": target_type,
                "bonus_ptr": "*i32",
                "greedy_ptr": "*i1",
                "temperature_ptr": "*fp32",
                "seeds_ptr": "*i64",
                "offsets_ptr": "*i64",
                "token_ids_ptr": "*i32",
                "num_accepted_ptr": "*i32",
                "N": "i32",
                "V": "i32",
                "max_K": "i32",
                "draft_stride": "i64",
                "target_stride": "i64",
                **{flag: "constexpr" for flag in _CONSTEXPRS},
            }
            constexprs = {
                "SEED_PER_ROW": 1,
                "OFFSET_PER_ROW": 1,
                "HAS_DRAFT": draft_dtype is not None,
                "DRAFT_IS_LOGITS": draft_logits,
                "TARGET_IS_LOGITS": target_logits,
                "HAS_TEMPERATURE": target_logits or draft_logits,
                "HAS_BONUS_IDS": int(bonus_ids),
                "INTERLEAVED": int(not bonus_ids),
                "BLOCK_V": default_block_v(vocab_size, _TILE_ELEMENT_BYTES, interpreting=False),
                "BLOCK_K": 8,
            }
            cases.append(
                AotCase(
                    f"rejection_sample_ragged[V={vocab_size},{name}]",
                    _rejection_sample_ragged_kernel,
                    signature,
                    constexprs,
                    NUM_WARPS,
                    divisible_by_16=("draft_ptr", "target_ptr", "V", "draft_stride", "target_stride"),
                )
            )
    return cases


_CONSTEXPRS = (
    "SEED_PER_ROW",
    "OFFSET_PER_ROW",
    "HAS_DRAFT",
    "DRAFT_IS_LOGITS",
    "TARGET_IS_LOGITS",
    "HAS_TEMPERATURE",
    "HAS_BONUS_IDS",
    "INTERLEAVED",
    "BLOCK_V",
    "BLOCK_K",
)
