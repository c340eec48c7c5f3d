"""Speculative Rejection ops: batched per-prompt top-k reward pruning and in-place KV compaction.

Two ops, one schema each (declared in ``csrc/topk_prune.cpp`` and ``csrc/compact_kv.cpp``), a
kernel per device -- C++ on CPU tensors, Triton (``specdecode.kernels.topk_prune`` /
``compact_kv``) on CUDA tensors -- and fake kernels for ``torch.compile``:

- ``torch.ops.specdecode.topk_prune_mask(Tensor rewards, Tensor group_sizes, Tensor num_keep)
  -> Tensor keep_mask``: fixed shape (``[N]`` bool), no host sync; the op CUDA-graph users call.
- ``torch.ops.specdecode.compact_rows_(Tensor(a!) data, Tensor kept_indices, int batch_dim)
  -> ()``: moves row ``kept_indices[i]`` to row ``i`` in place, no host sync.

The public functions ``topk_prune`` and ``compact_kv_cache_`` add the argument checks and the
data-dependent shapes. The semantics are ``specdecode.reference.pruning`` (read its docstring).

A round of Speculative Rejection::

    res = sd.topk_prune(rewards, group_sizes, alpha=0.5)
    cache = sd.compact_kv_cache_(cache, res.kept_indices, batch_dim=2)
    group_sizes = res.kept_group_sizes
"""
from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple, Sequence

import torch

from specdecode.reference.pruning import num_keep_from_alpha

__all__ = ["topk_prune", "compact_kv_cache_", "kept_indices_from_mask", "num_keep_from_alpha",
           "PruneResult", "RewardPruner", "KVCacheCompactor", "row_layout", "RowLayout"]

_REWARD_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_INDEX_DTYPES = (torch.int32, torch.int64)

_lib = torch.library.Library("specdecode", "IMPL")


def _topk_prune_mask_cuda(rewards, group_sizes, num_keep):
    from specdecode.kernels.topk_prune import topk_prune_mask as launch

    with torch.cuda.device(rewards.device):
        return launch(rewards, group_sizes, num_keep)


def _compact_rows_cuda(data, kept_indices, batch_dim):
    from specdecode.kernels.compact_kv import compact_rows_ as launch

    with torch.cuda.device(data.device):
        launch(data, kept_indices, batch_dim)


_lib.impl("topk_prune_mask", _topk_prune_mask_cuda, "CUDA")
_lib.impl("compact_rows_", _compact_rows_cuda, "CUDA")


@torch.library.register_fake("specdecode::topk_prune_mask")
def _topk_prune_mask_fake(rewards, group_sizes, num_keep):
    return torch.empty_like(rewards, dtype=torch.bool)


@torch.library.register_fake("specdecode::compact_rows_")
def _compact_rows_fake(data, kept_indices, batch_dim):
    return None


class PruneResult(NamedTuple):
    kept_indices: torch.Tensor  # [N'] int64, ascending: survivors in order, groups contiguous
    kept_group_sizes: torch.Tensor  # [P] int64: survivors per group (= num_keep)
    keep_mask: torch.Tensor  # [N] bool: the fixed-shape form


# ---------------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------------

def topk_prune(
    rewards: torch.Tensor,
    group_sizes: torch.Tensor | Sequence[int],
    alpha: Real | None = None,
    *,
    num_keep: torch.Tensor | Sequence[int] | None = None,
) -> PruneResult:
    """Keep the best candidates of every prompt by (partial) reward, for many prompts at once.

    Args:
        rewards: ``[N]`` float32/float16/bfloat16 rewards. Candidates of prompt ``g`` are the
            contiguous slice given by ``group_sizes``. NaN ranks below every number; equal
            rewards go to the lower index; ``-0.0`` equals ``+0.0``.
        group_sizes: ``[P]`` ints (tensor or sequence), non-negative, summing to ``N``. Empty
            groups are fine.
        alpha: rejection rate in ``[0, 1]``: group ``g`` keeps ``max(1, ⌈(1−α)·n_g⌉)`` (0 if
            empty). Rounding is exact: α is read as the decimal that prints for it, so
            ``α = 0.7, n = 10`` keeps 3 (float arithmetic would give ``ceil(3.0000000000000004)``
            = 4). ``α = 0`` keeps all, ``α = 1`` keeps one per non-empty group.
        num_keep: instead of ``alpha``, ``[P]`` ints in ``[0, n_g]``.

    Returns:
        ``PruneResult(kept_indices [N'] int64 ascending, kept_group_sizes [P] int64,
        keep_mask [N] bool)`` on the device of ``rewards``. Inputs are not modified.

    Host sync: ``group_sizes`` and ``num_keep`` are read on the host (to check them and to size
    ``kept_indices``) -- one transfer if they are device tensors, none if they are host values.
    The rest runs on the device without a sync. For CUDA graphs call the fixed-shape op
    ``torch.ops.specdecode.topk_prune_mask`` and ``kept_indices_from_mask`` directly.

    Raises:
        TypeError / ValueError naming the argument: wrong dtype or rank, both or neither of
        ``alpha``/``num_keep``, ``alpha`` outside ``[0, 1]``, group sizes negative or not
        summing to ``N``, ``num_keep[g]`` negative or larger than group ``g``.
    """
    _check_rewards(rewards)
    sizes, keeps = _host_sizes_and_keeps(group_sizes, alpha, num_keep)
    _check_groups(sizes, keeps, rewards.numel())
    device = rewards.device
    sizes_t, keeps_t = torch.tensor([sizes, keeps], dtype=torch.int64).to(device, non_blocking=True)
    keep_mask = torch.ops.specdecode.topk_prune_mask(rewards, sizes_t, keeps_t)
    return PruneResult(kept_indices_from_mask(keep_mask, sum(keeps)), keeps_t, keep_mask)


