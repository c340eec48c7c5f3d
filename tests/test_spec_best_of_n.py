"""Speculative decoding inside Best-of-N and Speculative Rejection (``draft=``, ``num_draft_tokens=`` of
``specdecode.decoder.best_of_n``), on random tiny models (no dependence on the shipped weights)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from stats import assert_fits
from test_best_of_n import PROMPTS, EOSBiased, gen, tiny
from test_generate import exact_first_two, tiny_pair

from specdecode.decoder.best_of_n import best_of_n, speculative_rejection
from specdecode.decoder.model import Transformer
from specdecode.decoder.rewards import LogLikelihoodReward
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
    assert [r["tokens_per_row"] for r in spec.stats["rounds"]] == decision_tokens[: len(spec.stats["rounds"])]
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
    """With pruning after two tokens (a row that has them waits until all do), every candidate's
    first token -- pruned ones included -- follows the target."""
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
    assert out.stats["rounds"][0]["tokens_per_row"] == 2 and out.stats["waiting_row_steps"] > 0
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


def test_pruning_keeps_survivors_tokens(pair):
    """Speculative Rejection's finished candidates carry exactly the tokens the same candidates get
    with nothing pruned under the same decision points (alpha = 0): waiting at a decision point
    redraws the same numbers, and pruning does not touch the survivors. With a memory budget and
    alpha = 0 nothing is ever pruned or capped: exactly Best-of-N with the draft."""
    target, draft = pair
    reward = LogLikelihoodReward(target)
    common = dict(max_new_tokens=12, draft=draft, num_draft_tokens=3)
    pruned = speculative_rejection(target, reward, PROMPTS, 6, 0.5, decision_tokens=[2, 5], **common, generator=gen(4))
    kept_all = speculative_rejection(target, reward, PROMPTS, 6, 0, decision_tokens=[2, 5], **common, generator=gen(4))
    assert (pruned.pruned_at_round >= 0).any() and (kept_all.pruned_at_round < 0).all()
    assert pruned.stats["waiting_row_steps"] > 0
    done = pruned.finished
    assert torch.equal(pruned.candidate_tokens[done], kept_all.candidate_tokens[done])
    cut, full = pruned.candidate_tokens[~done], kept_all.candidate_tokens[~done]
    assert torch.equal(cut, torch.where(cut >= 0, full, -1))  # a pruned candidate: a prefix of its full response
    budget = speculative_rejection(target, reward, PROMPTS, 6, 0, memory_budget=10**6, **common, generator=gen(4))
    plain_bon = best_of_n(target, reward, PROMPTS, 6, **common, generator=gen(4))
    assert torch.equal(budget.candidate_tokens, plain_bon.candidate_tokens)
    assert torch.equal(budget.best_candidate, plain_bon.best_candidate)
