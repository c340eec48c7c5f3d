"""Pure-PyTorch reference of the ragged verifier (rules: ``docs/ops.md``, section
``rejection_sample_ragged``): the spec in code, and the oracle of ``tests/test_rejection_sample_ragged.py``.

The kernels (C++ in ``csrc/rejection_sample_ragged.cpp``, Triton in
``kernels/rejection_sample_ragged.py``) follow it request by request. It is the padded verifier
(``specdecode/reference/rejection_sample.py``) applied to each request's own rows:

- Request ``b`` owns the draft positions ``start_b .. end_b - 1`` of the flattened ``[N]`` drafts,
  ``end_b = cu_num_draft_tokens[b]`` (inclusive running totals), ``start_b = end_{b-1}`` (0 for
  ``b = 0``), so ``K_b = end_b - start_b`` drafts.
- Its target rows are ``start_b + i`` (``target`` has ``N`` rows: the bonus comes as an id) or
  ``start_b + b + i`` for ``i = 0 .. K_b`` (``target`` has ``N + B`` rows, each request's draft rows
  followed by its bonus row: vLLM's logits layout).
- Distributions are the rows as given (probabilities), or ``softmax(row / T_b)`` of float32 rows
  (logits; ``T_b = temperature[b]``); a row is greedy iff ``greedy[b]`` or, with logits, not
  ``T_b > 0``. Greedy rows compare and emit ``argmax`` of the rows as given (logits or
  probabilities: the same argmax up to ties created by rounding).
- Acceptance, residual, placeholders and fallbacks are the padded verifier's, with the uniforms of
  slots ``0 .. K_b - 1`` for acceptance and slot ``K_b`` for the emitted token, so a request's
  numbers depend only on its own seed, offset and draft count (with per-request seeds), never on
  the other requests or on ``max_num_draft_tokens``.
- If every draft is accepted and ``bonus_token_ids`` is given, the emitted token is
  ``bonus_token_ids[b]`` (no target row is read for it).
"""

from __future__ import annotations

import torch

from specdecode.core import RejectionOutput, inverse_cdf_sample, nan_safe_argmax, uniforms

PLACEHOLDER_TOKEN_ID = -1


def _positive_part(values: torch.Tensor) -> torch.Tensor:
    """max(0, values) with NaN mapped to 0 (``max`` would propagate NaN)."""
    return torch.where(values > 0, values, torch.zeros_like(values))


def distributions(rows: torch.Tensor, is_logits: bool, temperature: float) -> torch.Tensor:
    """``[R, V]`` float32 distributions of ``rows``: the rows themselves, or ``softmax(rows / T)``
    of logits (float32 division, then a float64 softmax rounded to float32).

    >>> distributions(torch.tensor([[0.0, 0.0]]), True, 1.0).tolist()
    [[0.5, 0.5]]
    """
    rows = rows.float()
    if not is_logits:
        return rows
    return torch.softmax((rows / temperature).double(), -1).float()


