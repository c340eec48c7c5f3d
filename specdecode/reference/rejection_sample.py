"""Pure-PyTorch reference of lossless speculative sampling (rules: ``docs/ops.md``): the spec in code.

Both kernels (C++ in ``csrc/rejection_sample.cpp``, Triton in ``kernels/rejection_sample.py``)
follow this algorithm and consume the *same* random numbers, so tests compare them to it exactly.

Notation: ``p`` = draft distribution, ``q`` = target distribution.

One row ``b`` of a batch, with drafts ``x_0..x_{K-1}``:

1. Position ``i`` is accepted iff the draft id is in ``[0, V)`` and, for a sampled row,
   ``u_i * p_i(x_i) < q_i(x_i)`` in float32 (strict: ``q = 0`` is never accepted, even at
   ``u = 0``); for a greedy row, ``x_i == argmax q_i``. ``p_i`` is one-hot at ``x_i`` when
   there are no draft probabilities. Acceptance stops at the first rejection.
2. At ``j = num_accepted`` one more token is emitted, from row ``j`` of the target:
   greedy rows emit ``argmax q_j``; sampled rows draw from the weights
   ``w = max(0, q_j - p_j)`` (the residual) when ``j < K`` and ``x_j`` is a real draft, else
   ``w = max(0, q_j)`` (the bonus row ``j = K``, or a placeholder draft, which has no ``p``).
3. Sampling from ``w`` uses one uniform ``u_K`` by inverse CDF: the smallest ``v`` with
   ``w_v > 0`` and ``cumsum(w)_v > u_K * sum(w)``. NaN weights count as 0. If ``sum(w)`` is not
   positive (``q == p`` exactly, or a NaN/zero row), the target row ``max(0, q_j)`` is used
   instead; if that is not positive either, token 0 is emitted. Ids outside ``[0, V)`` are never
   emitted.

``argmax`` is the first index of the maximum, NaN ignored, and 0 for a row with no number.

Randomness: ``u_s`` for slot ``s`` in ``0..K`` (``s < K``: acceptance at position ``s``;
``s = K``: the emitted token) is Philox4x32-10, exactly as Triton's ``tl.philox``, keyed by the
row's 64-bit seed, on the counter ``(s, stream_row, offset_lo, offset_hi)``, first output word
``x`` mapped to ``(x >> 8) * 2**-24`` (a float32 in ``[0, 1)``, exact in every backend).
``stream_row`` is the row index when one seed serves the batch, and 0 with per-row seeds, so a
request with its own seed draws the same numbers whatever batch it lands in.
"""

from __future__ import annotations

import torch

from specdecode.core import RejectionOutput, inverse_cdf_sample, nan_safe_argmax, uniforms


def _positive_part(values: torch.Tensor) -> torch.Tensor:
    """max(0, values) with NaN mapped to 0 (``max`` would propagate NaN)."""
    return torch.where(values > 0, values, torch.zeros_like(values))


def rejection_sample(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
) -> RejectionOutput:
    """Reference verifier; same arguments as ``torch.ops.specdecode.rejection_sample``.

    Args:
        draft_token_ids: ``[B, K]`` int64; ``-1`` (or any id outside ``[0, V)``) = no draft.
        draft_probs: ``[B, K, V]`` float, or ``None`` for one-hot proposers.
        target_probs: ``[B, K+1, V]`` float; row ``K`` is the bonus distribution.
        greedy: ``[B]`` bool.
        seeds, offsets: int64 ``[1]`` or ``[B]`` (see ``uniforms``).
    Returns:
        ``RejectionOutput(token_ids [B, K+1] int64, num_accepted [B] int64)``.
    """
    batch_size, num_drafts = draft_token_ids.shape
    vocab_size = target_probs.shape[-1]
    rows = torch.arange(batch_size, device=target_probs.device)
    target = target_probs.float()
    draft_ids = draft_token_ids.long()
    is_draft = (draft_ids >= 0) & (draft_ids < vocab_size)
    safe_ids = torch.where(is_draft, draft_ids, 0)
    u = uniforms(seeds, offsets, batch_size, num_drafts + 1)
    target_argmax = nan_safe_argmax(target)  # [B, K+1]

    # 1. Acceptance, position by position, stopping at the first rejection.
    q_at_draft = target[:, :num_drafts].gather(-1, safe_ids[..., None]).squeeze(-1)
    if draft_probs is None:
        p_at_draft = torch.ones_like(q_at_draft)
    else:
        p_at_draft = draft_probs.float().gather(-1, safe_ids[..., None]).squeeze(-1)
    accept_sampled = u[:, :num_drafts] * p_at_draft < q_at_draft  # float32 product, as the kernels
    accept_greedy = draft_ids == target_argmax[:, :num_drafts]
    accept = is_draft & torch.where(greedy[:, None], accept_greedy, accept_sampled)
    num_accepted = accept.long().cumprod(-1).sum(-1)

    # 2. The emitted token, from target row j = num_accepted.
    j = num_accepted
    q_j = target[rows, j]
    has_draft_at_j = torch.cat([is_draft, is_draft.new_zeros(batch_size, 1)], 1)[rows, j]
    j_draft = j.clamp_max(max(num_drafts - 1, 0))
    if num_drafts == 0:
        p_j = torch.zeros_like(q_j)
    elif draft_probs is None:
        p_j = torch.nn.functional.one_hot(safe_ids[rows, j_draft], vocab_size).float()
    else:
        p_j = draft_probs.float()[rows, j_draft]
    p_j = torch.where(has_draft_at_j[:, None], p_j, torch.zeros_like(p_j))
    residual = _positive_part(q_j - p_j).double()
    target_row = _positive_part(q_j).double()
    use_residual = residual.sum(-1) > 0
    weights = torch.where(use_residual[:, None], residual, target_row)
    sampled = inverse_cdf_sample(weights, u[:, num_drafts])
    sampled = torch.where(weights.sum(-1) > 0, sampled, 0)
    emitted = torch.where(greedy, target_argmax[rows, j], sampled)

    # 3. Layout: accepted drafts, the emitted token, then -1.
    positions = torch.arange(num_drafts + 1, device=target.device)[None, :]
    padded_drafts = torch.cat([draft_ids, draft_ids.new_full((batch_size, 1), -1)], 1)
    token_ids = torch.where(positions < j[:, None], padded_drafts, -1)
    token_ids = torch.where(positions == j[:, None], emitted[:, None], token_ids)
    return RejectionOutput(token_ids, num_accepted)
