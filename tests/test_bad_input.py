"""Bad input, op by op: the public wrappers and the raw ``torch.ops.specdecode.*`` ops.

The rule: a wrong rank, shape, dtype or device, an unusable layout, an empty or huge size, or a
negative or overflowing count raises -- the wrappers a ``TypeError``/``ValueError``, the raw ops a
``RuntimeError`` (as native ops) -- with a message naming the argument, before any input is
modified. Never a crash, never silent wrong output.

The tables hold one row per case: how to call, the exception, the argument the message names.
Each row also checks that no tensor argument changed. Raw-op cases that once crashed the process
(issue 10) run in a child process, so a crash fails one test, not the run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from devices import launcher

import specdecode as sd
from specdecode.reference import rejection_sample as reference

raw = torch.ops.specdecode
# The Triton launchers on the test device (tests/devices.py: CPU + interpreter, or CUDA).
triton_rejection_sample = launcher("rejection_sample", "rejection_sample")
triton_compact_kv_ = launcher("compact_kv", "compact_kv_")


@dataclass
class Case:
    """``make()`` builds ``(function, args, kwargs)`` afresh; the call must raise ``error`` with
    ``names`` in its message."""

    id: str
    make: Callable[[], tuple[Callable, tuple, dict]]
    error: type[Exception]
    names: str


def _tensors_in(values) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensors_in(value))
    return found


def _storage_bytes(tensor: torch.Tensor) -> torch.Tensor:
    """Every byte of the tensor's storage (an expanded view's few bytes, not its huge shape)."""
    return torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())


def _snapshot(tensor: torch.Tensor) -> torch.Tensor | None:
    return None if tensor.device.type == "meta" else _storage_bytes(tensor).clone()


def check_case(case: Case) -> None:
    function, args, kwargs = case.make()
    tensors = _tensors_in([*args, *kwargs.values()])
    before = [_snapshot(t) for t in tensors]
    with pytest.raises(case.error) as raised:
        function(*args, **kwargs)
    assert case.names in str(raised.value), f"the message does not name {case.names!r}: {raised.value}"
    for tensor, snapshot in zip(tensors, before):
        if snapshot is not None:
            assert torch.equal(_storage_bytes(tensor), snapshot), f"{case.id}: an input was modified"


def run_in_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter (Triton interpreted, like the suite); a crash, a signal
    or an exception fails the calling test with the child's stderr. Returns its stdout."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=300
    )
    assert child.returncode == 0, f"child exited with {child.returncode}:\n{child.stderr[-3000:]}"
    return child.stdout


# ---------------------------------------------------------------------------------------------
# rejection_sample
# ---------------------------------------------------------------------------------------------

B, K, V = 2, 3, 10


def _verify_inputs(dtype=torch.float32):
    draft_ids = torch.tensor([[1, 4, 2], [0, -1, 9]])
    draft_probs = torch.softmax(torch.randn(B, K, V), -1).to(dtype)
    target_probs = torch.softmax(torch.randn(B, K + 1, V), -1).to(dtype)
    return draft_ids, draft_probs, target_probs


def _public_verify(**override):
    def make():
        draft_ids, draft_probs, target_probs = _verify_inputs()
        kwargs = dict(draft_token_ids=draft_ids, draft_probs=draft_probs, target_probs=target_probs, seed=1)
        kwargs.update({k: (v() if callable(v) else v) for k, v in override.items()})
        return sd.rejection_sample, (), kwargs

    return make


def _raw_verify(**override):
    def make():
        draft_ids, draft_probs, target_probs = _verify_inputs()
        args = dict(
            draft_token_ids=draft_ids,
            draft_probs=draft_probs,
            target_probs=target_probs,
            greedy=torch.zeros(B, dtype=torch.bool),
            seeds=torch.tensor([1]),
            offsets=torch.tensor([0]),
        )
        args.update({k: (v() if callable(v) else v) for k, v in override.items()})
        return raw.rejection_sample, tuple(args.values()), {}

    return make


_expanded_v = lambda: torch.zeros(B, K + 1, 1).expand(B, K + 1, 2**31)  # V >= 2^31, 16 bytes of memory

REJECTION_SAMPLE_CASES = [
    # rank, shape
    Case("ids 1-D", _public_verify(draft_token_ids=torch.zeros(3, dtype=torch.long)), ValueError, "draft_token_ids"),
    Case("target 2-D", _public_verify(target_probs=torch.ones(B, V)), ValueError, "target_probs"),
    Case("target K+1 wrong", _public_verify(target_probs=torch.ones(B, K, V)), ValueError, "target_probs"),
    Case("draft V wrong", _public_verify(draft_probs=torch.ones(B, K, V + 1)), ValueError, "draft_probs"),
    Case("greedy shape", _public_verify(greedy=torch.zeros(B + 1, dtype=torch.bool)), ValueError, "greedy"),
    Case("seed shape", _public_verify(seed=torch.zeros(B, 2, dtype=torch.long)), ValueError, "seed"),
    Case("offset shape", _public_verify(offset=torch.zeros(B + 1, dtype=torch.long)), ValueError, "offset"),
    # dtype
    Case("ids float", _public_verify(draft_token_ids=torch.zeros(B, K)), TypeError, "draft_token_ids"),
    Case(
        "target int", _public_verify(target_probs=torch.ones(B, K + 1, V, dtype=torch.long)), TypeError, "target_probs"
    ),
    Case(
        "draft float64", _public_verify(draft_probs=torch.ones(B, K, V, dtype=torch.float64)), TypeError, "draft_probs"
    ),
    Case("greedy int", _public_verify(greedy=torch.zeros(B, dtype=torch.long)), ValueError, "greedy"),
    Case("seed float", _public_verify(seed=torch.zeros(B)), ValueError, "seed"),
    Case("seed bool", _public_verify(seed=True), TypeError, "seed"),
    Case("target list", _public_verify(target_probs=[[[1.0]]]), TypeError, "target_probs"),
    # device (meta among CPU tensors)
    Case(
        "ids meta",
        _public_verify(draft_token_ids=torch.zeros(B, K, dtype=torch.long, device="meta")),
        ValueError,
        "draft_token_ids",
    ),
    Case("draft meta", _public_verify(draft_probs=torch.ones(B, K, V, device="meta")), ValueError, "draft_probs"),
    Case("greedy meta", _public_verify(greedy=torch.zeros(B, dtype=torch.bool, device="meta")), ValueError, "greedy"),
    Case("seed meta", _public_verify(seed=torch.zeros(B, dtype=torch.long, device="meta")), ValueError, "seed"),
    Case("offset meta", _public_verify(offset=torch.zeros(1, dtype=torch.long, device="meta")), ValueError, "offset"),
    # empty and huge sizes, overflowing counts
    Case("V = 0", _public_verify(target_probs=torch.ones(B, K + 1, 0), draft_probs=None), ValueError, "target_probs"),
    Case("V >= 2^31", _public_verify(target_probs=_expanded_v, draft_probs=None), ValueError, "target_probs"),
    Case("seed 2^64", _public_verify(seed=2**64), ValueError, "seed"),
    Case("offset -2^63-1", _public_verify(offset=-(2**63) - 1), ValueError, "offset"),
    Case("offset 2^63", _public_verify(offset=2**63), ValueError, "offset"),
    # raw op: every check in C++ (and in the fake kernel for meta arguments)
    Case(
        "raw ids int32",
        _raw_verify(draft_token_ids=torch.zeros(B, K, dtype=torch.int32)),
        RuntimeError,
        "draft_token_ids",
    ),
    Case(
        "raw ids strided",
        _raw_verify(draft_token_ids=torch.zeros(K, B, dtype=torch.long).t()),
        RuntimeError,
        "draft_token_ids",
    ),
    Case("raw target 2-D", _raw_verify(target_probs=torch.ones(B, V)), RuntimeError, "target_probs"),
    Case(
        "raw target int",
        _raw_verify(target_probs=torch.ones(B, K + 1, V, dtype=torch.long)),
        RuntimeError,
        "target_probs",
    ),
    Case(
        "raw target strided V",
        _raw_verify(target_probs=torch.ones(B, V, K + 1).transpose(1, 2)),
        RuntimeError,
        "target_probs",
    ),
    Case(
        "raw V = 0", _raw_verify(target_probs=torch.ones(B, K + 1, 0), draft_probs=None), RuntimeError, "target_probs"
    ),
    Case("raw V >= 2^31", _raw_verify(target_probs=_expanded_v, draft_probs=None), RuntimeError, "target_probs"),
    Case(
        "raw draft dtype",
        _raw_verify(draft_probs=torch.ones(B, K, V, dtype=torch.float16)),
        RuntimeError,
        "draft_probs",
    ),
    Case("raw draft shape", _raw_verify(draft_probs=torch.ones(B, K + 1, V)), RuntimeError, "draft_probs"),
    Case("raw greedy float", _raw_verify(greedy=torch.zeros(B)), RuntimeError, "greedy"),
    Case("raw seeds [3]", _raw_verify(seeds=torch.zeros(3, dtype=torch.long)), RuntimeError, "seeds"),
    Case("raw offsets int32", _raw_verify(offsets=torch.zeros(1, dtype=torch.int32)), RuntimeError, "offsets"),
    Case(
        "raw offsets meta",
        _raw_verify(offsets=torch.zeros(1, dtype=torch.long, device="meta")),
        RuntimeError,
        "offsets",
    ),
    Case(
        "raw greedy meta", _raw_verify(greedy=torch.zeros(B, dtype=torch.bool, device="meta")), RuntimeError, "greedy"
    ),
    Case(
        "raw target meta",
        _raw_verify(target_probs=torch.ones(B, K + 1, V, device="meta")),
        RuntimeError,
        "target_probs",
    ),
    Case("raw draft meta", _raw_verify(draft_probs=torch.ones(B, K, V, device="meta")), RuntimeError, "draft_probs"),
]


@pytest.mark.parametrize("case", REJECTION_SAMPLE_CASES, ids=lambda case: case.id)
def test_rejection_sample_bad_input(case):
    check_case(case)


def test_rejection_sample_accepts_size_one_dims_whatever_their_stride():
    # V = 1 with the vocabulary dim strided (issue 10, item 4): the one token is always emitted.
    target = torch.ones(3, 1, 2).transpose(1, 2)  # [3, 2, 1], strides (2, 1, 2)
    draft_ids = torch.zeros(3, 1, dtype=torch.long)
    out = sd.rejection_sample(draft_ids, None, target, seed=0)
    assert out.token_ids.tolist() == [[0, 0]] * 3 and out.num_accepted.tolist() == [1] * 3
    args = (draft_ids, None, target, torch.zeros(3, dtype=torch.bool), torch.tensor([0]), torch.tensor([0]))
    for tokens, accepted in (raw.rejection_sample(*args), triton_rejection_sample(*args)):
        assert tokens.tolist() == [[0, 0]] * 3 and accepted.tolist() == [1] * 3
    # Zero strides in size-1 dims, B = 0 (issue 10's `torch.randn(0, 1, 1) * 3`).
    empty = sd.rejection_sample(torch.zeros(0, 0, dtype=torch.long), None, torch.randn(0, 1, 1) * 3, seed=0)
    assert empty.token_ids.shape == (0, 1) and empty.num_accepted.shape == (0,)
    # Size-1 B and K dims with arbitrary strides, dense drafts of V = 1.
    draft_probs = torch.ones(1, 5, 1)[:, 2:3]
    target = torch.ones(1, 7, 1)[:, ::5]
    out = sd.rejection_sample(torch.zeros(1, 1, dtype=torch.long), draft_probs, target, seed=0)
    assert out.token_ids.tolist() == [[0, 0]]


def test_rejection_sample_accepts_expanded_and_shared_probabilities():
    # Read-only inputs may be expanded (zero strides) or share memory: the result is that of a copy.
    draft_ids, _, target = _verify_inputs()
    row = torch.softmax(torch.randn(V), -1)
    expanded = row.expand(B, K + 1, V)
    got = sd.rejection_sample(draft_ids, expanded[:, :K], expanded, seed=4)
    want = sd.rejection_sample(draft_ids, expanded[:, :K].contiguous(), expanded.contiguous(), seed=4)
    assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.num_accepted, want.num_accepted)
    # Residual mass is zero when p == q: the target row is sampled, never an id outside [0, V).
    assert bool(((got.token_ids >= -1) & (got.token_ids < V)).all())


def test_huge_unnormalised_rows_sample_like_the_reference():
    # Entries of 3e38: a float32 sum of two overflows. The C++ kernel sums such blocks in double,
    # as the reference does, so both draw the same id (issue 10, item 6).
    target = torch.full((4, 1, 300), 3e38)
    target[1, 0, :150] = 0
    args = (torch.zeros(4, 0, dtype=torch.long), None, target, torch.zeros(4, dtype=torch.bool))
    for seed in range(8):
        seeds, offsets = torch.tensor([seed]), torch.tensor([0])
        got = raw.rejection_sample(*args, seeds, offsets)
        want = reference.rejection_sample(*args, seeds, offsets)
        assert torch.equal(got[0], want[0]), seed
    assert len(set(raw.rejection_sample(*args, torch.tensor([0]), torch.tensor([0]))[0].flatten().tolist())) > 1


def test_raw_rejection_sample_with_meta_argument_raises_in_a_child():
    # Issue 10, item 3: the fake kernel ran and returned uninitialised memory.
    run_in_child(
        """
        import torch, specdecode
        args = [torch.zeros(2, 1, dtype=torch.long), None, torch.full((2, 2, 4), 0.25),
                torch.zeros(2, dtype=torch.bool), torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)]
        for position in (0, 2, 3, 4, 5):
            bad = list(args)
            bad[position] = bad[position].to("meta")
            try:
                torch.ops.specdecode.rejection_sample(*bad)
            except RuntimeError as error:
                assert "every tensor argument must be on the same device" in str(error), error
            else:
                raise AssertionError(f"no error with argument {position} on meta")
        """
    )


# ---------------------------------------------------------------------------------------------
# topk_prune and kept_indices_from_mask
# ---------------------------------------------------------------------------------------------

_WRAPS = [2**63 - 1, 2**63 - 1, 6]  # sums to 4 in int64 arithmetic


def _public_prune(rewards=None, group_sizes=(2, 2), **kwargs):
    def make():
        values = torch.tensor([0.1, 0.9, 0.4, 0.3]) if rewards is None else rewards()
        sizes = group_sizes() if callable(group_sizes) else group_sizes
        call_kwargs = {k: (v() if callable(v) else v) for k, v in kwargs.items()}
        if "num_keep" not in call_kwargs and "alpha" not in call_kwargs:
            call_kwargs["alpha"] = 0.5
        return sd.topk_prune, (values, sizes), call_kwargs

    return make


def _raw_prune(rewards=None, group_sizes=None, num_keep=None):
    def make():
        values = torch.tensor([0.1, 0.9, 0.4, 0.3]) if rewards is None else rewards()
        sizes = torch.tensor([2, 2]) if group_sizes is None else group_sizes()
        keeps = torch.tensor([1, 1]) if num_keep is None else num_keep()
        return raw.topk_prune, (values, sizes, keeps), {}

    return make


def _from_mask(mask=None, num_kept=1):
    def make():
        values = torch.tensor([False, True, False]) if mask is None else mask()
        return sd.kept_indices_from_mask, (values, num_kept), {}

    return make


TOPK_PRUNE_CASES = [
    Case("rewards 2-D", _public_prune(lambda: torch.zeros(2, 2)), ValueError, "rewards"),
    Case("rewards int", _public_prune(lambda: torch.zeros(4, dtype=torch.long)), TypeError, "rewards"),
    Case("rewards list", _public_prune(lambda: [0.1, 0.2, 0.3, 0.4]), TypeError, "rewards"),
    Case("sizes 2-D", _public_prune(group_sizes=lambda: torch.tensor([[2, 2]])), ValueError, "group_sizes"),
    Case("sizes float", _public_prune(group_sizes=lambda: torch.tensor([2.0, 2.0])), ValueError, "group_sizes"),
    Case("sizes float item", _public_prune(group_sizes=[2.0, 2]), TypeError, "group_sizes"),
    Case("sizes str", _public_prune(group_sizes="22"), TypeError, "group_sizes"),
    Case(
        "sizes meta", _public_prune(group_sizes=lambda: torch.tensor([2, 2], device="meta")), ValueError, "group_sizes"
    ),
    Case("sizes negative", _public_prune(group_sizes=[-1, 5]), ValueError, "group_sizes"),
    Case("sizes short", _public_prune(group_sizes=[2, 1]), ValueError, "group_sizes"),
    Case("sizes wrap int64", _public_prune(group_sizes=_WRAPS), ValueError, "group_sizes"),
    Case("sizes wrap tensor", _public_prune(group_sizes=lambda: torch.tensor(_WRAPS)), ValueError, "group_sizes"),
    Case("sizes huge", _public_prune(group_sizes=[2**70, 4 - 2**70]), ValueError, "group_sizes"),
    Case("keep negative", _public_prune(num_keep=[-1, 1]), ValueError, "num_keep"),
    Case("keep > size", _public_prune(num_keep=[3, 1]), ValueError, "num_keep"),
    Case("keep huge", _public_prune(num_keep=[2**64, 1]), ValueError, "num_keep"),
    Case("keep length", _public_prune(num_keep=[1]), ValueError, "num_keep"),
    Case("keep float", _public_prune(num_keep=[1.0, 1]), TypeError, "num_keep"),
    Case("keep tensor 2-D", _public_prune(num_keep=lambda: torch.tensor([[1, 1]])), ValueError, "num_keep"),
    Case("alpha and num_keep", _public_prune(num_keep=[1, 1], alpha=0.5), ValueError, "alpha"),
    Case("alpha > 1", _public_prune(alpha=1.5), ValueError, "alpha"),
    Case("alpha nan", _public_prune(alpha=float("nan")), ValueError, "alpha"),
    Case("alpha str", _public_prune(alpha="0.5"), TypeError, "alpha"),
    Case("mask float", _from_mask(lambda: torch.zeros(3)), ValueError, "keep_mask"),
    Case("mask list", _from_mask(lambda: [True]), TypeError, "keep_mask"),
    Case("count float", _from_mask(num_kept=1.0), TypeError, "num_kept"),
    Case("count bool", _from_mask(num_kept=True), TypeError, "num_kept"),
    Case("count negative", _from_mask(num_kept=-1), ValueError, "num_kept"),
    Case("count > N", _from_mask(num_kept=4), ValueError, "num_kept"),
    Case("count wrong", _from_mask(num_kept=2), ValueError, "num_kept"),
    # raw op: C++ checks every value; meta arguments reach the fake kernel, which checks devices
    Case("raw rewards 2-D", _raw_prune(lambda: torch.zeros(2, 2)), RuntimeError, "rewards"),
    Case("raw rewards int", _raw_prune(lambda: torch.zeros(4, dtype=torch.long)), RuntimeError, "rewards"),
    Case(
        "raw sizes int32",
        _raw_prune(group_sizes=lambda: torch.tensor([2, 2], dtype=torch.int32)),
        RuntimeError,
        "group_sizes",
    ),
    Case("raw keep 2-D", _raw_prune(num_keep=lambda: torch.tensor([[1, 1]])), RuntimeError, "num_keep"),
    Case("raw keep length", _raw_prune(num_keep=lambda: torch.tensor([1])), RuntimeError, "num_keep"),
    Case("raw size negative", _raw_prune(group_sizes=lambda: torch.tensor([-2, 6])), RuntimeError, "group_sizes"),
    Case("raw size > N", _raw_prune(group_sizes=lambda: torch.tensor([5, -1])), RuntimeError, "group_sizes"),
    Case("raw sizes short", _raw_prune(group_sizes=lambda: torch.tensor([2, 1])), RuntimeError, "group_sizes"),
    Case("raw sizes long", _raw_prune(group_sizes=lambda: torch.tensor([3, 3])), RuntimeError, "group_sizes"),
    Case("raw keep > size", _raw_prune(num_keep=lambda: torch.tensor([3, 1])), RuntimeError, "num_keep"),
    Case("raw keep negative", _raw_prune(num_keep=lambda: torch.tensor([1, -1])), RuntimeError, "num_keep"),
    Case(
        "raw sizes meta",
        _raw_prune(group_sizes=lambda: torch.tensor([2, 2], device="meta")),
        RuntimeError,
        "group_sizes",
    ),
    Case("raw keep meta", _raw_prune(num_keep=lambda: torch.tensor([1, 1], device="meta")), RuntimeError, "num_keep"),
    Case("raw rewards meta", _raw_prune(lambda: torch.zeros(4, device="meta")), RuntimeError, "rewards"),
]


@pytest.mark.parametrize("case", TOPK_PRUNE_CASES, ids=lambda case: case.id)
def test_topk_prune_bad_input(case):
    check_case(case)


def test_topk_prune_empty_input():
    empty = sd.topk_prune(torch.zeros(0), [], alpha=0.5)
    assert empty.kept_indices.shape == (0,) and empty.keep_mask.shape == (0,)
    groups_of_nothing = sd.topk_prune(torch.zeros(0), [0, 0], num_keep=[0, 0])
    assert groups_of_nothing.kept_group_sizes.tolist() == [0, 0]
    assert raw.topk_prune(torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)).shape == (
        0,
    )


def test_raw_topk_prune_with_wrapping_group_sizes_raises_in_a_child():
    # Issue 10, item 1: sizes whose int64 sum wraps to N passed the sum check, then the kernel
    # wrote far outside the mask (SIGSEGV). Now each size is checked and the sum cannot overflow.
    out = run_in_child(
        """
        import torch, specdecode
        for sizes in ([2**63 - 1, 2**63 - 1, 6], [6, 2**63 - 1, 2**63 - 1], [4, 2**62, 2**62, 2**62, 2**62]):
            keeps = torch.zeros(len(sizes), dtype=torch.long)
            try:
                torch.ops.specdecode.topk_prune(torch.rand(4), torch.tensor(sizes), keeps)
            except RuntimeError as error:
                assert "group_sizes" in str(error), error
            else:
                raise AssertionError(f"no error for {sizes}")
        print("checked")
        """
    )
    assert out.strip() == "checked"


def test_triton_topk_prune_with_wrapping_group_sizes_stays_in_bounds_in_a_child():
    # The Triton launcher cannot raise on values without a host sync: it clamps sizes to [0, N]
    # before summing the starts, so bad sizes give an unspecified mask, never an access outside
    # the tensors (the wrapper raises before launching).
    out = run_in_child(
        """
        import torch
        from specdecode.kernels.topk_prune import topk_prune
        buffer = torch.rand(12)
        before = buffer.clone()
        for sizes in ([2**63 - 1, 2**63 - 1, 6], [-3, 7, 2**40], [4, 0, 9]):
            mask = topk_prune(buffer[4:8], torch.tensor(sizes), torch.tensor([2**62] * len(sizes)))
            assert mask.shape == (4,) and mask.dtype == torch.bool
        assert torch.equal(buffer, before)
        print("in bounds")
        """
    )
    assert out.strip() == "in bounds"


def test_raw_topk_prune_with_meta_argument_raises_in_a_child():
    # Issue 10, item 3: the fake kernel returned an uninitialised mask.
    run_in_child(
        """
        import torch, specdecode
        rewards, sizes, keeps = torch.rand(4), torch.tensor([2, 2]), torch.tensor([1, 1])
        for meta in range(3):
            args = [t.to("meta") if i == meta else t for i, t in enumerate((rewards, sizes, keeps))]
            try:
                torch.ops.specdecode.topk_prune(*args)
            except RuntimeError as error:
                assert "same device" in str(error), error
            else:
                raise AssertionError("no error")
        """
    )


# ---------------------------------------------------------------------------------------------
# compact_kv_cache_ and compact_kv_
# ---------------------------------------------------------------------------------------------


def _cache():
    return torch.arange(24.0).view(6, 4)


def _public_compact(cache=_cache, kept=lambda: torch.tensor([1, 3]), **kwargs):
    def make():
        return sd.compact_kv_cache_, (cache(), kept()), kwargs

    return make


def _raw_compact(data=_cache, kept=lambda: torch.tensor([1, 3]), batch_dim=0):
    def make():
        return raw.compact_kv_, (data(), kept(), batch_dim), {}

    return make


def _aliased(second: Callable[[torch.Tensor], object]):
    def cache():
        kv = _cache()
        return [kv, second(kv)]

    return cache


def _self_indexed():
    buffer = torch.tensor([1, 3, 4, 5, 8, 9])
    return [buffer.view(6, 1)], buffer[:2]


def _square():
    return torch.arange(36.0).view(6, 6)


def _with_grad():
    return torch.zeros(6, 4, requires_grad=True)


COMPACT_KV_CASES = [
    Case("cache int", _public_compact(cache=lambda: 3), TypeError, "cache"),
    Case("cache item list", _public_compact(cache=lambda: [_cache(), [1.0]]), TypeError, "cache[1]"),
    Case("kept list", _public_compact(kept=lambda: [1, 3]), TypeError, "kept_indices"),
    Case("kept 2-D", _public_compact(kept=lambda: torch.tensor([[1, 3]])), ValueError, "kept_indices"),
    Case("kept float", _public_compact(kept=lambda: torch.tensor([1.0, 3.0])), ValueError, "kept_indices"),
    Case("kept meta", _public_compact(kept=lambda: torch.tensor([1, 3], device="meta")), ValueError, "kept_indices"),
    Case(
        "cache meta",
        _public_compact(cache=lambda: [_cache(), torch.zeros(6, device="meta")]),
        ValueError,
        "kept_indices",
    ),
    Case("kept too many", _public_compact(kept=lambda: torch.arange(7)), ValueError, "kept_indices"),
    Case("kept negative", _public_compact(kept=lambda: torch.tensor([-1, 3])), ValueError, "kept_indices"),
    Case("kept past B", _public_compact(kept=lambda: torch.tensor([1, 6])), ValueError, "kept_indices"),
    Case("kept huge", _public_compact(kept=lambda: torch.tensor([1, 2**62])), ValueError, "kept_indices"),
    Case("kept duplicate", _public_compact(kept=lambda: torch.tensor([3, 3])), ValueError, "kept_indices"),
    Case("kept descending", _public_compact(kept=lambda: torch.tensor([3, 1])), ValueError, "kept_indices"),
    Case("batch_dim range", _public_compact(batch_dim=2), ValueError, "batch_dim"),
    Case("batch_dim huge", _public_compact(batch_dim=2**70), ValueError, "batch_dim"),
    Case("batch_dim float", _public_compact(batch_dim=0.0), TypeError, "batch_dim"),
    Case("batch_dim count", _public_compact(cache=_aliased(torch.clone), batch_dim=[0]), ValueError, "batch_dim"),
    Case("batch sizes", _public_compact(cache=_aliased(lambda kv: kv[:5])), ValueError, "cache tensors"),
    Case("expanded", _public_compact(cache=lambda: torch.zeros(6, 1).expand(6, 4)), ValueError, "cache[0]"),
    Case(
        "3 strided dims",
        _public_compact(cache=lambda: torch.zeros(6, 5, 6, 7)[:, ::2, ::2, ::2]),
        ValueError,
        "cache[0]",
    ),
    # tensors sharing memory (issue 10, item 2) -- and nothing is modified before the error
    Case(
        "transpose", _public_compact(cache=_aliased(lambda kv: kv.view(4, 6).t())), ValueError, "cache[0] and cache[1]"
    ),
    Case(
        "overlapping slice", _public_compact(cache=_aliased(lambda kv: kv[:, 1:3])), ValueError, "cache[0] and cache[1]"
    ),
    Case(
        "other batch dim",
        _public_compact(cache=lambda: [_square()] * 2, batch_dim=[0, 1]),
        ValueError,
        "cache[0] and cache[1]",
    ),
    Case(
        "reinterpreted",
        _public_compact(cache=_aliased(lambda kv: kv.view(torch.int32))),
        ValueError,
        "cache[0] and cache[1]",
    ),
    Case("kept in cache", lambda: (sd.compact_kv_cache_, _self_indexed(), {}), ValueError, "kept_indices"),
    Case("leaf with grad", _public_compact(cache=_with_grad), RuntimeError, "cache[0]"),
    # raw op
    Case(
        "raw data 0-d",
        _raw_compact(data=lambda: torch.tensor(1.0), kept=lambda: torch.tensor([0])),
        RuntimeError,
        "data",
    ),
    Case(
        "raw kept int32",
        _raw_compact(kept=lambda: torch.tensor([1, 3], dtype=torch.int32)),
        RuntimeError,
        "kept_indices",
    ),
    Case("raw kept 2-D", _raw_compact(kept=lambda: torch.tensor([[1, 3]])), RuntimeError, "kept_indices"),
    Case("raw kept past B", _raw_compact(kept=lambda: torch.tensor([1, 6])), RuntimeError, "kept_indices"),
    Case("raw kept huge", _raw_compact(kept=lambda: torch.tensor([2**63 - 1])), RuntimeError, "kept_indices"),
    Case("raw kept too many", _raw_compact(kept=lambda: torch.arange(7)), RuntimeError, "kept_indices"),
    Case("raw kept descending", _raw_compact(kept=lambda: torch.tensor([3, 1])), RuntimeError, "kept_indices"),
    Case("raw batch_dim", _raw_compact(batch_dim=2), RuntimeError, "batch_dim"),
    Case("raw batch_dim -3", _raw_compact(batch_dim=-3), RuntimeError, "batch_dim"),
    Case("raw expanded", _raw_compact(data=lambda: torch.zeros(6, 1).expand(6, 4)), RuntimeError, "data"),
    Case("raw leaf with grad", _raw_compact(data=_with_grad), RuntimeError, "data"),
    Case("raw kept meta", _raw_compact(kept=lambda: torch.tensor([1, 3], device="meta")), RuntimeError, "kept_indices"),
    Case("raw data meta", _raw_compact(data=lambda: torch.zeros(6, 4, device="meta")), RuntimeError, "kept_indices"),
]


@pytest.mark.parametrize("case", COMPACT_KV_CASES, ids=lambda case: case.id)
def test_compact_kv_bad_input(case):
    check_case(case)


def test_exact_duplicates_are_compacted_once():
    # Issue 10, item 2: [kv, kv] moved every row twice, leaving [[6,7],[6,7],[10,11]].
    kv = torch.arange(12.0).view(6, 2)
    views = sd.compact_kv_cache_([kv, kv], torch.tensor([1, 3, 5]))
    assert kv[:3].tolist() == [[2, 3], [6, 7], [10, 11]]
    assert len(views) == 2 and all(view.data_ptr() == kv.data_ptr() and view.shape == (3, 2) for view in views)
    # The same view built twice is the same tensor too.
    kv = torch.arange(12.0).view(6, 2)
    sd.compact_kv_cache_([kv.view(6, 2), kv.view(6, 2)], torch.tensor([1, 3, 5]))
    assert kv[:3].tolist() == [[2, 3], [6, 7], [10, 11]]


def test_disjoint_views_of_one_buffer_are_compacted():
    # K and V halves of a packed cache share a storage but no byte: both move.
    packed = torch.arange(48.0).view(6, 2, 4)
    expected = packed[[0, 2, 5]].clone()
    sd.compact_kv_cache_([packed[:, 0], packed[:, 1]], torch.tensor([0, 2, 5]))
    assert torch.equal(packed[:3], expected)


def test_compacting_a_leaf_that_requires_grad_works_under_no_grad():
    cache = torch.arange(8.0).view(4, 2).requires_grad_()
    with torch.no_grad():
        sd.compact_kv_cache_(cache, torch.tensor([1, 3]))
        raw.compact_kv_(cache, torch.tensor([0]), 0)
    assert cache[:2].tolist() == [[2, 3], [6, 7]]


def test_raw_compact_kv_with_kept_indices_inside_data_raises_in_a_child():
    # The indices are read while rows move: rewritten mid-pass, a checked index could go out of bounds.
    run_in_child(
        """
        import torch, specdecode
        data = torch.tensor([1, 3, 4, 5, 8, 9])
        try:
            torch.ops.specdecode.compact_kv_(data, data[:2], 0)
        except RuntimeError as error:
            assert "kept_indices shares memory with data" in str(error), error
        else:
            raise AssertionError("no error")
        assert data.tolist() == [1, 3, 4, 5, 8, 9]
        """
    )


def test_raw_compact_kv_with_meta_argument_raises_in_a_child():
    # Issue 10, item 3: compact_kv_(cpu_data, meta_kept, 0) silently did nothing.
    run_in_child(
        """
        import torch, specdecode
        for data, kept in ((torch.arange(6.0), torch.tensor([1, 2], device="meta")),
                           (torch.zeros(6, device="meta"), torch.tensor([1, 2]))):
            try:
                torch.ops.specdecode.compact_kv_(data, kept, 0)
            except RuntimeError as error:
                assert "same device" in str(error), error
            else:
                raise AssertionError("no error")
        """
    )


def test_triton_compact_kv_launcher_accepts_size_one_dims():
    # Size-1 dims (any stride) are skipped by the layout rule in both kernels.
    data = torch.arange(24.0).view(6, 1, 4)[:, :, :].as_strided((6, 1, 4), (4, 1000, 1))
    expected = data[[1, 4]].clone()
    triton_compact_kv_(data, torch.tensor([1, 4]), 0, scratch_bytes=0)
    assert torch.equal(data[:2], expected)
    data = torch.arange(24.0).view(6, 1, 4).as_strided((6, 1, 4), (4, 1000, 1))
    raw.compact_kv_(data, torch.tensor([1, 4]), 0)
    assert torch.equal(data[:2], expected)
