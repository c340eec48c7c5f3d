"""rejection_sample_ragged: the ragged from-logits verifier against its reference, the padded op and
the exact distribution of whole output rows; bad input; torch.library plumbing.

Three backends run the exact cases: the reference (the spec), the C++ kernel (the registered op
on CPU tensors) and the Triton kernel (its launcher on CPU tensors under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from devices import launcher
from stats import assert_fits
from test_bad_input import Case, check_case

import specdecode as sd
from specdecode.reference import rejection_sample_ragged as ref
from specdecode.stats import chi2_sf, chi_square

PLACEHOLDER_TOKEN_ID = -1
raw = torch.ops.specdecode
# The Triton launcher on the test device (tests/devices.py: CPU + interpreter, or CUDA).
triton_rejection_sample_ragged = launcher("rejection_sample_ragged", "rejection_sample_ragged")


def _run_reference(*args):
    return tuple(ref.rejection_sample_ragged(*args))


def _run_cpp(*args):
    return tuple(raw.rejection_sample_ragged(*args))


def _run_triton(*args):
    return triton_rejection_sample_ragged(*args)


BACKENDS = {"reference": _run_reference, "cpp": _run_cpp, "triton": _run_triton}


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return BACKENDS[request.param]


def op_args(
    draft_ids,
    counts,
    target,
    *,
    draft=None,
    bonus=None,
    greedy=None,
    temperature=None,
    seeds=(0,),
    offsets=(0,),
    max_k=None,
    draft_is_logits=False,
    target_is_logits=False,
    out_dtype=torch.int64,
):
    """The raw op's 13 arguments from friendlier ones (counts as a list)."""
    batch_size = len(counts)
    cu = torch.tensor(counts, dtype=torch.int64).cumsum(0)
    greedy = torch.zeros(batch_size, dtype=torch.bool) if greedy is None else greedy
    return (
        draft_ids,
        cu,
        draft,
        target,
        bonus,
        greedy,
        temperature,
        torch.as_tensor(seeds, dtype=torch.int64),
        torch.as_tensor(offsets, dtype=torch.int64),
        max(counts, default=0) if max_k is None else max_k,
        draft_is_logits,
        target_is_logits,
        out_dtype,
    )


def one_hot_rows(token_ids: list[int], vocab_size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(token_ids), vocab_size).float()


# ------------------------------------------------------------------------------------------
# Exact cases
# ------------------------------------------------------------------------------------------


def test_uneven_requests_with_bonus_rows(backend):
    # Requests of 2, 0 and 1 drafts; every target row is one-hot, so everything is determined.
    vocab = 8
    #            req 0: rows 0, 1, bonus | req 1: bonus | req 2: row 0, bonus
    target = one_hot_rows([3, 5, 7, 2, 4, 6], vocab)
    draft_ids = torch.tensor([3, 1, 4])  # req 0: 3 accepted, 1 rejected (q = one-hot at 5); req 2: 4 accepted
    tokens, accepted = backend(*op_args(draft_ids, [2, 0, 1], target, max_k=3))
    assert tokens.tolist() == [[3, 5, -1, -1], [2, -1, -1, -1], [4, 6, -1, -1]]
    assert accepted.tolist() == [1, 0, 1]


def test_bonus_ids_replace_bonus_rows(backend):
    vocab = 8
    target = one_hot_rows([3, 5, 4], vocab)  # N rows only: the draft positions
    bonus = torch.tensor([7, 1, 0], dtype=torch.int32)
    tokens, accepted = backend(*op_args(torch.tensor([3, 5, 2]), [2, 0, 1], target, bonus=bonus))
    assert tokens.tolist() == [[3, 5, 7], [1, -1, -1], [4, -1, -1]]  # req 2: 2 rejected, residual = 4
    assert accepted.tolist() == [2, 0, 0]


def test_placeholders_and_out_of_vocab_drafts_stop_the_chain(backend):
    vocab = 6
    target = one_hot_rows([2, 4, 1, 5], vocab)
    for bad_id in (-1, vocab, 10**6):
        tokens, _ = backend(*op_args(torch.tensor([2, bad_id, 1]), [3], target))
        assert tokens.tolist() == [[2, 4, -1, -1]]


def test_temperature_zero_is_greedy_on_logits(backend):
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0], [0.0, 0.0, 5.0], [0.1, 0.0, 0.0]])
    temperature = torch.tensor([0.0, 0.0])
    tokens, accepted = backend(
        *op_args(torch.tensor([1, 1]), [1, 1], logits, temperature=temperature, target_is_logits=True)
    )
    assert tokens.tolist() == [[1, 0], [2, -1]]  # req 0: argmax 1 accepted, bonus argmax 0; req 1: 1 != 2
    assert accepted.tolist() == [1, 0]


