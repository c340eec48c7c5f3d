"""Best-of-N and Speculative Rejection (``specdecode.decoder.best_of_n``) and the rewards, on random tiny
models (no dependence on the shipped weights)."""

from __future__ import annotations

import math

import pytest
import torch

import specdecode as sd
from specdecode.decoder.best_of_n import (
    FINISHED,
    CandidateBatch,
    best_of_n,
    candidate_uniforms,
    kv_bytes_per_token,
    max_candidates_for_budget,
    speculative_rejection,
)
from specdecode.decoder.model import ModelConfig, Transformer
from specdecode.decoder.rewards import LogLikelihoodReward, RewardModel, score
from specdecode.decoder.state import SamplingSettings, encode_prompts
from specdecode.decoder.tokenizer import EOS_ID, PAD_ID

PROMPTS = ["def f(x):", "import os\n", "a much longer prompt, so rows are ragged"]


class EOSBiased(Transformer):
    """A random model that emits EOS often, so rows finish at different steps."""

    eos_bias = 3.0

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., EOS_ID] += self.eos_bias
        return logits


def tiny(cls=Transformer, dtype=torch.float32, seed=0, eos_bias=None, max_seq_len=96) -> Transformer:
    torch.manual_seed(seed)
    model = cls(ModelConfig(n_layers=2, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=max_seq_len)).to(dtype).eval()
    if eos_bias is not None:
        model.eos_bias = eos_bias
    with torch.no_grad():  # sharper distributions than the 0.02 init, so candidates differ in likelihood
        model.output.weight.mul_(20)
    return model


def gen(seed=1):
    return torch.Generator().manual_seed(seed)


def full_next_logits(model, seq, n):
    """Each row's next-token logits recomputed from scratch (no cache) from its ``n`` tokens."""
    return torch.stack([model(seq[b : b + 1, : int(n[b])])[0, -1] for b in range(seq.shape[0])])


# ---------------------------------------------------------------------------------------------
# The engine: prefill once, compaction keeps the survivors exact
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def test_compacted_survivors_logits_equal_recomputation():
    """After finished rows are retired and a prune compacts the KV cache and every per-row tensor,
    each survivor's next-token logits -- stored and after one more decode step -- equal those
    recomputed from scratch from its tokens."""
    model = tiny(EOSBiased, torch.float64)
    ids, lengths = encode_prompts(PROMPTS)
    n = 5
    batch = CandidateBatch(model, ids, lengths, n, 12, SamplingSettings(1.0, eos_id=EOS_ID), seed=1234)
    batch.prefill()
    torch.testing.assert_close(
        batch.logits, full_next_logits(model, batch.state.tokens, batch.state.lengths), rtol=0, atol=1e-10
    )
    retired = 0
    for _ in range(4):
        finished = batch.sample()
        if finished.any():
            retired += int(finished.sum())
            batch.retire(finished)
        batch.forward()
    assert retired > 0, "the EOS bias should retire some rows (exercises a compaction)"
    kept = torch.arange(0, batch.size, 2)  # an arbitrary ascending survivor set across prompts
    cand_before, seq_before = batch.cand[kept].clone(), batch.state.tokens[kept].clone()
    batch.compact_(kept)
    assert torch.equal(batch.cand, cand_before) and torch.equal(batch.state.tokens, seq_before)
    assert torch.equal(batch.cache.lengths[: batch.size], batch.state.lengths - 1)  # compacted with the rows
    torch.testing.assert_close(
        batch.logits, full_next_logits(model, batch.state.tokens, batch.state.lengths), rtol=0, atol=1e-10
    )
    batch.sample()
    batch.forward()  # reads the compacted KV
    torch.testing.assert_close(
        batch.logits, full_next_logits(model, batch.state.tokens, batch.state.lengths), rtol=0, atol=1e-10
    )


