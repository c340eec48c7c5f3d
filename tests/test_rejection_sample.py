"""rejection_sample: exact cases, kernel-vs-reference agreement, edge cases, bad input, plumbing.

Three backends run every exact case: the pure-PyTorch reference (the spec), the C++ CPU kernel
(through the registered op) and the Triton kernel (its launcher on CPU tensors, under
TRITON_INTERPRET=1, set in conftest.py). The statistical tests are in test_losslessness.py.
"""

from __future__ import annotations

import pytest
import torch
from devices import launcher

import specdecode as sd
from specdecode import core
from specdecode.reference import rejection_sample as ref

# The Triton launcher on the test device (tests/devices.py: CPU + interpreter, or CUDA).
triton_rejection_sample = launcher("rejection_sample", "rejection_sample")

# A seed whose first uniform (slot 0, row 0, offset 0) is exactly 0.0: found by search, and
# re-checked in test_zero_uniform_never_accepts_zero_probability so it cannot go stale.
SEED_WITH_ZERO_UNIFORM = 12121362


def _run_reference(*args, block_v=None):
    return tuple(ref.rejection_sample(*args))


def _run_cpp(*args, block_v=None):
    return tuple(torch.ops.specdecode.rejection_sample(*args))


def _run_triton(*args, block_v=None):
    return triton_rejection_sample(*args, block_v=block_v)


BACKENDS = {"reference": _run_reference, "cpp": _run_cpp, "triton": _run_triton}


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def verify(backend, draft_ids, draft_probs, target_probs, greedy=False, seed=0, offset=0, block_v=None):
    batch_size = draft_ids.shape[0]
    greedy_mask = greedy if isinstance(greedy, torch.Tensor) else torch.full((batch_size,), greedy)
    seeds = seed if isinstance(seed, torch.Tensor) else torch.tensor([seed])
    offsets = offset if isinstance(offset, torch.Tensor) else torch.tensor([offset])
    return backend(draft_ids.long(), draft_probs, target_probs, greedy_mask, seeds, offsets, block_v=block_v)


def one_hot_rows(token_ids: list[int], vocab_size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(token_ids), vocab_size).float()


def random_probs(*shape, temperature=1.0, dtype=torch.float32):
    return torch.softmax(torch.randn(*shape) / temperature, -1).to(dtype)


# ------------------------------------------------------------------------------------------
# Exact cases
# ------------------------------------------------------------------------------------------


def test_all_accepted_then_bonus(backend):
    vocab = 12
    target = one_hot_rows([3, 5, 7, 9], vocab)[None]  # q_i one-hot at the drafts, bonus at 9
    draft_probs = one_hot_rows([3, 5, 7], vocab)[None]
    tokens, accepted = verify(backend, torch.tensor([[3, 5, 7]]), draft_probs, target, seed=4)
    assert tokens.tolist() == [[3, 5, 7, 9]]
    assert accepted.tolist() == [3]


def test_early_mismatch_emits_residual(backend):
    vocab = 12
    target = one_hot_rows([3, 8, 7, 9], vocab)[None]  # q_1 puts no mass on the draft 5
    draft_probs = one_hot_rows([3, 5, 7], vocab)[None]
    tokens, accepted = verify(backend, torch.tensor([[3, 5, 7]]), draft_probs, target, seed=11)
    assert tokens.tolist() == [[3, 8, -1, -1]]  # residual max(0, q_1 - p_1) is one-hot at 8
    assert accepted.tolist() == [1]


def test_placeholder_rejected_and_nothing_after_it_accepted(backend):
    vocab = 10
    target = one_hot_rows([2, 6, 4, 1], vocab)[None]
    draft_probs = one_hot_rows([2, 6, 4], vocab)[None]
    # A valid draft (4, which q_2 accepts with probability 1) after the -1 must not be accepted,
    # and the placeholder position emits from the full target row q_1.
    tokens, accepted = verify(backend, torch.tensor([[2, -1, 4]]), draft_probs, target, seed=5)
    assert tokens.tolist() == [[2, 6, -1, -1]]
    assert accepted.tolist() == [1]


