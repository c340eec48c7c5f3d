"""Speculative decoding inside Best-of-N and Speculative Rejection (``draft=``, ``num_draft_tokens=`` of
``specdecode.decoder.best_of_n``), on random tiny models (no dependence on the shipped weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from stats import assert_fits
from test_best_of_n import PROMPTS, EOSBiased, gen, tiny
from test_generate import assert_cache_holds_committed_tokens, exact_first_two, tiny_pair

from specdecode.decoder.best_of_n import (
    Speculation,
    SpeculativeCandidateBatch,
    best_of_n,
    kv_bytes_per_token,
    live_kv_bytes,
    speculative_rejection,
)
from specdecode.decoder.model import ModelConfig, Transformer
from specdecode.decoder.rewards import LogLikelihoodReward
from specdecode.decoder.state import SamplingSettings, encode_prompts
from specdecode.decoder.tokenizer import EOS_ID
from specdecode.stats import chi2_sf, chi_square


def near_copy(model: Transformer, noise: float, seed: int = 9) -> Transformer:
    """A draft that agrees with ``model`` often but not always: its weights plus Gaussian noise."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * noise * p.std())
    return draft


@pytest.fixture(scope="module")
def pair() -> tuple[Transformer, Transformer]:
    """float64 target (greedy ties cannot flip on float rounding) and a near-copy draft; EOS is likely,
    so rows finish at different steps."""
    target = tiny(EOSBiased, torch.float64, eos_bias=1.0)
    return target, near_copy(target, 0.3)


@pytest.mark.parametrize("decision_tokens", [[2, 5, 9], [1, 3]])
@pytest.mark.parametrize("K", [1, 3])
def test_greedy_is_token_identical_to_the_plain_run(pair, decision_tokens, K):
    """Several prompts, n > 1, pruning at decision points: the same candidates, the same pruning
    rounds, the same answer, rewards equal to float rounding."""
    target, draft = pair
    reward = LogLikelihoodReward(target)
    common = dict(temperature=0, max_new_tokens=14, decision_tokens=decision_tokens)
    plain = speculative_rejection(target, reward, PROMPTS, 3, 0.5, **common)
    spec = speculative_rejection(target, reward, PROMPTS, 3, 0.5, **common, draft=draft, num_draft_tokens=K)
    assert torch.equal(spec.candidate_tokens, plain.candidate_tokens)
    assert torch.equal(spec.candidate_num_tokens, plain.candidate_num_tokens)
    assert torch.equal(spec.pruned_at_round, plain.pruned_at_round)
    assert torch.equal(spec.tokens, plain.tokens) and torch.equal(spec.best_candidate, plain.best_candidate)
    torch.testing.assert_close(spec.rewards, plain.rewards, rtol=0, atol=1e-9)
    for mine, theirs in zip(spec.stats["rounds"], plain.stats["rounds"], strict=True):
        for key in ("tokens_per_row", "live_per_prompt", "kept_per_prompt"):
            assert mine[key] == theirs[key]
    if decision_tokens == [1, 3]:  # rows that finished after token 1 before the slowest got there are ranked
        assert spec.stats["rounds"][0]["finished_in_pool"] > 0
    assert spec.stats["mean_accepted_length"] > 1.2  # the draft was used, not just rejected
    assert spec.stats["forwards"] <= plain.stats["forwards"]  # a step commits >= 1 token per moving row


# ---------------------------------------------------------------------------------------------
# Sampling: the same output distribution as the plain run
# ---------------------------------------------------------------------------------------------

FALSE_ALARM_RATE = 1e-3  # per statistical test: a correct sampler fails it on 1 seed in 1000


def ks_two_sample_p_value(a: torch.Tensor, b: torch.Tensor) -> float:
    """The two-sample Kolmogorov-Smirnov test: ``P(D >= observed)`` when ``a`` and ``b`` come from one
    continuous distribution, by the asymptotic Kolmogorov series with Stephens' small-sample
    correction of the scale (accurate to ~1e-3 for samples of a hundred or more)."""
    a, b = a.double().sort().values, b.double().sort().values
    pooled = torch.cat([a, b])
    cdf_a = torch.searchsorted(a, pooled, right=True).double() / len(a)
    cdf_b = torch.searchsorted(b, pooled, right=True).double() / len(b)
    distance = float((cdf_a - cdf_b).abs().max())
    scale = math.sqrt(len(a) * len(b) / (len(a) + len(b)))
    lam = (scale + 0.12 + 0.11 / scale) * distance
    if lam < 0.2:
        return 1.0
    return min(1.0, max(0.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))))