def test_masked_logits_are_never_emitted(backend):
    # -inf logits (vLLM's top-k/top-p masking) have probability exactly 0.
    vocab = 16
    logits = torch.full((2, vocab), float("-inf"))
    logits[:, 9] = 0.0
    for seed in range(4):
        tokens, accepted = backend(
            *op_args(
                torch.tensor([3]),
                [1],
                logits,
                temperature=torch.tensor([0.8]),
                target_is_logits=True,
                seeds=(seed,),
            )
        )
        assert tokens.tolist() == [[9, -1]] and accepted.tolist() == [0]


@pytest.mark.parametrize("out_dtype", [torch.int32, torch.int64])
def test_empty_batch_and_no_drafts(backend, out_dtype):
    tokens, accepted = backend(*op_args(torch.zeros(0, dtype=torch.long), [], torch.zeros(0, 5), out_dtype=out_dtype))
    assert tokens.shape == (0, 1) and accepted.shape == (0,) and tokens.dtype == out_dtype
    target = one_hot_rows([1, 4], 5)
    tokens, accepted = backend(*op_args(torch.zeros(0, dtype=torch.long), [0, 0], target, out_dtype=out_dtype))
    assert tokens.tolist() == [[1], [4]] and accepted.tolist() == [0, 0] and accepted.dtype == out_dtype


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), float("-inf")])
def test_degenerate_logits_emit_in_range(backend, bad_value):
    vocab = 37
    logits = torch.full((5, vocab), bad_value)
    draft = torch.softmax(torch.randn(3, vocab), -1)
    temperature = torch.tensor([1.0, 0.0])
    tokens, accepted = backend(
        *op_args(
            torch.randint(0, vocab, (3,)), [2, 1], logits, draft=draft, temperature=temperature, target_is_logits=True
        )
    )
    emitted = tokens.gather(1, accepted[:, None].long())
    assert torch.all((emitted >= 0) & (emitted < vocab))


def test_unchecked_running_totals_stay_in_bounds():
    # The Triton launcher takes values unchecked (no sync): totals out of order or past N must
    # not read outside the tensors, and every id stays in [0, V) or -1.
    vocab = 16
    buffer = torch.softmax(torch.randn(12, vocab), -1)
    target = buffer[2:9]
    before = buffer.clone()
    for cu in ([9, 2, 40], [-5, 3, 4], [2**40, 0, 4]):
        args = list(op_args(torch.randint(0, vocab, (4,)), [1, 1, 2], target, max_k=2))
        args[1] = torch.tensor(cu)
        tokens, accepted = _run_triton(*args)
        assert bool(((tokens >= -1) & (tokens < vocab)).all()) and bool((accepted <= 2).all())
    assert torch.equal(buffer, before)


# ------------------------------------------------------------------------------------------
# Kernels vs reference on random inputs: acceptance exact, emitted tokens equal
# ------------------------------------------------------------------------------------------


def random_case(counts, vocab, *, target_logits, draft_kind, target_dtype, draft_dtype, bonus_ids, seed):
    """Random ragged inputs; draft_kind is 'probs', 'logits' or 'one-hot'."""
    gen = torch.Generator().manual_seed(seed)
    num_tokens, batch_size = sum(counts), len(counts)
    target_rows = num_tokens if bonus_ids else num_tokens + batch_size
    target = torch.randn(target_rows, vocab, generator=gen) * 2
    draft_logits = torch.randn(num_tokens, vocab, generator=gen) * 2
    draft_probs = torch.softmax(draft_logits, -1)
    draft_ids = torch.multinomial(draft_probs, 1, generator=gen).flatten() if num_tokens else torch.zeros(0).long()
    if num_tokens > 2:
        draft_ids[2] = PLACEHOLDER_TOKEN_ID
    draft = {"probs": draft_probs, "logits": draft_logits, "one-hot": None}[draft_kind]
    if not target_logits:
        target = torch.softmax(target, -1)
    any_logits = target_logits or draft_kind == "logits"
    temperature = torch.rand(batch_size, generator=gen) + 0.3 if any_logits else None
    if any_logits and batch_size > 1:
        temperature[1] = 0.0  # one greedy request among sampled ones
    greedy = torch.zeros(batch_size, dtype=torch.bool)
    greedy[-1] = True
    return op_args(
        draft_ids.int(),
        counts,
        target.to(target_dtype),
        draft=None if draft is None else draft.to(draft_dtype),
        bonus=torch.randint(0, vocab, (batch_size,), generator=gen) if bonus_ids else None,
        greedy=greedy,
        temperature=temperature,
        seeds=torch.randint(0, 2**62, (batch_size,), generator=gen) if seed % 2 else (seed,),
        offsets=(7,),
        max_k=max(counts) + 1,
        draft_is_logits=draft_kind == "logits",
        target_is_logits=target_logits,
    )