def test_out_of_vocab_draft_ids_are_placeholders(backend):
    vocab = 10
    target = one_hot_rows([2, 6, 4], vocab)[None]
    for bad_id in (vocab, 10**6, -7):
        tokens, accepted = verify(backend, torch.tensor([[2, bad_id]]), None, target, seed=1)
        assert tokens.tolist() == [[2, 6, -1]]
        assert accepted.tolist() == [1]


def test_k_zero_emits_from_target_row(backend):
    target = one_hot_rows([4, 7], 9)[:, None, :]  # [2, 1, 9]
    tokens, accepted = verify(backend, torch.zeros(2, 0, dtype=torch.long), None, target, seed=3)
    assert tokens.tolist() == [[4], [7]]
    assert accepted.tolist() == [0, 0]


def test_empty_batch(backend):
    tokens, accepted = verify(
        backend, torch.zeros(0, 3, dtype=torch.long), random_probs(0, 3, 5), random_probs(0, 4, 5)
    )
    assert tokens.shape == (0, 4) and accepted.shape == (0,)


def test_greedy_rows(backend):
    target = torch.tensor(
        [[[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]], [[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.2, 0.6]]]
    )
    draft_ids = torch.tensor([[1, 0], [1, 2]])  # row 0 matches both argmaxes; row 1 fails at 1
    tokens, accepted = verify(backend, draft_ids, random_probs(2, 2, 3), target, greedy=True)
    assert tokens.tolist() == [[1, 0, 2], [1, 0, -1]]
    assert accepted.tolist() == [2, 1]


def test_greedy_argmax_ties_take_first_and_ignore_nan(backend):
    target = torch.tensor([[[0.2, 0.4, 0.4]], [[float("nan"), 0.1, 0.9]], [[float("nan")] * 3]])
    tokens, _ = verify(backend, torch.zeros(3, 0, dtype=torch.long), None, target, greedy=True)
    assert tokens.tolist() == [[1], [2], [0]]


def test_mixed_greedy_and_sampled_batch(backend):
    vocab = 6
    target = torch.tensor([[0.05, 0.05, 0.3, 0.6, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]])
    target = target[None].expand(4, 2, vocab).contiguous()
    draft_ids = torch.tensor([[2], [2], [3], [3]])
    greedy = torch.tensor([True, False, True, False])
    tokens, accepted = verify(backend, draft_ids, None, target, greedy=greedy, seed=9)
    # Greedy rows: 2 != argmax 3 -> emit 3; 3 == argmax -> accepted, bonus argmax q_1 = 4.
    assert tokens[0].tolist() == [3, -1] and tokens[2].tolist() == [3, 4]
    # Sampled rows agree with the reference on the same stream.
    expected = ref.rejection_sample(draft_ids, None, target, greedy, torch.tensor([9]), torch.tensor([0]))
    assert torch.equal(tokens[[1, 3]], expected.token_ids[[1, 3]])
    assert torch.equal(accepted, expected.num_accepted)


def test_one_hot_drafts_residual_excludes_the_draft(backend):
    vocab = 5
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0, 0.0]])[None].expand(64, 2, vocab)
    draft_ids = torch.zeros(64, 1, dtype=torch.long)  # accepted with probability q(0) = 0.5
    tokens, accepted = verify(backend, draft_ids, None, target.contiguous(), seed=21)
    rejected = accepted == 0
    assert torch.all(tokens[rejected, 0] == 1)  # residual = q without token 0 = one-hot at 1
    assert torch.all(tokens[~rejected] == torch.tensor([0, 3]))  # accepted, then bonus argmax
    assert 0 < int(rejected.sum()) < 64


# ------------------------------------------------------------------------------------------
# Edge cases stated in docs/ops.md
# ------------------------------------------------------------------------------------------


