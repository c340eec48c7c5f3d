"""Plain and speculative generation are exact: greedy speculative decoding reproduces plain
greedy decoding token for token, ragged rows equal the same rows run alone, and sampled
speculative decoding draws the first and second tokens from the target's distribution.

Random tiny models (no trained weights). The draft is a noisy copy of the target, so it agrees
often but not always and both the accept and the reject paths run.
"""

import copy
import math

import pytest
import torch

from specdecode.decoder.generate import commit_verified_, generate, prefill, propose, speculative_generate, verify
from specdecode.decoder.model import ModelConfig, Transformer
from specdecode.decoder.state import DecodeState, SamplingSettings, encode_prompts
from specdecode.decoder.tokenizer import PAD_ID, VOCAB_SIZE
from specdecode.ops.rejection_sample import rejection_sample

PROMPTS = ["def main():\n", "import", "x", "class Foo(object):\n    def __init__"]
FALSE_ALARM_RATE = 1e-3  # per chi-square test: with a correct sampler it fails on 1 seed in 1000


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_pair(vocab_size: int = VOCAB_SIZE, noise: float = 0.15, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    config = ModelConfig(vocab_size=vocab_size, n_layers=2, dim=32, n_heads=4, n_kv_heads=2, max_seq_len=128)
    target = Transformer(config).to(dtype).eval()
    with torch.no_grad():
        for p in target.parameters():  # peakier than the training init, so argmaxes are well separated
            p.add_(torch.randn_like(p) * 0.3)
        draft = copy.deepcopy(target)
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * noise)
    return target, draft


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.mark.parametrize("num_draft_tokens", [1, 3, 5])
@pytest.mark.parametrize("batch", ["single", "batch4"])
def test_greedy_speculative_equals_greedy(pair, num_draft_tokens, batch):
    target, draft = pair
    groups = [[p] for p in PROMPTS] if batch == "single" else [PROMPTS]
    proposed = accepted = 0
    for prompts in groups:
        plain = generate(target, prompts, 24, eos_id=None)
        spec = speculative_generate(target, draft, prompts, 24, num_draft_tokens=num_draft_tokens, eos_id=None)
        assert torch.equal(spec.tokens, plain.tokens)
        assert spec.num_tokens.tolist() == [24] * len(prompts)
        hist = spec.stats["accepted_hist"]
        proposed += num_draft_tokens * sum(hist)
        accepted += sum(a * c for a, c in enumerate(hist))
    assert 0 < accepted < proposed  # both paths ran: some drafts accepted, some rejected


def test_draft_equal_to_target_accepts_everything(pair):
    target, _ = pair
    spec = speculative_generate(target, target, PROMPTS, 20, num_draft_tokens=3, eos_id=None)
    assert spec.stats["accepted_hist"] == [0, 0, 0, 4 * 5]  # 5 steps of 3 drafts + 1 bonus per row
    assert spec.stats["mean_accepted_length"] == 4.0
    assert spec.stats["steps"] == 5 and spec.stats["target_forwards"] == 6 and spec.stats["draft_forwards"] == 16
    assert torch.equal(spec.tokens, generate(target, PROMPTS, 20, eos_id=None).tokens)


def test_ragged_rows_equal_rows_alone(pair):
    """Prompts of different lengths in one batch, accepting different numbers per step."""
    target, draft = pair
    together = speculative_generate(target, draft, PROMPTS, 30, num_draft_tokens=4, eos_id=None)
    plain_together = generate(target, PROMPTS, 30, eos_id=None)
    for b, prompt in enumerate(PROMPTS):
        alone = speculative_generate(target, draft, [prompt], 30, num_draft_tokens=4, eos_id=None)
        assert torch.equal(together.tokens[b], alone.tokens[0])
        assert torch.equal(plain_together.tokens[b], generate(target, [prompt], 30, eos_id=None).tokens[0])


def test_rows_stop_at_eos(pair):
    target, draft = pair
    free = generate(target, PROMPTS, 16, eos_id=None)
    eos = int(free.tokens[0, 5])  # a token row 0 emits by its 6th step: call it EOS
    first_eos = [next((i for i, t in enumerate(row) if t == eos), 15) + 1 for row in free.tokens.tolist()]
    for out in (
        generate(target, PROMPTS, 16, eos_id=eos),
        speculative_generate(target, draft, PROMPTS, 16, num_draft_tokens=3, eos_id=eos),
    ):
        assert out.num_tokens.tolist() == first_eos
        for b, n in enumerate(first_eos):
            assert torch.equal(out.tokens[b, :n], free.tokens[b, :n])
            assert (out.tokens[b, n:] == -1).all()