def test_ks_helper_accepts_one_distribution_and_rejects_a_shifted_one():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, generator=generator), torch.randn(400, generator=generator)
    assert ks_two_sample_p_value(a, b) > 0.01
    assert ks_two_sample_p_value(a, b + 0.4) < FALSE_ALARM_RATE
    # The statistic by hand: samples {0, 1} and {2, 3} are as far apart as two samples can be.
    assert ks_two_sample_p_value(torch.tensor([0.0, 1.0] * 50), torch.tensor([2.0, 3.0] * 50)) < 1e-20


def first_two_counts(out, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = out.candidate_tokens[0]
    return torch.bincount(tokens[:, 0], minlength=vocab), torch.bincount(tokens[:, 1], minlength=vocab)


@pytest.mark.parametrize("K", [1, 3])
def test_candidates_first_two_tokens_follow_the_target(K):
    """Best-of-N with a draft: every candidate's first and (marginal) second token follow the
    target at temperature 0.7 (chi-square at ``FALSE_ALARM_RATE`` each); power: the first tokens
    reject the draft's own distribution. K = 1 often needs a second step for the second token."""
    vocab, n, temperature = 8, 4000, 0.7
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, second = exact_first_two(target, prompt, temperature)
    out = best_of_n(
        target,
        lambda tokens, lengths: torch.zeros(tokens.shape[0]),
        [prompt],
        n,
        2,
        temperature=temperature,
        generator=gen(3),
        eos_id=None,
        draft=draft,
        num_draft_tokens=K,
    )
    first_counts, second_counts = first_two_counts(out, vocab)
    assert_fits(first_counts, first, FALSE_ALARM_RATE, "first token")
    assert_fits(second_counts, second, FALSE_ALARM_RATE, "second token")
    draft_first, _ = exact_first_two(draft, prompt, temperature)
    assert chi2_sf(*chi_square(first_counts, draft_first)) < FALSE_ALARM_RATE
    assert 0 < out.stats["acceptance_rate"] < 1


def test_speculative_rejection_candidates_first_tokens_follow_the_target():
    """With pruning after two tokens (rows run ahead of the slowest and are judged on their first
    two), every candidate's first token -- pruned ones included -- follows the target."""
    vocab, n, temperature = 8, 3000, 1.0
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, dtype=torch.float32)
    prompt = [4, 2]
    first, _ = exact_first_two(target, prompt, temperature)
    out = speculative_rejection(
        target,
        LogLikelihoodReward(target),
        [prompt],
        n,
        0.5,
        6,
        decision_tokens=[2],
        generator=gen(5),
        eos_id=None,
        draft=draft,
        num_draft_tokens=3,
    )
    assert out.stats["rounds"][0]["tokens_per_row"] == 2 and out.stats["tokens_past_pruning"] > 0
    assert_fits(first_two_counts(out, vocab)[0], first, FALSE_ALARM_RATE, "first token")


def selected_rewards(target, draft, seed: int, copies: int, temperature: float = 1.0) -> torch.Tensor:
    """The rewards of the responses Speculative Rejection selects for ``copies`` copies of one prompt:
    each copy is its own prompt index ``g``, so its own random stream -- ``copies`` independent runs."""
    out = speculative_rejection(
        target,
        LogLikelihoodReward(target),
        [[1, 2, 3]] * copies,
        4,
        0.5,
        8,
        decision_tokens=[3],
        temperature=temperature,
        generator=gen(seed),
        eos_id=None,
        draft=draft,
        num_draft_tokens=3,
    )
    return out.rewards


@pytest.mark.parametrize("seed", [0])
def test_selected_rewards_are_distributed_as_without_speculation(seed, copies=300):
    """The rewards of the selected responses (n = 4, alpha = 0.5, pruning after 3 tokens, 8 tokens)
    with and without speculative decoding: a two-sample KS test at ``FALSE_ALARM_RATE``; power: a
    plain run at temperature 1.25 instead of 1 is told apart."""
    target, draft = tiny_pair(vocab_size=16, noise=0.6, dtype=torch.float32)
    spec = selected_rewards(target, draft, seed, copies)
    plain = selected_rewards(target, None, seed + 1000, copies)
    assert ks_two_sample_p_value(spec, plain) >= FALSE_ALARM_RATE
    hotter = selected_rewards(target, None, seed + 2000, copies, temperature=1.25)
    assert ks_two_sample_p_value(spec, hotter) < FALSE_ALARM_RATE


