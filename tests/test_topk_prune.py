"""topk_prune: both kernels (C++ op on CPU tensors, Triton launcher under the interpreter)
equal the reference exactly; the public topk_prune; alpha -> num_keep rounding; bad input."""

import math
from fractions import Fraction

import pytest
import torch
from devices import launcher

import specdecode as sd
from specdecode import core
from specdecode.reference import topk_prune as ref

# The Triton launcher on the test device (tests/devices.py: CPU + interpreter, or CUDA).
triton_topk_prune = launcher("topk_prune", "topk_prune")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def cpp_topk_prune(rewards, group_sizes, num_keep):
    return torch.ops.specdecode.topk_prune(rewards, group_sizes, num_keep)


KERNELS = {"cpp": cpp_topk_prune, "triton": triton_topk_prune}


def random_case(generator, num_groups, max_group, dtype, value_range=None, nan_fraction=0.0):
    group_sizes = torch.randint(0, max_group + 1, (num_groups,), generator=generator)
    n = int(group_sizes.sum())
    if value_range is None:
        rewards = torch.randn(n, generator=generator)
    else:  # a few distinct values: many ties
        rewards = torch.randint(-value_range, value_range + 1, (n,), generator=generator).float()
    rewards[torch.rand(n, generator=generator) < nan_fraction] = float("nan")
    num_keep = (torch.rand(num_groups, generator=generator) * (group_sizes + 1)).floor().long()
    return rewards.to(dtype), group_sizes, num_keep


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "value_range,nan_fraction",
    [(None, 0.0), (2, 0.0), (3, 0.3), (None, 0.5)],
    ids=["distinct", "ties", "ties+nan", "nan"],
)
def test_kernels_equal_reference_on_random_groups(kernel, dtype, value_range, nan_fraction):
    generator = torch.Generator().manual_seed(hash((dtype, value_range, nan_fraction)) % 2**31)
    layouts = ((1, 1), (3, 5), (6, 20), (2, 70)) if kernel == "triton" else ((1, 1), (3, 5), (7, 20), (16, 40), (2, 70))
    for num_groups, max_group in layouts:
        rewards, group_sizes, num_keep = random_case(generator, num_groups, max_group, dtype, value_range, nan_fraction)
        expected = ref.topk_prune(rewards, group_sizes, num_keep)
        got = KERNELS[kernel](rewards, group_sizes, num_keep)
        assert got.dtype == torch.bool and got.shape == rewards.shape
        assert torch.equal(got, expected), (rewards, group_sizes, num_keep, got, expected)
        # Exactly num_keep[g] survivors per group.
        per_group = torch.segment_reduce(got.float(), "sum", lengths=group_sizes) if len(got) else None
        if per_group is not None:
            assert torch.equal(per_group.long(), num_keep)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("alpha", [0.0, 0.999, 1.0])
def test_kernels_at_alpha_extremes(kernel, alpha):
    # alpha = 0 keeps every candidate, alpha near 1 keeps exactly one per non-empty group.
    generator = torch.Generator().manual_seed(21)
    rewards, group_sizes, _ = random_case(generator, 6, 12, torch.float32, value_range=2, nan_fraction=0.2)
    num_keep = torch.tensor(core.num_keep_from_alpha(group_sizes.tolist(), alpha))
    expected = group_sizes if alpha == 0 else (group_sizes > 0).long()
    assert torch.equal(num_keep, expected)
    got = KERNELS[kernel](rewards, group_sizes, num_keep)
    assert torch.equal(got, ref.topk_prune(rewards, group_sizes, num_keep))


@pytest.mark.parametrize("value_range,nan_fraction", [(None, 0.0), (2, 0.3)], ids=["distinct", "ties+nan"])
def test_triton_groups_spanning_many_tiles(value_range, nan_fraction):
    # A tiny tile: the radix-select counts and the tie prefix count are carried across tiles.
    generator = torch.Generator().manual_seed(11)
    for num_groups, max_group in ((3, 5), (2, 40)):
        rewards, group_sizes, num_keep = random_case(
            generator, num_groups, max_group, torch.float32, value_range, nan_fraction
        )
        got = triton_topk_prune(rewards, group_sizes, num_keep, block=8)
        assert torch.equal(got, ref.topk_prune(rewards, group_sizes, num_keep))


@pytest.mark.parametrize("kernel", KERNELS)
def test_special_values_order(kernel):
    # NaN below -inf; -0.0 ties +0.0 (lower index wins); +inf above everything.
    nan, inf = float("nan"), float("inf")
    rewards = torch.tensor([nan, -inf, 0.0, -0.0, inf, nan, 1e-45, -1e-45])
    order = ref.rank_order(rewards).tolist()
    assert order == [4, 6, 2, 3, 7, 1, 0, 5]
    group_sizes = torch.tensor([8])
    for keep in range(9):
        expected = torch.zeros(8, dtype=torch.bool)
        expected[order[:keep]] = True
        got = KERNELS[kernel](rewards, group_sizes, torch.tensor([keep]))
        assert torch.equal(got, expected), keep