def test_zero_uniform_never_accepts_zero_probability(backend):
    assert float(core.uniforms(torch.tensor([SEED_WITH_ZERO_UNIFORM]), torch.tensor([0]), 1, 1)[0, 0]) == 0.0
    target = torch.tensor([[[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    for draft_probs in (torch.tensor([[[0.25, 0.25, 0.25, 0.25]]]), torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]), None):
        tokens, accepted = verify(backend, torch.tensor([[0]]), draft_probs, target, seed=SEED_WITH_ZERO_UNIFORM)
        assert accepted.tolist() == [0], "q(x) = 0 was accepted at u = 0"
        assert tokens[0, 0].item() in (1, 2)


def test_draft_equal_to_target_accepts_every_draft(backend):
    probs = random_probs(32, 4, 50)
    draft_ids = torch.multinomial(probs[:, :3].reshape(-1, 50), 1).reshape(32, 3)
    _, accepted = verify(backend, draft_ids, probs[:, :3].contiguous(), probs, seed=2)
    assert accepted.tolist() == [3] * 32


def test_zero_residual_mass_falls_back_to_target(backend):
    # p = 2q (not normalised) rejects half the time while max(0, q - p) has no mass at all.
    target = torch.tensor([[[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]]).expand(64, 2, 4).contiguous()
    draft_probs = 2 * target[:, :1]
    tokens, accepted = verify(backend, torch.full((64, 1), 2), draft_probs, target, seed=8)
    assert 0 < int((accepted == 0).sum()) < 64
    assert torch.all(tokens[accepted == 0, 0] == 2)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), 0.0, -1.0])
def test_degenerate_target_rows_emit_in_range(backend, bad_value):
    vocab = 37
    target = torch.full((6, 3, vocab), bad_value)
    target[3:, :, 5] = float("nan")
    draft_probs = random_probs(6, 2, vocab)
    draft_ids = torch.randint(0, vocab, (6, 2))
    for greedy in (False, True):
        tokens, accepted = verify(backend, draft_ids, draft_probs, target, greedy=greedy, seed=1, block_v=16)
        emitted = tokens.gather(1, accepted[:, None])
        assert torch.all((emitted >= 0) & (emitted < vocab))


@pytest.mark.parametrize("vocab", [100, 8193, 10000])
def test_vocab_not_a_multiple_of_the_tile_with_zero_mass_tail(backend, vocab):
    # All residual mass sits in the first tile; the tail tile is partial and has zero mass, so
    # masked lanes must never win (a peer emitted ids >= V here).
    batch = 4
    target = torch.zeros(batch, 2, vocab)
    target[:, :, :8] = 1.0 / 8
    draft_probs = torch.zeros(batch, 1, vocab)
    draft_probs[:, :, :4] = 0.25
    draft_ids = torch.tensor([[7], [6], [0], [1]])  # 7, 6: p = 0 -> accept; 0, 1: maybe reject
    for seed in range(4):
        tokens, accepted = verify(
            backend, draft_ids, draft_probs, target, seed=seed, block_v=64 if vocab < 1000 else 1024
        )
        emitted = tokens.gather(1, accepted[:, None])
        assert torch.all((emitted >= 0) & (emitted < 8))


def test_offsets_beyond_int32(backend):
    """rows x V > 2**31: the row offsets of the last rows overflow int32."""
    vocab, row_stride = 64, 2**31 + 64
    storage = torch.empty(row_stride + 2 * vocab, dtype=torch.bfloat16)  # untouched pages cost no RAM
    target = storage.as_strided((2, 2, vocab), (row_stride, vocab, 1))
    target.zero_()
    target[0, :, 3] = 1.0
    target[1, :, 60] = 1.0
    draft_ids = torch.tensor([[3], [60]])
    tokens, accepted = verify(backend, draft_ids, None, target, seed=0)
    assert tokens.tolist() == [[3, 3], [60, 60]] and accepted.tolist() == [1, 1]


# ------------------------------------------------------------------------------------------
# Kernels vs reference on random inputs: acceptance exact, emitted tokens up to rounding
# ------------------------------------------------------------------------------------------

# The kernels sum the residual in another order (Triton in float32 tiles, C++ in float64
# blocks) than the reference (float64 cumsum). A differing sample is allowed only where that can
# matter: the threshold u*Z lies within ROUNDING_BOUND * Z of the chosen token's CDF interval.
ROUNDING_BOUND = 1e-5