# ---------------------------------------------------------------------------------------------
# A candidate depends on its own seed only (not on the batch, n or pruning)
# ---------------------------------------------------------------------------------------------


def test_candidates_do_not_depend_on_the_batch_or_n(pair):
    """Candidate j of prompt g draws from Philox keyed by (seed, g, j) at offset = its new-token
    count: the same tokens with more candidates, and with or without the other prompts."""
    target, draft = pair
    reward = LogLikelihoodReward(target)
    common = dict(max_new_tokens=10, draft=draft, num_draft_tokens=3)
    big = best_of_n(target, reward, PROMPTS, 5, **common, generator=gen(11))
    small = best_of_n(target, reward, PROMPTS[:1], 2, **common, generator=gen(11))
    assert torch.equal(small.candidate_tokens[0], big.candidate_tokens[0, :2])
    assert len({tuple(row.tolist()) for row in big.candidate_tokens.flatten(0, 1)}) > 10  # candidates differ


def test_speculative_rejection_candidates_are_best_of_n_candidates():
    """Under the same generator, every candidate Speculative Rejection finishes carries exactly the
    tokens Best-of-N with the draft gives it, and a pruned one the first ``tau`` of them (rows run
    ahead of the slowest, and pruning touches nobody else). Each round ranks exactly the
    candidates still generating at its ``tau`` (by hand from Best-of-N's lengths), including
    those that finished after ``tau`` before the slowest row got there."""
    target = tiny(EOSBiased, torch.float64, eos_bias=2.5)  # EOS often: candidates finish between decisions
    draft = near_copy(target, 0.3)
    reward = LogLikelihoodReward(target)
    common = dict(max_new_tokens=12, draft=draft, num_draft_tokens=3)
    taus, n = [3, 6], 8
    bon = best_of_n(target, reward, PROMPTS, n, **common, generator=gen(4))
    spr = speculative_rejection(target, reward, PROMPTS, n, 0.5, decision_tokens=taus, **common, generator=gen(4))
    assert (spr.pruned_at_round >= 0).any() and spr.stats["tokens_past_pruning"] > 0
    done = spr.finished
    assert torch.equal(spr.candidate_tokens[done], bon.candidate_tokens[done])
    for r, tau in enumerate(taus):
        now = spr.pruned_at_round == r
        assert (spr.candidate_num_tokens[now] == tau).all()
        assert torch.equal(spr.candidate_tokens[now][:, :tau], bon.candidate_tokens[now][:, :tau])
        generating = (bon.candidate_num_tokens > tau) & ((spr.pruned_at_round < 0) | (spr.pruned_at_round >= r))
        assert spr.stats["rounds"][r]["live_per_prompt"] == generating.sum(1).tolist()
        assert spr.stats["rounds"][r]["tokens_per_row"] == tau
    assert sum(r["finished_in_pool"] for r in spr.stats["rounds"]) > 0  # the case above did occur
    budget = speculative_rejection(target, reward, PROMPTS, n, 0, memory_budget=10**6, **common, generator=gen(4))
    assert torch.equal(budget.candidate_tokens, bon.candidate_tokens)  # alpha = 0: nothing pruned
    assert torch.equal(budget.best_candidate, bon.best_candidate)


# ---------------------------------------------------------------------------------------------
# The engine: both caches stay true through steps, retirement and pruning; memory; counts
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def test_both_caches_hold_the_committed_tokens_through_compaction(pair):
    """After every speculative step, retirement of finished rows and an arbitrary compaction, each
    survivor's model cache holds its committed tokens' K/V below ``n - 1`` and the draft's below
    ``n - 2`` (what fresh prefills write), and the per-row state moved with them."""
    target, draft = pair
    ids, lengths = encode_prompts(PROMPTS)
    batch = SpeculativeCandidateBatch(
        target, ids, lengths, 4, 12, SamplingSettings(1.0, eos_id=EOS_ID), seed=77, speculation=Speculation(draft, 3)
    )
    batch.prefill()
    retired, ragged = 0, False
    for step in range(5):
        finished = batch.advance()
        if finished.any():
            retired += int(finished.sum())
            batch.retire(finished)
        if step == 2:
            kept = torch.arange(0, batch.size, 2)
            cand, tokens = batch.cand[kept].clone(), batch.state.tokens[kept].clone()
            batch.compact_(kept)
            assert torch.equal(batch.cand, cand) and torch.equal(batch.state.tokens, tokens)
        assert_cache_holds_committed_tokens(target, batch.cache, batch.state, trail=1)
        assert_cache_holds_committed_tokens(draft, batch.draft_cache, batch.state, trail=2)
        ragged |= len(set(batch.state.num_new().tolist())) > 1
    assert retired > 0 and ragged


