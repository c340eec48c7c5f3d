"""Best-of-N and Speculative Rejection (arXiv 2410.20290) for a Hugging Face policy.

Both run one engine: the live candidates of every prompt are the rows of one dense batch over one
HF ``DynamicCache``, grouped by prompt and in candidate order. Per call::

    prefill the P prompts ONCE (one forward), repeat each prompt's KV for its n candidates
    loop:  sample one token for every live row (the prompt's temperature / top-k / top-p)
           rows that emitted EOS or reached max_new_tokens finish and leave the batch
           at a decision point (Speculative Rejection only): score the unfinished rows' partial
               responses, keep the best of each prompt (``topk_prune``) and compact the cache and
               every per-row tensor in place (``compact_hf_cache_``) -- survivors keep their KV
           one forward over the live rows
    finally: score every finished candidate; per prompt return the best.

All rows advance in lockstep, so the only dead cache slots are the prompts' left padding.

**Randomness per candidate.** Candidate ``j`` of prompt ``g`` draws its token at step ``t`` by
inverse CDF from the uniform Philox4x32-10(seed; counter ``(t, j, g, 0)``): its tokens depend
neither on the other rows in the batch nor on ``n``. So under one seed Speculative Rejection
generates, for every candidate it keeps, the tokens Best-of-N generates for it: ``alpha = 0``
returns Best-of-N's answer and any ``alpha`` returns one of Best-of-N's candidates (up to the
last-bit differences a different batch composition can make in the policy's logits).

**Decision points** (one of): ``decision_tokens=(t1, t2, ...)`` -- after every live row generated
``t_i`` tokens; or ``memory_budget=bytes`` -- before a forward after which the live rows' KV
(their real tokens x ``kv_bytes_per_token(policy)``, what a paged cache would hold) would exceed
the budget, as the paper decides. A round that would drop nobody is skipped (counted in
``stats["over_budget_steps"]``). ``alpha``: prompt ``g`` with ``m`` unfinished rows keeps
``max(1, ceil((1 - alpha) m))`` (``topk_prune``'s exact rounding).

**Rewards** (``as_reward``): an object with ``score(prompt_ids, response_ids) -> [N]``; a plain
callable on token-id lists (``TokenReward``); ``TextReward(fn, tokenizer)`` for a callable on
texts; or an HF sequence classifier (``ClassifierReward``), which re-tokenises the decoded text
with its own tokenizer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import Tensor
from transformers.cache_utils import DynamicCache

from specdecode.core import inverse_cdf_sample, num_keep_from_alpha, philox4x32
from specdecode.integrations.hf_common import SamplingConfig, cache_argument, compact_hf_cache_, eos_ids
from specdecode.ops.topk_prune import topk_prune

__all__ = [
    "best_of_n",
    "speculative_rejection",
    "BestOfNOutput",
    "TokenReward",
    "TextReward",
    "ClassifierReward",
    "as_reward",
    "kv_bytes_per_token",
]


def kv_bytes_per_token(model_or_config, dtype: torch.dtype | None = None) -> int:
    """KV-cache bytes one position of one row takes in an HF model: layers x (K, V) x KV heads x
    head dim x element size (``dtype``, else the model's parameters', else the config's, else
    float32). No cache is allocated.

    >>> kv_bytes_per_token(LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
    ...                                num_key_value_heads=2), torch.float32)  # doctest: +SKIP
    1024
    """
    config = getattr(model_or_config, "config", model_or_config)
    text = config.get_text_config(decoder=True)
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if dtype is None and isinstance(model_or_config, torch.nn.Module):
        dtype = next(model_or_config.parameters()).dtype
    if dtype is None:
        dtype = getattr(text, "dtype", None) or getattr(text, "torch_dtype", None)
        dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
    return 2 * text.num_hidden_layers * kv_heads * head_dim * dtype.itemsize


# ---------------------------------------------------------------------------------------------
# Rewards
# ---------------------------------------------------------------------------------------------


class TokenReward:
    """A reward on token ids: ``fn(prompt_ids, response_ids) -> [N]`` scores, where both are
    lists of ``N`` lists of ints (prompt without padding, response so far / final, EOS included).

    >>> TokenReward(lambda prompts, responses: [len(r) for r in responses]).score([[1]], [[5, 6]])
    tensor([2.])
    """

    def __init__(self, fn: Callable) -> None:
        self.fn = fn

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        return _as_scores(self.fn(prompt_ids, response_ids), len(response_ids))


class TextReward:
    """A reward on text: ``fn(prompts, responses) -> [N]`` scores on the texts ``tokenizer``
    decodes (special tokens skipped)."""

    def __init__(self, fn: Callable, tokenizer) -> None:
        self.fn, self.tokenizer = fn, tokenizer

    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        prompts, responses = _decode(self.tokenizer, prompt_ids), _decode(self.tokenizer, response_ids)
        return _as_scores(self.fn(prompts, responses), len(response_ids))


class ClassifierReward:
    """An HF ``AutoModelForSequenceClassification`` (one label) as a reward: prompt + response
    are decoded with the policy's ``tokenizer``, re-tokenised with the classifier's own
    ``reward_tokenizer`` and scored in one batch.

    HF sequence classifiers read the score at the last token that is not ``config.pad_token_id``
    (not at the attention mask's end), so the batch is right-padded with exactly that id; a
    classifier without a pad id scores one text at a time (correct, slower).
    """

    def __init__(self, model, reward_tokenizer, tokenizer, batch_size: int = 64) -> None:
        self.model, self.reward_tokenizer, self.tokenizer = model, reward_tokenizer, tokenizer
        self.batch_size = batch_size

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> Tensor:
        # Decoded together: decoding prompt and response apart can drop the separator between them.
        texts = _decode(self.tokenizer, [p + r for p, r in zip(prompt_ids, response_ids)])
        encoded = [self.reward_tokenizer(text, add_special_tokens=True)["input_ids"] for text in texts]
        pad_id = self.model.config.pad_token_id
        chunk = self.batch_size if pad_id is not None else 1
        device = next(self.model.parameters()).device
        scores = []
        for start in range(0, len(encoded), chunk):
            rows = encoded[start : start + chunk]
            width = max(len(row) for row in rows)
            ids = torch.tensor([row + [pad_id or 0] * (width - len(row)) for row in rows], device=device)
            mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device)
            scores.append(self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().cpu())
        return torch.cat(scores) if scores else torch.zeros(0)


def as_reward(reward, tokenizer=None, reward_tokenizer=None):
    """The reward object the engine calls: objects with ``score`` as given; an HF model becomes a
    ``ClassifierReward`` (needs both tokenizers); another callable a ``TokenReward``."""
    if hasattr(reward, "score") and not isinstance(reward, torch.nn.Module):
        return reward
    if isinstance(reward, torch.nn.Module) and hasattr(reward, "config"):
        if tokenizer is None or reward_tokenizer is None:
            raise ValueError(
                "an HF classifier reward needs tokenizer= (the policy's, to decode) and "
                "reward_tokenizer= (the classifier's own, to re-tokenise)"
            )
        return ClassifierReward(reward, reward_tokenizer, tokenizer)
    if callable(reward):
        return TokenReward(reward)
    raise TypeError(f"reward must be a callable, an object with score(), or an HF classifier; got {type(reward)}")


def _decode(tokenizer, rows: list[list[int]]) -> list[str]:
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def _as_scores(values, num_rows: int) -> Tensor:
    scores = torch.as_tensor(values, dtype=torch.float32).flatten().cpu()
    if scores.numel() != num_rows:
        raise ValueError(f"the reward returned {scores.numel()} scores for {num_rows} responses")
    return scores


# ---------------------------------------------------------------------------------------------
# Engine
# ---------------------------------------------------------------------------------------------


@dataclass
class BestOfNOutput:
    """Per prompt the best finished response and every candidate's fate (``P`` prompts, ``n``
    candidates, ``M = max_new_tokens``).

    ``sequences [P, L + W]``: the prompt as given, then the best response, padded with
    ``pad_token_id`` (``generate``'s layout)."""

    sequences: Tensor
    rewards: Tensor  # [P] float32: the best response's reward
    best_candidate: Tensor  # [P] int64: which candidate (0..n-1)
    candidate_tokens: Tensor  # [P, n, M] int64: every candidate's tokens (pruned: up to pruning), then -1
    candidate_num_tokens: Tensor  # [P, n] int64
    candidate_rewards: Tensor  # [P, n] float32: final rewards, NaN for pruned candidates
    finished: Tensor  # [P, n] bool: finished (EOS or max_new_tokens), not pruned
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DecodingSettings:
    """How every candidate is decoded (the keyword arguments of ``best_of_n``, grouped).
    ``make`` fills the defaults: a drawn seed, ``pad_token_id`` = the first EOS id."""

    n: int
    max_new_tokens: int
    sampling: SamplingConfig
    eos_token_id: int | Sequence[int] | None
    pad_token_id: int | None
    seed: int

    @classmethod
    def make(cls, n, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, seed) -> DecodingSettings:
        if n < 1 or max_new_tokens < 1:
            raise ValueError(f"n and max_new_tokens must be >= 1; got n={n}, max_new_tokens={max_new_tokens}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        seed = int(torch.randint(2**62, (1,))) if seed is None else seed
        if pad_token_id is None and eos_token_id is not None:
            pad_token_id = int(eos_ids(eos_token_id)[0])
        sampling = SamplingConfig(True, temperature, top_k, top_p)
        return cls(n, max_new_tokens, sampling, eos_token_id, pad_token_id, seed)


@dataclass(frozen=True)
class PruningSchedule:
    """When Speculative Rejection prunes, and how much: ``alpha`` with either ``decision_tokens``
    or ``memory_budget`` (bytes of live KV)."""

    alpha: Real
    decision_tokens: tuple[int, ...] | None = None
    memory_budget: int | None = None


class _CandidateBatch:
    """The live rows: per-row tensors (batch dim 0, compacted with the cache) and the archive of
    every candidate's tokens indexed by candidate id ``g * n + j``."""

    def __init__(self, policy, input_ids: Tensor, attention_mask: Tensor, settings: DecodingSettings) -> None:
        self.policy, self.n = policy, settings.n
        self.num_prompts, self.prompt_width = input_ids.shape
        self.sampling = settings.sampling
        self.eos = eos_ids(settings.eos_token_id, input_ids.device)
        self.max_new_tokens = settings.max_new_tokens
        self.seed = settings.seed
        self.vocab_size = policy.get_output_embeddings().weight.shape[0]
        self.device = input_ids.device
        self.prompt_rows = [row[mask.bool()].tolist() for row, mask in zip(input_ids, attention_mask)]
        total = self.num_prompts * self.n
        self.tokens = torch.full((total, self.max_new_tokens), -1, dtype=torch.int64, device=self.device)
        self.num_tokens = torch.zeros(total, dtype=torch.int64, device=self.device)
        self.finished = torch.zeros(total, dtype=torch.bool, device=self.device)
        self.step = 0
        self.cache = DynamicCache(config=policy.config)
        self.stats = {"forwards": 0, "tokens_generated": 0, "rounds": 0, "pruned": 0, "over_budget_steps": 0}
        self.stats["peak_live_kv_tokens"] = 0
        self._prefill(input_ids, attention_mask)

    @torch.no_grad()
    def _prefill(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        """One forward over the P prompts; each prompt's KV and last logits repeated for its n rows."""
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        logits = self._forward(input_ids, attention_mask, positions)
        self.cache.batch_repeat_interleave(self.n)
        self.mask = attention_mask.repeat_interleave(self.n, 0)
        self.num_live = self.mask.sum(1)
        self.logits = logits.repeat_interleave(self.n, 0)
        self.cand = torch.arange(self.num_prompts * self.n, device=self.device)

    def _forward(self, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        self.stats["forwards"] += 1
        inputs = {"input_ids": tokens, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        return self.policy(**inputs, **{cache_argument(self.policy): self.cache}).logits[:, -1]

    @property
    def size(self) -> int:
        return self.cand.numel()

    def live_per_prompt(self) -> list[int]:
        return torch.bincount(self.cand // self.n, minlength=self.num_prompts).tolist()

    def sample(self) -> Tensor:
        """One token per live row, appended to its candidate; returns the ``[B]`` finished mask."""
        probs = self.sampling.probs(self.logits, self.vocab_size).double()
        token = inverse_cdf_sample(probs, self._uniforms())
        self.tokens[self.cand, self.step] = token
        self.num_tokens[self.cand] = self.step + 1
        self.last_token = token
        self.step += 1
        self.stats["tokens_generated"] += self.size
        done = torch.full_like(token, self.step >= self.max_new_tokens, dtype=torch.bool)
        if self.eos is not None:
            done |= torch.isin(token, self.eos)
        self.finished[self.cand[done]] = True
        return done

    def _uniforms(self) -> Tensor:
        """``[B]`` float64 uniforms in [0, 1): Philox(seed; counter (step, j, g, 0)), 53 bits."""
        prompt, j = self.cand // self.n, self.cand % self.n
        seed = torch.tensor(self.seed, dtype=torch.int64)
        word0, word1, _, _ = philox4x32(seed, self.step, j.cpu(), prompt.cpu(), 0)
        return (((word0 >> 5) * 2**26 + (word1 >> 6)).double() * 2.0**-53).to(self.device)

    def keep_(self, kept: Tensor) -> None:
        """Keep live rows ``kept`` (ascending): the cache and every per-row tensor, in place."""
        views = compact_hf_cache_(self.cache, kept, extra=[self.mask, self.num_live, self.cand, self.last_token])
        self.mask, self.num_live, self.cand, self.last_token = views

    def live_kv_tokens_after_forward(self) -> int:
        return int(self.num_live.sum()) + self.size

    @torch.no_grad()
    def forward(self) -> None:
        """Feed every live row's last token; store its next-token logits."""
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.size, 1)], 1)
        self.logits = self._forward(self.last_token[:, None], self.mask, self.num_live[:, None])
        self.num_live = self.num_live + 1
        self.stats["peak_live_kv_tokens"] = max(self.stats["peak_live_kv_tokens"], int(self.num_live.sum()))

    def responses(self, cands: Tensor) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt and response token lists of candidates ``cands``."""
        tokens, lengths = self.tokens[cands].tolist(), self.num_tokens[cands].tolist()
        prompts = [self.prompt_rows[c // self.n] for c in cands.tolist()]
        return prompts, [row[:length] for row, length in zip(tokens, lengths)]


def _prune_round(batch: _CandidateBatch, reward, alpha: Real) -> None:
    """Score the live rows' partial responses, keep the best ``ceil((1 - alpha) m)`` per prompt."""
    rewards = reward.score(*batch.responses(batch.cand)).to(batch.device)
    result = topk_prune(rewards, batch.live_per_prompt(), alpha)
    batch.stats["rounds"] += 1
    batch.stats["pruned"] += batch.size - result.kept_indices.numel()
    batch.keep_(result.kept_indices)


def _prunes_someone(batch: _CandidateBatch, alpha: Real) -> bool:
    sizes = batch.live_per_prompt()
    return sum(num_keep_from_alpha(sizes, alpha)) < sum(sizes)


def _is_decision_point(batch: _CandidateBatch, schedule: PruningSchedule, kv_bytes: int) -> bool:
    if schedule.decision_tokens is not None:
        return batch.step in schedule.decision_tokens
    over = batch.live_kv_tokens_after_forward() * kv_bytes > schedule.memory_budget
    if over and not _prunes_someone(batch, schedule.alpha):
        batch.stats["over_budget_steps"] += 1
        return False
    return over


def _run(policy, reward, input_ids, attention_mask, settings: DecodingSettings, schedule: PruningSchedule | None):
    start = time.perf_counter()
    batch = _CandidateBatch(policy, input_ids, attention_mask, settings)
    kv_bytes = kv_bytes_per_token(policy)
    while True:
        done = batch.sample()
        if bool(done.all()):
            break
        if bool(done.any()):
            batch.keep_((~done).nonzero().flatten())
        if schedule is not None and _is_decision_point(batch, schedule, kv_bytes):
            _prune_round(batch, reward, schedule.alpha)
        batch.forward()
    output = _select(batch, reward, input_ids, settings.pad_token_id)
    batch.stats["peak_live_kv_bytes"] = batch.stats.pop("peak_live_kv_tokens") * kv_bytes
    output.stats.update(batch.stats)
    output.stats["seconds"] = time.perf_counter() - start
    return output


def _select(batch: _CandidateBatch, reward, input_ids: Tensor, pad_token_id: int | None) -> BestOfNOutput:
    """Score every finished candidate; per prompt the best (ties: lower index; pruned: NaN, never chosen)."""
    total, P, n = batch.num_prompts * batch.n, batch.num_prompts, batch.n
    rewards = torch.full((total,), float("nan"))
    finished = batch.finished.nonzero().flatten()
    if finished.numel():
        rewards[finished.cpu()] = reward.score(*batch.responses(finished))
    best_cpu = topk_prune(rewards, [n] * P, num_keep=[1] * P).kept_indices
    best = best_cpu.to(batch.device)
    num_tokens = batch.num_tokens[best]
    width = int(num_tokens.max())
    slots = torch.arange(width, device=batch.device)
    pad = 0 if pad_token_id is None else pad_token_id
    responses = torch.where(slots < num_tokens[:, None], batch.tokens[best, :width], pad)
    return BestOfNOutput(
        sequences=torch.cat([input_ids, responses], 1),
        rewards=rewards[best_cpu],
        best_candidate=best % n,
        candidate_tokens=batch.tokens.view(P, n, -1),
        candidate_num_tokens=batch.num_tokens.view(P, n),
        candidate_rewards=rewards.view(P, n),
        finished=batch.finished.view(P, n),
    )


def _prompt_mask(input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [P, L] with L > 0; got shape {list(input_ids.shape)}")
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(torch.int64)
    if attention_mask.shape != input_ids.shape or bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("attention_mask must match input_ids and prompts must be left-padded")
    return attention_mask


@torch.no_grad()
def best_of_n(
    policy,
    reward,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    tokenizer=None,
    reward_tokenizer=None,
) -> BestOfNOutput:
    """Best-of-N for an HF causal-LM ``policy``: ``n`` sampled responses per prompt, the one with
    the highest final reward returned.

    Args:
        policy: an HF causal LM (full attention).
        reward: see ``as_reward``: a callable on token ids, ``TextReward``, an object with
            ``score``, or an HF sequence classifier (then ``tokenizer`` = the policy's and
            ``reward_tokenizer`` = the classifier's).
        input_ids, attention_mask: ``[P, L]`` left-padded prompts (``generate``'s inputs).
        n: candidates per prompt. max_new_tokens: per candidate.
        temperature, top_k, top_p: as in ``generate(do_sample=True, ...)``.
        eos_token_id: ends a candidate (``None``: all run ``max_new_tokens``); pad_token_id pads
            ``sequences`` (default: the first EOS id, else 0).
        seed: the candidates' random stream (see the module docstring); ``None`` draws one.

    Returns:
        ``BestOfNOutput``; ``stats``: forwards, tokens_generated, peak_live_kv_bytes, seconds.

    >>> out = best_of_n(policy, lambda p, r: [len(set(x)) for x in r], ids, n=8, max_new_tokens=16)  # doctest: +SKIP
    >>> out.sequences.shape, out.best_candidate  # doctest: +SKIP
    """
    settings = DecodingSettings.make(n, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, seed)
    attention_mask = _prompt_mask(input_ids, attention_mask)
    scorer = as_reward(reward, tokenizer, reward_tokenizer)
    return _run(policy, scorer, input_ids, attention_mask, settings, None)


@torch.no_grad()
def speculative_rejection(
    policy,
    reward,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    n: int,
    alpha: Real,
    max_new_tokens: int,
    decision_tokens: Sequence[int] | None = None,
    memory_budget: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    tokenizer=None,
    reward_tokenizer=None,
) -> BestOfNOutput:
    """Speculative Rejection (fast Best-of-N) for an HF ``policy``: like ``best_of_n``, but at
    each decision point the unfinished candidates are scored on their partial responses and only
    the best ``max(1, ceil((1 - alpha) m))`` of each prompt's ``m`` keep decoding.

    Args (beyond ``best_of_n``'s):
        alpha: rejection rate in ``[0, 1]`` (0 = Best-of-N).
        decision_tokens: prune after every live row generated each of these many tokens; or
        memory_budget: bytes of live KV (``kv_bytes_per_token(policy)`` per real token) -- prune
            before a forward that would exceed it. Exactly one of the two.

    Returns:
        ``BestOfNOutput``; ``stats`` adds rounds, pruned, over_budget_steps.

    >>> out = speculative_rejection(policy, reward, ids, n=16, alpha=0.5, max_new_tokens=32,
    ...                             decision_tokens=(8, 16))  # doctest: +SKIP
    """
    if (decision_tokens is None) == (memory_budget is None):
        raise ValueError("give exactly one of decision_tokens (a schedule) and memory_budget (bytes)")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
    schedule = PruningSchedule(alpha, None if decision_tokens is None else tuple(decision_tokens), memory_budget)
    settings = DecodingSettings.make(n, max_new_tokens, temperature, top_k, top_p, eos_token_id, pad_token_id, seed)
    attention_mask = _prompt_mask(input_ids, attention_mask)
    scorer = as_reward(reward, tokenizer, reward_tokenizer)
    return _run(policy, scorer, input_ids, attention_mask, settings, schedule)
