"""Lossless speculative sampling on the serving engines' flattened layout, from probabilities or
logits: ``torch.ops.specdecode.rejection_sample_ragged`` and its public wrapper.

One op, one schema (declared in ``csrc/rejection_sample_ragged.cpp``), a kernel per device: C++ on
CPU tensors, Triton (``specdecode.kernels.rejection_sample_ragged``) on CUDA tensors, and a fake
kernel for ``torch.compile``. The algorithm is ``specdecode.reference.rejection_sample_ragged``;
the chain itself is the padded verifier's (``csrc/rejection_core.h``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specdecode.core import RejectionOutput, check_same_device, is_int
from specdecode.ops.arguments import (
    ID_DTYPES,
    PROB_DTYPES,
    as_greedy_mask,
    check_probability_values,
    check_tensor,
    on_device,
    per_row_int64,
    seeds_from,
    unit_stride_in_vocab,
)

__all__ = ["rejection_sample_ragged", "RaggedRejectionSampler", "PLACEHOLDER_TOKEN_ID"]

PLACEHOLDER_TOKEN_ID = -1  # token_ids after the emitted token (vLLM's PLACEHOLDER_TOKEN_ID)


_lib = torch.library.Library("specdecode", "IMPL")


def _check_devices(args: tuple) -> None:
    names = (
        "draft_token_ids",
        "cu_num_draft_tokens",
        "draft",
        "target",
        "bonus_token_ids",
        "greedy",
        "temperature",
        "seeds",
        "offsets",
    )
    check_same_device("rejection_sample_ragged", **dict(zip(names, args[: len(names)])))


def _rejection_sample_ragged_cuda(*args):
    from specdecode.kernels.rejection_sample_ragged import rejection_sample_ragged as launch

    _check_devices(args)
    with torch.cuda.device(args[3].device):
        return launch(*args)


_lib.impl("rejection_sample_ragged", _rejection_sample_ragged_cuda, "CUDA")


@torch.library.register_fake("specdecode::rejection_sample_ragged")
def _rejection_sample_ragged_fake(
    draft_token_ids,
    cu_num_draft_tokens,
    draft,
    target,
    bonus_token_ids,
    greedy,
    temperature,
    seeds,
    offsets,
    max_num_draft_tokens,
    draft_is_logits,
    target_is_logits,
    out_dtype,
):
    _check_devices(
        (draft_token_ids, cu_num_draft_tokens, draft, target, bonus_token_ids, greedy, temperature, seeds, offsets)
    )
    torch._check(max_num_draft_tokens >= 0, lambda: "max_num_draft_tokens must be >= 0")
    batch_size = cu_num_draft_tokens.shape[0]
    token_ids = draft_token_ids.new_empty((batch_size, max_num_draft_tokens + 1), dtype=out_dtype)
    return token_ids, draft_token_ids.new_empty((batch_size,), dtype=out_dtype)


@dataclass(frozen=True)
class RaggedDrafts:
    """Where each request's drafts are in the flattened batch (all on the target's device).

    ``token_ids`` ``[N]`` int32/int64; ``cu_num_draft_tokens`` ``[B]`` inclusive running totals;
    ``max_num_draft_tokens`` the static width ``max_K`` (output ``[B, max_K + 1]``)."""

    token_ids: torch.Tensor
    cu_num_draft_tokens: torch.Tensor
    max_num_draft_tokens: int

    @property
    def batch_size(self) -> int:
        return self.cu_num_draft_tokens.shape[0]


@dataclass(frozen=True)
class Rows:
    """The vocabulary rows: ``target`` ``[N, V]`` or ``[N + B, V]``, ``draft`` ``[N, V]`` or ``None``."""

    target: torch.Tensor
    target_is_logits: bool
    draft: torch.Tensor | None
    draft_is_logits: bool

    @property
    def any_logits(self) -> bool:
        return self.target_is_logits or (self.draft is not None and self.draft_is_logits)


def rejection_sample_ragged(
    draft_token_ids: torch.Tensor,
    *,
    num_draft_tokens: Sequence[int] | torch.Tensor | None = None,
    cu_num_draft_tokens: torch.Tensor | None = None,
    max_num_draft_tokens: int | None = None,
    target_probs: torch.Tensor | None = None,
    target_logits: torch.Tensor | None = None,
    draft_probs: torch.Tensor | None = None,
    draft_logits: torch.Tensor | None = None,
    temperature: float | torch.Tensor | None = None,
    greedy: bool | torch.Tensor = False,
    bonus_token_ids: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    output_dtype: torch.dtype = torch.int64,
    validate: bool = False,
) -> RejectionOutput:
    """Verify a ragged batch of drafts against the target, exactly (rules: ``docs/ops.md``,
    section ``rejection_sample_ragged``).

    The padded verifier (``sd.rejection_sample``) on vLLM's layout: request ``b`` owns
    ``K_b`` consecutive entries of the flattened drafts; its drafts are accepted with probability
    ``min(1, q(x) / p(x))`` in order, the first rejection emits a token from the residual
    ``norm(max(0, q - p))``, and if all ``K_b`` are accepted the bonus token is emitted (given, or
    drawn from the request's bonus row). The emitted tokens follow the target exactly.

    Args:
        draft_token_ids: ``[N]`` int32/int64, the drafts of all requests, request by request. Ids
            outside ``[0, V)`` (e.g. ``-1``) are rejected and nothing after them is accepted.
        num_draft_tokens: ``[B]`` draft counts ``K_b`` (a list of ints or an int tensor), or
        cu_num_draft_tokens: ``[B]`` inclusive running totals (vLLM's ``cu_num_draft_tokens``;
            the last equals ``N``). Give exactly one.
        max_num_draft_tokens: ``max_K >= max_b K_b``, the static output width ``max_K + 1``.
            Required when the counts are device tensors (reading them would sync the host).
        target_probs, target_logits: exactly one, ``[N, V]`` (the draft positions; then
            ``bonus_token_ids`` is required) or ``[N + B, V]`` (each request's ``K_b`` rows then
            its bonus row, the layout of vLLM's logits), float32/float16/bfloat16.
        draft_probs, draft_logits: at most one, ``[N, V]``, any of the three float dtypes
            (it may differ from the target's). Neither: one-hot drafts (n-gram, prompt lookup).
        temperature: with logits, a float or ``[B]`` per-request temperatures ``T_b``: the
            distributions are ``softmax(logits / T_b)`` (the draft's too), computed inside the
            kernel; ``T_b = 0`` makes request ``b`` greedy. Must be ``None`` with probabilities.
        greedy: ``True`` or a ``[B]`` bool mask of greedy requests (also greedy: ``T_b = 0``).
            Greedy requests accept ``x == argmax`` of the target row and emit its argmax.
        bonus_token_ids: ``[B]`` (or ``[B, 1]``) int32/int64 bonus tokens sampled by the caller,
            emitted when every draft is accepted; ``None`` draws them from the bonus rows.
        generator, seed, offset: the random stream, as ``sd.rejection_sample``: a ``[B]`` seed
            tensor makes a request reproduce whatever batch it is in (per-request streams).
        output_dtype: ``torch.int64`` or ``torch.int32`` (vLLM), the dtype of both outputs.
        validate: also check values needing a device sync (counts, bonus ids, draft ids,
            temperatures, probabilities). Values in host memory (lists, CPU tensors) are always
            checked.

    Returns:
        ``RejectionOutput(token_ids [B, max_K + 1], num_accepted [B])``: per request the accepted
        drafts, the emitted token, then ``PLACEHOLDER_TOKEN_ID`` (-1). Ids are in ``[0, V)``.

    >>> import torch, specdecode as sd
    >>> out = sd.rejection_sample_ragged(
    ...     torch.tensor([3, 1, 2]), num_draft_tokens=[1, 0, 2],
    ...     target_logits=torch.randn(6, 5), temperature=torch.tensor([1.0, 0.0, 0.7]), seed=0)
    >>> out.token_ids.shape, out.num_accepted.shape
    (torch.Size([3, 3]), torch.Size([3]))
    """
    rows = _rows(target_probs, target_logits, draft_probs, draft_logits)
    device = rows.target.device
    drafts = _ragged_drafts(draft_token_ids, num_draft_tokens, cu_num_draft_tokens, max_num_draft_tokens, device)
    _check_row_counts(rows, drafts, bonus_token_ids)
    batch_size = drafts.batch_size
    bonus = _bonus_ids(bonus_token_ids, batch_size, rows.target.shape[1], device)
    temperatures = _temperatures(temperature, rows, batch_size, device)
    greedy_mask = as_greedy_mask(greedy, batch_size, device)
    seeds = seeds_from(generator, seed, batch_size, device)
    offsets = per_row_int64("offset", offset, batch_size, device)
    if output_dtype not in ID_DTYPES:
        raise TypeError(f"output_dtype must be torch.int32 or torch.int64, got {output_dtype}")
    if validate:
        _check_values(drafts, rows, bonus, temperatures)
    token_ids, num_accepted = torch.ops.specdecode.rejection_sample_ragged(
        drafts.token_ids,
        drafts.cu_num_draft_tokens,
        rows.draft,
        rows.target,
        bonus,
        greedy_mask,
        temperatures,
        seeds,
        offsets,
        drafts.max_num_draft_tokens,
        rows.draft_is_logits,
        rows.target_is_logits,
        output_dtype,
    )
    return RejectionOutput(token_ids, num_accepted)


class RaggedRejectionSampler(torch.nn.Module):
    """``rejection_sample_ragged`` as a module; ``forward`` takes the same arguments, and
    ``validate`` is fixed at construction."""

    def __init__(self, validate: bool = False) -> None:
        super().__init__()
        self.validate = validate

    def forward(self, draft_token_ids: torch.Tensor, **kwargs) -> RejectionOutput:
        return rejection_sample_ragged(draft_token_ids, validate=self.validate, **kwargs)

    def extra_repr(self) -> str:
        return f"validate={self.validate}"


# ---------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices always (host metadata, free); values when they are
# in host memory (free) or on request (validate=True: a device sync).
# ---------------------------------------------------------------------------------------------


def _same_device(name: str, value: torch.Tensor, device: torch.device) -> None:
    if value.device != device:
        raise ValueError(f"{name} is on {value.device} but the target is on {device}")


def _one_of(names: tuple[str, str], values: tuple, required: bool) -> tuple[torch.Tensor | None, bool]:
    """The one given of two alternatives and whether it is the second (logits)."""
    given = [value is not None for value in values]
    if all(given):
        raise ValueError(f"pass either {names[0]} or {names[1]}, not both")
    if required and not any(given):
        raise ValueError(f"pass one of {names[0]} or {names[1]}")
    return (values[1], True) if given[1] else (values[0], False)


def _rows(target_probs, target_logits, draft_probs, draft_logits) -> Rows:
    target, target_is_logits = _one_of(("target_probs", "target_logits"), (target_probs, target_logits), True)
    target_name = "target_logits" if target_is_logits else "target_probs"
    target = check_tensor(target_name, target, 2, PROB_DTYPES)
    vocab_size = target.shape[1]
    if vocab_size == 0:
        raise ValueError(f"{target_name} has an empty vocabulary (V = 0)")
    if vocab_size >= 2**31:
        raise ValueError(f"{target_name} has V = {vocab_size}; the kernels take V < 2^31")
    draft, draft_is_logits = _one_of(("draft_probs", "draft_logits"), (draft_probs, draft_logits), False)
    if draft is not None:
        draft_name = "draft_logits" if draft_is_logits else "draft_probs"
        draft = check_tensor(draft_name, draft, 2, PROB_DTYPES)
        if draft.shape[1] != vocab_size:
            raise ValueError(f"{draft_name} must be [N, V] with V = {vocab_size}; got {list(draft.shape)}")
        _same_device(draft_name, draft, target.device)
        draft = unit_stride_in_vocab(draft)
    return Rows(unit_stride_in_vocab(target), target_is_logits, draft, draft_is_logits)


def _ragged_drafts(
    draft_token_ids, num_draft_tokens, cu_num_draft_tokens, max_num_draft_tokens, device
) -> RaggedDrafts:
    draft_token_ids = check_tensor("draft_token_ids", draft_token_ids, 1, ID_DTYPES)
    _same_device("draft_token_ids", draft_token_ids, device)
    num_tokens = draft_token_ids.shape[0]
    if (num_draft_tokens is None) == (cu_num_draft_tokens is None):
        raise ValueError("pass exactly one of num_draft_tokens or cu_num_draft_tokens")
    if max_num_draft_tokens is not None and not (is_int(max_num_draft_tokens) and max_num_draft_tokens >= 0):
        raise ValueError(f"max_num_draft_tokens must be a non-negative int, got {max_num_draft_tokens!r}")
    if num_draft_tokens is not None:
        counts = _index_values("num_draft_tokens", num_draft_tokens, device)
        cumulative = counts.cumsum(0)  # int64; on the device, no sync
    else:
        cumulative = _index_values("cu_num_draft_tokens", cu_num_draft_tokens, device)
        counts = None
    # Host values: checking them costs nothing (under torch.compile they are graph inputs, unread).
    if cumulative.device.type == "cpu" and not torch.compiler.is_compiling():
        ends = cumulative.tolist()
        starts = [0, *ends[:-1]]
        lengths = [end - start for start, end in zip(starts, ends)]
        name = "num_draft_tokens" if counts is not None else "cu_num_draft_tokens"
        _check_counts(name, lengths, num_tokens, max_num_draft_tokens)
        if max_num_draft_tokens is None:
            max_num_draft_tokens = max(lengths, default=0)
    elif max_num_draft_tokens is None:
        raise ValueError(
            f"max_num_draft_tokens is required when the draft counts are on {cumulative.device} "
            "(reading them would sync the host) or under torch.compile"
        )
    return RaggedDrafts(draft_token_ids.contiguous(), cumulative.to(device).contiguous(), max_num_draft_tokens)


def _index_values(name: str, value, device: torch.device) -> torch.Tensor:
    """A list of ints or a 1-D int tensor, as a tensor on ``device`` (int32 kept: the op reads it)."""
    if isinstance(value, torch.Tensor):
        check_tensor(name, value, 1, ID_DTYPES)
        if value.device != device and value.device.type != "cpu":
            raise ValueError(f"{name} is on {value.device} but the target is on {device}")
        return value if name.startswith("cu_") else value.long()  # int32 running totals are read as they are
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a sequence of ints or a 1-D int tensor, got {type(value).__name__}")
    if not all(is_int(v) for v in value):
        raise TypeError(f"{name} must hold ints, got {[type(v).__name__ for v in value]}")
    return torch.tensor(list(value), dtype=torch.int64)


def _check_counts(name: str, lengths: list[int], num_tokens: int, max_num_draft_tokens: int | None) -> None:
    for b, length in enumerate(lengths):
        if length < 0:
            what = "a negative count" if name == "num_draft_tokens" else "out of order (decreasing)"
            raise ValueError(f"{name} is {what} at request {b}")
        if max_num_draft_tokens is not None and length > max_num_draft_tokens:
            raise ValueError(
                f"{name}: request {b} has {length} draft tokens but max_num_draft_tokens = {max_num_draft_tokens}"
            )
    total = sum(lengths)
    if total != num_tokens:
        raise ValueError(f"{name} adds up to {total} draft tokens but draft_token_ids has N = {num_tokens}")


def _check_row_counts(rows: Rows, drafts: RaggedDrafts, bonus_token_ids) -> None:
    num_tokens, batch_size = drafts.token_ids.shape[0], drafts.batch_size
    name = "target_logits" if rows.target_is_logits else "target_probs"
    num_rows = rows.target.shape[0]
    if num_rows == num_tokens and bonus_token_ids is None and batch_size > 0:
        raise ValueError(
            f"{name} has N = {num_rows} rows (draft positions only): pass bonus_token_ids, or N + B = "
            f"{num_tokens + batch_size} rows with a bonus row per request"
        )
    if num_rows not in (num_tokens, num_tokens + batch_size):
        raise ValueError(
            f"{name} must have N = {num_tokens} rows (with bonus_token_ids) or N + B = {num_tokens + batch_size} "
            f"rows; got {list(rows.target.shape)}"
        )
    if rows.draft is not None and rows.draft.shape[0] != num_tokens:
        draft_name = "draft_logits" if rows.draft_is_logits else "draft_probs"
        raise ValueError(f"{draft_name} must have N = {num_tokens} rows; got {list(rows.draft.shape)}")


def _bonus_ids(bonus_token_ids, batch_size: int, vocab_size: int, device) -> torch.Tensor | None:
    if bonus_token_ids is None:
        return None
    if not isinstance(bonus_token_ids, torch.Tensor):
        raise TypeError(f"bonus_token_ids must be a torch.Tensor, got {type(bonus_token_ids).__name__}")
    if bonus_token_ids.dim() == 2 and bonus_token_ids.shape[1] == 1:  # vLLM's [B, 1]
        bonus_token_ids = bonus_token_ids[:, 0]
    bonus = check_tensor("bonus_token_ids", bonus_token_ids, 1, ID_DTYPES)
    if bonus.shape[0] != batch_size:
        raise ValueError(f"bonus_token_ids must be [B] = [{batch_size}]; got {list(bonus.shape)}")
    bonus = on_device("bonus_token_ids", bonus, device).contiguous()
    if bonus.device.type == "cpu" and not torch.compiler.is_compiling():
        _check_bonus_values(bonus, vocab_size)
    return bonus


def _check_bonus_values(bonus: torch.Tensor, vocab_size: int) -> None:
    bad = (bonus < 0) | (bonus >= vocab_size)
    if bool(bad.any()):
        b = int(bad.nonzero()[0, 0])
        raise ValueError(f"bonus_token_ids[{b}] = {int(bonus[b])} is outside [0, V) with V = {vocab_size}")


def _temperatures(temperature, rows: Rows, batch_size: int, device) -> torch.Tensor | None:
    if not rows.any_logits:
        if temperature is not None:
            raise ValueError("temperature applies to logits only; with probabilities, scale them yourself")
        return None
    if temperature is None:
        raise ValueError("temperature is required with logits (a float, or [B] per request; 0 = greedy)")
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        return torch.full((batch_size,), float(temperature), dtype=torch.float32, device=device)
    if not isinstance(temperature, torch.Tensor):
        raise TypeError(f"temperature must be a float or a [B] tensor, got {type(temperature).__name__}")
    temperature = check_tensor("temperature", temperature, 1, (*PROB_DTYPES, torch.float64))
    if temperature.shape[0] != batch_size:
        raise ValueError(f"temperature must be [B] = [{batch_size}]; got {list(temperature.shape)}")
    return on_device("temperature", temperature, device).to(torch.float32).contiguous()


def _check_values(drafts: RaggedDrafts, rows: Rows, bonus, temperatures) -> None:
    """validate=True: the checks that need the values (a device sync)."""
    ends = drafts.cu_num_draft_tokens.long().cpu().tolist()
    lengths = [end - start for start, end in zip([0, *ends[:-1]], ends)]
    _check_counts("cu_num_draft_tokens", lengths, drafts.token_ids.shape[0], drafts.max_num_draft_tokens)
    vocab_size = rows.target.shape[1]
    if bonus is not None:
        _check_bonus_values(bonus, vocab_size)
    if temperatures is not None and not bool(((temperatures >= 0) & temperatures.isfinite()).all()):
        raise ValueError("temperature must be finite and >= 0")
    ids = drafts.token_ids
    bad_ids = (ids < -1) | (ids >= vocab_size)
    if bool(bad_ids.any()):
        n = int(bad_ids.nonzero()[0, 0])
        raise ValueError(f"draft_token_ids[{n}] = {int(ids[n])} is outside [-1, V) with V = {vocab_size}")
    if rows.target_is_logits and bool(rows.target.isnan().any()):
        raise ValueError("target_logits contains NaN")
    if rows.draft is not None and rows.draft_is_logits and bool(rows.draft.isnan().any()):
        raise ValueError("draft_logits contains NaN")
    # Probabilities: the padded verifier's checks (finite, non-negative, normalised rows).
    draft_probs = None if rows.draft is None or rows.draft_is_logits else rows.draft[None]
    target_probs = rows.target[None] if not rows.target_is_logits else torch.ones(1, 1, 1, device=rows.target.device)
    check_probability_values(torch.zeros(1, 0, dtype=torch.long, device=ids.device), draft_probs, target_probs)