def test_memory_budget_counts_both_models_kv_of_the_next_step(pair):
    """Decisions come when the next step's KV -- per live row with ``n`` tokens, ``n + K`` positions of
    the model and ``n + K - 1`` of the draft -- would exceed the budget, computed here by hand from
    the lengths the reward receives."""
    target, draft = pair
    K, n = 3, 8
    bt, bd = kv_bytes_per_token(target), kv_bytes_per_token(draft)
    prompt_tokens = int(encode_prompts(PROMPTS)[1].sum())
    budget = (prompt_tokens * n + len(PROMPTS) * n * (K + 2)) * (bt + bd)
    seen = []

    def reward(tokens, lengths):
        seen.append(lengths.clone())
        return -lengths.float()

    common = dict(memory_budget=budget, generator=gen(2), eos_id=None, draft=draft, num_draft_tokens=K)
    out = speculative_rejection(target, reward, PROMPTS, n, 0.5, 40, **common)
    rounds = out.stats["rounds"]
    assert len(rounds) >= 2
    for r, lengths in zip(rounds, seen):
        by_hand = int((lengths + K).sum()) * bt + int((lengths + K - 1).sum()) * bd
        assert r["live_kv_bytes"] == by_hand > budget
    assert out.stats["peak_kv_bytes"] <= budget and out.stats["over_budget_steps"] == 0
    assert live_kv_bytes(target, 100, 4, Speculation(draft, K)) == (100 + 4 * K) * bt + (100 + 4 * (K - 1)) * bd
    too_small = (prompt_tokens * n + len(PROMPTS) * n * K) * bt  # the draft's KV does not fit on top
    per_candidate = (prompt_tokens + len(PROMPTS) * K) * bt + (prompt_tokens + len(PROMPTS) * (K - 1)) * bd
    fits = too_small // per_candidate
    with pytest.raises(ValueError, match=f"cannot hold the initial batch.*first 3-draft step.*n <= {fits} fits"):
        speculative_rejection(target, reward, PROMPTS, n, 0.5, 40, **{**common, "memory_budget": too_small})


def test_stats_count_what_ran(pair):
    target, draft = pair
    calls = {"target": [], "draft": []}
    for name, model in (("target", target), ("draft", draft)):
        model.register_forward_hook(lambda module, args, output, name=name: calls[name].append(tuple(args[0].shape)))
    try:
        K, n = 3, 4
        out = speculative_rejection(
            target,
            LogLikelihoodReward(target),
            PROMPTS,
            n,
            0.5,
            12,
            decision_tokens=[4],
            generator=gen(6),
            draft=draft,
            num_draft_tokens=K,
        )
    finally:
        target._forward_hooks.clear()
        draft._forward_hooks.clear()
    s = out.stats
    assert calls["target"][0] == calls["draft"][0] == (len(PROMPTS), encode_prompts(PROMPTS)[0].shape[1])
    assert len(calls["target"]) == s["forwards"] == s["steps"] + 1 and len(calls["draft"]) == s["draft_forwards"]
    assert all(T == K + 1 for _, T in calls["target"][1:])
    assert sum(B * T for B, T in calls["target"]) == s["model_tokens"]
    assert sum(B * T for B, T in calls["draft"]) == s["draft_model_tokens"]
    assert sum(s["accepted_hist"]) == sum(B for B, _ in calls["target"][1:])  # every live row, every step
    assert s["tokens_generated"] - s["tokens_past_pruning"] == int(out.candidate_num_tokens.sum())
    assert s["tokens_past_pruning"] > 0
    emitted = sum((a + 1) * c for a, c in enumerate(s["accepted_hist"]))
    assert emitted == s["tokens_generated"] + s["discarded_tokens"]
    assert s["mean_accepted_length"] == emitted / sum(s["accepted_hist"])


