"""Lossless speculative sampling: ``torch.ops.specdecode.rejection_sample`` and its public wrapper.

One op, one schema (declared in ``csrc/rejection_sample.cpp``), a kernel per device: C++ on CPU
tensors, Triton (``specdecode.kernels.rejection_sample``) on CUDA tensors, and a fake kernel for
``torch.compile``. The algorithm is ``specdecode.reference.rejection_sample`` (read its docstring).
"""

from __future__ import annotations

import torch

from specdecode.core import RejectionOutput, check_same_device
from specdecode.ops.arguments import (
    ID_DTYPES,
    PROB_DTYPES,
    as_greedy_mask,
    check_probability_values,
    check_tensor,
    per_row_int64,
    seeds_from,
    unit_stride_in_vocab,
)

__all__ = ["rejection_sample", "RejectionSampler", "RejectionOutput"]


_lib = torch.library.Library("specdecode", "IMPL")


def _check_devices(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets) -> None:
    check_same_device(
        "rejection_sample",
        draft_token_ids=draft_token_ids,
        draft_probs=draft_probs,
        target_probs=target_probs,
        greedy=greedy,
        seeds=seeds,
        offsets=offsets,
    )


def _rejection_sample_cuda(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets):
    from specdecode.kernels.rejection_sample import rejection_sample as launch

    _check_devices(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets)
    with torch.cuda.device(target_probs.device):
        return launch(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets)


_lib.impl("rejection_sample", _rejection_sample_cuda, "CUDA")


@torch.library.register_fake("specdecode::rejection_sample")
def _rejection_sample_fake(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets):
    _check_devices(draft_token_ids, draft_probs, target_probs, greedy, seeds, offsets)
    batch_size, num_drafts = draft_token_ids.shape
    return (draft_token_ids.new_empty((batch_size, num_drafts + 1)), draft_token_ids.new_empty((batch_size,)))


def rejection_sample(
    draft_token_ids: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    greedy: bool | torch.Tensor = False,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    validate: bool = False,
) -> RejectionOutput:
    """Verify K draft tokens per row against the target, exactly (rules: ``docs/ops.md``).

    Per row: accept draft ``x_i`` with probability ``min(1, q_i(x_i) / p_i(x_i))`` (tested as
    ``u * p < q``, strict), stop at the first rejection ``j`` and emit a token from the residual
    ``norm(max(0, q_j - p_j))``; if all K are accepted, emit a bonus token from ``q_K``. The
    emitted tokens are distributed exactly as sampling from the target alone.

    Args:
        draft_token_ids: ``[B, K]`` int32/int64 draft tokens. ``-1`` marks "no draft here": it is
            rejected and nothing after it is accepted (ragged drafts; ``K = 0`` works). Any id
            outside ``[0, V)`` is treated the same way (``validate=True`` rejects ids ``>= V``).
        draft_probs: ``[B, K, V]`` float32/float16/bfloat16 draft distributions, or ``None`` for
            proposers without probabilities (n-gram, prompt lookup): the draft is then one-hot,
            so ``x`` is accepted with probability ``q(x)`` and the residual is ``q`` without ``x``.
        target_probs: ``[B, K+1, V]`` float32/float16/bfloat16; row ``K`` is the bonus
            distribution. Pass the (temperature-scaled) distributions the tokens are sampled from,
            e.g. ``torch.softmax(logits / temperature, -1)``. If the dtype differs from
            ``draft_probs`` (a bf16 target with an fp32 draft), both are widened to float32 -- a
            copy, but exact: the kernels compute in float32 either way. Logits are *not*
            probabilities: passed here they are read as unnormalised weights (negative entries
            count as 0, acceptance compares raw values), so the tokens returned follow no
            meaningful distribution, though they stay in ``[0, V)``. ``validate=True`` catches
            them (negative or unnormalised rows raise ``ValueError``).
        greedy: ``True`` for greedy verification of every row, or a ``[B]`` bool tensor for
            batches mixing greedy and sampled rows. A greedy row accepts ``x_i`` iff
            ``x_i == argmax q_i`` and emits ``argmax q_j`` (first maximum, NaN ignored).
        generator: draws one 62-bit seed for the call (on its own device, no host sync).
        seed: an int (one seed for the batch; the row index separates the rows' streams), or a
            ``[B]`` int64 tensor of per-row seeds (a row's numbers then do not depend on its
            place in the batch). Give ``generator`` or ``seed``, not both; with neither, the
            default generator of the device draws the seed.
        offset: int or ``[B]`` int64 tensor, the Philox counter offset (e.g. the decoding step),
            so one seed gives fresh numbers at every step. Same seed and offset, same output.
        validate: also check values (NaN/inf/negative/unnormalised probabilities, ids ``>= V``
            or ``< -1``) and raise ``ValueError``. Off by default: it needs a device sync.

    Returns:
        ``RejectionOutput(token_ids, num_accepted)``: ``token_ids`` ``[B, K+1]`` int64 holds the
        accepted drafts, then the residual or bonus token, then ``-1``; ``num_accepted`` ``[B]``
        int64 counts accepted drafts (tokens emitted = ``num_accepted + 1``; ``.emitted()`` lists
        each row's tokens without the ``-1`` tail, a host sync). Emitted ids are
        always in ``[0, V)``, whatever the input values. Inputs are never modified.

    Bound on unnormalised input: the C++ kernel sums in float64 where float32 would overflow,
    as the reference does. The Triton kernel sums each tile in float32: if the positive weights
    of one tile sum past float32's maximum (~3.4e38, entries near it), the row emits its last
    positive id -- still in ``[0, V)``, but not the reference's draw.
    """
    draft_token_ids, draft_probs, target_probs = _check_shapes(draft_token_ids, draft_probs, target_probs)
    batch_size, device = draft_token_ids.shape[0], target_probs.device
    greedy_mask = as_greedy_mask(greedy, batch_size, device)
    seeds = seeds_from(generator, seed, batch_size, device)
    offsets = per_row_int64("offset", offset, batch_size, device)
    if validate:
        check_probability_values(draft_token_ids, draft_probs, target_probs)
    token_ids, num_accepted = torch.ops.specdecode.rejection_sample(
        draft_token_ids, draft_probs, target_probs, greedy_mask, seeds, offsets
    )
    return RejectionOutput(token_ids, num_accepted)