def test_prompt_forms_and_errors(pair):
    target, draft = pair
    ids, lengths = encode_prompts(["ab", "c"])
    assert ids.tolist() == [[256, 97, 98], [256, 99, PAD_ID]] and lengths.tolist() == [3, 2]
    as_tensor = generate(target, torch.tensor([[256, 97, 98]]), 5)
    as_list = generate(target, [[256, 97, 98]], 5)
    assert torch.equal(as_tensor.tokens, as_list.tokens) and torch.equal(
        as_list.tokens, generate(target, "ab", 5).tokens
    )
    one_token = speculative_generate(target, draft, [[256]], 8, num_draft_tokens=2, eos_id=None)
    assert torch.equal(one_token.tokens, generate(target, [[256]], 8, eos_id=None).tokens)
    with pytest.raises(ValueError, match="num_draft_tokens"):
        speculative_generate(target, draft, PROMPTS, 4, num_draft_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        generate(target, PROMPTS, 4, temperature=-1.0)
    with pytest.raises(ValueError, match="positions"):
        speculative_generate(target, draft, PROMPTS, 120, num_draft_tokens=4)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(target, PROMPTS, 0)
    with pytest.raises(ValueError, match="non-empty"):
        generate(target, [[]], 4)


# ---- sampling: the output distribution is the target's ----------------------------------------


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """P-value of a chi-square goodness-of-fit test; bins expected below 5 are merged into one."""
    expected = probs.double() * counts.sum()
    if bool((counts[expected == 0] > 0).any()):
        return 0.0
    big = expected >= 5
    obs = torch.cat([counts[big].double(), counts[~big].sum().double().reshape(1)])
    exp = torch.cat([expected[big], expected[~big].sum().reshape(1)])
    obs, exp = obs[exp > 0], exp[exp > 0]
    stat = ((obs - exp) ** 2 / exp).sum()
    df = len(exp) - 1
    if df == 0:
        return 1.0  # one bin: nothing to test
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), stat / 2))


