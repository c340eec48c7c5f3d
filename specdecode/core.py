"""What the ops, their references and the reference decoder share at run time.

- The random stream: Philox4x32-10 (bit-identical to Triton's ``tl.philox`` and to
  ``csrc/philox.h``) and the uniforms every backend of ``rejection_sample`` draws.
- Inverse-CDF sampling and the NaN-safe argmax the verifier's rules are written with.
- The output types of the ops (``RejectionOutput``, ``PruneResult``).
- The exact keep count of a rejection rate (``num_keep_from_alpha``).
- The row layout rule of in-place compaction (``row_layout``), shared by the public checks and
  the Triton launcher (``csrc/compact_kv.cpp`` states the same rule in C++).
- Small argument checks used across the package.

The rules these implement are stated in ``docs/ops.md``. This module imports no kernel and no
wrapper, so the references, the kernels and the decoder can all depend on it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from numbers import Real
from typing import NamedTuple

import torch

_MASK32 = 0xFFFFFFFF
_PHILOX_KEY_A = 0x9E3779B9
_PHILOX_KEY_B = 0xBB67AE85
_PHILOX_ROUND_A = 0xD2511F53
_PHILOX_ROUND_B = 0xCD9E8D57
_PHILOX_ROUNDS = 10


# ---------------------------------------------------------------------------------------------
# Output types
# ---------------------------------------------------------------------------------------------


class RejectionOutput(NamedTuple):
    token_ids: torch.Tensor  # [B, K+1] int64: accepted drafts, the emitted token, then -1
    num_accepted: torch.Tensor  # [B] int64

    def emitted(self) -> list[torch.Tensor]:
        """Each row's emitted tokens without the ``-1`` tail: ``B`` 1-D int64 views of
        ``token_ids`` of length ``num_accepted + 1``. Reads ``num_accepted`` on the host, so on a
        device this is a sync -- keep it out of the hot path of a graph."""
        lengths = (self.num_accepted + 1).tolist()
        return [row[:length] for row, length in zip(self.token_ids, lengths)]


class PruneResult(NamedTuple):
    kept_indices: torch.Tensor  # [N'] int64, ascending: survivors in order, groups contiguous
    kept_group_sizes: torch.Tensor  # [P] int64: survivors per group (= num_keep)
    keep_mask: torch.Tensor  # [N] bool: the fixed-shape form


# ---------------------------------------------------------------------------------------------
# The random stream and sampling primitives
# ---------------------------------------------------------------------------------------------


def _mul_hi_lo(constant: int, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of ``constant * value`` (both < 2**32) without int64 overflow:
    the product is built from 16-bit halves of ``value``, each partial product < 2**48."""
    part_lo = constant * (value & 0xFFFF)
    part_hi = constant * (value >> 16)
    low_sum = part_lo + ((part_hi & 0xFFFF) << 16)
    return (part_hi >> 16) + (low_sum >> 32), low_sum & _MASK32