def assert_emitted_within_rounding(tokens, accepted, expected, draft_ids, draft_probs, target, seeds, offsets):
    assert torch.equal(accepted, expected.num_accepted), "acceptance counts differ"
    differs = (tokens != expected.token_ids).any(1).nonzero().flatten().tolist()
    u = core.uniforms(seeds, offsets, draft_ids.shape[0], draft_ids.shape[1] + 1)[:, -1].double()
    for row in differs:
        j = int(accepted[row])
        assert tokens[row, :j].tolist() == expected.token_ids[row, :j].tolist()
        got = int(tokens[row, j])
        q = target[row, j].double()
        p = torch.zeros_like(q)
        if j < draft_ids.shape[1] and 0 <= draft_ids[row, j] < q.numel():
            p = (
                draft_probs[row, j].double()
                if draft_probs is not None
                else torch.nn.functional.one_hot(draft_ids[row, j], q.numel()).double()
            )
        w = torch.where(q - p > 0, q - p, 0)
        cdf = w.cumsum(0)
        total = float(cdf[-1])
        threshold = float(u[row]) * total
        low = float(cdf[got - 1]) if got > 0 else 0.0
        assert w[got] > 0, f"row {row}: emitted {got} has no residual mass"
        assert low - ROUNDING_BOUND * total <= threshold < float(cdf[got]) + ROUNDING_BOUND * total, (
            f"row {row}: kernel emitted {got}, reference {int(expected.token_ids[row, j])}, beyond rounding"
        )


GRID = [  # (B, K, V, block_v for Triton)
    (1, 1, 2, None),
    (5, 3, 33, 16),
    (8, 4, 1000, 256),
    (3, 7, 4096, 1024),
    (16, 2, 129, None),
]


@pytest.mark.parametrize("batch,num_drafts,vocab,block_v", GRID)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("proposer", ["dense", "one-hot", "adversarial"])
@pytest.mark.parametrize("kernel", ["cpp", "triton"])
def test_kernel_matches_reference(kernel, proposer, dtype, batch, num_drafts, vocab, block_v):
    torch.manual_seed(batch * 1000 + vocab)
    target = random_probs(batch, num_drafts + 1, vocab, temperature=0.5, dtype=dtype)
    if proposer == "adversarial":  # p far from q: mostly rejections, the residual path dominates
        logits = -torch.log(target[:, :num_drafts].float() + 1e-9)
        draft_probs = torch.softmax(logits, -1).to(dtype)
    else:
        draft_probs = random_probs(batch, num_drafts, vocab, temperature=0.5, dtype=dtype)
    draft_ids = torch.multinomial(draft_probs.float().reshape(-1, vocab), 1).reshape(batch, num_drafts)
    draft_ids[0, num_drafts // 2 :] = -1  # a ragged row
    if proposer == "one-hot":
        draft_probs = None
    greedy = torch.rand(batch) < 0.25
    seeds = torch.randint(0, 2**62, (batch,)) if batch % 2 else torch.tensor([1234])
    offsets = torch.tensor([7])
    tokens, accepted = verify(BACKENDS[kernel], draft_ids, draft_probs, target, greedy, seeds, offsets, block_v)
    expected = ref.rejection_sample(draft_ids, draft_probs, target, greedy, seeds, offsets)
    assert_emitted_within_rounding(tokens, accepted, expected, draft_ids, draft_probs, target.float(), seeds, offsets)


def test_triton_matches_cpp_exactly_on_a_larger_batch():
    """Same stream, same acceptance: with float64 (C++) vs float32 (Triton) sums the samples agree
    except within the rounding bound; here they are checked to agree on nearly every row."""
    batch, num_drafts, vocab = 64, 4, 512
    target = random_probs(batch, num_drafts + 1, vocab)
    draft_probs = random_probs(batch, num_drafts, vocab)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1).reshape(batch, num_drafts)
    args = (draft_ids, draft_probs, target, torch.zeros(batch, dtype=torch.bool), torch.tensor([5]), torch.tensor([0]))
    cpp_tokens, cpp_accepted = _run_cpp(*args)
    tri_tokens, tri_accepted = _run_triton(*args, block_v=128)
    assert torch.equal(cpp_accepted, tri_accepted)
    assert int((cpp_tokens != tri_tokens).any(1).sum()) <= 1


