"""specdecode.integrations.transformers on tiny random-config Llama models (no download).

Greedy runs must equal ``target.generate(do_sample=False)`` token for token; sampled runs must
follow the target's own (temperature/top-k/top-p processed) distribution -- chi-square at a
stated false-alarm rate, with a power check that a wrong verifier fails the same test.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the Hugging Face integration needs transformers (the `hf` extra)")

from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM, StaticCache  # noqa: E402

import specdecode.integrations.hf_speculative as hf_speculative  # noqa: E402
import specdecode.integrations.transformers as hf  # noqa: E402
from specdecode.core import RejectionOutput  # noqa: E402
from specdecode.integrations.hf_common import cache_argument  # noqa: E402
from specdecode.ops.rejection_sample import rejection_sample  # noqa: E402
from tests.stats import assert_fits  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB = 512
FALSE_ALARM_RATE = 1e-3


def tiny_config(vocab_size: int = VOCAB) -> LlamaConfig:
    # initializer_range 0.2 (not HF's 0.02) gives peaked next-token distributions, so a draft
    # close to the target is accepted often and greedy decisions are rarely near-ties. No
    # eos/bos: generate() must not stop on a default EOS the test did not ask for.
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        initializer_range=0.2,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def perturbed_copy(model: LlamaForCausalLM, noise: float, vocab_size: int = VOCAB, seed: int = 1) -> LlamaForCausalLM:
    """A draft: the target's weights plus relative Gaussian noise (the rows of ids the target
    lacks, if ``vocab_size`` is larger, stay random)."""
    torch.manual_seed(seed)
    draft = LlamaForCausalLM(tiny_config(vocab_size)).eval()
    with torch.no_grad():
        for mine, theirs in zip(draft.parameters(), model.parameters()):
            rows = min(mine.shape[0], theirs.shape[0])
            mine[:rows] = theirs[:rows].float() + noise * theirs.float().std() * torch.randn_like(mine[:rows])
    return draft


@pytest.fixture(scope="module")
def target() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def draft(target) -> LlamaForCausalLM:
    return perturbed_copy(target, noise=0.02)


def left_padded_prompts(batch_size: int, length: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[B, length]`` prompts of different lengths (row b has ``2 b`` pads at the left)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (batch_size, length), generator=generator)
    mask = torch.ones_like(ids)
    for row in range(batch_size):
        mask[row, : min(2 * row, length - 1)] = 0
    return ids.masked_fill(mask == 0, 0), mask


def bf16_near_ties(scores: torch.Tensor, ulps: int = 1) -> torch.Tensor:
    """``[B, T]`` bool: greedy decisions whose top-2 logits are within ``ulps`` bf16 ulps (of the
    top logit). Such a decision can flip when the target's bf16 forward over K+1 tokens rounds
    differently from generate's one-token forward -- an artefact of the target's arithmetic, not
    of the verifier."""
    top2 = scores.float().topk(2, -1).values
    ulp = torch.finfo(torch.bfloat16).eps * torch.exp2(torch.floor(torch.log2(top2[..., 0].abs())))
    return (top2[..., 0] - top2[..., 1]) <= ulps * ulp


# ---------------------------------------------------------------------------------------------
# Greedy: token for token what target.generate(do_sample=False) returns
# ---------------------------------------------------------------------------------------------


def reference_generate(target, ids, mask, max_new_tokens, eos_token_id=None):
    return target.generate(
        ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_equals_generate_float32(target, draft, batch_size, with_eos):
    ids, mask = left_padded_prompts(batch_size)
    eos = None
    if with_eos:  # an id the first row emits mid-way: that row stops there, the others may not
        eos = int(reference_generate(target, ids, mask, 20).sequences[0, ids.shape[1] + 6])
    expected = reference_generate(target, ids, mask, 20, eos).sequences
    out = hf.speculative_generate(
        target, draft, ids, mask, num_draft_tokens=4, max_new_tokens=20, eos_token_id=eos, pad_token_id=0
    )
    assert out.sequences.tolist() == expected.tolist()
    assert out.stats["mean_accepted_length"] > 2  # the drafts were mostly accepted: multi-token steps ran
    assert out.stats["target_forwards"] <= 1 + 20 // 2  # prefill + steps: far fewer than generate's 20
    if with_eos:
        assert (out.sequences[0, ids.shape[1] + 7 :] == 0).all() and out.num_new_tokens[0] == 7


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_equals_generate_bf16_target_fp32_draft(target, draft, batch_size, with_eos):
    target_bf16 = LlamaForCausalLM(tiny_config()).eval()
    target_bf16.load_state_dict(target.state_dict())
    target_bf16.to(torch.bfloat16)
    ids, mask = left_padded_prompts(batch_size, seed=1)
    eos = None
    if with_eos:
        eos = int(reference_generate(target_bf16, ids, mask, 20).sequences[0, ids.shape[1] + 5])
    expected = reference_generate(target_bf16, ids, mask, 20, eos)
    out = hf.speculative_generate(
        target_bf16, draft, ids, mask, num_draft_tokens=4, max_new_tokens=20, eos_token_id=eos, pad_token_id=0
    )
    # Each row equals generate's up to its end, or up to a divergence that starts at a bf16
    # near-tie of generate's own logits (and then may continue differently).
    near_ties = bf16_near_ties(torch.stack(expected.scores, 1))
    prompt_len, identical_rows = ids.shape[1], 0
    for row in range(batch_size):
        got, want = out.sequences[row, prompt_len:].tolist(), expected.sequences[row, prompt_len:].tolist()
        first_difference = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), None)
        if first_difference is None:
            assert len(got) == len(want) or with_eos, (got, want)
            identical_rows += len(got) == len(want)
        else:
            assert near_ties[row, first_difference], f"row {row} diverges at step {first_difference}: not a near-tie"
    assert identical_rows >= batch_size * 3 / 4, f"only {identical_rows} of {batch_size} rows identical"


def test_draft_with_padded_vocabulary(target):
    """A draft with 520 ids against a 512-id target: the extra ids get zero mass (the draft never
    proposes them) and greedy output is still the target's."""
    draft = perturbed_copy(target, noise=0.02, vocab_size=VOCAB + 8)
    ids, mask = left_padded_prompts(4)
    expected = reference_generate(target, ids, mask, 12).sequences
    out = hf.speculative_generate(target, draft, ids, mask, num_draft_tokens=3, max_new_tokens=12)
    assert out.sequences.tolist() == expected.tolist()
    assert out.stats["mean_accepted_length"] > 2