def kept_indices_from_mask(keep_mask: torch.Tensor, num_kept: int) -> torch.Tensor:
    """``[num_kept]`` int64 ascending indices of the True entries of a ``[N]`` bool mask, with
    the count given by the caller (``sum(num_keep)``), so no host sync and a static shape on a
    device (entries past the real count would be -1). On the host the count is checked."""
    if keep_mask.dtype != torch.bool or keep_mask.dim() != 1:
        raise ValueError(f"keep_mask must be a 1-D bool tensor; got {keep_mask.dtype} of shape {list(keep_mask.shape)}")
    if not 0 <= num_kept <= keep_mask.numel():
        raise ValueError(f"num_kept = {num_kept} is outside [0, N = {keep_mask.numel()}]")
    if keep_mask.device.type == "cpu":  # no sync to avoid on the host, and nonzero is faster there
        indices = keep_mask.nonzero().flatten()
        if indices.numel() != num_kept:
            raise ValueError(f"keep_mask has {indices.numel()} True entries, not num_kept = {num_kept}")
        return indices
    return torch.nonzero_static(keep_mask, size=num_kept, fill_value=-1).flatten()


def _check_rewards(rewards) -> None:
    if not isinstance(rewards, torch.Tensor):
        raise TypeError(f"rewards must be a torch.Tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D [N]; got shape {list(rewards.shape)}")
    if rewards.dtype not in _REWARD_DTYPES:
        raise TypeError(f"rewards must be float32, float16 or bfloat16; got {str(rewards.dtype).removeprefix('torch.')}")


def _host_sizes_and_keeps(group_sizes, alpha, num_keep) -> tuple[list[int], list[int]]:
    if (alpha is None) == (num_keep is None):
        raise ValueError("give exactly one of alpha (a rejection rate) and num_keep (counts per group)")
    if alpha is not None:
        if isinstance(alpha, bool) or not isinstance(alpha, Real):
            raise TypeError(f"alpha must be a real number in [0, 1], got {type(alpha).__name__}")
        if not 0 <= alpha <= 1:  # NaN fails too
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        sizes = _host_ints("group_sizes", group_sizes)
        return sizes, num_keep_from_alpha(sizes, alpha)
    if (isinstance(group_sizes, torch.Tensor) and isinstance(num_keep, torch.Tensor)
            and group_sizes.device.type != "cpu" and group_sizes.shape == num_keep.shape
            and group_sizes.device == num_keep.device and group_sizes.dim() == 1):
        _check_int_tensor("group_sizes", group_sizes)
        _check_int_tensor("num_keep", num_keep)
        both = torch.stack([group_sizes.to(torch.int64), num_keep.to(torch.int64)]).tolist()  # the one sync
        return both[0], both[1]
    return _host_ints("group_sizes", group_sizes), _host_ints("num_keep", num_keep)


def _check_int_tensor(name: str, value: torch.Tensor) -> None:
    if value.dim() != 1 or value.dtype not in _INDEX_DTYPES:
        raise ValueError(f"{name} must be a 1-D int32/int64 tensor; got {value.dtype} of shape {list(value.shape)}")