def philox4x32(seed: torch.Tensor, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 on int64 tensors holding uint32 values (broadcastable), as ``tl.philox``.

    ``seed`` is int64; its low word is key 0 and its high word key 1 (two's complement)."""
    key0 = seed & _MASK32
    key1 = (seed >> 32) & _MASK32
    c0, c1, c2, c3 = (torch.as_tensor(c, dtype=torch.int64) & _MASK32 for c in (c0, c1, c2, c3))
    for _ in range(_PHILOX_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ key0, lo_b, hi_a ^ c3 ^ key1, lo_a
        key0 = (key0 + _PHILOX_KEY_A) & _MASK32
        key1 = (key1 + _PHILOX_KEY_B) & _MASK32
    return c0, c1, c2, c3


def uniforms(seeds: torch.Tensor, offsets: torch.Tensor, batch_size: int, num_slots: int) -> torch.Tensor:
    """The ``[B, num_slots]`` float32 uniforms every backend draws.

    ``seeds``/``offsets``: int64 of shape ``[1]`` (one for the batch) or ``[B]`` (per row).
    One shared seed puts the row index into the counter; per-row seeds do not."""
    device = seeds.device
    rows = torch.arange(batch_size, device=device, dtype=torch.int64)
    seed = seeds.expand(batch_size)[:, None]
    offset = offsets.expand(batch_size)[:, None]
    stream_row = (rows if seeds.numel() == 1 else torch.zeros_like(rows))[:, None]
    slots = torch.arange(num_slots, device=device, dtype=torch.int64)[None, :]
    word, _, _, _ = philox4x32(seed, slots, stream_row, offset & _MASK32, (offset >> 32) & _MASK32)
    return (word >> 8).to(torch.float32) * (2.0**-24)


def nan_safe_argmax(probs: torch.Tensor) -> torch.Tensor:
    """First index of the maximum along the last dim, NaN ignored; 0 if there is no number."""
    return torch.where(probs.isnan(), float("-inf"), probs).argmax(-1)


def inverse_cdf_sample(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample one index per row of ``weights [R, V]`` (float64, >= 0, NaN-free) with ``u [R]``:
    the smallest ``v`` with ``w_v > 0`` and ``cumsum(w)_v > u * sum(w)``.

    Only rows with ``sum(w) > 0`` are meaningful; the others return 0."""
    total = weights.sum(-1, keepdim=True)
    threshold = u.to(torch.float64)[:, None] * total
    hit = (weights.cumsum(-1) > threshold) & (weights > 0)
    vocab = torch.arange(weights.shape[-1], device=weights.device)
    first_hit = torch.where(hit, vocab, weights.shape[-1]).amin(-1)
    # Rounding can leave no index above the threshold: fall back to the last positive weight.
    last_positive = torch.where(weights > 0, vocab, -1).amax(-1)
    return torch.where(first_hit < weights.shape[-1], first_hit, last_positive).clamp_min(0)


def _positive_part(values: torch.Tensor) -> torch.Tensor:
    """max(0, values) with NaN mapped to 0 (``max`` would propagate NaN)."""
    return torch.where(values > 0, values, torch.zeros_like(values))


# ---------------------------------------------------------------------------------------------
# Keep counts of a rejection rate
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# The row layout of in-place compaction
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowLayout:
    """A tensor as rows (``batch_dim``) of ``[outer, mid]`` strided runs of ``inner`` unit-stride
    elements -- the one layout both compaction kernels move in place. Strides in elements."""

    batch_stride: int
    outer: int = 1
    outer_stride: int = 0
    mid: int = 1
    mid_stride: int = 0
    inner: int = 1


def row_layout(tensor: torch.Tensor, batch_dim: int) -> RowLayout:
    """The row layout of ``tensor`` along ``batch_dim``, or ``ValueError`` if it cannot be
    compacted in place: elements that overlap (expanded views), or a row that does not merge,
    in memory order, into at most two strided dims around one unit-stride run (then call
    ``.contiguous()`` yourself -- this op never copies silently). Same rule as
    ``csrc/compact_kv.cpp``."""
    dims = [(size, stride) for size, stride in zip(tensor.shape, tensor.stride())]
    if not _is_non_overlapping([d for d in dims if d[0] > 1]):
        raise ValueError(
            "cannot compact in place: the tensor's elements overlap or interleave in memory "
            f"(shape {list(tensor.shape)}, strides {list(tensor.stride())}, e.g. an expanded view)"
        )
    row_dims = sorted((d for i, d in enumerate(dims) if i != batch_dim and d[0] > 1), key=lambda d: -d[1])
    merged: list[tuple[int, int]] = []
    for size, stride in row_dims:
        if merged and merged[-1][1] == size * stride:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    inner = merged.pop()[0] if merged and merged[-1][1] == 1 else 1
    if len(merged) > 2:
        raise ValueError(
            f"cannot compact in place: a row of this tensor (shape {list(tensor.shape)}, strides "
            f"{list(tensor.stride())}, batch_dim {batch_dim}) has {len(merged)} strided dims after merging; "
            "at most two around one unit-stride run are supported. Make it contiguous first (that copies)."
        )
    batch_stride = tensor.stride(batch_dim) if tensor.shape[batch_dim] > 1 else 0
    outer, outer_stride = merged[0] if merged else (1, 0)
    mid, mid_stride = merged[1] if len(merged) == 2 else (1, 0)
    return RowLayout(batch_stride, outer, outer_stride, mid, mid_stride, inner)


def _is_non_overlapping(dims: list[tuple[int, int]]) -> bool:
    """Sorted by stride, each dim steps past everything the smaller dims span (sufficient)."""
    span = 0
    for size, stride in sorted(dims, key=lambda d: d[1]):
        if stride <= span:
            return False
        span += (size - 1) * stride
    return True


# ---------------------------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------------------------


def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    """``RuntimeError`` naming the argument unless every tensor argument of the raw op ``op`` is on
    one device, as native ops require. The fake kernels call it too: they are what runs when any
    argument is a ``meta`` tensor, and would otherwise return uninitialised outputs for a mix."""
    first_name, device = None, None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if device is None:
            first_name, device = name, tensor.device
        elif tensor.device != device:
            raise RuntimeError(
                f"{op}: {name} is on {tensor.device} but {first_name} is on {device}; "
                "every tensor argument must be on the same device"
            )


def byte_span(tensor: torch.Tensor) -> tuple[int, int]:
    """``[first, last)`` addresses of the bytes ``tensor`` can touch (empty for no elements)."""
    start = tensor.data_ptr()
    if tensor.numel() == 0:
        return start, start
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))  # torch strides are >= 0
    return start, start + (last + 1) * tensor.element_size()


def may_share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two tensors may share a byte. Exact for disjoint spans and for same-layout views
    at different offsets (``kv[:, 0]`` / ``kv[:, 1]`` of a packed cache); conservative otherwise."""
    if a.device != b.device or a.device.type == "meta" or a.numel() == 0 or b.numel() == 0:
        return False  # meta tensors have no memory
    (a_start, a_end), (b_start, b_end) = byte_span(a), byte_span(b)
    if a_end <= b_start or b_end <= a_start:
        return False
    if a.shape != b.shape or a.stride() != b.stride() or a.element_size() != b.element_size():
        return True
    # The same layout shifted by `shift` bytes: disjoint iff the pair, as one tensor with an extra
    # dim of stride `shift`, has no two elements (bytes) at one address.
    element_size = a.element_size()
    byte_dims = [(size, stride * element_size) for size, stride in zip(a.shape, a.stride()) if size > 1]
    shift = abs(a.data_ptr() - b.data_ptr())
    return not _is_non_overlapping([*byte_dims, (element_size, 1), (2, shift)])


def is_int(value) -> bool:
    """An int that is not a bool: ``True`` is an int to Python, never a count or an index here."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` itself, or ``TypeError``/``ValueError`` naming ``name``."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