def test_ragged_acceptance_keeps_the_cache_bounded(target):
    """A poor draft (rows accept 0..K drafts per step): dead slots are repacked, the cache stays
    within longest row + 2 (K + 1) columns, and the output is still generate's."""
    draft = perturbed_copy(target, noise=0.05)
    ids, mask = left_padded_prompts(4)
    k, max_new_tokens = 4, 48
    expected = reference_generate(target, ids, mask, max_new_tokens).sequences
    out = hf.speculative_generate(target, draft, ids, mask, num_draft_tokens=k, max_new_tokens=max_new_tokens)
    assert out.sequences.tolist() == expected.tolist()
    stats = out.stats
    hist = stats["accepted_hist"]
    assert int((hist > 0).sum()) >= 2, f"acceptance was not ragged: {hist.tolist()}"
    assert stats["repacks"] >= 1
    assert 0 < stats["max_dead_columns"] <= 2 * (k + 1)
    assert stats["cache_length"] <= ids.shape[1] + max_new_tokens + 2 * (k + 1) + k


# ---------------------------------------------------------------------------------------------
# Sampling: the first and second new tokens follow the target's own distribution
# ---------------------------------------------------------------------------------------------

SAMPLING = hf.SamplingConfig(do_sample=True, temperature=0.8, top_k=40, top_p=0.95)