def test_prompt_is_prefilled_once():
    """One forward over the P prompts (not P*n rows); every other forward feeds one token per live
    row, so the model sees P*L prompt tokens plus (generated - 1) tokens per candidate."""
    model = tiny(EOSBiased, eos_bias=1.0)
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(tuple(args[0].shape)))
    n, P = 6, len(PROMPTS)
    ids, _ = encode_prompts(PROMPTS)
    out = speculative_rejection(
        model, LogLikelihoodReward(model), PROMPTS, n, 0.5, 16, decision_tokens=[3, 6], generator=gen()
    )
    assert calls[0] == tuple(ids.shape) == (P, ids.shape[1])
    assert all(T == 1 and B <= P * n for B, T in calls[1:])
    assert len(calls) == out.stats["forwards"]
    generated = out.candidate_num_tokens
    assert out.stats["tokens_generated"] == int(generated.sum())
    assert sum(B * T for B, T in calls) == out.stats["model_tokens"] == ids.numel() + int((generated - 1).sum())
    assert out.stats["prefill_tokens"] == ids.numel()


# ---------------------------------------------------------------------------------------------
# Speculative Rejection vs Best-of-N
# ---------------------------------------------------------------------------------------------


def _assert_same(a, b):
    for name in ("tokens", "num_tokens", "best_candidate", "candidate_tokens", "candidate_num_tokens", "finished"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.rewards, b.rewards, rtol=0, atol=0)
    torch.testing.assert_close(a.candidate_rewards, b.candidate_rewards, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("reward_kind", ["loglik", "reward_model"])
@pytest.mark.parametrize("schedule", ["tokens", "memory"])
def test_alpha_zero_equals_best_of_n(reward_kind, schedule):
    model = tiny(EOSBiased, eos_bias=1.5)
    reward = (
        LogLikelihoodReward(model)
        if reward_kind == "loglik"
        else RewardModel(ModelConfig(n_layers=1, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=96))
    )
    bon = best_of_n(model, reward, PROMPTS, 6, 14, generator=gen(3))
    when = (
        {"decision_tokens": [2, 5, 9]}
        if schedule == "tokens"
        else {"memory_budget": kv_bytes_per_token(model) * 6 * (sum(len(p) + 1 for p in PROMPTS) + 3 * 4)}
    )
    spr = speculative_rejection(model, reward, PROMPTS, 6, 0.0, 14, generator=gen(3), **when)
    if schedule == "tokens":
        assert len(spr.stats["rounds"]) == 3  # scored, nobody dropped
    else:  # over the budget, but alpha = 0 can drop nobody: no scoring, decode on
        assert spr.stats["rounds"] == [] and spr.stats["over_budget_steps"] > 0
    _assert_same(spr, bon)
    assert bon.finished.all() and (spr.pruned_at_round == -1).all()


def test_survivors_generate_exactly_their_best_of_n_tokens():
    """Per-candidate randomness: every candidate Speculative Rejection finishes is token for token
    the same candidate of Best-of-N under the same seed, so its answer is one of Best-of-N's."""
    model = tiny(EOSBiased, eos_bias=1.0)
    reward = LogLikelihoodReward(model)
    bon = best_of_n(model, reward, PROMPTS, 8, 16, generator=gen(5))
    spr = speculative_rejection(model, reward, PROMPTS, 8, 0.5, 16, decision_tokens=[2, 4, 8], generator=gen(5))
    done = spr.finished
    assert 0 < int(done.sum()) < done.numel()
    assert torch.equal(spr.candidate_tokens[done], bon.candidate_tokens[done])
    # the logits of a row can differ in the last bit with the batch around it (CPU matmul blocking)
    torch.testing.assert_close(spr.candidate_rewards[done], bon.candidate_rewards[done], rtol=0, atol=1e-5)
    rows = torch.arange(len(PROMPTS))
    assert torch.equal(spr.tokens, bon.candidate_tokens[rows, spr.best_candidate])
    assert (spr.rewards <= bon.rewards + 1e-5).all()  # Best-of-N's pool contains Speculative Rejection's
    # a pruned candidate's tokens are a prefix of its Best-of-N tokens
    for p, c in (~done).nonzero().tolist():
        k = int(spr.candidate_num_tokens[p, c])
        assert torch.equal(spr.candidate_tokens[p, c, :k], bon.candidate_tokens[p, c, :k])
    assert spr.stats["tokens_generated"] < bon.stats["tokens_generated"]


def test_best_of_n_candidates_are_nested_across_n():
    """Common random numbers: Best-of-4's candidates are the first 4 of Best-of-8's (same seed),
    so the reward reached can only grow with n."""
    model = tiny(EOSBiased, eos_bias=1.0)
    reward = LogLikelihoodReward(model)
    small = best_of_n(model, reward, PROMPTS, 4, 10, generator=gen(9))
    big = best_of_n(model, reward, PROMPTS, 8, 10, generator=gen(9))
    assert torch.equal(small.candidate_tokens, big.candidate_tokens[:, :4])
    assert (big.rewards >= small.rewards - 1e-5).all()
    u = candidate_uniforms(7, 2, 5, 3)
    assert u.shape == (2, 5, 3) and u.dtype == torch.float64 and 0 <= float(u.min()) and float(u.max()) < 1
    assert torch.equal(u[:, :2], candidate_uniforms(7, 2, 2, 3)) and torch.equal(
        u[:1, :, :2], candidate_uniforms(7, 1, 5, 2)
    )
    assert torch.equal(u[:, :, 1:], candidate_uniforms(7, 2, 5, 2, first_step=1))
    assert len(set(u.flatten().tolist())) == u.numel()


class RecordingReward:
    """Random scores from a few levels (so ties happen), recording what it was asked."""

    def __init__(self, seed=0):
        self.generator = gen(seed)
        self.calls = []

    def __call__(self, tokens, lengths):
        values = torch.randint(0, 4, (tokens.shape[0],), generator=self.generator).float()
        self.calls.append((tokens.clone(), lengths.clone(), values))
        return values


def _reference_kept(values: torch.Tensor, sizes: list[int], alpha) -> list[int]:
    """Row indices kept: per group the ceil((1-alpha)m) best, ties to the lower index."""
    kept, start = [], 0
    for m in sizes:
        k = max(1, math.ceil(round((1 - alpha) * m, 9))) if m else 0
        order = sorted(range(start, start + m), key=lambda i: (-float(values[i]), i))
        kept += sorted(order[:k])
        start += m
    return kept


@pytest.mark.parametrize("alpha,n", [(0.7, 10), (0.5, 5), (1.0, 4), (0.3, 7)])
def test_pruning_keeps_exactly_the_top_k_per_prompt(alpha, n):
    model = tiny()
    reward = RecordingReward()
    P, taus = len(PROMPTS), [2, 4, 6]
    out = speculative_rejection(model, reward, PROMPTS, n, alpha, 8, decision_tokens=taus, eos_id=None, generator=gen())
    prompt_lengths = encode_prompts(PROMPTS)[1]
    live = list(range(P * n))  # no EOS: nobody finishes before a decision point
    for r, (_tokens, lengths, values) in enumerate(reward.calls[: len(taus)]):
        sizes = [sum(1 for c in live if c // n == p) for p in range(P)]
        assert out.stats["rounds"][r]["live_per_prompt"] == sizes
        assert lengths.tolist() == [int(prompt_lengths[c // n]) + taus[r] for c in live]
        kept_rows = _reference_kept(values, sizes, alpha)
        kept = [live[i] for i in kept_rows]
        pruned_now = sorted((out.pruned_at_round.flatten() == r).nonzero().flatten().tolist())
        assert pruned_now == sorted(set(live) - set(kept))
        assert out.stats["rounds"][r]["kept_per_prompt"] == [sum(1 for c in kept if c // n == p) for p in range(P)]
        assert out.stats["rounds"][r]["rewards"] == [v.tolist() for v in values.split(sizes)]
        live = kept
    assert sorted(out.finished.flatten().nonzero().flatten().tolist()) == live


def test_final_choice_is_the_best_finished_candidate_with_ties_to_lower_index():
    model = tiny()

    def reward(tokens, lengths):  # two levels: many ties
        return (tokens[torch.arange(tokens.shape[0]), lengths - 1] % 2).float()

    out = best_of_n(model, reward, PROMPTS, 6, 5, generator=gen(2), eos_id=None)
    for p in range(len(PROMPTS)):
        values = out.candidate_rewards[p]
        best = max(range(6), key=lambda c: (float(values[c]), -c))
        assert int(out.best_candidate[p]) == best
        assert float(out.rewards[p]) == float(values[best])
        assert torch.equal(out.tokens[p], out.candidate_tokens[p, best])


def test_greedy_candidates_are_identical():
    model = tiny()
    out = best_of_n(model, LogLikelihoodReward(model), PROMPTS[:2], 3, 6, temperature=0, eos_id=None)
    assert torch.equal(out.candidate_tokens[:, :1].expand_as(out.candidate_tokens), out.candidate_tokens)
    greedy = sd.generate(model, PROMPTS[:2], 6, eos_id=None)
    assert torch.equal(out.tokens, greedy.tokens)


def test_sampling_matches_the_distribution_of_plain_sampling():
    """Candidates' first tokens follow softmax(logits / T) (a loose frequency check: the inverse
    CDF draw is the right distribution, not a biased one)."""
    model = tiny()
    n = 3000
    out = best_of_n(
        model, lambda tokens, lengths: torch.zeros(tokens.shape[0]), ["x"], n, 1, temperature=0.7, generator=gen(4)
    )
    first = out.candidate_tokens[0, :, 0]
    with torch.no_grad():
        probs = torch.softmax(model(encode_prompts(["x"])[0])[0, -1].float() / 0.7, -1)
    freq = torch.bincount(first, minlength=probs.numel()).float() / n
    assert float((freq - probs).abs().max()) < 5 * math.sqrt(0.25 / n)


# ---------------------------------------------------------------------------------------------
# Memory-budget decision points
# ---------------------------------------------------------------------------------------------


def test_memory_budget_decides_when_live_kv_would_exceed_it():
    model = tiny()
    bpt = kv_bytes_per_token(model)
    assert bpt == 2 * 2 * 2 * 8 * 4  # layers x (K, V) x kv_heads x head_dim x float32
    assert model.new_cache(1, 1).bytes_per_token() == bpt
    n = 8
    prompt_tokens = int(encode_prompts(PROMPTS)[1].sum())
    budget = bpt * (prompt_tokens * n + len(PROMPTS) * n * 4)  # room for 4 new tokens per candidate
    out = speculative_rejection(
        model, LogLikelihoodReward(model), PROMPTS, n, 0.5, 40, memory_budget=budget, generator=gen(), eos_id=None
    )
    rounds = out.stats["rounds"]
    assert len(rounds) >= 2
    for r in rounds:
        assert r["live_kv_bytes"] > budget  # a decision only when the next forward would not fit
        live = sum(r["live_per_prompt"])
        fits_one_token_earlier = r["live_kv_bytes"] - live * bpt
        assert fits_one_token_earlier <= budget  # ... and not a token later than that
    assert rounds[0]["tokens_per_row"] == 5  # the 5th token's forward would need a 5th position
    assert out.stats["peak_kv_bytes"] <= budget
    assert max_candidates_for_budget(model, PROMPTS, budget, min_new_tokens=4) == n
    assert out.stats["over_budget_steps"] == 0


def test_memory_decisions_skip_rounds_that_cannot_prune():
    """alpha = 0.3 of 3 rows keeps ceil(2.1) = 3: over the budget, such a round would drop nobody,
    so rows are not scored every step; the run decodes on and counts the steps over budget."""
    model = tiny()
    calls = []
    budget = kv_bytes_per_token(model) * (int(encode_prompts(PROMPTS)[1].sum()) * 4 + len(PROMPTS) * 4 * 2)
    out = speculative_rejection(
        model,
        lambda tokens, lengths: calls.append(len(lengths)) or -lengths.float(),
        PROMPTS,
        4,
        0.3,
        12,
        memory_budget=budget,
        eos_id=None,
        generator=gen(),
    )
    assert [r["kept_per_prompt"] for r in out.stats["rounds"]] == [[3, 3, 3]]  # 4 -> 3, then 3 -> 3 impossible
    assert calls == [12, 9]  # one partial scoring, one final
    assert out.stats["over_budget_steps"] > 0


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------


def test_loglikelihood_reward_running_sums_equal_recomputation():
    model = tiny(EOSBiased, eos_bias=1.0)
    fast = best_of_n(model, LogLikelihoodReward(model), PROMPTS, 4, 10, generator=gen(7))
    slow = best_of_n(model, LogLikelihoodReward(model, running_sums=False), PROMPTS, 4, 10, generator=gen(7))
    assert fast.stats["reward_from_running_logprobs"] and not slow.stats["reward_from_running_logprobs"]
    assert slow.stats["reward_calls"] >= 1
    torch.testing.assert_close(fast.candidate_rewards, slow.candidate_rewards, rtol=0, atol=1e-5)


@torch.no_grad()
def test_loglikelihood_reward_by_hand():
    model = tiny(dtype=torch.float64)
    seq = torch.tensor([[256, 10, 20, 30, 40], [256, 5, 6, PAD_ID, PAD_ID]])
    lengths, plens = torch.tensor([5, 3]), torch.tensor([2, 2])
    got = LogLikelihoodReward(model)(seq, lengths, prompt_lengths=plens)
    expected = []
    for b in range(2):
        logp = torch.log_softmax(model(seq[b : b + 1, : int(lengths[b])])[0].float(), -1)
        expected.append(
            sum(float(logp[j - 1, seq[b, j]]) for j in range(int(plens[b]), int(lengths[b])))
            / (int(lengths[b]) - int(plens[b]))
        )
    torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-6)


def test_reward_model_scores_rows_and_ignores_padding():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    rm = RewardModel()
    assert torch.equal(torch.random.get_rng_state(), state)  # a seeded stand-in leaves the global RNG alone
    seq = torch.randint(0, 256, (3, 12))
    lengths = torch.tensor([12, 7, 3])
    padded = seq.clone()
    padded[1, 7:] = PAD_ID
    padded[2, 3:] = 99
    a, b = rm(seq, lengths), rm(padded, lengths)
    assert a.shape == (3,) and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(rm(seq[1:2, :7], lengths[1:2]), a[1:2], rtol=0, atol=1e-6)
    assert float(a.std()) > 0
    lm = tiny()
    from_lm = RewardModel.from_language_model(lm)
    assert torch.equal(from_lm.layers[0].attention.wqkv.weight, lm.layers[0].attention.wqkv.weight)


def test_score_chunks_and_checks_the_reward():
    tokens = torch.randint(0, 256, (5, 8))
    lengths = torch.tensor([8, 3, 5, 1, 2])
    plens = torch.ones(5, dtype=torch.int64)
    widths = []

    def reward(batch_tokens, batch_lengths):
        widths.append(batch_tokens.shape[1])
        return batch_lengths.float() * 2

    assert score(reward, tokens, lengths, plens, batch_size=2).tolist() == [16, 6, 10, 2, 4]
    assert widths == [8, 5, 2]  # each chunk cut to its longest row
    with pytest.raises(ValueError, match="reward .* must return a \\[5\\] float tensor"):
        score(lambda tokens, lengths: lengths, tokens, lengths, plens)
    with pytest.raises(ValueError, match="one score per row"):
        score(lambda tokens, lengths: torch.zeros(5, 1), tokens, lengths, plens)
    with pytest.raises(TypeError, match="must return a torch.Tensor"):
        score(lambda tokens, lengths: [0.0] * 5, tokens, lengths, plens)


# ---------------------------------------------------------------------------------------------
# Bad arguments
# ---------------------------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    model = tiny()
    reward = LogLikelihoodReward(model)
    spr = lambda **kw: speculative_rejection(
        **{
            **dict(model=model, reward=reward, prompts=PROMPTS, n=4, alpha=0.5, max_new_tokens=8, decision_tokens=[2]),
            **kw,
        }
    )
    cases = [
        (dict(n=0), ValueError, "n must be >= 1"),
        (dict(n=2.0), TypeError, "n must be an int"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens must be >= 1"),
        (dict(alpha=-0.1), ValueError, "alpha must be in \\[0, 1\\]"),
        (dict(alpha=1.5), ValueError, "alpha must be in \\[0, 1\\]"),
        (dict(alpha=None), TypeError, "alpha must be a real number"),
        (dict(alpha=True), TypeError, "alpha must be a real number"),
        (dict(decision_tokens=None), ValueError, "exactly one of decision_tokens"),
        (dict(memory_budget=10**9), ValueError, "exactly one of decision_tokens"),
        (dict(decision_tokens=[]), ValueError, "decision_tokens is empty"),
        (dict(decision_tokens=[3, 3]), ValueError, "strictly increasing"),
        (dict(decision_tokens=[8]), ValueError, "outside \\[1, max_new_tokens = 8\\)"),
        (dict(decision_tokens=[0]), ValueError, "outside"),
        (dict(decision_tokens=[1.5]), TypeError, "decision_tokens\\[0\\] must be an int"),
        (dict(decision_tokens=None, memory_budget=1000), ValueError, "cannot hold the initial batch.*n <= 0 fits"),
        (dict(decision_tokens=None, memory_budget=-5), ValueError, "memory_budget must be a positive int"),
        (dict(reward="loglik"), TypeError, "reward must be callable"),
        (dict(model=object()), TypeError, "model must be a specdecode.decoder.model.Transformer"),
        (dict(temperature=-1.0), ValueError, "temperature must be a number >= 0"),
        (dict(generator=0), TypeError, "generator must be a torch.Generator"),
        (dict(max_new_tokens=90), ValueError, "exceeds the model's max_seq_len 96"),
        (dict(prompts=[]), ValueError, "non-empty"),
        (dict(reward_batch_size=0), ValueError, "reward_batch_size"),
        (dict(reward=lambda tokens, lengths: torch.zeros(2)), ValueError, "must return a \\[12\\] float tensor"),
        (dict(temperature=float("nan")), ValueError, "temperature must be a number >= 0"),
        (dict(prompts=torch.tensor([[1.0, 2.0]])), TypeError, "prompts must hold integer token ids"),
        (dict(prompts=[[256, 300]]), ValueError, "prompts: token id 300 is outside"),
        (dict(prompts=torch.tensor([[-2, 5]])), ValueError, "prompts: token id -2 is outside"),
        (dict(reward_batch_size=2.0), TypeError, "reward_batch_size must be an int"),
        (dict(eos_id="eos"), TypeError, "eos_id must be an int"),
        (dict(decision_tokens=None, memory_budget=1e9), ValueError, "memory_budget must be a positive int"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            spr(**kwargs)
    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n(model, reward, PROMPTS, 0, 8)
    with pytest.raises(TypeError, match="model must be a specdecode Transformer"):
        LogLikelihoodReward("target")


def test_output_texts_and_status():
    model = tiny(EOSBiased, eos_bias=2.0)
    out = speculative_rejection(
        model, LogLikelihoodReward(model), PROMPTS, 4, 0.5, 10, decision_tokens=[3], generator=gen()
    )
    texts = out.texts()
    assert len(texts) == len(PROMPTS) and all(isinstance(t, str) for t in texts)
    assert out.finished[torch.arange(len(PROMPTS)), out.best_candidate].all()
    assert (out.candidate_rewards[out.finished].isfinite()).all()
    assert out.candidate_rewards[~out.finished].isnan().all()
    assert ((out.pruned_at_round >= 0) == ~out.finished).all()
    assert (out.num_tokens >= 1).all() and (out.num_tokens <= 10).all()
    assert FINISHED == 1


def test_reward_receives_prompt_lengths_if_it_asks_and_progress_is_reported():
    model = tiny()
    seen, steps = [], []

    def reward(tokens, lengths, prompt_lengths):
        seen.append((lengths.clone(), prompt_lengths.clone()))
        return -lengths.float()

    out = speculative_rejection(
        model,
        reward,
        PROMPTS,
        3,
        0.5,
        6,
        decision_tokens=[2],
        eos_id=None,
        generator=gen(),
        progress=lambda step, live: steps.append((step, live)),
    )
    plens = encode_prompts(PROMPTS)[1]
    lengths, prompt_lengths = seen[0]  # the decision point: every row has 2 new tokens
    assert prompt_lengths.tolist() == plens.repeat_interleave(3).tolist()
    assert (lengths - prompt_lengths).tolist() == [2] * 9
    assert steps == [(1, 9), (2, 9), (3, 6), (4, 6), (5, 6), (6, 0)]  # 2 of 3 kept per prompt, then all finish
    assert out.stats["reward_calls"] == 2  # the decision point and the final scoring
