"""Triton kernel for in-place, order-preserving row compaction (``compact_kv_``).

Row ``kept[i]`` along the batch dim moves to row ``i``. The reference is
``specdecode/reference/compact_kv.py``; ``csrc/compact_kv.cpp`` is the CPU twin.

Why the parallel kernel has no race, and needs no scratch: ``kept`` is strictly ascending, so
``kept[i] >= i`` -- every destination is at or before its source. One *sequential* pass in
ascending ``i`` is therefore a correct in-place compaction: step ``i`` reads row ``kept[i] >= i``,
which no earlier step wrote (they wrote rows ``< i``), and writes row ``i``, whose old contents
the step ``j <= i`` with ``kept[j] == i`` already read. The kernel parallelises across
*columns*, not rows: each program owns one tile of element positions inside a row (the same
positions in every row) and runs the whole ascending pass over ``i`` on that tile. Programs never
touch the same address, so they need no ordering between them. Inside a program, loads may run
ahead of earlier stores: iteration ``t`` reads row ``kept[t]``, written only at iteration
``kept[t] >= t``, never before -- so a program moves four rows per step, loading all four before
storing any (more bytes in flight), and hoisting loads further (software pipelining) stays safe.
A row both read and written within one step is read first; if the compiler hands a tile from
the loading threads to other storing threads, that goes through shared memory and a barrier,
which orders the load before the store just the same. Each surviving row is read and
written once; rows already in place (``kept[i] == i``) are not touched; rows ``>= N'`` are never
written.

Small tensors (survivors of at most ``SMALL_SCRATCH_BYTES`` in all) skip the kernel: a gather
into a scratch of that size and a copy back, both fully parallel (see ``compact_kv_``).

Any dtype: the tensor is addressed as words of its element size (int8/16/32/64; 16-byte
elements as two int64 words), so bits move unchanged (NaN payloads, int8 quantised caches).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from specdecode.core import row_layout  # the one layout rule, shared with the public checks

from . import is_interpreting
from ._aot import AotCase


@triton.jit
def _source_row(kept_ptr, row, num_kept, num_rows, lanes, lanes_in_run):
    """Where destination ``row`` reads from, and which lanes of the tile move. Nothing moves for
    rows past N', rows already in place, or (unvalidated) sources outside [0, num_rows): the
    kernel never touches memory outside the tensor. The mask is an integer limit, not a scalar
    and-ed into it (the interpreter rejects masks broadcast from a scalar)."""
    in_range = row < num_kept
    source = tl.load(kept_ptr + row, mask=in_range, other=0)
    moves = in_range & (source != row) & (source >= 0) & (source < num_rows)
    return source, lanes < tl.where(moves, lanes_in_run, 0)


@triton.jit
def _compact_kv_kernel(
    data_ptr, kept_ptr, num_kept, num_rows, batch_stride, mid, outer_stride, mid_stride, inner, BLOCK: tl.constexpr
):
    pid = tl.program_id(0)
    tiles_per_run = tl.cdiv(inner, BLOCK)
    tile = pid % tiles_per_run
    segment = pid // tiles_per_run  # (outer, mid) position of this program's run
    segment_offset = (segment // mid).to(tl.int64) * outer_stride + (segment % mid).to(tl.int64) * mid_stride
    columns = segment_offset + tile.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    lanes_in_run = inner - tile * BLOCK  # lanes below this are inside the run
    lanes = tl.arange(0, BLOCK)
    # Four destinations per step, all four loads before the four stores, for four tiles in
    # flight per program. Safe: the step's loads read rows kept[i..i+3] >= i, which earlier
    # steps (rows < i) never wrote; a row the step both reads and writes (kept[i] = i + 1, say)
    # is read first; and later steps read rows >= i + 4, which this step does not write.
    for first in range(0, num_kept, 4):
        row = tl.to_tensor(first).to(tl.int64)  # a plain int under the interpreter
        source0, active0 = _source_row(kept_ptr, row, num_kept, num_rows, lanes, lanes_in_run)
        source1, active1 = _source_row(kept_ptr, row + 1, num_kept, num_rows, lanes, lanes_in_run)
        source2, active2 = _source_row(kept_ptr, row + 2, num_kept, num_rows, lanes, lanes_in_run)
        source3, active3 = _source_row(kept_ptr, row + 3, num_kept, num_rows, lanes, lanes_in_run)
        values0 = tl.load(data_ptr + source0 * batch_stride + columns, mask=active0)
        values1 = tl.load(data_ptr + source1 * batch_stride + columns, mask=active1)
        values2 = tl.load(data_ptr + source2 * batch_stride + columns, mask=active2)
        values3 = tl.load(data_ptr + source3 * batch_stride + columns, mask=active3)
        tl.store(data_ptr + row * batch_stride + columns, values0, mask=active0)
        tl.store(data_ptr + (row + 1) * batch_stride + columns, values1, mask=active1)
        tl.store(data_ptr + (row + 2) * batch_stride + columns, values2, mask=active2)
        tl.store(data_ptr + (row + 3) * batch_stride + columns, values3, mask=active3)


NUM_WARPS = 4
_WORD_DTYPES = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_TILE_BYTES = 4096  # per program and row: 32 bytes per lane at 4 warps; four rows in flight


def block_size(inner_words: int, word_bytes: int, interpreting: bool | None = None) -> int:
    """Tile width in words: 4 KiB on GPU (the interpreter pays per tile: 128 KiB), never much
    wider than the contiguous run."""
    interpreting = is_interpreting() if interpreting is None else interpreting
    cap = (_TILE_BYTES * (32 if interpreting else 1)) // word_bytes
    return max(16, min(triton.next_power_of_2(max(inner_words, 1)), cap))


def _word_view(data: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A 1-D word tensor starting at ``data``'s first element, and words per element."""
    element_bytes = data.element_size()
    word_bytes = element_bytes if element_bytes in _WORD_DTYPES else 8
    if element_bytes % word_bytes:
        raise TypeError(f"compact_kv_: element size {element_bytes} bytes is not supported on this device")
    per_element = element_bytes // word_bytes
    storage = data.untyped_storage()
    offset = data.storage_offset() * per_element
    words = torch.empty(0, dtype=_WORD_DTYPES[word_bytes], device=data.device)
    words.set_(storage, offset, (storage.nbytes() // word_bytes - offset,), (1,))
    return words, per_element


# Survivors of at most this many bytes in all are gathered into a scratch buffer and copied back
# (two fully parallel torch ops) instead of launching the kernel: for small per-row state (lengths,
# token ids) the column-parallel kernel has a handful of programs walking N' rows one after the
# other, latency-bound, while the scratch is small by construction.
SMALL_SCRATCH_BYTES = 1 << 20


def compact_kv_(
    data: torch.Tensor,
    kept_indices: torch.Tensor,
    batch_dim: int,
    block: int | None = None,
    scratch_bytes: int = SMALL_SCRATCH_BYTES,
) -> None:
    """Launch the compaction. Arguments as ``torch.ops.specdecode.compact_kv_``: ``data`` any
    dtype and rank, ``kept_indices [N']`` int64 on the same device (strictly ascending; values
    are the caller's to check), ``batch_dim`` the row dim. Raises ``ValueError`` for layouts that
    cannot be compacted in place. ``block`` overrides the tile width (words); survivors totalling
    at most ``scratch_bytes`` go through a gather into scratch instead (0: always the kernel).
    No host sync."""
    layout = row_layout(data, batch_dim)
    num_kept = kept_indices.numel()
    if num_kept == 0 or data.numel() == 0:
        return
    num_rows = data.shape[batch_dim]
    if num_kept * (data.numel() // num_rows) * data.element_size() <= scratch_bytes:
        # Clamped, so unvalidated indices cannot read out of bounds (their rows are unspecified).
        survivors = data.index_select(batch_dim, kept_indices.clamp(0, num_rows - 1))
        data.narrow(batch_dim, 0, num_kept).copy_(survivors)
        return
    words, per_element = _word_view(data)
    inner = layout.inner * per_element
    block = block or block_size(inner, words.element_size())
    grid = (layout.outer * layout.mid * triton.cdiv(inner, block),)
    _compact_kv_kernel[grid](
        words,
        kept_indices.contiguous(),
        num_kept,
        num_rows,
        layout.batch_stride * per_element,
        layout.mid,
        layout.outer_stride * per_element,
        layout.mid_stride * per_element,
        inner,
        BLOCK=block,
        num_warps=NUM_WARPS,
    )


def aot_cases() -> list[AotCase]:
    """The launches compaction makes for KV caches: every word size at the full GPU tile, and a
    narrow tile (head_dim-sized runs of a strided view)."""
    cases = []
    for word_bytes, word_dtype in _WORD_DTYPES.items():
        pointer = {1: "*i8", 2: "*i16", 4: "*i32", 8: "*i64"}[word_bytes]
        for block in (block_size(1 << 20, word_bytes, interpreting=False), 128):
            signature = {
                "data_ptr": pointer,
                "kept_ptr": "*i64",
                "num_kept": "i32",
                "num_rows": "i32",
                "batch_stride": "i64",
                "mid": "i32",
                "outer_stride": "i64",
                "mid_stride": "i64",
                "inner": "i32",
                "BLOCK": "constexpr",
            }
            cases.append(
                AotCase(
                    f"compact_kv_[{str(word_dtype)[6:]},BLOCK={block}]",
                    _compact_kv_kernel,
                    signature,
                    {"BLOCK": block},
                    NUM_WARPS,
                    divisible_by_16=("data_ptr", "kept_ptr", "batch_stride", "outer_stride", "mid_stride", "inner"),
                )
            )
    return cases