def exact_first_two(model: Transformer, prompt: list[int], temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact distributions of the first and (marginal) second sampled tokens."""
    vocab = model.config.vocab_size
    with torch.no_grad():
        first = (model(torch.tensor([prompt]))[0, -1].double() / temperature).softmax(-1)
        extended = torch.tensor([prompt + [x] for x in range(vocab)])
        second_given = (model(extended)[:, -1].double() / temperature).softmax(-1)  # (V, V)
    return first, first @ second_given


def check_first_two_tokens(num_rows: int, vocab: int, num_draft_tokens: int, temperature: float, seed: int):
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=seed, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, second = exact_first_two(target, prompt, temperature)
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.tensor([prompt]).expand(num_rows, -1)
    spec = speculative_generate(
        target,
        draft,
        prompts,
        2,
        num_draft_tokens=num_draft_tokens,
        temperature=temperature,
        generator=generator,
        eos_id=None,
    )
    plain = generate(target, prompts, 2, temperature=temperature, generator=generator, eos_id=None)
    draft_first, _ = exact_first_two(draft, prompt, temperature)
    for out in (spec, plain):
        for position, probs in ((0, first), (1, second)):
            counts = torch.bincount(out.tokens[:, position], minlength=vocab)
            assert chi_square_p_value(counts, probs) > FALSE_ALARM_RATE, (position, counts, probs)
    # Power: the draft differs enough from the target that its own distribution is rejected.
    spec_first = torch.bincount(spec.tokens[:, 0], minlength=vocab)
    assert chi_square_p_value(spec_first, draft_first) < FALSE_ALARM_RATE
    assert 0 < spec.stats["acceptance_rate"] < 1


@pytest.mark.parametrize("num_draft_tokens", [1, 3])
def test_sampling_first_two_tokens_match_target(num_draft_tokens):
    # K=1 often needs a second step for the second token: that exercises the draft re-reading
    # the last accepted token. Temperature != 1 checks both models use the scaled softmax.
    check_first_two_tokens(num_rows=4000, vocab=8, num_draft_tokens=num_draft_tokens, temperature=0.7, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("num_draft_tokens", [1, 2, 5])
def test_sampling_first_two_tokens_match_target_large(num_draft_tokens, seed):
    check_first_two_tokens(num_rows=40000, vocab=16, num_draft_tokens=num_draft_tokens, temperature=1.3, seed=seed)


def test_chi_square_helper_rejects_a_wrong_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    assert chi_square_p_value(torch.tensor([500, 300, 200]), probs) > 0.99
    assert chi_square_p_value(torch.tensor([560, 260, 180]), probs) < FALSE_ALARM_RATE
    assert math.isclose(chi_square_p_value(torch.tensor([0, 0, 1000]), torch.tensor([0.0, 0.0, 1.0])), 1.0)


def test_pretrained_dtypes():
    import specdecode as sd

    target_dtype, draft_dtype = sd.default_dtypes("cpu")
    assert draft_dtype == torch.float32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    assert target_dtype == (torch.bfloat16 if amx else torch.float32)
    assert sd.default_dtypes("cuda") == (torch.bfloat16, torch.float32)


def test_shipped_pair_loads_and_decodes_losslessly():
    """The shipped weights (no training here): they load, agree often, and greedy speculative
    decoding reproduces plain greedy decoding on them too."""
    import os

    import specdecode as sd
    from specdecode.decoder.generate import WEIGHTS_DIR

    if not os.path.exists(os.path.join(WEIGHTS_DIR, "target.pt")):
        pytest.skip("no shipped weights in this checkout")
    target, draft = sd.load_pretrained()
    assert (target.dtype, draft.dtype) == sd.default_dtypes("cpu")
    assert target.output.weight.dtype == draft.output.weight.dtype == torch.float32  # logits in fp32
    for dtype in (torch.float32, (torch.float32, torch.bfloat16)):
        pair = sd.load_pretrained(dtype=dtype)
        assert [m.dtype for m in pair] == ([dtype, dtype] if isinstance(dtype, torch.dtype) else list(dtype))
    assert target.num_parameters() > 10 * draft.num_parameters()
    assert target.training_info["acceptance_greedy"] > 0.5
    prompts = ["import os\n", "class Foo:\n    def __init__(self"]
    plain = sd.generate(target, prompts, 24, eos_id=None)
    spec = sd.speculative_generate(target, draft, prompts, 24, num_draft_tokens=4, eos_id=None)
    assert torch.equal(spec.tokens, plain.tokens)
    assert spec.stats["acceptance_rate"] > 0.3


# ---- bad input: a clear error naming the argument ---------------------------------------------

BAD_GENERATION_ARGS = [
    # (keyword overrides, exception, the argument the message must name)
    (dict(temperature=float("nan")), ValueError, "temperature"),
    (dict(temperature=True), ValueError, "temperature"),
    (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
    (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    (dict(prompts=torch.tensor([[256.0, 97.0]])), TypeError, "prompts"),
    (dict(prompts=torch.tensor([[True, False]])), TypeError, "prompts"),
    (dict(prompts=[[256, 97.5]]), TypeError, "prompts"),
    (dict(prompts=[[256, "a"]]), TypeError, "prompts"),
    (dict(prompts=[[256, VOCAB_SIZE]]), ValueError, "prompts"),
    (dict(prompts=torch.tensor([[256, -1]])), ValueError, "prompts"),
    (dict(prompts=torch.tensor([256, 97])), ValueError, "prompts"),
    (dict(prompts=torch.zeros((0, 3), dtype=torch.int64)), ValueError, "prompts"),
    (dict(prompts=[]), ValueError, "prompts"),
    (dict(generator=0), TypeError, "generator"),
    (dict(eos_id=2.0), TypeError, "eos_id"),
]


@pytest.mark.parametrize("kwargs, error, argument", BAD_GENERATION_ARGS)
@pytest.mark.parametrize("speculative", [False, True])
def test_bad_generation_arguments_name_the_argument(pair, kwargs, error, argument, speculative):
    target, draft = pair
    call = {**dict(prompts=PROMPTS[:2], max_new_tokens=4, temperature=0.5), **kwargs}
    given = {k: v.clone() for k, v in call.items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=argument):
        if speculative:
            speculative_generate(target, draft, **call)
        else:
            generate(target, **call)
    for name, before in given.items():
        assert torch.equal(call[name], before), f"{name} was modified"


@pytest.mark.parametrize(
    "kwargs, error, argument",
    [
        (dict(num_draft_tokens=2.0), TypeError, "num_draft_tokens"),
        (dict(num_draft_tokens=True), TypeError, "num_draft_tokens"),
        (dict(target=object()), TypeError, "target"),
        (dict(draft="draft"), TypeError, "draft"),
    ],
)
def test_bad_speculative_arguments_name_the_argument(pair, kwargs, error, argument):
    target, draft = pair
    with pytest.raises(error, match=argument):
        speculative_generate(**{**dict(target=target, draft=draft, prompts=PROMPTS, max_new_tokens=4), **kwargs})


def test_prompt_ids_in_range_pass_the_check(pair):
    """The vocabulary check is not off by one: the largest id and 0 are fine, and the PAD that pads
    a short prompt is not checked against a small vocabulary."""
    target, _ = pair
    out = generate(target, [[0, VOCAB_SIZE - 1]], 3, eos_id=None)
    assert out.num_tokens.tolist() == [3]
    small, _ = tiny_pair(vocab_size=8)
    ids, lengths = encode_prompts([[1, 2, 3], [4]], vocab_size=8)
    assert ids.tolist() == [[1, 2, 3], [4, PAD_ID, PAD_ID]] and lengths.tolist() == [3, 1]
    assert generate(small, [[0, 7], [7, 0]], 2, eos_id=None).num_tokens.tolist() == [2, 2]


def test_ragged_prompts_and_frozen_rows_with_a_vocabulary_smaller_than_pad():
    """PAD (258) fills a short prompt and a finished row; a model with 8 tokens has no such id, yet
    each row's greedy text equals its own run alone (padding positions are never attended)."""
    small, _ = tiny_pair(vocab_size=8)
    prompts = [[1, 2, 3], [4]]
    together = generate(small, prompts, 4, eos_id=None, temperature=0.0)
    for row, prompt in enumerate(prompts):
        alone = generate(small, [prompt], 4, eos_id=None, temperature=0.0)
        assert together.tokens[row].tolist() == alone.tokens[0].tolist()
    first = together.tokens[0, 0].item()  # a row that emits EOS early is frozen and fed PAD after it
    frozen = generate(small, prompts, 4, eos_id=first, temperature=0.0)
    assert frozen.num_tokens[0].item() == 1


# ---- the decode state keeps every cache's lengths true -----------------------------------------


@torch.no_grad()
def assert_cache_holds_committed_tokens(model, cache, state, trail):
    """``cache.lengths`` is ``lengths - trail`` (at least 0), and every position below it holds the
    K/V a fresh prefill of the row's committed tokens writes there."""
    expected_lengths = (state.lengths - trail).clamp_min(0)
    assert torch.equal(cache.lengths[: state.batch_size], expected_lengths)
    for b in range(state.batch_size):
        held = int(expected_lengths[b])
        fresh = model.new_cache(1)
        model(state.tokens[b : b + 1, :held], cache=fresh)
        for cached, recomputed in zip(cache.tensors(), fresh.tensors()):
            torch.testing.assert_close(cached[b, :held], recomputed[0, :held], rtol=0, atol=1e-10)


@torch.no_grad()
def test_speculative_steps_keep_cache_lengths_true(pair):
    """Run the speculative loop's steps by hand over ragged rows with EOS freezing some of them:
    after every commit the target's cache length is ``n - 1`` and the draft's ``n - 2``, and the
    positions below hold exactly the committed tokens' K/V (rejected drafts are beyond them)."""
    target, draft = pair
    sampling = SamplingSettings(temperature=0.0, eos_id=int(generate(target, PROMPTS, 4, eos_id=None).tokens[1, 3]))
    ids, prompt_lengths = encode_prompts(PROMPTS)
    K, width = 3, 80
    caches = [target.new_cache(len(PROMPTS), width), draft.new_cache(len(PROMPTS), width)]
    state = DecodeState.start(ids, prompt_lengths, width + K + 1, caches, trails=[1, 2])
    prefill(target, caches[0], ids)
    prefill(draft, caches[1], ids)
    rejected_some = False
    for _ in range(6):
        draft_ids, draft_probs = propose(draft, caches[1], state, K, sampling)
        out = rejection_sample(draft_ids, None, verify(target, caches[0], state, draft_ids, sampling), greedy=True)
        rejected_some |= bool((out.num_accepted < K).any())
        commit_verified_(state, out, sampling.eos_id, max_new_tokens=40)
        assert_cache_holds_committed_tokens(target, caches[0], state, trail=1)
        assert_cache_holds_committed_tokens(draft, caches[1], state, trail=2)
    assert rejected_some and not bool(state.active.all())  # rollbacks and a frozen row both ran
