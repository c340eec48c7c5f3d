"""compact_kv_ / compact_kv_cache_: in-place, order-preserving row compaction.

Every case runs on a view inside a larger byte buffer filled with random bytes, and checks the
whole buffer: the first N' rows of the view hold exactly the bytes of ``index_select`` of the
original, and every other byte of the buffer (rows >= N', padding, gaps of strided views) is
unchanged. Both kernels: the C++ op on CPU tensors, the Triton launcher under the interpreter.
"""

import itertools

import pytest
import torch
from devices import launcher

import specdecode as sd
from specdecode.reference.compact_kv import compact_kv as reference_compact

# The Triton launcher on the test device (tests/devices.py); in place, so the caller's CPU tensor is
# compacted either way.
triton_compact_kv_ = launcher("compact_kv", "compact_kv_")


def cpp_compact(data, kept_indices, batch_dim):
    torch.ops.specdecode.compact_kv_(data, kept_indices, batch_dim)


def public_compact(data, kept_indices, batch_dim):
    view = sd.compact_kv_cache_(data, kept_indices, batch_dim)
    assert view.data_ptr() == data.data_ptr() and view.shape[batch_dim] == kept_indices.numel()


def triton_kernel_compact(data, kept_indices, batch_dim):
    triton_compact_kv_(data, kept_indices, batch_dim, scratch_bytes=0)  # the kernel, at every size


KERNELS = {
    "cpp": cpp_compact,
    "triton": triton_kernel_compact,
    "triton-small-scratch": triton_compact_kv_,
    "public": public_compact,
}