# ------------------------------------------------------------------------------------------
# Randomness: seeds, offsets, generators, per-row streams
# ------------------------------------------------------------------------------------------


def _random_case(batch=12, num_drafts=3, vocab=40):
    target = random_probs(batch, num_drafts + 1, vocab)
    draft_probs = random_probs(batch, num_drafts, vocab)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1).reshape(batch, num_drafts)
    return draft_ids, draft_probs, target


def test_same_seed_same_output_and_offset_changes_it():
    draft_ids, draft_probs, target = _random_case(batch=256)
    first = sd.rejection_sample(draft_ids, draft_probs, target, seed=77)
    again = sd.rejection_sample(draft_ids, draft_probs, target, seed=77)
    stepped = sd.rejection_sample(draft_ids, draft_probs, target, seed=77, offset=1)
    assert torch.equal(first.token_ids, again.token_ids)
    assert not torch.equal(first.token_ids, stepped.token_ids)


def test_generator_reproduces_and_advances():
    draft_ids, draft_probs, target = _random_case(batch=256)
    run = lambda gen: sd.rejection_sample(draft_ids, draft_probs, target, generator=gen).token_ids
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    first_a, first_b = run(gen_a), run(gen_b)
    assert torch.equal(first_a, first_b)
    assert not torch.equal(run(gen_a), first_a)  # the generator advanced


def test_per_row_seed_reproduces_a_request_in_any_batch():
    draft_ids, draft_probs, target = _random_case(batch=8)
    seeds = torch.arange(100, 108)
    offsets = torch.arange(8) * 3
    batched = sd.rejection_sample(draft_ids, draft_probs, target, seed=seeds, offset=offsets)
    for row in range(8):
        alone = sd.rejection_sample(
            draft_ids[row : row + 1],
            draft_probs[row : row + 1],
            target[row : row + 1],
            seed=seeds[row : row + 1],
            offset=offsets[row : row + 1],
        )
        assert torch.equal(alone.token_ids[0], batched.token_ids[row])
    permuted = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    shuffled = sd.rejection_sample(
        draft_ids[permuted], draft_probs[permuted], target[permuted], seed=seeds[permuted], offset=offsets[permuted]
    )
    assert torch.equal(shuffled.token_ids, batched.token_ids[permuted])


def test_cpp_and_triton_draw_identical_uniforms():
    """Acceptance with p = 1 (one-hot drafts) is u < q(x): scanning q(x) over a grid recovers
    each backend's uniform at slot 0 to 1/32, and the backends must agree with the reference."""
    batch, vocab = 16, 2
    levels = torch.linspace(0, 1, 33)[1:]
    seeds = torch.randint(0, 2**62, (batch,))
    results = {}
    for name, backend in BACKENDS.items():
        accepted_at = []
        for level in levels:
            target = torch.tensor([[float(level), 1 - float(level)]] * 2)[None].expand(batch, 2, vocab).contiguous()
            _, accepted = verify(backend, torch.zeros(batch, 1, dtype=torch.long), None, target, seed=seeds)
            accepted_at.append(accepted)
        results[name] = torch.stack(accepted_at)
    assert torch.equal(results["cpp"], results["reference"])
    assert torch.equal(results["triton"], results["reference"])


# ------------------------------------------------------------------------------------------
# Public API: argument checks, validate=True, no mutation, module, torch.library plumbing
# ------------------------------------------------------------------------------------------