def _host_ints(name: str, value) -> list[int]:
    if isinstance(value, torch.Tensor):
        _check_int_tensor(name, value)
        return value.tolist()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a 1-D int tensor or a sequence of ints, got {type(value).__name__}")
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, int):
            raise TypeError(f"{name}[{i}] must be an int, got {type(item).__name__}")
    return list(value)


def _check_groups(sizes: list[int], keeps: list[int], num_rewards: int) -> None:
    if len(sizes) != len(keeps):
        raise ValueError(f"num_keep has {len(keeps)} entries but group_sizes has {len(sizes)} groups")
    for g, (size, keep) in enumerate(zip(sizes, keeps)):
        if size < 0:
            raise ValueError(f"group_sizes[{g}] = {size} is negative")
        if not 0 <= keep <= size:
            raise ValueError(f"num_keep[{g}] = {keep} is outside [0, {size}] (group {g} has {size} candidates)")
    if sum(sizes) != num_rewards:
        raise ValueError(f"group_sizes sum to {sum(sizes)} but rewards has N = {num_rewards} entries")


# ---------------------------------------------------------------------------------------------
# Compaction
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
        raise ValueError("cannot compact in place: the tensor's elements overlap or interleave in memory "
                         f"(shape {list(tensor.shape)}, strides {list(tensor.stride())}, e.g. an expanded view)")
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
            "at most two around one unit-stride run are supported. Make it contiguous first (that copies).")
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