CONFIGS = [  # (target logits, draft kind, target dtype, draft dtype, bonus ids)
    (False, "probs", torch.float32, torch.float32, False),
    (False, "one-hot", torch.bfloat16, torch.bfloat16, True),
    (True, "probs", torch.float32, torch.float32, True),  # vLLM V1
    (True, "logits", torch.float32, torch.bfloat16, False),  # MRV2: bf16 draft logits, fp32 target
    (True, "one-hot", torch.float16, torch.float16, False),
    (False, "probs", torch.float16, torch.float32, False),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{'logits' if c[0] else 'probs'}-{c[1]}-{c[2]}-{c[3]}")
@pytest.mark.parametrize("kernel", ["cpp", "triton"])
def test_kernel_matches_reference(kernel, config):
    target_logits, draft_kind, target_dtype, draft_dtype, bonus_ids = config
    counts = [0, 1, 2, 3, 4, 3, 1, 2]
    for vocab, seed in ((33, 1), (300, 2)):
        args = random_case(
            counts,
            vocab,
            target_logits=target_logits,
            draft_kind=draft_kind,
            target_dtype=target_dtype,
            draft_dtype=draft_dtype,
            bonus_ids=bonus_ids,
            seed=seed,
        )
        tokens, accepted = BACKENDS[kernel](*args)
        expected = ref.rejection_sample_ragged(*args)
        assert torch.equal(accepted, expected.num_accepted), "acceptance counts differ"
        assert torch.equal(tokens, expected.token_ids)


def test_matches_the_padded_op_request_by_request():
    """Per-request seeds: each request equals sd.rejection_sample on that request alone, padded
    to [1, K_b + 1, V] (the same stream: slot K_b draws the emitted token)."""
    counts, vocab = [0, 1, 2, 3, 4, 2, 0, 3], 40
    args = random_case(
        counts,
        vocab,
        target_logits=False,
        draft_kind="probs",
        target_dtype=torch.float32,
        draft_dtype=torch.float32,
        bonus_ids=False,
        seed=3,
    )
    draft_ids, cu, draft, target, _, greedy, _, seeds, offsets = args[:9]
    tokens, accepted = _run_cpp(*args)
    starts = [0, *cu.tolist()[:-1]]
    for b, (start, count) in enumerate(zip(starts, counts)):
        rows = slice(start + b, start + b + count + 1)
        padded = sd.rejection_sample(
            draft_ids[start : start + count][None],
            draft[start : start + count][None],
            target[rows][None],
            greedy=greedy[b : b + 1],
            seed=seeds[b : b + 1],
            offset=int(offsets[0]),
        )
        assert int(accepted[b]) == int(padded.num_accepted[0])
        assert tokens[b, : count + 1].tolist() == padded.token_ids[0].tolist()
        assert tokens[b, count + 1 :].eq(PLACEHOLDER_TOKEN_ID).all()


def test_matches_the_padded_batch_with_a_shared_seed():
    """Equal draft counts and one seed for the batch: the ragged op is the padded op on the
    same rows reshaped to [B, K + 1, V], exactly (both C++ and Triton)."""
    batch, num_drafts, vocab = 6, 3, 50
    target = torch.softmax(torch.randn(batch, num_drafts + 1, vocab), -1)
    draft = torch.softmax(torch.randn(batch, num_drafts, vocab), -1)
    draft_ids = torch.multinomial(draft.reshape(-1, vocab), 1).reshape(batch, num_drafts)
    padded = sd.rejection_sample(draft_ids, draft, target, seed=11, offset=2)
    args = op_args(
        draft_ids.flatten(),
        [num_drafts] * batch,
        target.reshape(-1, vocab),
        draft=draft.reshape(-1, vocab),
        seeds=(11,),
        offsets=(2,),
    )
    for run in (_run_cpp, _run_triton):
        tokens, accepted = run(*args)
        assert torch.equal(tokens, padded.token_ids) and torch.equal(accepted, padded.num_accepted)


def test_from_logits_equals_softmax_then_verify():
    """Logits with temperature T give what the same op gives on softmax(logits / T) computed
    outside (acceptance decisions agree up to float rounding of the normaliser)."""
    counts, vocab = [3, 0, 2, 4, 1, 3], 64
    gen = torch.Generator().manual_seed(5)
    num_tokens, batch_size = sum(counts), len(counts)
    target_logits = torch.randn(num_tokens + batch_size, vocab, generator=gen) * 3
    temperature = torch.tensor([0.5, 1.0, 1.5, 0.8, 1.2, 2.0])
    cu = torch.tensor(counts).cumsum(0)
    request_of_token = torch.repeat_interleave(torch.arange(batch_size), torch.tensor(counts))
    # A draft close to the target (as a real draft model): some drafts accepted, some rejected.
    target_row_of_token = torch.arange(num_tokens) + request_of_token
    draft_logits = target_logits[target_row_of_token] + torch.randn(num_tokens, vocab, generator=gen)
    request_of_row = torch.repeat_interleave(torch.arange(batch_size), torch.tensor(counts) + 1)
    target_probs = torch.softmax(target_logits / temperature[request_of_row, None], -1)
    draft_probs = torch.softmax(draft_logits / temperature[request_of_token, None], -1)
    draft_ids = torch.multinomial(draft_probs, 1, generator=gen).flatten()
    seeds = torch.arange(batch_size) + 100
    kwargs = dict(cu_num_draft_tokens=cu, seed=seeds)
    from_logits = sd.rejection_sample_ragged(
        draft_ids, target_logits=target_logits, draft_logits=draft_logits, temperature=temperature, **kwargs
    )
    from_probs = sd.rejection_sample_ragged(draft_ids, target_probs=target_probs, draft_probs=draft_probs, **kwargs)
    assert torch.equal(from_logits.num_accepted, from_probs.num_accepted)
    assert torch.equal(from_logits.token_ids, from_probs.token_ids)
    assert 0 < int(from_logits.num_accepted.sum()) < num_tokens  # both paths were exercised


def test_per_request_seed_reproduces_a_request_in_any_batch():
    counts, vocab = [2, 0, 3, 1, 4], 30
    args = list(
        random_case(
            counts,
            vocab,
            target_logits=True,
            draft_kind="probs",
            target_dtype=torch.float32,
            draft_dtype=torch.float32,
            bonus_ids=False,
            seed=7,
        )
    )
    tokens, accepted = _run_cpp(*args)
    draft_ids, cu, draft, target = args[:4]
    starts = [0, *cu.tolist()[:-1]]
    order = [3, 0, 4, 2, 1]
    pick = lambda values: torch.cat([values[i : i + 1] for i in order])
    ids, drafts, rows = [], [], []
    for b in order:
        start, count = starts[b], counts[b]
        ids.append(draft_ids[start : start + count])
        drafts.append(draft[start : start + count])
        rows.append(target[start + b : start + b + count + 1])
    permuted = list(args)
    permuted[:4] = [
        torch.cat(ids),
        torch.tensor([counts[b] for b in order]).cumsum(0),
        torch.cat(drafts),
        torch.cat(rows),
    ]
    permuted[5], permuted[6], permuted[7] = pick(args[5]), pick(args[6]), pick(args[7])
    for run in (_run_cpp, _run_triton):
        got_tokens, got_accepted = run(*permuted)
        assert torch.equal(got_tokens, tokens[order]) and torch.equal(got_accepted, accepted[order])


# ------------------------------------------------------------------------------------------
# Losslessness: whole output rows against their exact distribution
# ------------------------------------------------------------------------------------------

FALSE_ALARM = 1e-4  # per check; 5 checks in the default suite -> a correct sampler fails < 0.05%
VOCAB = 4
MAX_K = 3


def row_distribution(p: torch.Tensor, q: torch.Tensor, num_drafts: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every output row (accepted drafts, then the emitted token) for drafts
    x_i ~ p_i (p: [K, V], q: [K + 1, V], float64): P = prod_{i<m} min(p_i, q_i)(y_i) times
    max(0, q_m - p_m)(y_m) if m < K_b, or q_{K_b}(y_m) (the bonus row) if m = K_b."""
    rows = {}
    for m in range(num_drafts + 1):
        for tokens in itertools.product(range(p.shape[1]), repeat=m + 1):
            prob = 1.0
            for i in range(m):
                prob *= float(torch.minimum(p[i], q[i])[tokens[i]])
            last = q[m] if m == num_drafts else (q[m] - p[m]).clamp_min(0)
            rows[tokens] = prob * float(last[tokens[m]])
    return rows


def lossless_batch(requests_per_count: int, seed: int, temperature: float = 0.7):
    """Requests with 0, 1, ..., MAX_K drafts in one batch, drafts sampled from p; every request of
    draft count k shares the same (draft, target) logits. Returns the op's drafts and keyword
    arguments (logits in, interleaved bonus rows), the counts and the exact distributions (float64)."""
    gen = torch.Generator().manual_seed(seed)
    target_logits = torch.randn(MAX_K + 1, VOCAB, generator=gen) * 1.5
    draft_logits = torch.randn(MAX_K, VOCAB, generator=gen) * 1.5
    q = torch.softmax(target_logits.double() / temperature, -1)
    p = torch.softmax(draft_logits.double() / temperature, -1)
    counts, draft_ids, target_index, draft_index = [], [], [], []
    for k in range(MAX_K + 1):
        counts += [k] * requests_per_count
        if k:  # [R, k] request-major: each request's k drafts are consecutive
            draft_ids.append(torch.multinomial(p[:k].float(), requests_per_count, True, generator=gen).T.flatten())
        target_index.append(torch.arange(k + 1).repeat(requests_per_count))  # k rows, then the bonus row
        draft_index.append(torch.arange(k).repeat(requests_per_count))
    kwargs = dict(
        num_draft_tokens=counts,
        target_logits=target_logits[torch.cat(target_index)],
        draft_logits=draft_logits[torch.cat(draft_index)],
        temperature=temperature,
        max_num_draft_tokens=MAX_K,
    )
    return torch.cat(draft_ids), kwargs, counts, p, q


def _row_codes(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """A distinct int per output row (its length and tokens), for bincount."""
    positions = torch.arange(tokens.shape[1])
    powers = VOCAB**positions
    in_row = positions[None, :] < lengths[:, None]
    offsets = torch.tensor([sum(VOCAB**length for length in range(1, m)) for m in range(MAX_K + 3)])
    return offsets[lengths] + (tokens.clamp_min(0) * powers * in_row).sum(1)


def row_counts(token_ids: torch.Tensor, num_accepted: torch.Tensor, rows: list[tuple[int, ...]]) -> torch.Tensor:
    """How often each of ``rows`` (accepted drafts then the emitted token) was output."""
    width = token_ids.shape[1]
    padded_rows = torch.tensor([list(row) + [0] * (width - len(row)) for row in rows])
    row_codes = _row_codes(padded_rows, torch.tensor([len(row) for row in rows]))
    observed = _row_codes(token_ids.long(), num_accepted.long() + 1)
    histogram = torch.bincount(observed, minlength=int(row_codes.max()) + 1)
    return histogram[row_codes].float()


def check_whole_rows(token_ids, num_accepted, counts, p, q, label, distributions=None):
    counts_t = torch.tensor(counts)
    for k in range(MAX_K + 1):
        exact = (distributions or {}).get(k) or row_distribution(p, q, k)
        rows = list(exact)
        mine = counts_t == k
        observed = row_counts(token_ids[mine], num_accepted[mine], rows)
        assert_fits(observed, torch.tensor([exact[r] for r in rows]), FALSE_ALARM, f"{label}, K_b = {k}")


def test_whole_rows_follow_the_exact_distribution():
    draft_ids, kwargs, counts, p, q = lossless_batch(requests_per_count=40_000, seed=1)
    out = sd.rejection_sample_ragged(draft_ids, seed=torch.arange(len(counts)), **kwargs)
    assert bool((out.num_accepted <= torch.tensor(counts)).all())
    check_whole_rows(out.token_ids, out.num_accepted, counts, p, q, "cpp from logits")


def test_the_whole_row_check_has_power():
    """The same check rejects a sampler whose residual is q instead of max(0, q - p) (a common
    bug): its rows' distribution differs from the exact one."""
    draft_ids, kwargs, counts, p, q = lossless_batch(requests_per_count=40_000, seed=1)
    out = sd.rejection_sample_ragged(draft_ids, seed=torch.arange(len(counts)), **kwargs)
    k = 2
    exact = row_distribution(p, q, k)
    wrong = {}  # residual replaced by q: P(rejected at m) * q_m(y)
    for row, prob in exact.items():
        m = len(row) - 1
        prefix = 1.0
        for i in range(m):
            prefix *= float(torch.minimum(p[i], q[i])[row[i]])
        if m < k:
            reject = 1.0 - float(torch.minimum(p[m], q[m]).sum())
            wrong[row] = prefix * reject * float(q[m][row[m]])
        else:
            wrong[row] = prob
    mine = torch.tensor(counts) == k
    rows = list(exact)
    observed = row_counts(out.token_ids[mine], out.num_accepted[mine], rows)
    stat, df = chi_square(observed, torch.tensor([wrong[r] for r in rows]))
    assert chi2_sf(stat, df) < FALSE_ALARM


@pytest.mark.slow
def test_whole_rows_follow_the_exact_distribution_long_and_triton():
    draft_ids, kwargs, counts, p, q = lossless_batch(requests_per_count=400_000, seed=2)
    out = sd.rejection_sample_ragged(draft_ids, seed=torch.arange(len(counts)), **kwargs)
    check_whole_rows(out.token_ids, out.num_accepted, counts, p, q, "cpp, long")
    draft_ids, kwargs, counts, p, q = lossless_batch(requests_per_count=300, seed=3)
    drafts = sd.ops.rejection_sample_ragged._ragged_drafts(draft_ids, counts, None, MAX_K, torch.device("cpu"))
    temperature = torch.full((len(counts),), 0.7)
    tokens, accepted = _run_triton(
        drafts.token_ids,
        drafts.cu_num_draft_tokens,
        kwargs["draft_logits"],
        kwargs["target_logits"],
        None,
        torch.zeros(len(counts), dtype=torch.bool),
        temperature,
        torch.arange(len(counts)),
        torch.tensor([0]),
        MAX_K,
        True,
        True,
        torch.int64,
    )
    check_whole_rows(tokens, accepted, counts, p, q, "triton")


# ------------------------------------------------------------------------------------------
# Public API: argument checks, validate=True, no mutation, plumbing
# ------------------------------------------------------------------------------------------

B, N, V = 3, 4, 10
COUNTS = [2, 0, 2]


def _inputs():
    return dict(
        draft_token_ids=torch.tensor([1, 4, 2, 9]),
        num_draft_tokens=list(COUNTS),
        target_logits=torch.randn(N + B, V),
        draft_probs=torch.softmax(torch.randn(N, V), -1),
        temperature=torch.tensor([1.0, 0.0, 0.5]),
        seed=1,
    )


def _public(**override):
    def make():
        kwargs = _inputs()
        for key, value in override.items():
            if value is None:
                kwargs.pop(key, None)
            else:
                kwargs[key] = value() if callable(value) else value
        return sd.rejection_sample_ragged, (kwargs.pop("draft_token_ids"),), kwargs

    return make


def _raw(**override):
    def make():
        args = dict(
            zip(
                (
                    "draft_token_ids",
                    "cu_num_draft_tokens",
                    "draft",
                    "target",
                    "bonus_token_ids",
                    "greedy",
                    "temperature",
                    "seeds",
                    "offsets",
                    "max_num_draft_tokens",
                    "draft_is_logits",
                    "target_is_logits",
                    "out_dtype",
                ),
                op_args(
                    torch.tensor([1, 4, 2, 9]),
                    COUNTS,
                    torch.randn(N + B, V),
                    draft=torch.softmax(torch.randn(N, V), -1),
                    temperature=torch.tensor([1.0, 0.0, 0.5]),
                    target_is_logits=True,
                ),
            )
        )
        args.update({k: (v() if callable(v) else v) for k, v in override.items()})
        return raw.rejection_sample_ragged, tuple(args.values()), {}

    return make


_meta = lambda *shape, dtype=torch.float32: lambda: torch.zeros(*shape, dtype=dtype, device="meta")

RAGGED_CASES = [
    # counts and offsets
    Case("counts short", _public(num_draft_tokens=[2, 0, 1]), ValueError, "num_draft_tokens"),
    Case("counts negative", _public(num_draft_tokens=[3, -1, 2]), ValueError, "num_draft_tokens"),
    Case("counts float", _public(num_draft_tokens=[2.0, 0, 2]), TypeError, "num_draft_tokens"),
    Case(
        "counts and cu", _public(cu_num_draft_tokens=lambda: torch.tensor([2, 2, 4])), ValueError, "cu_num_draft_tokens"
    ),
    Case("neither counts", _public(num_draft_tokens=None), ValueError, "num_draft_tokens"),
    Case(
        "cu out of order",
        _public(num_draft_tokens=None, cu_num_draft_tokens=lambda: torch.tensor([3, 1, 4])),
        ValueError,
        "cu_num_draft_tokens",
    ),
    Case(
        "cu short of N",
        _public(num_draft_tokens=None, cu_num_draft_tokens=lambda: torch.tensor([2, 2, 3])),
        ValueError,
        "cu_num_draft_tokens",
    ),
    Case("cu 2-D", _public(num_draft_tokens=lambda: torch.tensor([[2, 0, 2]])), ValueError, "num_draft_tokens"),
    Case("max_K too small", _public(max_num_draft_tokens=1), ValueError, "max_num_draft_tokens"),
    Case("max_K negative", _public(max_num_draft_tokens=-1), ValueError, "max_num_draft_tokens"),
    # rows
    Case("target rows", _public(target_logits=lambda: torch.randn(N + 1, V)), ValueError, "target_logits"),
    Case("target N rows, no bonus", _public(target_logits=lambda: torch.randn(N, V)), ValueError, "bonus_token_ids"),
    Case("target 3-D", _public(target_logits=lambda: torch.randn(1, N + B, V)), ValueError, "target_logits"),
    Case("target int", _public(target_logits=lambda: torch.zeros(N + B, V, dtype=torch.long)), TypeError, "target"),
    Case("target and probs", _public(target_probs=lambda: torch.ones(N + B, V)), ValueError, "target_probs"),
    Case("no target", _public(target_logits=None), ValueError, "target_probs"),
    Case("V = 0", _public(target_logits=lambda: torch.randn(N + B, 0), draft_probs=None), ValueError, "target_logits"),
    Case("draft rows", _public(draft_probs=lambda: torch.ones(N + 1, V)), ValueError, "draft_probs"),
    Case("draft V", _public(draft_probs=lambda: torch.ones(N, V + 1)), ValueError, "draft_probs"),
    Case("draft and logits", _public(draft_logits=lambda: torch.ones(N, V)), ValueError, "draft_logits"),
    Case("draft meta", _public(draft_probs=_meta(N, V)), ValueError, "draft_probs"),
    Case("ids meta", _public(draft_token_ids=_meta(N, dtype=torch.long)), ValueError, "draft_token_ids"),
    Case("ids float", _public(draft_token_ids=lambda: torch.zeros(N)), TypeError, "draft_token_ids"),
    Case(
        "ids 2-D", _public(draft_token_ids=lambda: torch.zeros(1, N, dtype=torch.long)), ValueError, "draft_token_ids"
    ),
    # bonus ids, temperature, randomness, output dtype
    Case("bonus out of range", _public(bonus_token_ids=lambda: torch.tensor([0, V, 1])), ValueError, "bonus_token_ids"),
    Case("bonus negative", _public(bonus_token_ids=lambda: torch.tensor([0, -1, 1])), ValueError, "bonus_token_ids"),
    Case("bonus shape", _public(bonus_token_ids=lambda: torch.tensor([0, 1])), ValueError, "bonus_token_ids"),
    Case("bonus float", _public(bonus_token_ids=lambda: torch.zeros(B)), TypeError, "bonus_token_ids"),
    Case("no temperature", _public(temperature=None), ValueError, "temperature"),
    Case("temperature shape", _public(temperature=lambda: torch.ones(B + 1)), ValueError, "temperature"),
    Case(
        "temperature with probs",
        _public(target_logits=None, target_probs=lambda: torch.full((N + B, V), 0.1)),
        ValueError,
        "temperature",
    ),
    Case("seed shape", _public(seed=lambda: torch.zeros(B + 1, dtype=torch.long)), ValueError, "seed"),
    Case("offset float", _public(offset=1.5), TypeError, "offset"),
    Case("output dtype", _public(output_dtype=torch.float32), TypeError, "output_dtype"),
    # raw op: C++ checks (values are in host memory) and the fake kernel's device checks
    Case("raw ids float", _raw(draft_token_ids=lambda: torch.zeros(N)), RuntimeError, "draft_token_ids"),
    Case("raw cu out of order", _raw(cu_num_draft_tokens=lambda: torch.tensor([3, 1, 4])), RuntimeError, "cu_num"),
    Case("raw cu short", _raw(cu_num_draft_tokens=lambda: torch.tensor([2, 2, 3])), RuntimeError, "cu_num"),
    Case("raw cu negative", _raw(cu_num_draft_tokens=lambda: torch.tensor([-1, 2, 4])), RuntimeError, "cu_num"),
    Case("raw count > max_K", _raw(max_num_draft_tokens=1), RuntimeError, "max_num_draft_tokens"),
    Case("raw max_K negative", _raw(max_num_draft_tokens=-1), RuntimeError, "max_num_draft_tokens"),
    Case("raw target rows", _raw(target=lambda: torch.randn(N + 1, V)), RuntimeError, "target"),
    Case("raw target strided", _raw(target=lambda: torch.randn(V, N + B).t()), RuntimeError, "target"),
    Case("raw target int", _raw(target=lambda: torch.zeros(N + B, V, dtype=torch.long)), RuntimeError, "target"),
    Case("raw draft shape", _raw(draft=lambda: torch.ones(N, V + 1)), RuntimeError, "draft"),
    Case("raw bonus range", _raw(bonus_token_ids=lambda: torch.tensor([0, V, 1])), RuntimeError, "bonus_token_ids"),
    Case("raw bonus shape", _raw(bonus_token_ids=lambda: torch.tensor([0, 1])), RuntimeError, "bonus_token_ids"),
    Case("raw greedy float", _raw(greedy=lambda: torch.zeros(B)), RuntimeError, "greedy"),
    Case("raw no temperature", _raw(temperature=None), RuntimeError, "temperature"),
    Case(
        "raw temperature f64", _raw(temperature=lambda: torch.ones(B, dtype=torch.float64)), RuntimeError, "temperature"
    ),
    Case("raw seeds [2]", _raw(seeds=lambda: torch.zeros(2, dtype=torch.long)), RuntimeError, "seeds"),
    Case("raw out dtype", _raw(out_dtype=torch.float32), RuntimeError, "out_dtype"),
    Case("raw target meta", _raw(target=_meta(N + B, V)), RuntimeError, "target"),
    Case("raw cu meta", _raw(cu_num_draft_tokens=_meta(B, dtype=torch.long)), RuntimeError, "cu_num_draft_tokens"),
    Case("raw temperature meta", _raw(temperature=_meta(B)), RuntimeError, "temperature"),
]


@pytest.mark.parametrize("case", RAGGED_CASES, ids=lambda case: case.id)
def test_bad_input(case):
    check_case(case)


def test_validate_checks_device_values():
    kwargs = _inputs()
    draft_ids = kwargs.pop("draft_token_ids")
    sd.rejection_sample_ragged(draft_ids, validate=True, **kwargs)  # valid input passes
    bad_ids = torch.tensor([1, 4, 2, V])
    with pytest.raises(ValueError, match=r"draft_token_ids\[3\] = 10"):
        sd.rejection_sample_ragged(bad_ids, validate=True, **kwargs)
    sd.rejection_sample_ragged(bad_ids, **kwargs)  # a placeholder without validation
    with pytest.raises(ValueError, match="temperature must be finite"):
        sd.rejection_sample_ragged(draft_ids, validate=True, **{**kwargs, "temperature": torch.tensor([1.0, -1, 1])})
    with pytest.raises(ValueError, match="draft_probs is not normalised"):
        sd.rejection_sample_ragged(draft_ids, validate=True, **{**kwargs, "draft_probs": kwargs["draft_probs"] * 2})


def test_inputs_are_not_modified_and_dtypes_follow_the_arguments():
    kwargs = _inputs()
    draft_ids = kwargs.pop("draft_token_ids").int()
    snapshots = [t.clone() for t in (draft_ids, kwargs["target_logits"], kwargs["draft_probs"], kwargs["temperature"])]
    out32 = sd.rejection_sample_ragged(draft_ids, output_dtype=torch.int32, **kwargs)
    for before, after in zip(
        snapshots, (draft_ids, kwargs["target_logits"], kwargs["draft_probs"], kwargs["temperature"])
    ):
        assert torch.equal(before, after) and before.dtype == after.dtype
    out64 = sd.rejection_sample_ragged(draft_ids.long(), **kwargs)
    assert out32.token_ids.dtype == torch.int32 and out64.token_ids.dtype == torch.int64
    assert torch.equal(out32.token_ids.long(), out64.token_ids)
    assert out64.token_ids.shape == (B, max(COUNTS) + 1)


def test_module_and_cu_num_draft_tokens_and_vllm_bonus_shape():
    kwargs = _inputs()
    draft_ids = kwargs.pop("draft_token_ids")
    counts = kwargs.pop("num_draft_tokens")
    expected = sd.rejection_sample_ragged(draft_ids, num_draft_tokens=counts, **kwargs)
    cu = torch.tensor(counts, dtype=torch.int32).cumsum(0).int()
    module = sd.RaggedRejectionSampler()
    got = module(draft_ids, cu_num_draft_tokens=cu, max_num_draft_tokens=4, **kwargs)
    assert torch.equal(got.token_ids[:, :3], expected.token_ids) and got.token_ids.shape == (B, 5)
    assert got.token_ids[:, 3:].eq(PLACEHOLDER_TOKEN_ID).all()
    bonus = torch.tensor([[7], [8], [9]])  # vLLM's [B, 1]
    with_bonus = sd.rejection_sample_ragged(draft_ids, num_draft_tokens=counts, bonus_token_ids=bonus, **kwargs)
    assert with_bonus.token_ids[1, 0] == 8  # no drafts: the bonus id is the emitted token


def test_opcheck():
    for probs_draft in (True, False):
        args = _raw()()[1]
        if not probs_draft:
            args = (*args[:2], None, *args[3:])
        torch.library.opcheck(raw.rejection_sample_ragged, args)


def test_torch_compile_fullgraph_matches_eager():
    kwargs = _inputs()
    draft_ids = kwargs.pop("draft_token_ids")
    cu = torch.tensor(kwargs.pop("num_draft_tokens")).cumsum(0)
    kwargs.update(seed=torch.arange(B), max_num_draft_tokens=2, cu_num_draft_tokens=cu)

    def step(ids, target_logits, draft_probs, temperature, seed):
        out = sd.rejection_sample_ragged(
            ids,
            cu_num_draft_tokens=cu,
            max_num_draft_tokens=2,
            target_logits=target_logits,
            draft_probs=draft_probs,
            temperature=temperature,
            seed=seed,
        )
        return out.token_ids, out.num_accepted

    args = (draft_ids, kwargs["target_logits"], kwargs["draft_probs"], kwargs["temperature"], torch.arange(B))
    eager = step(*args)
    compiled = torch.compile(step, fullgraph=True)(*args)
    assert torch.equal(eager[0], compiled[0]) and torch.equal(eager[1], compiled[1])


@pytest.mark.slow
def test_triton_kernel_streams_with_16_byte_loads():
    """Compiled for sm_80, sm_90 and gfx942 (no GPU needed): no spills, and 16-byte vector loads on
    the streaming loops -- except gfx942 when both rows are 16-bit, where 2048-lane tiles over 512
    lanes of a 64-wide wavefront give 8-byte loads (docs/ops.md says so)."""
    from specdecode.kernels._aot import compile_in_subprocess

    results = compile_in_subprocess(name_filter="rejection_sample_ragged[V=128256")
    assert len(results) == 12 and all(r["ok"] for r in results), results
    assert not [r for r in results if r["spills"]]
    narrow = [r for r in results if r["widest_load"] < 16]
    assert [(r["name"], r["target"]) for r in narrow] == [("rejection_sample_ragged[V=128256,probs-bf16]", "gfx942")]
    assert all(r["widest_load"] >= 8 for r in narrow)