def test_bad_draft_arguments_raise_clear_errors(pair):
    target, draft = pair
    reward = LogLikelihoodReward(target)
    other_vocab = Transformer(ModelConfig(vocab_size=300, n_layers=1, dim=32, n_heads=4, n_kv_heads=2))
    short = Transformer(ModelConfig(n_layers=1, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=50))
    cases = [
        (dict(draft=object()), TypeError, "draft must be a specdecode.decoder.model.Transformer"),
        (dict(num_draft_tokens=0), ValueError, "num_draft_tokens must be >= 1"),
        (dict(num_draft_tokens=2.0), TypeError, "num_draft_tokens must be an int"),
        (dict(draft=other_vocab), ValueError, "draft and model vocabularies differ: 300 vs 259"),
        (dict(draft=short), ValueError, "exceeds the draft's max_seq_len 50"),
        (dict(max_new_tokens=55), ValueError, "\\+ num_draft_tokens - 1 \\(3\\) exceeds the model's max_seq_len 96"),
    ]
    for kwargs, error, message in cases:
        args = {**dict(draft=draft, num_draft_tokens=4, max_new_tokens=8), **kwargs}
        with pytest.raises(error, match=message):
            speculative_rejection(target, reward, PROMPTS, 2, 0.5, decision_tokens=[2], **args)
        with pytest.raises(error, match=message):
            best_of_n(target, reward, PROMPTS, 2, **args)


# ---------------------------------------------------------------------------------------------
# Long statistical runs (make test-slow) and the shipped pair
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("K", [1, 2, 5])
def test_candidates_first_two_tokens_follow_the_target_large(K, seed):
    """20,000 candidates, vocabulary 16, temperature 1.3; chi-square at ``FALSE_ALARM_RATE`` per token."""
    vocab, n, temperature = 16, 20000, 1.3
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=seed, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, second = exact_first_two(target, prompt, temperature)
    out = best_of_n(
        target,
        lambda tokens, lengths: torch.zeros(tokens.shape[0]),
        [prompt],
        n,
        2,
        temperature=temperature,
        generator=gen(seed),
        eos_id=None,
        draft=draft,
        num_draft_tokens=K,
    )
    first_counts, second_counts = first_two_counts(out, vocab)
    assert_fits(first_counts, first, FALSE_ALARM_RATE, "first token")
    assert_fits(second_counts, second, FALSE_ALARM_RATE, "second token")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_selected_rewards_are_distributed_as_without_speculation_many_runs(seed):
    """1,500 independent runs per side (prompt copies); the two-sample KS test at ``FALSE_ALARM_RATE``,
    with the power check at temperature 1.1 instead of 1."""
    target, draft = tiny_pair(vocab_size=16, noise=0.6, seed=seed, dtype=torch.float32)
    spec = selected_rewards(target, draft, seed, 1500)
    plain = selected_rewards(target, None, seed + 1000, 1500)
    assert ks_two_sample_p_value(spec, plain) >= FALSE_ALARM_RATE
    hotter = selected_rewards(target, None, seed + 2000, 1500, temperature=1.1)
    assert ks_two_sample_p_value(spec, hotter) < FALSE_ALARM_RATE


@pytest.mark.slow
def test_shipped_pair_greedy_is_token_identical():
    """The shipped pair, 3 prompts x 4 candidates, pruning at 8 and 16 tokens: the same candidates
    and answers with the draft as without. In float64: in float32 a (K+1)-token verify and a
    1-token step round differently (CPU matmul and attention blocking depend on the shape), which
    flipped a greedy near-tie in one CI run; the decoding rule, not the arithmetic, is under test."""
    import specdecode as sd

    target, draft = sd.load_pretrained(dtype=torch.float64)
    reward = LogLikelihoodReward(target)
    prompts = ["def main():\n", "import numpy as np\n", "class Stack:\n"]
    common = dict(temperature=0, max_new_tokens=32, decision_tokens=[8, 16])
    plain = speculative_rejection(target, reward, prompts, 4, 0.5, **common)
    spec = speculative_rejection(target, reward, prompts, 4, 0.5, **common, draft=draft, num_draft_tokens=4)
    assert torch.equal(spec.candidate_tokens, plain.candidate_tokens)
    assert spec.texts() == plain.texts()
    assert spec.stats["forwards"] < plain.stats["forwards"]


def test_longest_allowed_run_fits_the_caches(pair):
    """Prompt + max_new_tokens + K - 1 == max_seq_len is accepted and runs to the end (every verify
    position of a row one token short of the budget lies inside both caches); a draft equal to the
    model accepts every draft it offers."""
    target, _ = pair
    K, width = 4, encode_prompts(PROMPTS)[0].shape[1]
    max_new = target.config.max_seq_len - width - (K - 1)
    out = best_of_n(target, LogLikelihoodReward(target), PROMPTS, 2, max_new, temperature=0, eos_id=None, draft=target)
    assert (out.candidate_num_tokens == max_new).all()
    assert out.stats["acceptance_rate"] == 1.0