def request_bounds(cu_num_draft_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(starts [B], counts [B])`` int64 of inclusive running totals ``cu [B]``.

    >>> [t.tolist() for t in request_bounds(torch.tensor([2, 2, 5]))]
    [[0, 2, 2], [2, 0, 3]]
    """
    ends = cu_num_draft_tokens.long()
    starts = torch.cat([ends.new_zeros(1), ends[:-1]])
    return starts, ends - starts


def _emit(q_j, p_j, greedy, argmax_j, u):
    """The padded verifier's emitted token from target row ``q_j [V]`` and draft row ``p_j [V]``
    (zeros when there is no draft to subtract)."""
    if greedy:
        return int(argmax_j)
    residual = _positive_part(q_j - p_j).double()
    weights = residual if float(residual.sum()) > 0 else _positive_part(q_j).double()
    if not float(weights.sum()) > 0:
        return 0
    return int(inverse_cdf_sample(weights[None], u.reshape(1))[0])


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
) -> RejectionOutput:
    """Reference of ``torch.ops.specdecode.rejection_sample_ragged`` (same arguments).

    Args:
        draft_token_ids: ``[N]`` int32/int64; ids outside ``[0, V)`` are placeholders.
        cu_num_draft_tokens: ``[B]`` int32/int64 inclusive running totals (last = ``N``).
        draft: ``[N, V]`` draft probabilities or logits, or ``None`` (one-hot drafts).
        target: ``[N, V]`` (then ``bonus_token_ids`` is required) or ``[N + B, V]`` (interleaved bonus rows).
        bonus_token_ids: ``[B]`` int32/int64 or ``None``.
        greedy: ``[B]`` bool.
        temperature: ``[B]`` float32 when either input is logits, else ``None``.
        seeds, offsets: int64 ``[1]`` or ``[B]`` (``specdecode.core.uniforms``).
        max_num_draft_tokens: ``max_K >= max K_b``: the output has ``max_K + 1`` columns.
        draft_is_logits, target_is_logits: whether ``draft`` / ``target`` hold logits.
        out_dtype: int32 or int64, the dtype of both outputs.
    Returns:
        ``RejectionOutput(token_ids [B, max_K + 1], num_accepted [B])`` in ``out_dtype``.

    >>> out = rejection_sample_ragged(torch.tensor([1]), torch.tensor([1, 1]), None,
    ...     torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]), None, torch.tensor([False, False]), None,
    ...     torch.tensor([0]), torch.tensor([0]), 1, False, False, torch.int64)
    >>> out.token_ids.tolist(), out.num_accepted.tolist()
    ([[1, 0], [1, -1]], [1, 0])
    """
    batch_size, vocab_size = cu_num_draft_tokens.shape[0], target.shape[-1]
    num_tokens = draft_token_ids.shape[0]
    interleaved = target.shape[0] == num_tokens + batch_size and batch_size > 0
    starts, counts = request_bounds(cu_num_draft_tokens)
    u_all = uniforms(seeds, offsets, batch_size, max_num_draft_tokens + 1)
    token_ids = torch.full((batch_size, max_num_draft_tokens + 1), PLACEHOLDER_TOKEN_ID, dtype=torch.int64)
    num_accepted = torch.zeros(batch_size, dtype=torch.int64)
    for b in range(batch_size):
        start, count = int(starts[b]), int(counts[b])
        temp = float(temperature[b]) if temperature is not None else 1.0
        row_greedy = bool(greedy[b]) or ((draft_is_logits or target_is_logits) and not temp > 0)
        first_target = start + (b if interleaved else 0)
        num_rows = count + 1 if interleaved else count
        raw_target = target[first_target : first_target + num_rows]
        q = distributions(raw_target, target_is_logits, temp) if not row_greedy else raw_target.float()
        argmax = nan_safe_argmax(raw_target.float())
        drafts = draft_token_ids[start : start + count].long()
        is_draft = (drafts >= 0) & (drafts < vocab_size)
        if draft is None:
            p = None
        elif row_greedy:
            p = draft[start : start + count].float()
        else:
            p = distributions(draft[start : start + count], draft_is_logits, temp)
        u = u_all[b]
        accepted = 0
        while accepted < count and bool(is_draft[accepted]):
            x = int(drafts[accepted])
            if row_greedy:
                ok = x == int(argmax[accepted])
            else:
                p_x = float(p[accepted, x]) if p is not None else 1.0
                # float32 product and strict '<', exactly as the padded verifier.
                ok = bool(u[accepted] * torch.tensor(p_x, dtype=torch.float32) < q[accepted, x])
            if not ok:
                break
            accepted += 1
        if accepted == count and bonus_token_ids is not None:
            emitted = int(bonus_token_ids[b])
        else:
            has_draft = accepted < count and bool(is_draft[accepted])
            p_j = torch.zeros(vocab_size)
            if has_draft:
                p_j = (
                    p[accepted] if p is not None else torch.nn.functional.one_hot(drafts[accepted], vocab_size).float()
                )
            q_j = q[accepted] if not row_greedy else None
            emitted = _emit(q_j, p_j, row_greedy, argmax[accepted], u[count])
        token_ids[b, :accepted] = drafts[:accepted]
        token_ids[b, accepted] = emitted
        num_accepted[b] = accepted
    device = target.device
    return RejectionOutput(token_ids.to(device, out_dtype), num_accepted.to(device, out_dtype))