@pytest.mark.parametrize("kernel", KERNELS)
def test_all_ties_keep_lowest_indices(kernel):
    for dtype in DTYPES:
        rewards = torch.full((10,), 0.5, dtype=dtype)
        got = KERNELS[kernel](rewards, torch.tensor([4, 0, 6]), torch.tensor([2, 0, 3]))
        assert got.tolist() == [True, True, False, False, True, True, True, False, False, False]


@pytest.mark.parametrize("kernel", KERNELS)
def test_empty_inputs(kernel):
    assert KERNELS[kernel](torch.empty(0), torch.tensor([0, 0]), torch.tensor([0, 0])).shape == (0,)
    assert KERNELS[kernel](
        torch.empty(0), torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long)
    ).shape == (0,)


@pytest.mark.parametrize("kernel", ["cpp", "triton"])
def test_large_group(kernel):
    # One group larger than the interpreter tile, plus small ones around it.
    generator = torch.Generator().manual_seed(1)
    rewards = torch.randint(-50, 50, (5000 + 7,), generator=generator).float()
    group_sizes = torch.tensor([3, 5000, 4])
    num_keep = torch.tensor([1, 1234, 4])
    assert torch.equal(KERNELS[kernel](rewards, group_sizes, num_keep), ref.topk_prune(rewards, group_sizes, num_keep))


# --- alpha -> num_keep ----------------------------------------------------------------------


def test_alpha_rounding_is_exact_decimal():
    # The float product is 3.0000000000000004; a float ceil would keep 4.
    assert math.ceil((1 - 0.7) * 10) == 4
    assert core.num_keep_from_alpha([10], 0.7) == [3]
    assert sd.num_keep_from_alpha([10, 0, 1, 3, 7], 0.5) == [5, 0, 1, 2, 4]
    # Every two-decimal alpha against integer arithmetic: ceil((100 - a) * n / 100).
    for a in range(101):
        alpha = a / 100
        sizes = list(range(0, 130))
        expected = [max(1, -((-(100 - a) * n) // 100)) if n else 0 for n in sizes]
        assert core.num_keep_from_alpha(sizes, alpha) == expected, alpha


def test_alpha_numpy_scalars_and_empty_batches():
    np = pytest.importorskip("numpy")
    assert core.num_keep_from_alpha([10], np.float32(0.7)) == [3]  # binary value 0.699999988...
    assert core.num_keep_from_alpha([10], np.float64(0.7)) == [3]
    result = sd.topk_prune(torch.empty(0), [], 0.5)
    assert result.kept_indices.shape == (0,) and result.kept_group_sizes.shape == (0,)


def test_alpha_extremes():
    sizes = [0, 1, 2, 10, 1000]
    assert core.num_keep_from_alpha(sizes, 0.0) == [0, 1, 2, 10, 1000]  # keep all
    assert core.num_keep_from_alpha(sizes, 1.0) == [0, 1, 1, 1, 1]  # at least one
    assert core.num_keep_from_alpha(sizes, 0.999) == [0, 1, 1, 1, 1]
    assert core.num_keep_from_alpha(sizes, Fraction(1, 3)) == [0, 1, 2, 7, 667]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.75, 0.999, 1.0])
def test_topk_prune_public(alpha):
    generator = torch.Generator().manual_seed(7)
    rewards, group_sizes, _ = random_case(generator, 9, 17, torch.float32, value_range=4, nan_fraction=0.1)
    result = sd.topk_prune(rewards, group_sizes, alpha)
    keeps = core.num_keep_from_alpha(group_sizes.tolist(), alpha)
    expected_mask = ref.topk_prune(rewards, group_sizes, keeps)
    assert torch.equal(result.keep_mask, expected_mask)
    assert result.kept_indices.dtype == torch.int64
    assert torch.equal(result.kept_indices, expected_mask.nonzero().flatten())
    assert result.kept_group_sizes.tolist() == keeps
    assert bool((result.kept_indices[1:] > result.kept_indices[:-1]).all())
    # Groups stay contiguous: survivors of group g come before those of group g+1.
    group_of = torch.repeat_interleave(torch.arange(len(group_sizes)), group_sizes)[result.kept_indices]
    assert torch.equal(group_of, torch.repeat_interleave(torch.arange(len(keeps)), torch.tensor(keeps)))


def test_topk_prune_num_keep_and_sequences():
    rewards = torch.tensor([0.1, 0.9, 0.5, 0.7, 0.2], dtype=torch.bfloat16)
    for group_sizes, num_keep in (([2, 3], [1, 2]), (torch.tensor([2, 3]), torch.tensor([1, 2], dtype=torch.int32))):
        result = sd.topk_prune(rewards, group_sizes, num_keep=num_keep)
        assert result.kept_indices.tolist() == [1, 2, 3]
        assert result.kept_group_sizes.tolist() == [1, 2]
    assert sd.topk_prune(rewards, [5], num_keep=[0]).kept_indices.tolist() == []
    original = rewards.clone()
    sd.topk_prune(rewards, [5], 0.5)
    assert torch.equal(rewards, original)


def test_reward_pruner_module():
    pruner = sd.RewardPruner(alpha=0.5)
    rewards = torch.tensor([3.0, 1.0, 2.0, 5.0])
    assert pruner(rewards, [4]).kept_indices.tolist() == [0, 3]
    assert pruner(rewards, [4], num_keep=[1]).kept_indices.tolist() == [3]
    assert "alpha=0.5" in repr(pruner)
    with pytest.raises(ValueError, match="alpha"):
        sd.RewardPruner(alpha=1.5)


def test_kept_indices_from_mask_is_static():
    mask = torch.tensor([False, True, True, False, True])
    assert sd.kept_indices_from_mask(mask, 3).tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="num_kept"):
        sd.kept_indices_from_mask(mask, 6)


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(group_sizes=[2, 3], num_keep=[3, 1]), ValueError, r"num_keep\[0\] = 3 is outside \[0, 2\]"),
        (dict(group_sizes=[2, 3], num_keep=[-1, 1]), ValueError, r"num_keep\[0\] = -1"),
        (dict(group_sizes=[2, 2], num_keep=[1, 1]), ValueError, "sum to 4 but rewards has N = 5"),
        (dict(group_sizes=[6, -1], num_keep=[1, 0]), ValueError, r"group_sizes\[1\] = -1 is negative"),
        (dict(group_sizes=[5], num_keep=[1, 0]), ValueError, "num_keep has 2 entries"),
        (dict(group_sizes=[5], num_keep=[1], alpha=0.5), ValueError, "exactly one of alpha"),
        (dict(group_sizes=[5]), ValueError, "exactly one of alpha"),
        (dict(group_sizes=[5], alpha=1.5), ValueError, r"alpha must be in \[0, 1\]"),
        (dict(group_sizes=[5], alpha=float("nan")), ValueError, r"alpha must be in \[0, 1\]"),
        (dict(group_sizes=[5], alpha=True), TypeError, "alpha must be a real number"),
        (dict(group_sizes=[5.0], alpha=0.5), TypeError, r"group_sizes\[0\] must be an int"),
        (dict(group_sizes=torch.tensor([5.0]), alpha=0.5), ValueError, "group_sizes must be a 1-D int32/int64"),
    ],
)
def test_topk_prune_bad_arguments(kwargs, error, match):
    rewards = torch.arange(5, dtype=torch.float32)
    with pytest.raises(error, match=match):
        sd.topk_prune(rewards, kwargs.pop("group_sizes"), kwargs.pop("alpha", None), **kwargs)


