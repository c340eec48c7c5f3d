"""In-place KV-cache compaction: ``torch.ops.specdecode.compact_kv_`` and its public wrapper.

One op, one schema (declared in ``csrc/compact_kv.cpp``), a kernel per device -- C++ on CPU
tensors, Triton (``specdecode.kernels.compact_kv``) on CUDA tensors -- and a fake kernel for
``torch.compile``:

``torch.ops.specdecode.compact_kv_(Tensor(a!) data, Tensor kept_indices, int batch_dim) -> ()``:
moves row ``kept_indices[i]`` to row ``i`` in place, no host sync.

``compact_kv_cache_`` adds the argument checks, takes many tensors at once and returns the
narrowed views. The rules (order, in-place safety, what is rejected) are in ``docs/ops.md``; the
reference is ``specdecode.reference.compact_kv``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from specdecode.core import byte_span, check_same_device, is_int, may_share_memory, row_layout

__all__ = ["compact_kv_cache_", "KVCacheCompactor"]

_INDEX_DTYPES = (torch.int32, torch.int64)

_lib = torch.library.Library("specdecode", "IMPL")


def _compact_kv_cuda(data, kept_indices, batch_dim):
    from specdecode.kernels.compact_kv import compact_kv_ as launch

    check_same_device("compact_kv_", data=data, kept_indices=kept_indices)
    _check_writable("compact_kv_: data", data)
    if may_share_memory(data, kept_indices):  # the kernel reads the indices while rows move
        raise RuntimeError("compact_kv_: kept_indices shares memory with data")
    with torch.cuda.device(data.device):
        launch(data, kept_indices, batch_dim)


_lib.impl("compact_kv_", _compact_kv_cuda, "CUDA")


def _compact_kv_bump_version(data, kept_indices, batch_dim):
    """An in-place op must bump ``data._version`` so autograd refuses a tensor it saved for backward
    and then saw compacted; a schema-only C++ op gets no such kernel, so it is registered here (as
    ``torch.library.custom_op`` does for its mutable ops)."""
    with torch._C._AutoDispatchBelowADInplaceOrView():
        torch.ops.specdecode.compact_kv_(data, kept_indices, batch_dim)
    torch.autograd.graph.increment_version(data)


_lib.impl("compact_kv_", _compact_kv_bump_version, "ADInplaceOrView")


@torch.library.register_fake("specdecode::compact_kv_")
def _compact_kv_fake(data, kept_indices, batch_dim):
    check_same_device("compact_kv_", data=data, kept_indices=kept_indices)
    return None


def _check_writable(name: str, tensor: torch.Tensor) -> None:
    """As torch's own in-place ops: a leaf that requires grad must not be overwritten (under
    ``no_grad`` it may)."""
    if torch.is_grad_enabled() and tensor.requires_grad and tensor.is_leaf:
        raise RuntimeError(f"{name} is a leaf Variable that requires grad and is being used in an in-place operation")


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
            Every tensor must have the same number of rows ``B`` along its batch dim. The same
            tensor (view) given twice is compacted once; tensors that otherwise share memory (a
            tensor and its transpose, overlapping slices, ``kept_indices`` itself) raise
            ``ValueError``. Views into disjoint parts of one buffer (``kv[:, 0]``, ``kv[:, 1]``)
            are fine. A leaf that requires grad raises ``RuntimeError`` unless grad is disabled,
            as torch's own in-place ops do.
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
    # Everything is checked before any tensor is touched.
    for i, (tensor, dim) in enumerate(zip(tensors, batch_dims)):
        _check_writable(f"cache[{i}]", tensor)
        try:
            row_layout(tensor, dim)
        except ValueError as error:
            raise ValueError(f"cache[{i}]: {error}") from None
    to_compact = _distinct_tensors(tensors, batch_dims, kept_indices)
    num_kept = kept_indices.numel()
    for i in to_compact:
        torch.ops.specdecode.compact_kv_(tensors[i], kept_indices, batch_dims[i])
    views = [tensor.narrow(dim, 0, num_kept) for tensor, dim in zip(tensors, batch_dims)]
    return views[0] if single else views


def _tensor_list(cache) -> list[torch.Tensor]:
    if isinstance(cache, (str, bytes)) or not isinstance(cache, Sequence):
        raise TypeError(f"cache must be a tensor or a sequence of tensors, got {type(cache).__name__}")
    for i, item in enumerate(cache):
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"cache[{i}] must be a torch.Tensor, got {type(item).__name__}")
    return list(cache)


def _distinct_tensors(tensors: list[torch.Tensor], batch_dims: list[int], kept_indices: torch.Tensor) -> list[int]:
    """Positions of the tensors to compact: an exact duplicate (same memory, layout, dtype and
    batch dim) is compacted once -- twice would move its rows twice. Tensors that share memory
    otherwise (a transpose, an overlapping slice, the indices themselves) raise ``ValueError``."""
    for i, tensor in enumerate(tensors):
        if may_share_memory(tensor, kept_indices):
            raise ValueError(f"cache[{i}] shares memory with kept_indices: compacting it would rewrite the indices")
    # Only tensors whose byte spans intersect can share memory: sorted by where they start, each
    # is compared with the earlier ones whose span reaches it (usually none), not with all.
    spans = [byte_span(tensor) if tensor.device.type != "meta" else (0, 0) for tensor in tensors]
    duplicate_of: dict[int, int] = {}
    open_spans: list[int] = []
    for i in sorted(range(len(tensors)), key=lambda k: (spans[k][0], k)):
        open_spans = [j for j in open_spans if spans[j][1] > spans[i][0]]
        for j in open_spans:
            first, second = min(i, j), max(i, j)
            if not may_share_memory(tensors[first], tensors[second]):
                continue
            if not (_same_view(tensors[first], tensors[second]) and batch_dims[first] == batch_dims[second]):
                raise ValueError(
                    f"cache[{first}] and cache[{second}] share memory but are not the same view along the same "
                    "batch dim (e.g. a tensor and its transpose or an overlapping slice): compacting both would "
                    "move rows twice"
                )
            duplicate_of[second] = first
        open_spans.append(i)
    return [i for i in range(len(tensors)) if i not in duplicate_of]


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()


def _batch_dims(batch_dim, tensors: list[torch.Tensor]) -> list[int]:
    if not (is_int(batch_dim) or isinstance(batch_dim, Sequence)):
        raise TypeError(f"batch_dim must be an int or a sequence of ints, got {type(batch_dim).__name__}")
    dims = [batch_dim] * len(tensors) if isinstance(batch_dim, int) else list(batch_dim)
    if len(dims) != len(tensors):
        raise ValueError(f"batch_dim has {len(dims)} entries for {len(tensors)} tensors")
    wrapped = []
    for i, (tensor, dim) in enumerate(zip(tensors, dims)):
        if not is_int(dim):
            raise TypeError(f"batch_dim[{i}] must be an int, got {type(dim).__name__}")
        if not -tensor.dim() <= dim < tensor.dim():
            raise ValueError(f"batch_dim {dim} is out of range for cache tensor {i} of shape {list(tensor.shape)}")
        wrapped.append(dim % tensor.dim())
    return wrapped


def _check_kept_indices(kept_indices, tensors, batch_dims, validate: bool) -> torch.Tensor:
    if not isinstance(kept_indices, torch.Tensor):
        raise TypeError(f"kept_indices must be a torch.Tensor, got {type(kept_indices).__name__}")
    if kept_indices.dim() != 1 or kept_indices.dtype not in _INDEX_DTYPES:
        raise ValueError(
            f"kept_indices must be a 1-D int64 tensor; got {kept_indices.dtype} of shape {list(kept_indices.shape)}"
        )
    rows = {tensor.shape[dim] for tensor, dim in zip(tensors, batch_dims)}
    if len(rows) > 1:
        sizes = [tensor.shape[dim] for tensor, dim in zip(tensors, batch_dims)]
        raise ValueError(f"cache tensors have different batch sizes along their batch dims: {sizes}")
    num_rows = rows.pop() if rows else 0
    if kept_indices.numel() > num_rows:
        raise ValueError(f"kept_indices has {kept_indices.numel()} entries for a batch of only {num_rows} rows")
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
        raise ValueError(
            f"kept_indices must be strictly ascending: kept_indices[{i - 1}] = "
            f"{int(kept_indices[i - 1])}, kept_indices[{i}] = {int(kept_indices[i])} ({what})"
        )


# ---------------------------------------------------------------------------------------------
# Modules


class KVCacheCompactor(torch.nn.Module):
    """``compact_kv_cache_`` as a module: ``forward(cache, kept_indices) -> narrowed view(s)``,
    with ``batch_dim`` (one, or one per tensor) and ``validate`` fixed at construction."""

    def __init__(self, batch_dim: int | Sequence[int] = 0, validate: bool = False) -> None:
        super().__init__()
        self.batch_dim = batch_dim if isinstance(batch_dim, int) else tuple(batch_dim)
        self.validate = validate

    def forward(
        self, cache: torch.Tensor | Sequence[torch.Tensor], kept_indices: torch.Tensor
    ) -> torch.Tensor | list[torch.Tensor]:
        return compact_kv_cache_(cache, kept_indices, self.batch_dim, validate=self.validate)

    def extra_repr(self) -> str:
        return f"batch_dim={self.batch_dim}, validate={self.validate}"