def random_buffer(numel: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """A 1-D tensor of random bytes (NaN payloads included); bools get valid 0/1 bytes."""
    itemsize = torch.empty(0, dtype=dtype).element_size()
    high = 2 if dtype == torch.bool else 256
    raw = torch.randint(0, high, (numel * itemsize,), dtype=torch.uint8, generator=generator)
    return raw.view(dtype)


def make_view(kind: str, shape, dtype, generator, pad: int = 5):
    """(buffer, view): a view of the given shape inside a bigger random buffer.

    contiguous: dense, with padding on both sides; sliced: the second-to-last dim is a slice of a
    wider one (a preallocated sequence buffer at its current length), a strided "mid" dim;
    permuted: dense storage whose dim order differs from the view's."""
    shape = list(shape)
    if kind == "contiguous":
        numel = int(torch.Size(shape).numel())
        buffer = random_buffer(numel + 2 * pad, dtype, generator)
        return buffer, buffer[pad : pad + numel].view(shape)
    if kind == "sliced":
        wide = shape[:-2] + [shape[-2] + 3, shape[-1]]
        buffer = random_buffer(int(torch.Size(wide).numel()), dtype, generator)
        return buffer, buffer.view(wide)[..., 1 : 1 + shape[-2], :]
    if kind == "permuted":
        order = list(range(len(shape)))[::-1]  # storage dims reversed
        stored = [shape[d] for d in order]
        buffer = random_buffer(int(torch.Size(stored).numel()), dtype, generator)
        return buffer, buffer.view(stored).permute(*[order.index(d) for d in range(len(shape))])
    raise ValueError(kind)


def check_compaction(kernel, kind, shape, dtype, batch_dim, kept, generator):
    buffer, view = make_view(kind, shape, dtype, generator)
    kept_indices = torch.tensor(kept, dtype=torch.int64)
    expected_rows = reference_compact(view, kept_indices, batch_dim).clone()
    # The expected buffer: the original with the first N' rows of the view replaced.
    expected_buffer = buffer.clone()
    _, expected_view = make_view_like(expected_buffer, buffer, view)
    expected_view.narrow(batch_dim, 0, len(kept)).copy_(expected_rows)

    KERNELS[kernel](view, kept_indices, batch_dim)

    as_bytes = lambda t: t.view(torch.uint8)  # noqa: E731  (bitwise: NaN payloads compare)
    assert torch.equal(as_bytes(buffer), as_bytes(expected_buffer)), (kind, shape, dtype, batch_dim, kept)


def make_view_like(new_buffer, buffer, view):
    offset = view.storage_offset() - buffer.storage_offset()
    return new_buffer, new_buffer.as_strided(view.shape, view.stride(), new_buffer.storage_offset() + offset)


# (kind, shape with B in place of the batch size, batch_dim, dtype)
EXHAUSTIVE_LAYOUTS = [
    ("contiguous", ("B", 3), 0, torch.float32),
    ("contiguous", (2, "B", 3), 1, torch.bfloat16),
    ("contiguous", (3, 2, "B"), 2, torch.int8),  # batch last: one-element runs
    ("contiguous", ("B",), 0, torch.bool),
    ("sliced", ("B", 2, 3, 4), 0, torch.float16),  # strided mid dim
    ("sliced", (2, "B", 3, 2), 1, torch.float64),
    ("permuted", ("B", 2, 3), 0, torch.int32),  # batch has the smallest stride: rows interleave
]


def shape_with(shape, num_rows):
    return tuple(num_rows if s == "B" else s for s in shape)


@pytest.mark.parametrize("kernel", ["cpp", "triton", "triton-small-scratch"])
@pytest.mark.parametrize(
    "kind,shape,batch_dim,dtype",
    EXHAUSTIVE_LAYOUTS,
    ids=[f"{k}-{'x'.join(map(str, s))}-dim{d}-{str(t)[6:]}" for k, s, d, t in EXHAUSTIVE_LAYOUTS],
)
def test_every_ascending_kept_set_up_to_8_rows(kernel, kind, shape, batch_dim, dtype):
    generator = torch.Generator().manual_seed(0)
    # One-element runs cost the interpreter a program per element: 6 rows there (127 kept sets).
    one_element_runs = kind == "permuted" or shape[-1] == "B"
    max_rows = 6 if kernel == "triton" and one_element_runs else 8
    for num_rows in range(1, max_rows + 1):
        for count in range(num_rows + 1):
            for kept in itertools.combinations(range(num_rows), count):
                check_compaction(kernel, kind, shape_with(shape, num_rows), dtype, batch_dim, list(kept), generator)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", range(6))
def test_random_large_cases(kernel, case):
    generator = torch.Generator().manual_seed(100 + case)
    layouts = [
        ("contiguous", (2, 2, 37, 3, 11, 8), 2, torch.bfloat16),  # [L, K/V, B, H, S, D]
        ("sliced", (50, 4, 33, 16), 0, torch.int8),  # int8 cache at its current length
        ("contiguous", (24, 20000), 0, torch.float32),  # rows wider than the C++ per-thread grain
        ("sliced", (3, 40, 5, 64), 1, torch.float16),
        ("permuted", (30, 4, 9), 2, torch.float32),
        ("contiguous", (2, 64, 4, 5), 1, torch.complex128),  # 16-byte elements
    ]
    kind, shape, batch_dim, dtype = layouts[case]
    num_rows = shape[batch_dim]
    for keep_fraction in (0.1, 0.5, 0.9):
        kept = sorted(torch.randperm(num_rows, generator=generator)[: max(1, int(keep_fraction * num_rows))].tolist())
        check_compaction(kernel, kind, shape, dtype, batch_dim, kept, generator)


def test_triton_many_tiles_per_row():
    generator = torch.Generator().manual_seed(5)
    for kept in ([1, 2, 5, 7], [0, 3, 4], [7]):
        buffer, view = make_view("sliced", (8, 3, 5, 40), torch.float32, generator)
        expected = view.index_select(0, torch.tensor(kept)).clone()
        triton_compact_kv_(view, torch.tensor(kept), 0, block=16, scratch_bytes=0)  # 200-word runs: 13 tiles
        assert torch.equal(view[: len(kept)].view(torch.int32), expected.view(torch.int32))


def test_sequence_of_tensors_with_per_tensor_batch_dims():
    generator = torch.Generator().manual_seed(9)
    keys = torch.randn(2, 6, 3, 4, generator=generator)  # [L, B, H, D]
    values = torch.randn(2, 6, 3, 4, generator=generator).to(torch.bfloat16)
    tokens = torch.randint(0, 100, (10, 6), generator=generator)  # [S, B]
    lengths = torch.arange(6)
    originals = [t.clone() for t in (keys, values, tokens, lengths)]
    kept = torch.tensor([1, 4, 5])
    views = sd.compact_kv_cache_([keys, values, tokens, lengths], kept, batch_dim=[1, 1, 1, 0])
    assert isinstance(views, list) and len(views) == 4
    for view, tensor, original, dim in zip(views, (keys, values, tokens, lengths), originals, (1, 1, 1, 0)):
        assert view.data_ptr() == tensor.data_ptr()
        assert torch.equal(view, original.index_select(dim, kept))
    assert lengths.tolist() == [1, 4, 5, 3, 4, 5]  # rows >= N' keep their old values
    compactor = sd.KVCacheCompactor(batch_dim=0)
    assert torch.equal(compactor(lengths, torch.tensor([0, 2])), torch.tensor([1, 5]))


def test_empty_kept_set_and_all_rows():
    cache = torch.arange(12.0).view(4, 3)
    assert sd.compact_kv_cache_(cache, torch.tensor([0, 1, 2, 3]), 0).shape == (4, 3)
    assert torch.equal(cache, torch.arange(12.0).view(4, 3))
    assert sd.compact_kv_cache_(cache, torch.empty(0, dtype=torch.long), 0).shape == (0, 3)
    assert sd.compact_kv_cache_(torch.empty(4, 0), torch.tensor([1, 3]), 0).shape == (2, 0)


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kept,match",
    [
        ([2, 1], r"strictly ascending: kept_indices\[0\] = 2, kept_indices\[1\] = 1 \(not ascending\)"),
        ([1, 1], r"\(a duplicate\)"),
        ([0, 4], r"kept_indices\[1\] = 4 is outside \[0, 4\)"),
        ([-1, 2], r"kept_indices\[0\] = -1 is outside"),
        ([0, 1, 2, 3, 3], "kept_indices has 5 entries for a batch of only 4 rows"),
    ],
)
def test_bad_kept_indices(kept, match):
    cache = torch.arange(12.0).view(4, 3)
    with pytest.raises(ValueError, match=match):
        sd.compact_kv_cache_(cache, torch.tensor(kept), 0)
    assert torch.equal(cache, torch.arange(12.0).view(4, 3))