def compact_kv_cache_(
    cache: torch.Tensor | Sequence[torch.Tensor],
    kept_indices: torch.Tensor,
    batch_dim: int | Sequence[int] = 0,
    *,
    validate: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Compact a KV cache (and any per-row state) in place after pruning: row ``kept_indices[i]``
    along ``batch_dim`` moves to row ``i``, order preserved.

    Args:
        cache: a tensor, or a sequence of tensors (the K/V caches, token buffers, lengths...), of
            any dtype (float32/bfloat16/float16, int8 quantised caches, ints, bools) and rank.
            Every tensor must have the same number of rows ``B`` along its batch dim.
        kept_indices: ``[N']`` int64 (or int32), strictly ascending, in ``[0, B)`` --
            ``topk_prune(...).kept_indices``. On the tensors' device.
        batch_dim: the row dim, one for all tensors or one per tensor (negative counts from the end).
        validate: check the index values (ascending, distinct, in range) and raise ``ValueError``.
            Needs a device sync, so it is off by default for device tensors; host indices are
            always checked (free).

    Returns:
        Each tensor narrowed to its first ``N'`` rows (views of the caller's storage), a single
        tensor or a list as given. Rows ``[N', B)`` keep stale data.

    Memory: never a second cache. Each surviving row is moved once and rows already in place
    are not moved, with no scratch at all -- except on CUDA for tensors whose survivors total at
    most 1 MiB (lengths, token ids), which are gathered into a scratch of that size and copied
    back in two fully parallel steps (``specdecode.kernels.compact_kv.SMALL_SCRATCH_BYTES``).
    Layouts that cannot be compacted in place (see ``row_layout``) raise ``ValueError`` before
    any tensor is modified; nothing is ever copied silently.

    Host sync: none, unless ``validate=True`` with device indices.
    """
    single = isinstance(cache, torch.Tensor)
    tensors = [cache] if single else _tensor_list(cache)
    batch_dims = _batch_dims(batch_dim, tensors)
    kept_indices = _check_kept_indices(kept_indices, tensors, batch_dims, validate)
    for tensor, dim in zip(tensors, batch_dims):
        row_layout(tensor, dim)  # every layout is checked before any tensor is touched
    num_kept = kept_indices.numel()
    views = []
    for tensor, dim in zip(tensors, batch_dims):
        torch.ops.specdecode.compact_rows_(tensor, kept_indices, dim)
        views.append(tensor.narrow(dim, 0, num_kept))
    return views[0] if single else views


def _tensor_list(cache) -> list[torch.Tensor]:
    if isinstance(cache, (str, bytes)) or not isinstance(cache, Sequence):
        raise TypeError(f"cache must be a tensor or a sequence of tensors, got {type(cache).__name__}")
    for i, item in enumerate(cache):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"cache[{i}] must be a torch.Tensor, got {type(item).__name__}")
    return list(cache)


def _batch_dims(batch_dim, tensors: list[torch.Tensor]) -> list[int]:
    if isinstance(batch_dim, bool) or not isinstance(batch_dim, (int, Sequence)):
        raise TypeError(f"batch_dim must be an int or a sequence of ints, got {type(batch_dim).__name__}")
    dims = [batch_dim] * len(tensors) if isinstance(batch_dim, int) else list(batch_dim)
    if len(dims) != len(tensors):
        raise ValueError(f"batch_dim has {len(dims)} entries for {len(tensors)} tensors")
    wrapped = []
    for i, (tensor, dim) in enumerate(zip(tensors, dims)):
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"batch_dim[{i}] must be an int, got {type(dim).__name__}")
        if not -tensor.dim() <= dim < tensor.dim():
            raise ValueError(f"batch_dim {dim} is out of range for cache tensor {i} of shape {list(tensor.shape)}")
        wrapped.append(dim % tensor.dim())
    return wrapped


def _check_kept_indices(kept_indices, tensors, batch_dims, validate: bool) -> torch.Tensor:
    if not isinstance(kept_indices, torch.Tensor):
        raise TypeError(f"kept_indices must be a torch.Tensor, got {type(kept_indices).__name__}")
    if kept_indices.dim() != 1 or kept_indices.dtype not in _INDEX_DTYPES:
        raise ValueError(f"kept_indices must be a 1-D int64 tensor; got {kept_indices.dtype} "
                         f"of shape {list(kept_indices.shape)}")
    rows = {tensor.shape[dim] for tensor, dim in zip(tensors, batch_dims)}
    if len(rows) > 1:
        sizes = [tensor.shape[dim] for tensor, dim in zip(tensors, batch_dims)]
        raise ValueError(f"cache tensors have different batch sizes along their batch dims: {sizes}")
    num_rows = rows.pop() if rows else 0
    if kept_indices.numel() > num_rows:
        raise ValueError(f"{kept_indices.numel()} kept indices for a batch of only {num_rows} rows")
    for i, tensor in enumerate(tensors):
        if tensor.device != kept_indices.device:
            raise ValueError(f"cache tensor {i} is on {tensor.device} but kept_indices is on {kept_indices.device}")
    kept_indices = kept_indices.to(torch.int64).contiguous()
    if validate or kept_indices.device.type == "cpu":
        _check_index_values(kept_indices, num_rows)
    return kept_indices


def _check_index_values(kept_indices: torch.Tensor, num_rows: int) -> None:
    if kept_indices.numel() == 0:
        return
    out_of_range = (kept_indices < 0) | (kept_indices >= num_rows)
    if bool(out_of_range.any()):
        i = int(out_of_range.nonzero()[0])
        raise ValueError(f"kept_indices[{i}] = {int(kept_indices[i])} is outside [0, {num_rows})")
    not_ascending = kept_indices[1:] <= kept_indices[:-1]
    if bool(not_ascending.any()):
        i = int(not_ascending.nonzero()[0]) + 1
        what = "a duplicate" if int(kept_indices[i]) == int(kept_indices[i - 1]) else "not ascending"
        raise ValueError(f"kept_indices must be strictly ascending: kept_indices[{i - 1}] = "
                         f"{int(kept_indices[i - 1])}, kept_indices[{i}] = {int(kept_indices[i])} ({what})")


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------

class RewardPruner(torch.nn.Module):
    """``topk_prune`` as a module: ``forward(rewards, group_sizes, num_keep=None) -> PruneResult``,
    with the rejection rate ``alpha`` fixed at construction (``num_keep`` overrides it)."""

    def __init__(self, alpha: Real) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
        self.alpha = alpha

    def forward(self, rewards: torch.Tensor, group_sizes: torch.Tensor | Sequence[int],
                num_keep: torch.Tensor | Sequence[int] | None = None) -> PruneResult:
        if num_keep is not None:
            return topk_prune(rewards, group_sizes, num_keep=num_keep)
        return topk_prune(rewards, group_sizes, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class KVCacheCompactor(torch.nn.Module):
    """``compact_kv_cache_`` as a module: ``forward(cache, kept_indices) -> narrowed view(s)``,
    with ``batch_dim`` (one, or one per tensor) and ``validate`` fixed at construction."""

    def __init__(self, batch_dim: int | Sequence[int] = 0, validate: bool = False) -> None:
        super().__init__()
        self.batch_dim = batch_dim if isinstance(batch_dim, int) else tuple(batch_dim)
        self.validate = validate

    def forward(self, cache: torch.Tensor | Sequence[torch.Tensor],
                kept_indices: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        return compact_kv_cache_(cache, kept_indices, self.batch_dim, validate=self.validate)

    def extra_repr(self) -> str:
        return f"batch_dim={self.batch_dim}, validate={self.validate}"
