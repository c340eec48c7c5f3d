"""Argument checks and conversions shared by the verifiers' public wrappers.

``rejection_sample``, ``rejection_sample_ragged`` and ``tree_rejection_sample`` take the same kinds
of arguments (id and probability tensors, ``greedy``, ``seed`` / ``generator``, ``offset``) and
must reject them with the same messages, so the checks live here once. Shapes, dtypes and devices
are host metadata (free); value checks read device memory and run only where the wrapper says.
"""

from __future__ import annotations

import torch

from specdecode.core import is_int

PROB_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ID_DTYPES = (torch.int32, torch.int64)
SEED_RANGE = 2**62  # seeds drawn from a generator: any non-negative int64 below this


def check_tensor(name: str, value, ndim: int, dtypes: tuple[torch.dtype, ...]) -> torch.Tensor:
    """``value`` itself if it is a tensor of ``ndim`` dimensions and one of ``dtypes``; else an error naming it."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimension{'' if ndim == 1 else 's'}, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must have dtype {allowed}; got {str(value.dtype).removeprefix('torch.')}")
    return value


def unit_stride_in_vocab(probs: torch.Tensor) -> torch.Tensor:
    # V = 1: the vocabulary dim's stride addresses nothing, so any stride streams.
    return probs if probs.stride(-1) == 1 or probs.shape[-1] == 1 else probs.contiguous()


def on_device(name: str, value: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host tensors move to ``device`` (small per-row values); any other device is an error."""
    if value.device != device and value.device.type != "cpu":
        raise ValueError(f"{name} is on {value.device} but target_probs is on {device}")
    return value.to(device)


def as_greedy_mask(greedy, batch_size: int, device: torch.device) -> torch.Tensor:
    """``greedy`` as a ``[B]`` bool tensor on ``device``: a bool applies to every row."""
    if isinstance(greedy, bool):
        return torch.full((batch_size,), greedy, dtype=torch.bool, device=device)
    if not isinstance(greedy, torch.Tensor):
        raise TypeError(f"greedy must be a bool or a [B] bool tensor, got {type(greedy).__name__}")
    if greedy.dtype != torch.bool or tuple(greedy.shape) != (batch_size,):
        raise ValueError(
            f"greedy must be a [B] = [{batch_size}] bool tensor; got {greedy.dtype} of shape {list(greedy.shape)}"
        )
    return on_device("greedy", greedy, device).contiguous()


def per_row_int64(name: str, value, batch_size: int, device: torch.device) -> torch.Tensor:
    """An int becomes a [1] tensor (shared by the batch); a tensor must be [B] (or [1]) ints."""
    if not (is_int(value) or isinstance(value, torch.Tensor)):
        raise TypeError(f"{name} must be an int or a [B] int64 tensor, got {type(value).__name__}")
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{name} = {value} does not fit in int64")
        return torch.tensor([value], dtype=torch.int64, device=device)
    if value.dtype not in ID_DTYPES or value.dim() != 1 or value.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{name} must be a [B] = [{batch_size}] int64 tensor; got {value.dtype} of shape {list(value.shape)}"
        )
    return on_device(name, value, device).to(torch.int64).contiguous()


def seeds_from(generator, seed, batch_size: int, device: torch.device) -> torch.Tensor:
    """A ``[1]`` or ``[B]`` int64 seed tensor: ``seed`` as given, or one drawn from ``generator`` (or the default)."""
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if seed is not None:
        return per_row_int64("seed", seed, batch_size, device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    # Drawn on the generator's device and moved without a host sync; advances the generator.
    gen_device = generator.device if generator is not None else device
    drawn = torch.randint(SEED_RANGE, (1,), generator=generator, device=gen_device, dtype=torch.int64)
    return drawn.to(device, non_blocking=True)


def check_probability_values(draft_token_ids, draft_probs, target_probs) -> None:
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