class RejectionSampler(torch.nn.Module):
    """``rejection_sample`` as a module, for decoders that compose modules.

    ``forward(draft_token_ids, draft_probs, target_probs, *, greedy=False, generator=None,
    seed=None, offset=0) -> RejectionOutput``; ``validate`` is fixed at construction."""

    def __init__(self, validate: bool = False) -> None:
        super().__init__()
        self.validate = validate

    def forward(
        self, draft_token_ids: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor, **kwargs
    ) -> RejectionOutput:
        return rejection_sample(draft_token_ids, draft_probs, target_probs, validate=self.validate, **kwargs)

    def extra_repr(self) -> str:
        return f"validate={self.validate}"


# ---------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices always (host metadata, free); values on request.
# ---------------------------------------------------------------------------------------------


def _check_shapes(draft_token_ids, draft_probs, target_probs):
    draft_token_ids = check_tensor("draft_token_ids", draft_token_ids, 2, ID_DTYPES)
    target_probs = check_tensor("target_probs", target_probs, 3, PROB_DTYPES)
    batch_size, num_drafts = draft_token_ids.shape
    if tuple(target_probs.shape[:2]) != (batch_size, num_drafts + 1):
        raise ValueError(
            f"target_probs must be [B, K+1, V] = [{batch_size}, {num_drafts + 1}, V] for draft_token_ids "
            f"of shape [B, K] = {list(draft_token_ids.shape)}; got {list(target_probs.shape)}"
        )
    vocab_size = target_probs.shape[2]
    if vocab_size == 0:
        raise ValueError("target_probs has an empty vocabulary (V = 0)")
    if vocab_size >= 2**31:  # checked before any copy: an expanded row could be gigabytes
        raise ValueError(f"target_probs has V = {vocab_size}; the kernels take V < 2^31")
    device = target_probs.device
    if draft_token_ids.device != device:
        raise ValueError(f"draft_token_ids is on {draft_token_ids.device} but target_probs is on {device}")
    if draft_probs is not None:
        draft_probs = check_tensor("draft_probs", draft_probs, 3, PROB_DTYPES)
        if tuple(draft_probs.shape) != (batch_size, num_drafts, vocab_size):
            raise ValueError(
                f"draft_probs must be [B, K, V] = {[batch_size, num_drafts, vocab_size]}; got {list(draft_probs.shape)}"
            )
        if draft_probs.device != device:
            raise ValueError(f"draft_probs is on {draft_probs.device} but target_probs is on {device}")
        if draft_probs.dtype != target_probs.dtype:
            # The kernels compute in float32, so widening the narrower side changes no result.
            draft_probs, target_probs = draft_probs.float(), target_probs.float()
        draft_probs = unit_stride_in_vocab(draft_probs)
    # int32 ids are widened (a [B, K] copy, never the caller's tensor); probabilities are only
    # copied when their vocabulary dim is strided, which the kernels cannot stream.
    return (draft_token_ids.to(torch.int64).contiguous(), draft_probs, unit_stride_in_vocab(target_probs))