def test_cpp_op_rejects_bad_indices():
    cache = torch.arange(12.0).view(4, 3)
    with pytest.raises(RuntimeError, match="strictly ascending"):
        cpp_compact(cache, torch.tensor([2, 1]), 0)
    with pytest.raises(RuntimeError, match="outside"):
        cpp_compact(cache, torch.tensor([9]), 0)
    with pytest.raises(RuntimeError, match="overlap"):
        cpp_compact(torch.zeros(4, 1).expand(4, 3), torch.tensor([1]), 0)
    assert torch.equal(cache, torch.arange(12.0).view(4, 3))


def test_triton_ignores_out_of_range_indices():
    # Unvalidated indices outside [0, B) are skipped, never read or written out of bounds.
    buffer = torch.arange(30.0)
    view = buffer[5:25].view(5, 4)
    triton_compact_kv_(view, torch.tensor([1, 99, -3]), 0, scratch_bytes=0)
    expected = torch.arange(30.0)
    expected[5:9] = torch.arange(9.0, 13.0)
    assert torch.equal(buffer, expected)
    # The small-tensor scratch path clamps them: rows 0..2 are written (unspecified values), nothing else.
    buffer = torch.arange(30.0)
    triton_compact_kv_(buffer[5:25].view(5, 4), torch.tensor([1, 99, -3]), 0)
    assert torch.equal(buffer[:5], torch.arange(5.0)) and torch.equal(buffer[17:], torch.arange(17.0, 30.0))