def test_topk_prune_bad_rewards():
    with pytest.raises(TypeError, match="rewards must be float32"):
        sd.topk_prune(torch.arange(4), [4], 0.5)
    with pytest.raises(ValueError, match=r"rewards must be 1-D"):
        sd.topk_prune(torch.zeros(2, 2), [4], 0.5)
    with pytest.raises(TypeError, match="rewards must be a torch.Tensor"):
        sd.topk_prune([1.0, 2.0], [2], 0.5)


def test_cpp_op_rejects_bad_values():
    rewards = torch.arange(5, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="num_keep"):
        cpp_topk_prune(rewards, torch.tensor([2, 3]), torch.tensor([3, 1]))
    with pytest.raises(RuntimeError, match="sum to"):
        cpp_topk_prune(rewards, torch.tensor([2, 2]), torch.tensor([1, 1]))
    with pytest.raises(RuntimeError, match="int64"):
        cpp_topk_prune(rewards, torch.tensor([5], dtype=torch.int32), torch.tensor([1]))


def test_triton_clamps_unvalidated_values():
    # Garbage the public wrapper would reject (num_keep > group, sizes running past N) is clamped
    # to the tensor: group 1 becomes rows 2..4, and keeps all of them.
    got = triton_topk_prune(torch.arange(5.0), torch.tensor([2, 30]), torch.tensor([1, 9]))
    assert got.tolist() == [False, True, True, True, True]


def test_opcheck():
    rewards, group_sizes, num_keep = random_case(torch.Generator().manual_seed(3), 4, 9, torch.float32, 2, 0.2)
    torch.library.opcheck(torch.ops.specdecode.topk_prune, (rewards, group_sizes, num_keep))
    torch.library.opcheck(torch.ops.specdecode.topk_prune, (rewards.bfloat16(), group_sizes, num_keep))