@torch.no_grad()
def target_first_two_distributions(target, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``[V]`` marginals of the first and second new token under ``SAMPLING``:
    ``p1 = p(. | prompt)``, ``p2 = sum_t p1(t) p(. | prompt, t)`` (one forward over all V continuations)."""
    first = SAMPLING.probs(target(prompt[None]).logits[0, -1], VOCAB).double()
    continued = torch.cat([prompt.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], 1)
    second_given_first = SAMPLING.probs(target(continued).logits[:, -1], VOCAB).double()
    return first, first @ second_given_first


def first_two_token_counts(target, draft, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    prompt = left_padded_prompts(1, seed=3)[0][0]
    ids = prompt.expand(num_samples, -1).contiguous()
    out = hf.speculative_generate(
        target,
        draft,
        ids,
        num_draft_tokens=2,
        max_new_tokens=2,
        do_sample=True,
        temperature=SAMPLING.temperature,
        top_k=SAMPLING.top_k,
        top_p=SAMPLING.top_p,
        seed=seed,
    )
    new = out.sequences[:, ids.shape[1] :]
    return torch.bincount(new[:, 0], minlength=VOCAB), torch.bincount(new[:, 1], minlength=VOCAB)


def accept_every_draft(draft_token_ids, draft_probs, target_probs, **kwargs) -> RejectionOutput:
    """A wrong verifier: accepts every draft (so the tokens follow the draft), then the target's
    argmax. Without drafts (the first token, read off the prefill) it is the real verifier."""
    if draft_token_ids.shape[1] == 0:
        return rejection_sample(draft_token_ids, draft_probs, target_probs, **kwargs)
    bonus = target_probs[:, -1].argmax(-1, keepdim=True)
    num_accepted = torch.full((draft_token_ids.shape[0],), draft_token_ids.shape[1], dtype=torch.int64)
    return RejectionOutput(torch.cat([draft_token_ids, bonus], 1), num_accepted)


def check_first_two_tokens(target, num_samples: int, monkeypatch) -> None:
    # A draft far enough from the target that sampling it is detectably wrong (power check).
    draft = perturbed_copy(target, noise=0.5)
    prompt = left_padded_prompts(1, seed=3)[0][0]
    p1, p2 = target_first_two_distributions(target, prompt)
    first, second = first_two_token_counts(target, draft, num_samples, seed=7)
    assert_fits(first, p1, FALSE_ALARM_RATE, "first new token")
    assert_fits(second, p2, FALSE_ALARM_RATE, "second new token")
    monkeypatch.setattr(hf_speculative, "rejection_sample", accept_every_draft)
    _, wrong_second = first_two_token_counts(target, draft, num_samples, seed=7)
    with pytest.raises(AssertionError, match="second new token"):
        assert_fits(wrong_second, p2, FALSE_ALARM_RATE, "second new token")


def test_sampling_is_lossless(target, monkeypatch):
    check_first_two_tokens(target, 2000, monkeypatch)


@pytest.mark.slow
def test_sampling_is_lossless_many_samples(target, monkeypatch):
    check_first_two_tokens(target, 20000, monkeypatch)


# ---------------------------------------------------------------------------------------------
# compact_hf_cache_
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
@pytest.mark.parametrize("cache_kind", ["dynamic", "static"])
def test_compacted_cache_gives_the_survivors_logits(target, cache_kind):
    """Prefill 5 rows, keep rows 1, 3, 4: the next forward over the compacted cache gives the
    logits a fresh prefill of those rows alone gives."""
    ids = torch.randint(3, VOCAB, (5, 6), generator=torch.Generator().manual_seed(5))
    next_ids = torch.randint(3, VOCAB, (5, 1), generator=torch.Generator().manual_seed(6))
    if cache_kind == "dynamic":
        cache = DynamicCache(config=target.config)
        target(ids, **{cache_argument(target): cache})
        cache.crop(-1)  # the layers now hold strided views, as after a rejected draft
        ids = ids[:, :-1]
    else:
        cache = StaticCache(config=target.config, max_cache_len=16)
        target(ids, **{cache_argument(target): cache})
    kept = torch.tensor([1, 3, 4])
    (kept_next,) = hf.compact_hf_cache_(cache, kept, extra=[next_ids.clone()])
    assert kept_next.tolist() == next_ids[kept].tolist()
    assert all(layer.keys.shape[0] == 3 for layer in cache.layers)
    got = target(kept_next, **{cache_argument(target): cache}).logits[:, -1]
    expected = target(torch.cat([ids[kept], next_ids[kept]], 1)).logits[:, -1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Best-of-N and Speculative Rejection
# ---------------------------------------------------------------------------------------------

EOS_IDS = list(range(0, VOCAB, 16))  # 32 ids: candidates finish at different steps


def residue_reward(prompt_ids, response_ids):
    """A token reward whose partial value predicts the final one: mean of ``id % 7``."""
    return [sum(t % 7 for t in response) / max(len(response), 1) for response in response_ids]


def word_level_tokenizer(shift: int = 0):
    """A word-level tokenizer over ``w0 .. w511`` built locally (no download); ``shift`` gives a
    reward model a different id for every word than the policy's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": (i + shift) % VOCAB for i in range(VOCAB)}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer)


def run_best_of_n(policy, reward, **kwargs):
    ids, mask = left_padded_prompts(2, seed=4)
    common = dict(n=6, max_new_tokens=12, eos_token_id=EOS_IDS, seed=11)
    return hf.best_of_n(policy, reward, ids, mask, **common, **kwargs), ids, mask, common


def test_kv_bytes_per_token_from_hf_config(target):
    # 2 layers x (K, V) x 2 KV heads x head dim 64 / 4 = 16 x 4 bytes
    assert hf.kv_bytes_per_token(target) == 2 * 2 * 2 * 16 * 4
    assert hf.kv_bytes_per_token(target.config, torch.bfloat16) == 2 * 2 * 2 * 16 * 2


def test_alpha_zero_equals_best_of_n(target):
    best, ids, mask, common = run_best_of_n(target, residue_reward)
    fast = hf.speculative_rejection(target, residue_reward, ids, mask, alpha=0, decision_tokens=(3, 6), **common)
    assert fast.sequences.tolist() == best.sequences.tolist()
    assert fast.best_candidate.tolist() == best.best_candidate.tolist()
    assert fast.candidate_tokens.tolist() == best.candidate_tokens.tolist()
    assert best.finished.all()
    assert 0 < int(best.candidate_num_tokens.min()) < 12  # some candidates hit EOS early


@pytest.mark.parametrize("alpha", [0.5, 0.9])
def test_every_answer_is_a_best_of_n_candidate(target, alpha):
    best, ids, mask, common = run_best_of_n(target, residue_reward)
    fast = hf.speculative_rejection(target, residue_reward, ids, mask, alpha=alpha, decision_tokens=(3, 6), **common)
    assert fast.stats["rounds"] == 2 and fast.stats["pruned"] > 0
    assert fast.stats["tokens_generated"] < best.stats["tokens_generated"]
    for prompt in range(2):
        j = int(fast.best_candidate[prompt])
        length = int(fast.candidate_num_tokens[prompt, j])
        assert fast.candidate_tokens[prompt, j].tolist() == best.candidate_tokens[prompt, j].tolist()
        assert fast.sequences[prompt, ids.shape[1] : ids.shape[1] + length].tolist() == (
            best.candidate_tokens[prompt, j, :length].tolist()
        )
        assert float(fast.rewards[prompt]) == float(best.candidate_rewards[prompt, j])
    # Pruned candidates got NaN; every finished one kept Best-of-N's reward.
    done = fast.finished
    assert torch.equal(fast.candidate_rewards[done], best.candidate_rewards[done])
    assert fast.candidate_rewards[~done].isnan().all()


def test_memory_budget_decides_when_to_prune(target):
    ids, mask = left_padded_prompts(2, seed=4)
    per_token = hf.kv_bytes_per_token(target)
    budget = (int(mask.sum()) * 6 + 2 * 6 * 4) * per_token  # the prompts plus 4 new tokens per candidate
    out = hf.speculative_rejection(
        target, residue_reward, ids, mask, n=6, alpha=0.5, max_new_tokens=12, memory_budget=budget, seed=11
    )
    assert out.stats["rounds"] >= 1
    if out.stats["over_budget_steps"] == 0:
        assert out.stats["peak_live_kv_bytes"] <= budget


@torch.no_grad()
def test_survivors_next_token_logits_equal_a_recompute(target):
    """After a pruning round compacts the HF cache, every survivor's next-token logits equal a
    fresh forward over its unpadded prompt + response."""
    from specdecode.integrations.hf_best_of_n import DecodingSettings, _CandidateBatch, _prune_round

    ids, mask = left_padded_prompts(2, seed=4)
    settings = DecodingSettings.make(4, 8, 1.0, None, None, eos_token_id=None, pad_token_id=None, seed=3)
    batch = _CandidateBatch(target, ids, mask, settings)
    for _ in range(3):
        batch.sample()
        batch.forward()
    batch.sample()
    _prune_round(batch, hf.TokenReward(residue_reward), alpha=0.5)
    batch.forward()
    assert batch.size == 4 and batch.cand.tolist() != list(range(4))
    prompts, responses = batch.responses(batch.cand)
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        expected = target(torch.tensor([prompt + response])).logits[0, -1]
        torch.testing.assert_close(batch.logits[row], expected, rtol=1e-4, atol=1e-4)


def test_classifier_reward_retokenises_and_reads_the_last_real_token(target):
    """An HF sequence classifier with its own tokenizer (different ids for the same words): the
    batched, right-padded scores equal scoring each text alone."""
    from transformers import LlamaForSequenceClassification

    config = tiny_config()
    config.num_labels, config.pad_token_id = 1, 0
    torch.manual_seed(2)
    classifier = LlamaForSequenceClassification(config).eval()
    policy_tokenizer, reward_tokenizer = word_level_tokenizer(), word_level_tokenizer(shift=5)
    reward = hf.as_reward(classifier, policy_tokenizer, reward_tokenizer)
    prompts, responses = [[7, 8], [9]], [[10, 11, 12], [13]]
    scores = reward.score(prompts, responses)
    with torch.no_grad():
        alone = [
            classifier(torch.tensor([[(t + 5) % VOCAB for t in p + r]])).logits[0, 0]
            for p, r in zip(prompts, responses)
        ]
    torch.testing.assert_close(scores, torch.stack(alone), rtol=1e-5, atol=1e-5)
    best, ids, mask, common = run_best_of_n(
        target, classifier, tokenizer=policy_tokenizer, reward_tokenizer=reward_tokenizer
    )
    fast = hf.speculative_rejection(
        target,
        classifier,
        ids,
        mask,
        alpha=0.5,
        decision_tokens=(4,),
        tokenizer=policy_tokenizer,
        reward_tokenizer=reward_tokenizer,
        **common,
    )
    for prompt in range(2):
        j = int(fast.best_candidate[prompt])
        assert fast.candidate_tokens[prompt, j].tolist() == best.candidate_tokens[prompt, j].tolist()


def test_text_reward_sees_decoded_text():
    tokenizer = word_level_tokenizer()
    reward = hf.TextReward(lambda prompts, responses: [len(set(r.split())) for r in responses], tokenizer)
    assert reward.score([[1], [2]], [[5, 5, 6], [7]]).tolist() == [2.0, 1.0]


# ---------------------------------------------------------------------------------------------
# HF's own generate(assistant_model=...) with this package's verifier
# ---------------------------------------------------------------------------------------------


def test_assisted_generate_verifies_with_specdecode(target, draft, monkeypatch):
    import specdecode.integrations.hf_assisted as hf_assisted

    calls = []

    def counting_rejection_sample(*args, **kwargs):
        calls.append(args[0].shape)
        return rejection_sample(*args, **kwargs)

    monkeypatch.setattr(hf_assisted, "rejection_sample", counting_rejection_sample)
    ids, mask = left_padded_prompts(1)
    with hf.assisted_generation_verifier():
        assert hf_assisted._uses_specdecode()
        torch.manual_seed(0)
        out = target.generate(
            ids, attention_mask=mask, assistant_model=draft, do_sample=True, max_new_tokens=16, pad_token_id=0
        )
    assert not hf_assisted._uses_specdecode()  # transformers' own verifier is back
    assert out.shape == (1, ids.shape[1] + 16) and calls and all(shape[0] == 1 for shape in calls)
    with hf.assisted_generation_verifier():  # reproducible under torch.manual_seed
        torch.manual_seed(0)
        again = target.generate(
            ids, attention_mask=mask, assistant_model=draft, do_sample=True, max_new_tokens=16, pad_token_id=0
        )
    assert again.tolist() == out.tolist()


def test_assisted_verifier_refuses_untested_transformers(monkeypatch):
    import transformers

    import specdecode.integrations.hf_assisted as hf_assisted

    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    with pytest.raises(RuntimeError, match="tested with transformers 5.23.x, 5.24.x"):
        with hf.assisted_generation_verifier():
            pass
    assert not hf_assisted._uses_specdecode()
    with pytest.raises(ValueError, match="lossless"):
        hf.specdecode_speculative_sampling(
            torch.zeros(1, 3, dtype=torch.int64), torch.zeros(1, 1, 8), 1, torch.zeros(1, 2, 8), 0.5
        )


def test_assisted_verifier_is_lossless():
    """transformers' call, K = 2 candidates drawn from the assistant: the first emitted token
    follows the target's first distribution, and the test rejects the assistant's (power)."""
    generator = torch.Generator().manual_seed(0)
    vocab, num_calls = 16, 3000
    new_logits = 2 * torch.randn(1, 3, vocab, generator=generator)
    candidate_logits = new_logits[:, :2] + torch.randn(1, 2, vocab, generator=generator)
    q = candidate_logits.softmax(-1)[0]
    first = torch.zeros(vocab, dtype=torch.int64)
    drafted_first = torch.zeros(vocab, dtype=torch.int64)
    torch.manual_seed(1)
    for _ in range(num_calls):
        candidates = torch.stack([torch.multinomial(q[i], 1, generator=generator)[0] for i in range(2)])
        ids = torch.cat([torch.tensor([5, 6]), candidates])[None]
        tokens, n_matches = hf.specdecode_speculative_sampling(ids, candidate_logits, 2, new_logits)
        assert tokens.shape == (1, int(n_matches) + 1)
        first[tokens[0, 0]] += 1
        drafted_first[candidates[0]] += 1
    p_first = new_logits[0, 0].softmax(-1).double()
    assert_fits(first, p_first, FALSE_ALARM_RATE, "first token")
    with pytest.raises(AssertionError):
        assert_fits(drafted_first, p_first, FALSE_ALARM_RATE, "the assistant's own first token")


# ---------------------------------------------------------------------------------------------
# Bad input: clear errors, nothing run
# ---------------------------------------------------------------------------------------------


def test_bad_input_names_the_problem(target, draft):
    ids, mask = left_padded_prompts(2)
    right_padded = mask.flip(1)
    with pytest.raises(ValueError, match="left-padded"):
        hf.speculative_generate(target, draft, ids, right_padded, num_draft_tokens=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="left-padded"):
        hf.best_of_n(target, residue_reward, ids, right_padded, n=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="temperature"):
        hf.speculative_generate(
            target, draft, ids, mask, num_draft_tokens=2, max_new_tokens=4, do_sample=True, temperature=0
        )
    with pytest.raises(ValueError, match="exactly one of decision_tokens"):
        hf.speculative_rejection(target, residue_reward, ids, mask, n=2, alpha=0.5, max_new_tokens=4)
    with pytest.raises(ValueError, match="3 scores for 2 responses"):
        hf.TokenReward(lambda prompts, responses: [1.0, 2.0, 3.0]).score([[1], [2]], [[3], [4]])
    with pytest.raises(ValueError, match="reward_tokenizer"):
        hf.as_reward(target)  # an HF model as reward needs both tokenizers
    sliding = tiny_config()
    sliding.layer_types = ["sliding_attention", "full_attention"]
    sliding.sliding_window = 4
    with pytest.raises(ValueError, match="only full-attention models"):
        hf.speculative_generate(target, LlamaForCausalLM(sliding), ids, mask, num_draft_tokens=2, max_new_tokens=4)
