"""Lossless speculative sampling: ``torch.ops.specdecode.rejection_sample`` and its public wrapper.

One op, one schema (declared in ``csrc/rejection_sample.cpp``), a kernel per device: C++ on CPU
tensors, Triton (``specdecode.kernels.rejection_sample``) on CUDA tensors, and a fake kernel for
``torch.compile``. The algorithm is ``specdecode.reference.rejection_sample`` (read its docstring).
"""

from __future__ import annotations

import torch

from specdecode.core import RejectionOutput, check_same_device, is_int

__all__ = ["rejection_sample", "RejectionSampler", "RejectionOutput"]

_PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_ID_DTYPES = (torch.int32, torch.int64)
_SEED_RANGE = 2**62  # seeds drawn from a generator: any non-negative int64 below this

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
    greedy_mask = _greedy_mask(greedy, batch_size, device)
    seeds = _seeds(generator, seed, batch_size, device)
    offsets = _per_row_int64("offset", offset, batch_size, device)
    if validate:
        _check_values(draft_token_ids, draft_probs, target_probs)
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


def _check_tensor(name: str, value, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(value.dtype).removeprefix('torch.')}")
    return value


def _check_shapes(draft_token_ids, draft_probs, target_probs):
    draft_token_ids = _check_tensor("draft_token_ids", draft_token_ids, 2, _ID_DTYPES)
    target_probs = _check_tensor("target_probs", target_probs, 3, _PROB_DTYPES)
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
        draft_probs = _check_tensor("draft_probs", draft_probs, 3, _PROB_DTYPES)
        if tuple(draft_probs.shape) != (batch_size, num_drafts, vocab_size):
            raise ValueError(
                f"draft_probs must be [B, K, V] = {[batch_size, num_drafts, vocab_size]}; got {list(draft_probs.shape)}"
            )
        if draft_probs.device != device:
            raise ValueError(f"draft_probs is on {draft_probs.device} but target_probs is on {device}")
        if draft_probs.dtype != target_probs.dtype:
            # The kernels compute in float32, so widening the narrower side changes no result.
            draft_probs, target_probs = draft_probs.float(), target_probs.float()
        draft_probs = _unit_stride_in_vocab(draft_probs)
    # int32 ids are widened (a [B, K] copy, never the caller's tensor); probabilities are only
    # copied when their vocabulary dim is strided, which the kernels cannot stream.
    return (draft_token_ids.to(torch.int64).contiguous(), draft_probs, _unit_stride_in_vocab(target_probs))


def _unit_stride_in_vocab(probs: torch.Tensor) -> torch.Tensor:
    # V = 1: the vocabulary dim's stride addresses nothing, so any stride streams.
    return probs if probs.stride(-1) == 1 or probs.shape[-1] == 1 else probs.contiguous()


def _on_device(name: str, value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensors move to ``device`` (small per-row values); any other device is an error."""
    if value.device != device and value.device.type != "cpu":
        raise ValueError(f"{name} is on {value.device} but target_probs is on {device}")
    return value.to(device)


def _greedy_mask(greedy, batch_size: int, device: torch.device) -> torch.Tensor:
    if isinstance(greedy, bool):
        return torch.full((batch_size,), greedy, dtype=torch.bool, device=device)
    if not isinstance(greedy, torch.Tensor):
        raise TypeError(f"greedy must be a bool or a [B] bool tensor, got {type(greedy).__name__}")
    if greedy.dtype != torch.bool or tuple(greedy.shape) != (batch_size,):
        raise ValueError(
            f"greedy must be a [B] = [{batch_size}] bool tensor; got {greedy.dtype} of shape {list(greedy.shape)}"
        )
    return _on_device("greedy", greedy, device).contiguous()


def _per_row_int64(name: str, value, batch_size: int, device: torch.device) -> torch.Tensor:
    """An int becomes a [1] tensor (shared by the batch); a tensor must be [B] (or [1]) ints."""
    if not (is_int(value) or isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a [B] int64 tensor, got {type(value).__name__}")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{name} = {value} does not fit in int64")
        return torch.tensor([value], dtype=torch.int64, device=device)
    if value.dtype not in _ID_DTYPES or value.dim() != 1 or value.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{name} must be a [B] = [{batch_size}] int64 tensor; got {value.dtype} of shape {list(value.shape)}"
        )
    return _on_device(name, value, device).to(torch.int64).contiguous()


def _seeds(generator, seed, batch_size: int, device: torch.device) -> torch.Tensor:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return _per_row_int64("seed", seed, batch_size, device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    # Drawn on the generator's device and moved without a host sync; advances the generator.
    gen_device = generator.device if generator is not None else device
    drawn = torch.randint(_SEED_RANGE, (1,), generator=generator, device=gen_device, dtype=torch.int64)
    return drawn.to(device, non_blocking=True)


def _check_values(draft_token_ids, draft_probs, target_probs) -> None:
    vocab_size = target_probs.shape[-1]
    bad_ids = (draft_token_ids < -1) | (draft_token_ids >= vocab_size)
    if bool(bad_ids.any()):
        where = bad_ids.nonzero()[0].tolist()
        raise ValueError(
            f"draft_token_ids[{where[0]}, {where[1]}] = {int(draft_token_ids[tuple(where)])} "
            f"is outside [-1, V) with V = {vocab_size}"
        )
    for name, probs in (("draft_probs", draft_probs), ("target_probs", target_probs)):
        if probs is None or probs.numel() == 0:
            continue
        values = probs.float()
        if not bool(values.isfinite().all()):
            raise ValueError(f"{name} contains NaN or inf")
        if bool((values < 0).any()):
            raise ValueError(f"{name} contains negative probabilities")
        # Summation error grows with V; 16-bit inputs carry ~3 significant digits per entry.
        tolerance = 1e-3 if probs.dtype == torch.float32 else 2e-2
        row_sums = values.sum(-1, dtype=torch.float64)
        row_error = (row_sums - 1).abs()
        if bool((row_error > tolerance).any()):
            worst = row_error.flatten().argmax()
            index = [int(i) for i in torch.unravel_index(worst, row_error.shape)]
            raise ValueError(
                f"{name} is not normalised: row {index} sums to "
                f"{float(row_sums.flatten()[worst]):.6g} (tolerance {tolerance})"
            )
