"""Speculative decoding inside Best-of-N and Speculative Rejection (``draft=``, ``num_draft_tokens=`` of
``specdecode.decoder.best_of_n``), on random tiny models (no dependence on the shipped weights)."""

from __future__ import annotations

import copy

import pytest
import torch
from test_best_of_n import PROMPTS, EOSBiased, tiny

from specdecode.decoder.best_of_n import speculative_rejection
from specdecode.decoder.model import Transformer
from specdecode.decoder.rewards import LogLikelihoodReward


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