def test_bad_inputs_raise_clear_errors():
    draft_ids, draft_probs, target = _random_case(batch=2, num_drafts=3, vocab=10)
    cases = [
        (dict(draft_token_ids=draft_ids[0]), ValueError, "draft_token_ids must have 2 dimensions"),
        (dict(draft_token_ids=draft_ids.float()), TypeError, "draft_token_ids must have dtype"),
        (dict(target_probs=target[:, :3]), ValueError, r"target_probs must be \[B, K\+1, V\]"),
        (dict(target_probs=target.double()), TypeError, "target_probs must have dtype"),
        (dict(target_probs=target.tolist()), TypeError, "target_probs must be a torch.Tensor"),
        (dict(draft_probs=draft_probs[:, :, :9]), ValueError, r"draft_probs must be \[B, K, V\]"),
        (dict(draft_token_ids=draft_ids.to("meta")), ValueError, "draft_token_ids is on meta"),
        (dict(greedy=torch.tensor([True])), ValueError, "greedy must be a"),
        (dict(greedy="yes"), TypeError, "greedy must be a bool"),
        (dict(seed=1, generator=torch.Generator()), ValueError, "either generator or seed"),
        (dict(seed=torch.tensor([1, 2, 3])), ValueError, "seed must be a"),
        (dict(seed=1.5), TypeError, "seed must be an int"),
        (dict(offset=torch.zeros(2, 2, dtype=torch.long)), ValueError, "offset must be a"),
        (dict(target_probs=torch.empty(2, 4, 0)), ValueError, "empty vocabulary"),
    ]
    base = dict(draft_token_ids=draft_ids, draft_probs=draft_probs, target_probs=target)
    for override, error, message in cases:
        kwargs = {**base, **override}
        args = [kwargs.pop(k) for k in ("draft_token_ids", "draft_probs", "target_probs")]
        with pytest.raises(error, match=message):
            sd.rejection_sample(*args, **kwargs)


def test_validate_reports_bad_values():
    draft_ids, draft_probs, target = _random_case(batch=2, num_drafts=3, vocab=10)
    sd.rejection_sample(draft_ids, draft_probs, target, validate=True)  # valid input passes
    bad_target = target.clone()
    bad_target[1, 2, 4] = float("nan")
    negative = target.clone()
    negative[0, 0, 0] = -0.1
    unnormalised = target * 1.5
    too_big = draft_ids.clone()
    too_big[1, 1] = 10
    cases = [
        (dict(target_probs=bad_target), "target_probs contains NaN or inf"),
        (dict(target_probs=negative), "target_probs contains negative"),
        (dict(target_probs=unnormalised), "target_probs is not normalised"),
        (dict(draft_probs=unnormalised[:, :3].contiguous()), "draft_probs is not normalised"),
        (dict(draft_token_ids=too_big), r"draft_token_ids\[1, 1\] = 10 is outside \[-1, V\)"),
    ]
    base = dict(draft_token_ids=draft_ids, draft_probs=draft_probs, target_probs=target)
    for override, message in cases:
        kwargs = {**base, **override}
        with pytest.raises(ValueError, match=message):
            sd.rejection_sample(kwargs["draft_token_ids"], kwargs["draft_probs"], kwargs["target_probs"], validate=True)
        sd.rejection_sample(kwargs["draft_token_ids"], kwargs["draft_probs"], kwargs["target_probs"])  # no raise


def test_inputs_are_not_modified_and_int32_ids_work():
    draft_ids, draft_probs, target = _random_case()
    draft_ids = draft_ids.int()
    draft_ids[0, 1] = -1
    snapshots = [t.clone() for t in (draft_ids, draft_probs, target)]
    out32 = sd.rejection_sample(draft_ids, draft_probs, target, seed=5)
    for before, after in zip(snapshots, (draft_ids, draft_probs, target)):
        assert torch.equal(before, after) and before.dtype == after.dtype
    out64 = sd.rejection_sample(draft_ids.long(), draft_probs, target, seed=5)
    assert torch.equal(out32.token_ids, out64.token_ids) and out32.token_ids.dtype == torch.int64