def test_layouts_that_cannot_be_compacted_in_place():
    with pytest.raises(ValueError, match="overlap"):
        sd.compact_kv_cache_(torch.zeros(4, 1).expand(4, 3), torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="3 strided dims"):
        sd.compact_kv_cache_(torch.zeros(4, 5, 6, 7)[:, ::2, ::2, ::2], torch.tensor([1]), 0)
    # Nothing is modified when any tensor of the sequence is rejected.
    first = torch.arange(8.0).view(4, 2)
    with pytest.raises(ValueError, match="overlap"):
        sd.compact_kv_cache_([first, torch.zeros(4, 1).expand(4, 3)], torch.tensor([2, 3]), 0)
    assert torch.equal(first, torch.arange(8.0).view(4, 2))


def test_bad_arguments():
    cache = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"different batch sizes along their batch dims: \[4, 5\]"):
        sd.compact_kv_cache_([cache, torch.zeros(5, 3)], torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="batch_dim 2 is out of range"):
        sd.compact_kv_cache_(cache, torch.tensor([1]), 2)
    with pytest.raises(ValueError, match="batch_dim has 1 entries for 2 tensors"):
        sd.compact_kv_cache_([cache, cache.clone()], torch.tensor([1]), [0])
    with pytest.raises(ValueError, match="kept_indices must be a 1-D int64"):
        sd.compact_kv_cache_(cache, torch.tensor([1.0]), 0)
    with pytest.raises(TypeError, match=r"cache\[1\] must be a torch.Tensor"):
        sd.compact_kv_cache_([cache, 3], torch.tensor([1]), 0)
    with pytest.raises(TypeError, match="kept_indices must be a torch.Tensor"):
        sd.compact_kv_cache_(cache, [1], 0)


def test_negative_batch_dim_and_int32_indices():
    cache = torch.arange(24).view(2, 3, 4)
    view = sd.compact_kv_cache_(cache, torch.tensor([1, 3], dtype=torch.int32), -1)
    assert torch.equal(view, torch.arange(24).view(2, 3, 4)[..., [1, 3]])


@pytest.mark.parametrize("call", ["op", "wrapper"])
def test_bumps_the_version_so_autograd_sees_the_write(call):
    # exp saves its output for backward; compacting that output must make backward refuse, as any
    # torch in-place op does, instead of silently using the moved rows.
    leaf = torch.randn(4, 3, requires_grad=True)
    saved = leaf.exp()
    version = saved._version
    kept = torch.tensor([1, 3])
    if call == "op":
        torch.ops.specdecode.compact_kv_(saved, kept, 0)
    else:
        sd.compact_kv_cache_(saved, kept, batch_dim=0)
    assert saved._version == version + 1
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        saved.sum().backward()


def test_opcheck():
    data = torch.randn(6, 3, 4)
    torch.library.opcheck(torch.ops.specdecode.compact_kv_, (data, torch.tensor([0, 2, 5]), 0))
    torch.library.opcheck(torch.ops.specdecode.compact_kv_, (data.to(torch.int8), torch.tensor([2]), 1))


def test_fixed_shape_round_under_torch_compile():
    # The graph-capture path: the fixed-shape mask op, a static-size kept set, in-place compaction.
    def prune_and_compact(rewards, group_sizes, num_keep, cache, num_kept: int):
        keep_mask = torch.ops.specdecode.topk_prune(rewards, group_sizes, num_keep)
        kept = torch.nonzero_static(keep_mask, size=num_kept).flatten()
        torch.ops.specdecode.compact_kv_(cache, kept, 1)
        return keep_mask

    rewards = torch.tensor([0.3, 0.9, 0.1, 0.5, 0.7, 0.2])
    group_sizes, num_keep = torch.tensor([4, 2]), torch.tensor([2, 1])
    cache = torch.arange(18.0).view(3, 6)
    expected_cache = cache.clone()
    expected_cache[:, :3] = cache[:, [1, 3, 4]]
    compiled = torch.compile(prune_and_compact, fullgraph=True, dynamic=False)
    keep_mask = compiled(rewards, group_sizes, num_keep, cache, 3)
    assert keep_mask.tolist() == [False, True, False, True, True, False]
    assert torch.equal(cache, expected_cache)