def test_mixed_draft_and_target_dtypes_are_widened_exactly():
    # A bf16 target with an fp32 draft (and fp16 with bf16): the same tokens as with both sides
    # widened to float32 by hand, which is what the kernels compute in anyway. Inputs untouched.
    draft_ids, draft_probs, target = _random_case()
    for draft_dtype, target_dtype in ((torch.float32, torch.bfloat16), (torch.float16, torch.bfloat16)):
        draft, target_narrow = draft_probs.to(draft_dtype), target.to(target_dtype)
        snapshots = (draft.clone(), target_narrow.clone())
        for greedy in (False, True):
            got = sd.rejection_sample(draft_ids, draft, target_narrow, greedy=greedy, seed=7)
            want = sd.rejection_sample(draft_ids, draft.float(), target_narrow.float(), greedy=greedy, seed=7)
            assert torch.equal(got.token_ids, want.token_ids) and torch.equal(got.num_accepted, want.num_accepted)
        assert draft.dtype == draft_dtype and target_narrow.dtype == target_dtype
        assert torch.equal(draft, snapshots[0]) and torch.equal(target_narrow, snapshots[1])


def test_emitted_lists_each_rows_tokens_without_the_tail():
    out = core.RejectionOutput(torch.tensor([[5, 2, -1, -1], [7, -1, -1, -1], [1, 2, 3, 4]]), torch.tensor([1, 0, 3]))
    assert [row.tolist() for row in out.emitted()] == [[5, 2], [7], [1, 2, 3, 4]]
    draft_ids, draft_probs, target = _random_case()
    result = sd.rejection_sample(draft_ids, draft_probs, target, seed=2)
    for row, tokens, accepted in zip(result.emitted(), result.token_ids, result.num_accepted):
        assert torch.equal(row, tokens[: int(accepted) + 1]) and bool((row >= 0).all())
    empty = sd.rejection_sample(torch.zeros(0, 2, dtype=torch.long), None, torch.ones(0, 3, 4), seed=0)
    assert empty.emitted() == []


def test_logits_instead_of_probabilities_are_caught_by_validate():
    draft_ids, _, target = _random_case()
    logits = torch.log(target)  # every entry negative: not a distribution
    out = sd.rejection_sample(draft_ids, None, logits, seed=1)  # documented: no check by default
    assert bool(((out.token_ids >= -1) & (out.token_ids < target.shape[-1])).all())
    with pytest.raises(ValueError, match="target_probs contains negative"):
        sd.rejection_sample(draft_ids, None, logits, seed=1, validate=True)


def test_strided_probabilities():
    draft_ids, draft_probs, target = _random_case()
    wide = torch.zeros(target.shape[0], target.shape[1] + 2, target.shape[2])
    wide[:, 1:-1] = target
    strided_target = wide[:, 1:-1]  # non-contiguous in dims 0/1
    transposed = target.transpose(1, 2).contiguous().transpose(1, 2)  # strided in V
    expected = sd.rejection_sample(draft_ids, draft_probs, target, seed=3)
    for variant in (strided_target, transposed):
        got = sd.rejection_sample(draft_ids, draft_probs, variant, seed=3)
        assert torch.equal(got.token_ids, expected.token_ids)


def test_module_wraps_the_op():
    draft_ids, draft_probs, target = _random_case()
    module = sd.RejectionSampler()
    assert torch.equal(
        module(draft_ids, draft_probs, target, seed=4).token_ids,
        sd.rejection_sample(draft_ids, draft_probs, target, seed=4).token_ids,
    )
    with pytest.raises(ValueError):
        sd.RejectionSampler(validate=True)(draft_ids, draft_probs, target * 2, seed=4)


def test_opcheck():
    draft_ids, draft_probs, target = _random_case()
    greedy = torch.rand(draft_ids.shape[0]) < 0.5
    for probs in (draft_probs, None):
        torch.library.opcheck(
            torch.ops.specdecode.rejection_sample,
            (draft_ids, probs, target, greedy, torch.tensor([1]), torch.tensor([0])),
        )


def test_torch_compile_fullgraph_matches_eager():
    draft_ids, draft_probs, target = _random_case()
    seeds = torch.arange(draft_ids.shape[0])

    def step(ids, p, q, s):
        out = sd.rejection_sample(ids, p, q, seed=s)
        return out.token_ids, out.num_accepted

    compiled = torch.compile(step, fullgraph=True)
    eager_tokens, eager_accepted = step(draft_ids, draft_probs, target, seeds)
    tokens, accepted = compiled(draft_ids, draft_probs, target, seeds)
    assert torch.equal(tokens, eager_tokens) and torch.equal(accepted, eager_accepted)
