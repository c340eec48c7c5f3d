"""Best-of-N and Speculative Rejection for many prompts in one batch.

Speculative Rejection is from "Fast Best-of-N Decoding via Speculative Rejection" (Sun et al.,
arXiv 2410.20290): decode many candidates, and at decision points stop those whose partial
reward ranks low, so the compute goes to the promising ones.

Both run on one engine, ``CandidateBatch``: the live candidates of every prompt are the rows of
one dense batch over one static KV cache (``specdecode.decoder.model``), grouped by prompt and in
candidate order. Per prompt::

    prefill the prompt ONCE (one forward over the P prompts) and copy its KV to its n rows
    loop:  sample one token for every live row            (plain decoding, temperature T;
               with a draft: one speculative step, see "Speculative decoding inside")
           rows that emitted EOS or reached max_new_tokens are *finished*: archived (tokens,
               length, running log-likelihood) and retired -- compacted out of the batch
           at a decision point (Speculative Rejection only): score the unfinished rows with the
               reward, keep the best of each prompt (``topk_prune``), compact the KV cache AND
               every per-row tensor (token buffer, lengths, next-token logits, ...) with
               ``compact_kv_cache_`` so the survivors keep decoding as a dense batch
           one forward over the live rows
    finally: score every finished row; per prompt return the best.

Nothing is re-prefilled and no text is re-tokenised: a survivor's cache rows move, its
positions do not (the authors' released implementation instead re-prefills every survivor from
its decoded text after each round).

**Randomness, per candidate.** Candidate ``j`` of prompt ``g`` draws its token at step ``t`` by
inverse CDF from a uniform ``U(seed, g, j, t)``: Philox4x32-10 (counter-based, as in
``specdecode.reference.rejection_sample``) on the counter ``(t, j, g, 0)``, two output words making a
53-bit float64. ``seed`` is one 63-bit integer drawn from ``generator`` per call. So a candidate's
tokens depend neither on the other rows in the batch nor on ``n``:

- under the same generator state, Speculative Rejection generates, for every candidate it keeps,
  exactly the tokens Best-of-N generates for it: ``alpha=0`` returns Best-of-N's answer, and any
  ``alpha`` returns one of Best-of-N's candidates (tested);
- Best-of-N's ``n`` candidates are the first ``n`` of its ``2n`` (common random numbers), so its
  reward can only grow with ``n`` and comparisons across ``n`` and ``alpha`` carry no extra noise.

(A row's logits can differ in the last bit with the batch around it -- CPU matmul blocking --
so rewards agree to float rounding, and a draw could differ only if its uniform fell within that
rounding of a CDF step.)

**Decision points** (Speculative Rejection), one of:

- ``decision_tokens=(t1, t2, ...)``: after every live row has generated ``t_i`` tokens (rows
  advance in lockstep, one token per step);
- ``memory_budget=bytes``: before a forward whose live KV would exceed the budget, i.e. when
  ``sum over live rows of (positions held after the forward) * kv_bytes_per_token(model)`` is
  over ``memory_budget`` -- the paper decides by memory (decode until it is about to run out).
  This counts the KV the live rows need (what a paged cache would hold); the static cache
  here is preallocated for the initial batch. The initial batch must fit. One pruning round per
  decision; if the survivors still do not fit, the next step is a decision point again. When a
  round would drop nobody (``alpha = 0``, or ``ceil((1 - alpha) * m) = m`` for every prompt's
  ``m`` live rows, e.g. one survivor left), the rows are not scored and decode on over the
  budget (counted in ``stats["over_budget_steps"]``) -- a real cache would run out of memory.

**alpha** is the rejection rate in ``[0, 1]``: at each decision point, prompt ``g`` with ``m_g``
unfinished live rows keeps ``max(1, ceil((1 - alpha) * m_g))`` of them (exact decimal rounding,
``topk_prune``'s rule: alpha = 0.7 of 10 keeps 3), so ``alpha = 0`` prunes nothing and
``alpha = 1`` keeps one per prompt. Finished rows are not in the pool: they cost no compute, take
no keep slot, and stay eligible for the final argmax (the authors' released implementation ranks
them together with the unfinished ones; here keeping them is free).

**Speculative decoding inside** (``draft=``, ``num_draft_tokens=K``; ``SpeculativeCandidateBatch``).
Every live candidate decodes speculatively: per step the draft proposes K tokens for all live rows
(``generate.propose``), the model verifies them in one forward of ``K+1`` tokens per row, and
``rejection_sample`` accepts a prefix per row; a row commits its accepted drafts and the emitted
token (cut after EOS) -- rows advance by different amounts. A row with room for ``r`` tokens
before ``max_new_tokens`` offers only ``min(K, r - 1)`` drafts (the rest ``-1``). Prefill,
retirement, scoring, ``topk_prune`` and the final choice are the plain engine's; compaction moves
*both* models' caches (the draft's trails by two tokens) with every per-row tensor in the same
``compact_kv_cache_`` call.

- *Randomness, per candidate.* Draft draw ``i`` of candidate ``(g, j)`` in a step that starts
  after ``t`` new tokens is an inverse-CDF draw with the uniform of Philox on ``(t, j, g, 1 + i)``
  (``draft_uniforms``); verification uses ``rejection_sample``'s own stream with the per-row seed
  ``verification_seeds(seed, g, j)`` (Philox on ``(0, j, g, 2^32 - 1)``) and ``offset = t``. ``t``
  grows with every commit, so no number is used twice. A candidate's tokens therefore depend on
  ``seed`` and ``(g, j)`` only -- not on the other rows, ``n``, pruning or the decision points --
  so Speculative Rejection's candidates are Best-of-N's (with the same draft and generator),
  pruned ones cut at their decision point (tested). They are not the plain run's tokens (other
  random numbers) but have the same distribution: rejection sampling is lossless whatever number
  of drafts a row offers, and cutting a commit after EOS keeps a prefix of a target-distributed
  sequence (chi-square and two-sample tests).
- *Decision tokens: "after tau tokens".* Rows do not wait for each other: a fast row runs past
  ``tau``. Decision ``tau`` is taken once the *slowest* live row has ``tau`` tokens, and it ranks
  exactly what the plain run ranks at ``tau``: every candidate still generating when it made its
  ``tau``-th token -- the live rows, and those that finished (EOS or ``max_new_tokens``) after
  ``tau`` in the meantime (``rounds[i]["finished_in_pool"]``) -- each scored on its first ``tau``
  response tokens (PAD after; the running log-likelihood of that prefix, kept per decision point
  while decoding). A pruned candidate's response is cut to those ``tau`` tokens; what it made
  beyond is counted in ``stats["tokens_past_pruning"]`` (in ``tokens_generated``). Several
  decision points can fall due in one step; they are taken in order. So greedy decoding is
  token-identical to the plain run (same candidates, rounds and answer; tested) -- up to the
  float rounding noted above, as ``speculative_generate`` -- and under sampling the selected
  response has the plain run's distribution.
- *Memory budget.* Rows hold different lengths; the live KV of the next step is counted per row
  from its actual length ``n``: ``n + K`` positions in the model's cache (the verify writes up to
  ``n + K - 1``) and ``n + K - 1`` in the draft's, each at its model's ``kv_bytes_per_token``
  (``live_kv_bytes``). A decision when that would exceed the budget, scoring the live rows as
  they are. So decisions come at other lengths than in the plain run (rows differ in length, and
  the draft's KV and the K verify positions count): the candidates are distributed as in the
  plain run, the selection is not the same procedure.
- *Cost* (``stats``): ``forwards``/``model_tokens`` are the model's (prefill + ``K + 1`` tokens
  per live row per step), ``draft_forwards``/``draft_model_tokens`` the draft's, ``steps``,
  ``accepted_hist``, ``mean_accepted_length``, ``acceptance_rate``, ``tokens_past_pruning``.

**Ties and NaN** (pruning and the final choice): the higher reward wins; equal rewards go to the
lower candidate index; NaN ranks below every number (``topk_prune``'s order). Rewards are
compared in float32.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from numbers import Real

import torch
from torch import Tensor

from specdecode.core import check_int, inverse_cdf_sample, is_int, num_keep_from_alpha, philox4x32
from specdecode.decoder.generate import _stop_early, decode_one_token, propose
from specdecode.decoder.model import KVCache, Transformer
from specdecode.decoder.rewards import LogLikelihoodReward, Reward, RewardModel, score  # noqa: F401  (RewardModel: re-exported)
from specdecode.decoder.state import (
    DecodeState,
    Prompts,
    SamplingSettings,
    check_model,
    encode_prompts,
    response_tokens,
)
from specdecode.decoder.tokenizer import EOS_ID, PAD_ID, tokenizer
from specdecode.ops.compact_kv import compact_kv_cache_
from specdecode.ops.rejection_sample import rejection_sample
from specdecode.ops.topk_prune import topk_prune

__all__ = [
    "best_of_n",
    "speculative_rejection",
    "BestOfNOutput",
    "CandidateBatch",
    "SpeculativeCandidateBatch",
    "Speculation",
    "PruningSchedule",
    "candidate_uniforms",
    "kv_bytes_per_token",
    "max_candidates_for_budget",
    "LogLikelihoodReward",
    "RewardModel",
]

LIVE, FINISHED, PRUNED = 0, 1, 2
NOT_PRUNED = -1  # pruned_at_round of a candidate that finished


def kv_bytes_per_token(model: Transformer) -> int:
    """KV-cache bytes one position of one row occupies: layers x (K, V) x kv_heads x head_dim x
    element size, from the model's config and dtype (no cache allocated)."""
    c = model.config
    return 2 * c.n_layers * c.n_kv_heads * c.head_dim * model.kv_dtype.itemsize


def max_candidates_for_budget(model: Transformer, prompts: Prompts, memory_budget: int, min_new_tokens: int = 8) -> int:
    """The largest ``n`` whose initial batch (every prompt's ``n`` candidates holding the prompt
    plus ``min_new_tokens`` positions) fits ``memory_budget`` bytes of KV: the paper's initial
    batch, "as large as memory allows" (its code requires room for 8 new tokens)."""
    _, prompt_lengths = encode_prompts(prompts)
    per_candidate = (int(prompt_lengths.sum()) + min_new_tokens * len(prompt_lengths)) * kv_bytes_per_token(model)
    return memory_budget // per_candidate


@dataclass
class BestOfNOutput:
    """Per prompt, the best finished response, and every candidate's fate.

    ``P`` prompts, ``n`` candidates each, ``M = max_new_tokens``."""

    tokens: Tensor  # [P, M] int64: the best response's new tokens, then -1
    num_tokens: Tensor  # [P] int64: its length (EOS included if emitted)
    rewards: Tensor  # [P] float32: its reward
    best_candidate: Tensor  # [P] int64: which candidate (0..n-1) it was
    candidate_tokens: Tensor  # [P, n, M] int64: every candidate's tokens (pruned: up to pruning), then -1
    candidate_num_tokens: Tensor  # [P, n] int64
    candidate_rewards: Tensor  # [P, n] float32: final reward of finished candidates, NaN for pruned ones
    finished: Tensor  # [P, n] bool: finished (EOS or max_new_tokens) rather than pruned
    pruned_at_round: Tensor  # [P, n] int64: the decision round (0-based) that pruned it, -1 if finished
    stats: dict = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Each prompt's best response as text (specials dropped)."""
        return [tokenizer.decode(row[:k]) for row, k in zip(self.tokens.tolist(), self.num_tokens.tolist())]


class CandidateBatch:
    """The live candidates of ``P`` prompts x ``n`` as one dense decoding batch (the engine).

    Per-row state, all with the batch in dim 0 and compacted together with the KV cache:
    ``state`` (a ``DecodeState``: ``tokens [B, S]`` prompt then response, PAD after; ``lengths
    [B]``; ``prompt_lengths [B]``; the cache, whose ``lengths`` trail by one: the last sampled
    token is fed by the next ``forward``), ``cand [B]`` (candidate id ``g*n + j``, ascending: rows
    stay grouped by prompt), ``logits [B, V]`` (the next token's logits), ``logprob_sum [B]``
    (running response log-likelihood at temperature 1). Finished and pruned rows leave the batch
    and are archived by candidate id in ``final_tokens``/``final_lengths``/``final_logprob``/``status``.
    """

    def __init__(
        self,
        model: Transformer,
        ids: Tensor,
        prompt_lengths: Tensor,
        n: int,
        max_new_tokens: int,
        sampling: SamplingSettings,
        seed: int,
    ):
        self.model, self.n_per_prompt, self.max_new_tokens = model, n, max_new_tokens
        self.sampling, self.seed = sampling, seed
        self._uniforms, self._uniforms_from = None, 0  # a block of steps at a time: bounded memory
        self.ids, self.prompt_lengths = ids, prompt_lengths
        self.num_prompts = ids.shape[0]
        total = self.num_prompts * n
        device = ids.device
        self.state = self._start_state(ids.repeat_interleave(n, 0), prompt_lengths.repeat_interleave(n))
        self.cache = self.state.caches[0]
        self.cand = torch.arange(total, device=device)
        self.logits = None
        self.logprob_sum = torch.zeros(total, dtype=torch.float64, device=device)
        self.final_tokens = torch.full_like(self.state.tokens, PAD_ID)
        self.final_lengths = self.state.prompt_lengths.clone()
        self.final_logprob = torch.zeros_like(self.logprob_sum)
        self.status = torch.full((total,), LIVE, dtype=torch.int64, device=device)
        self.pruned_round = torch.full((total,), NOT_PRUNED, dtype=torch.int64, device=device)
        self.step = 0  # tokens generated by every live row so far
        self.counts = {"forwards": 0, "model_tokens": 0, "tokens_generated": 0}

    OWN_ROW_TENSORS = ("cand", "logits", "logprob_sum")  # per-row state beyond the DecodeState's

    def _start_state(self, ids: Tensor, prompt_lengths: Tensor) -> DecodeState:
        """The rows' state over one cache of the model; its lengths trail by one (the last sampled
        token is fed by the next ``forward``)."""
        width = ids.shape[1] + self.max_new_tokens
        return DecodeState.start(ids, prompt_lengths, width, [self.model.new_cache(ids.shape[0], width)], [1])

    @property
    def size(self) -> int:
        return self.cand.shape[0]

    def live_per_prompt(self) -> list[int]:
        return torch.bincount(self.cand // self.n_per_prompt, minlength=self.num_prompts).tolist()

    def live_kv_tokens(self) -> int:
        """Positions the live rows hold once the next forward has written its token."""
        return int(self.state.lengths.sum())

    def live_kv_bytes(self) -> int:
        """KV bytes the live rows hold once the next forward has written its token (``live_kv_bytes``)."""
        return live_kv_bytes(self.model, self.live_kv_tokens(), self.size)

    def _count_forward(self, tokens: Tensor) -> None:
        self.counts["forwards"] += 1
        self.counts["model_tokens"] += tokens.numel()

    @torch.no_grad()
    def prefill(self) -> None:
        """One forward over the ``P`` prompts (not ``P*n`` rows), then each prompt's KV and
        next-token logits copied to its ``n`` rows."""
        self._count_forward(self.ids)
        logits = self._prefill_prompts(self.model, self.cache)
        self.state.sync_cache_lengths_()
        self.logits = logits.repeat_interleave(self.n_per_prompt, 0)

    def _prefill_prompts(self, model: Transformer, cache: KVCache) -> Tensor:
        """One forward of ``model`` over the ``P`` prompts into rows ``0..P-1`` of ``cache``, whose KV is
        then copied to each prompt's ``n`` rows; the ``[P, V]`` next-token logits."""
        rows = torch.arange(self.num_prompts, device=self.ids.device)
        logits = model(self.ids, torch.zeros_like(self.prompt_lengths), cache)[rows, self.prompt_lengths - 1]
        # Rows 0..P-1 hold the prompts; one gather-then-scatter copies them to rows g*n..g*n+n-1
        # (the gather reads every source before any destination is written).
        cache.copy_rows_(rows.repeat_interleave(self.n_per_prompt), self.cand, length=self.ids.shape[1])
        return logits

    def sample(self) -> Tensor:
        """Sample one token per live row, append it; return the ``[B]`` mask of rows now finished."""
        probs = self.sampling.probs(self.logits)
        if self.sampling.greedy:
            token = probs.argmax(-1)
        else:
            token = inverse_cdf_sample(probs.double(), self._uniforms_at_step()[self.cand])
        self.logprob_sum += torch.log_softmax(self.logits.float(), -1)[self.state.rows, token].double()
        self.state.commit_(token[:, None], torch.ones_like(token))
        self.step += 1
        self.counts["tokens_generated"] += self.size
        finished = self.state.num_new() >= self.max_new_tokens
        if self.sampling.eos_id is not None:
            finished |= token == self.sampling.eos_id
        return finished

    def _uniforms_at_step(self, block: int = 32) -> Tensor:
        """``[P*n]`` uniforms of every candidate for the current step, drawn ``block`` steps at a time."""
        if self._uniforms is None or self.step >= self._uniforms_from + block:
            self._uniforms_from = self.step
            steps = min(block, self.max_new_tokens - self.step)
            self._uniforms = (
                candidate_uniforms(self.seed, self.num_prompts, self.n_per_prompt, steps, self.step)
                .flatten(0, 1)
                .to(self.cand.device)
            )
        return self._uniforms[:, self.step - self._uniforms_from]

    def advance(self) -> Tensor:
        """One decoding step of every live row (here: ``sample``); the ``[B]`` mask of rows now finished."""
        return self.sample()

    @torch.no_grad()
    def forward(self) -> None:
        """Feed every live row's last sampled token (at its cache length); store the next-token logits."""
        tokens = self.state.last_tokens()
        self._count_forward(tokens)
        self.logits = decode_one_token(self.model, self.cache, tokens)

    def archive(self, rows: Tensor, status: int, round_index: int = NOT_PRUNED) -> None:
        """Record rows (finished or pruned) by candidate id."""
        cand = self.cand[rows]
        self.final_tokens[cand] = self.state.tokens[rows]
        self.final_lengths[cand] = self.state.lengths[rows]
        self.final_logprob[cand] = self.logprob_sum[rows]
        self.status[cand] = status
        self.pruned_round[cand] = round_index

    def compact_(self, kept: Tensor) -> None:
        """Keep rows ``kept`` (ascending) as rows ``0..len(kept)-1``: the KV cache (and its lengths)
        and every per-row tensor, in place, in one ``compact_kv_cache_`` call; the state becomes
        the narrowed views."""
        state_rows = self.state.row_tensors()
        own_rows = [getattr(self, name) for name in self.OWN_ROW_TENSORS]
        live_caches = [  # every model's cache; forwards read rows 0..B-1
            t[: self.size] for cache in self.state.caches for t in [*cache.tensors(), cache.lengths]
        ]
        views = compact_kv_cache_(state_rows + own_rows + live_caches, kept, batch_dim=0)
        self.state.set_row_tensors(views[: len(state_rows)])
        for name, view in zip(self.OWN_ROW_TENSORS, views[len(state_rows) : len(state_rows) + len(own_rows)]):
            setattr(self, name, view)

    def retire(self, finished: Tensor) -> None:
        self.archive(finished.nonzero().flatten(), FINISHED)
        self.compact_((~finished).nonzero().flatten())

    def decision_pool(self, tau_index: int | None = None) -> DecisionPool:
        """The candidates a decision point ranks: here the live rows as they are (rows advance in
        lockstep, so at ``decision_tokens[tau_index]`` every one holds exactly that many tokens)."""
        return DecisionPool(
            self.cand,
            self.state.tokens,
            self.state.lengths,
            self.state.prompt_lengths,
            self.logprob_sum,
            self.state.rows,
        )

    def apply_pruning(self, pool: DecisionPool, keep: Tensor, round_index: int, tau: int | None) -> None:
        """Archive the pool's rows not in ``keep [M]`` as pruned at ``round_index``; compact the rest."""
        self.archive(pool.rows[~keep], PRUNED, round_index)
        self.compact_(pool.rows[keep])


@dataclass
class DecisionPool:
    """The ``M`` candidates one decision point ranks, ascending by candidate id (grouped by prompt):
    ``cand [M]``, ``tokens [M, S]``, ``lengths [M]`` (prompt + the response prefix scored),
    ``prompt_lengths [M]``, ``logprob_sum [M]`` (of that prefix, temperature 1), ``rows [M]`` (the
    live row holding the candidate, ``-1`` for one already finished and archived)."""

    cand: Tensor
    tokens: Tensor
    lengths: Tensor
    prompt_lengths: Tensor
    logprob_sum: Tensor
    rows: Tensor


def candidate_uniforms(seed: int, num_prompts: int, n: int, num_steps: int, first_step: int = 0) -> Tensor:
    """``[P, n, T]`` float64 uniforms in ``[0, 1)`` for steps ``first_step .. first_step+T-1``: entry
    ``(g, j, t)`` is Philox4x32-10 keyed by ``seed`` on the counter ``(t, j, g, 0)``, words 0 and 1
    joined into 53 bits -- independent of ``n`` beyond ``j`` and of the batch."""
    g = torch.arange(num_prompts, dtype=torch.int64)[:, None, None]
    j = torch.arange(n, dtype=torch.int64)[None, :, None]
    t = torch.arange(first_step, first_step + num_steps, dtype=torch.int64)[None, None, :]
    return _philox_uniforms(seed, t, j, g, PLAIN_STREAM)


# Word 3 of the Philox counter separates a candidate's streams: its plain draws, its draft draws
# (one stream per draft slot), and the seed of its verification draws (``rejection_sample``'s own
# Philox stream, keyed by that seed).
PLAIN_STREAM, DRAFT_STREAM, VERIFY_SEED_STREAM = 0, 1, 2**32 - 1


def _philox_uniforms(seed: int, t, j, g, stream) -> Tensor:
    """float64 uniforms in ``[0, 1)`` (broadcast over the counter words): Philox4x32-10 keyed by
    ``seed`` on the counter ``(t, j, g, stream)``, words 0 and 1 joined into 53 bits."""
    word0, word1, _, _ = philox4x32(torch.tensor(seed, dtype=torch.int64), t, j, g, stream)
    return ((word0 >> 5) * 2**26 + (word1 >> 6)).double() * 2.0**-53


def draft_uniforms(seed: int, g: Tensor, j: Tensor, t: Tensor, num_draft_tokens: int) -> Tensor:
    """``[B, K]`` float64 uniforms of the draft's K draws for candidates ``(g, j)`` (``[B]`` each) whose
    step starts after ``t [B]`` new tokens: entry ``(b, i)`` is Philox on ``(t, j, g, DRAFT_STREAM + i)``.
    ``t`` grows every step (a live row commits at least one token), so no number is used twice."""
    slots = torch.arange(DRAFT_STREAM, DRAFT_STREAM + num_draft_tokens, dtype=torch.int64, device=t.device)
    return _philox_uniforms(seed, t[:, None], j[:, None], g[:, None], slots[None, :])


def verification_seeds(seed: int, g: Tensor, j: Tensor) -> Tensor:
    """``[B]`` int64 per-candidate seeds in ``[0, 2^62)`` for ``rejection_sample`` (whose offset is the
    row's new-token count): Philox on ``(0, j, g, VERIFY_SEED_STREAM)``, word 0 and 30 bits of word 1."""
    word0, word1, _, _ = philox4x32(torch.tensor(seed, dtype=torch.int64), 0, j, g, VERIFY_SEED_STREAM)
    return word0 + ((word1 & (2**30 - 1)) << 32)


@dataclass(frozen=True)
class Speculation:
    """Speculative decoding inside Best-of-N / Speculative Rejection (module docstring): ``draft``
    proposes ``num_draft_tokens`` (K) tokens for every live row per step and the decoding model
    verifies them with ``rejection_sample``. Checked on construction."""

    draft: Transformer
    num_draft_tokens: int = 4

    def __post_init__(self):
        check_model("draft", self.draft)
        check_int("num_draft_tokens", self.num_draft_tokens, minimum=1)

    def check_pair(self, model: Transformer) -> None:
        """The draft must share the model's vocabulary."""
        if self.draft.config.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"draft and model vocabularies differ: {self.draft.config.vocab_size} vs {model.config.vocab_size}"
            )


def live_kv_bytes(model: Transformer, committed: int, rows: int, speculation: Speculation | None = None) -> int:
    """KV bytes that ``rows`` live rows holding ``committed`` positions in all need during the next step.

    Plain decoding: ``committed`` positions of the model (``committed`` already counts the sampled
    token the next forward writes). Speculative: a row with ``n`` committed tokens has the
    model's verify write positions up to ``n+K-1`` (``n+K`` positions) and the draft up to
    ``n+K-2`` (``n+K-1``): both models' KV, counted per row from its actual length."""
    if speculation is None:
        return committed * kv_bytes_per_token(model)
    K = speculation.num_draft_tokens
    return (committed + rows * K) * kv_bytes_per_token(model) + (committed + rows * (K - 1)) * kv_bytes_per_token(
        speculation.draft
    )


@dataclass(frozen=True)
class PresetUniformSampling(SamplingSettings):
    """``SamplingSettings`` whose ``i``-th ``sample`` call draws column ``i`` of ``uniforms [B, K]`` by
    inverse CDF (greedy: the argmax, as ever) -- so ``generate.propose``, which calls ``sample``
    once per draft slot in order, draws every candidate's drafts from its own Philox numbers."""

    uniforms: Tensor | None = None
    columns: Iterator[int] = field(default_factory=itertools.count)

    def sample(self, probs: Tensor) -> Tensor:
        if self.greedy:
            return probs.argmax(-1)
        return inverse_cdf_sample(probs.double(), self.uniforms[:, next(self.columns)])


class SpeculativeCandidateBatch(CandidateBatch):
    """``CandidateBatch`` in which every live row decodes speculatively (module docstring, "Speculative
    decoding inside").

    One ``advance`` is one step for all live rows: ``generate.propose`` (the draft's K tokens per
    row, drawn from the candidate's own uniforms), one forward of the model over ``[last token,
    x_1..x_K]`` (``generate.verify``'s, keeping the logits for the running log-likelihood), and
    ``rejection_sample`` with per-candidate seeds and the row's new-token count as offset. A row
    commits its accepted drafts and emitted token, cut after EOS (and never past
    ``max_new_tokens``). Extra per-row state, compacted together with the rest: the draft's KV
    cache (``state.caches[1]``, trailing by two) and ``logprob_below [B, D]``, the response
    log-likelihood of the first ``decision_tokens[d]`` tokens (the running reward at decision
    ``d``, for rows that ran past it)."""

    OWN_ROW_TENSORS = ("cand", "logprob_sum", "logprob_below")  # no stored logits: each verify computes them

    def __init__(
        self,
        model: Transformer,
        ids: Tensor,
        prompt_lengths: Tensor,
        n: int,
        max_new_tokens: int,
        sampling: SamplingSettings,
        seed: int,
        speculation: Speculation,
        decision_tokens: Sequence[int] = (),
    ):
        self.speculation = speculation
        self.draft, self.K = speculation.draft, speculation.num_draft_tokens
        super().__init__(model, ids, prompt_lengths, n, max_new_tokens, sampling, seed)
        self.draft_cache = self.state.caches[1]
        device = ids.device
        every = torch.arange(self.num_prompts * n, device=device)
        self.seeds = verification_seeds(seed, every // n, every % n)  # [P*n], by candidate id
        self.cand_prompt_lengths = prompt_lengths.repeat_interleave(n)  # [P*n], by candidate id
        self.taus = torch.tensor(decision_tokens, dtype=torch.int64, device=device)
        self.logprob_below = torch.zeros(self.size, len(self.taus), dtype=torch.float64, device=device)
        self.final_logprob_below = torch.zeros_like(self.logprob_below)
        self.counts.update({"steps": 0, "draft_forwards": 0, "draft_model_tokens": 0})
        self.accepted_hist = torch.zeros(self.K + 1, dtype=torch.int64, device=device)
        self.discarded_tokens = torch.zeros((), dtype=torch.int64, device=device)
        self.committed = torch.zeros((), dtype=torch.int64, device=device)
        self.proposed = torch.zeros((), dtype=torch.int64, device=device)  # drafts offered (not -1)

    def _start_state(self, ids: Tensor, prompt_lengths: Tensor) -> DecodeState:
        """Rows over the model's cache (trailing by one) and the draft's (by two); the buffer holds a
        live row's K+1 emitted tokens past ``max_new_tokens - 1``, the caches its verify positions."""
        width = ids.shape[1] + self.max_new_tokens + self.K
        caches = [m.new_cache(ids.shape[0], width - 1) for m in (self.model, self.draft)]
        return DecodeState.start(ids, prompt_lengths, width, caches, trails=[1, 2])

    def live_kv_bytes(self) -> int:
        """KV bytes of both models the live rows hold while the next step runs (``live_kv_bytes``)."""
        return live_kv_bytes(self.model, int(self.state.lengths.sum()), self.size, self.speculation)

    def forward(self) -> None:
        """Nothing: the next ``advance`` feeds the rows (its verify forward reads the last token)."""

    @torch.no_grad()
    def prefill(self) -> None:
        """Each model reads the ``P`` prompts once and its KV is copied to their rows (the prompts'
        last logits are not kept: the first verify computes them again)."""
        self._count_forward(self.ids)
        self._prefill_prompts(self.model, self.cache)
        self.counts["draft_forwards"] += 1
        self.counts["draft_model_tokens"] += self.ids.numel()
        self._prefill_prompts(self.draft, self.draft_cache)
        self.state.sync_cache_lengths_()

    @torch.no_grad()
    def advance(self) -> Tensor:
        """One speculative step of every live row; the ``[B]`` mask of rows now finished.

        A row with room for ``r`` more tokens before ``max_new_tokens`` offers ``min(K, r - 1)``
        drafts (the rest are ``-1``: ``rejection_sample`` accepts nothing there and emits from the
        target), so it never emits past it. Every step verifies all K slots even when no row
        needs them: the emitted token's uniform is ``rejection_sample``'s slot K, so a narrower
        step would make a row's draws depend on the other rows. ``step`` becomes the fewest new
        tokens of a live row (the one host sync)."""
        state, sampling, K = self.state, self.sampling, self.K
        num_new = state.num_new()
        room = self.max_new_tokens - num_new
        g, j = self.cand // self.n_per_prompt, self.cand % self.n_per_prompt
        uniforms = None if sampling.greedy else draft_uniforms(self.seed, g, j, num_new, K)
        draws = PresetUniformSampling(sampling.temperature, None, sampling.eos_id, uniforms=uniforms)
        draft_ids, draft_probs = propose(self.draft, self.draft_cache, state, K, draws)
        logits = self.model(torch.cat([state.last_tokens()[:, None], draft_ids], 1), cache=self.cache)
        num_drafts = (room - 1).clamp(0, K)
        slots = torch.arange(K, device=draft_ids.device)
        out = rejection_sample(
            torch.where(slots < num_drafts[:, None], draft_ids, -1),
            None if sampling.greedy else draft_probs,
            sampling.probs(logits),
            greedy=sampling.greedy,
            seed=self.seeds[self.cand],
            offset=num_new,
        )
        emitted = out.num_accepted + 1
        counts, hit_eos = _stop_early(out.token_ids, torch.minimum(emitted, room), sampling.eos_id)
        self._add_logprobs(logits, out.token_ids, counts, num_new)
        state.commit_(out.token_ids, counts)
        self._count_step(counts, out.num_accepted, num_drafts, emitted - counts)
        num_new = state.num_new()
        finished = hit_eos | (num_new >= self.max_new_tokens)
        self.step = int(torch.where(finished, self.max_new_tokens, num_new).min())
        return finished

    def _add_logprobs(self, logits: Tensor, tokens: Tensor, counts: Tensor, num_new: Tensor) -> None:
        """Add each row's committed tokens' log-probabilities (temperature 1) to ``logprob_sum``, and
        to ``logprob_below[:, d]`` those of new-token index ``< decision_tokens[d]``: ``logits [B, K+1,
        V]`` predict ``tokens [B, K+1]`` slot by slot; the first ``counts [B]`` count; the row had
        ``num_new [B]`` new tokens before."""
        logprobs = torch.log_softmax(logits.float(), -1).gather(-1, tokens.clamp_min(0)[..., None])[..., 0]
        slots = torch.arange(tokens.shape[1], device=tokens.device)
        committed = torch.where(slots < counts[:, None], logprobs, 0.0).double()  # [B, K+1]
        self.logprob_sum += committed.sum(1)
        below = (num_new[:, None] + slots)[:, :, None] < self.taus  # [B, K+1, D]
        self.logprob_below += (committed[:, :, None] * below).sum(1)

    def archive(self, rows: Tensor, status: int, round_index: int = NOT_PRUNED) -> None:
        super().archive(rows, status, round_index)
        self.final_logprob_below[self.cand[rows]] = self.logprob_below[rows]

    def compact_(self, kept: Tensor) -> None:
        super().compact_(kept)
        self.step = int(self.state.num_new().min()) if self.size else self.max_new_tokens

    def decision_pool(self, tau_index: int | None = None) -> DecisionPool:
        """At ``decision_tokens[tau_index] = tau``: every candidate still generating when it made its
        ``tau``-th token -- the live rows (all at ``tau`` tokens or beyond) and the archived ones that
        finished after ``tau`` -- each with its first ``tau`` response tokens (PAD after) and their
        log-likelihood: what the plain run scores at ``tau``. For a memory decision (``None``): the
        live rows as they are."""
        if tau_index is None:
            return super().decision_pool()
        tau = int(self.taus[tau_index])
        plen = self.cand_prompt_lengths
        late = ((self.status == FINISHED) & (self.final_lengths - plen > tau)).nonzero().flatten()
        cand = torch.cat([self.cand, late])
        order = cand.argsort()
        rows = torch.cat([self.state.rows, torch.full_like(late, -1)])[order]
        tokens = torch.cat([self.state.tokens, self.final_tokens[late]])[order]
        lengths = plen[cand[order]] + tau
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        tokens = torch.where(positions < lengths[:, None], tokens, PAD_ID)
        logprob = torch.cat([self.logprob_below[:, tau_index], self.final_logprob_below[late, tau_index]])[order]
        return DecisionPool(cand[order], tokens, lengths, plen[cand[order]], logprob, rows)

    def apply_pruning(self, pool: DecisionPool, keep: Tensor, round_index: int, tau: int | None) -> None:
        """Archive the pool's pruned live rows, mark its pruned archived ones; each pruned
        candidate's response is cut to the ``tau`` tokens it was judged on (the tokens it made
        beyond count in ``stats["tokens_past_pruning"]``). Compact the kept live rows."""
        live = pool.rows >= 0
        self.archive(pool.rows[live & ~keep], PRUNED, round_index)
        archived = pool.cand[~live & ~keep]
        self.status[archived] = PRUNED
        self.pruned_round[archived] = round_index
        if tau is not None:
            pruned = pool.cand[~keep]
            self.final_lengths[pruned] = self.cand_prompt_lengths[pruned] + tau
        self.compact_(pool.rows[live & keep])

    def _count_step(self, counts: Tensor, num_accepted: Tensor, num_drafts: Tensor, discarded: Tensor) -> None:
        rows, K = self.size, self.K
        self.counts["steps"] += 1
        self.counts["forwards"] += 1
        self.counts["model_tokens"] += rows * (K + 1)
        self.counts["draft_forwards"] += K
        self.counts["draft_model_tokens"] += rows * (K + 1)  # 2 tokens, then K-1 forwards of one
        self.committed += counts.sum()  # tokens_generated, kept on the device
        self.accepted_hist.index_add_(0, num_accepted, torch.ones_like(num_accepted))
        self.proposed += num_drafts.sum()
        self.discarded_tokens += discarded.sum()

    def speculation_stats(self) -> dict:
        """``tokens_generated`` (tokens committed by all candidates, pruned ones' tokens past their
        decision point included), ``tokens_past_pruning`` (those: generated, then cut when the
        candidate was pruned), ``num_draft_tokens``, ``accepted_hist`` (K+1 counts: row-steps that
        accepted 0..K drafts), ``mean_accepted_length`` (tokens emitted per row-step, accepted
        drafts + 1), ``acceptance_rate`` (accepted / drafts offered: fewer than K near
        ``max_new_tokens``), ``discarded_tokens`` (emitted after an EOS, not committed)."""
        hist = self.accepted_hist.tolist()
        row_steps = max(1, sum(hist))
        accepted = sum(a * c for a, c in enumerate(hist))
        kept = int((self.final_lengths - self.cand_prompt_lengths).sum())  # every candidate archived by now
        return {
            "tokens_generated": int(self.committed),
            "tokens_past_pruning": int(self.committed) - kept,
            "num_draft_tokens": self.K,
            "accepted_hist": hist,
            "mean_accepted_length": (accepted + row_steps) / row_steps,
            "acceptance_rate": accepted / max(1, int(self.proposed)),
            "discarded_tokens": int(self.discarded_tokens),
        }


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def best_of_n(
    model: Transformer,
    reward: Reward,
    prompts: Prompts,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = EOS_ID,
    reward_batch_size: int | None = 256,
    progress: Callable[[int, int], None] | None = None,
    *,
    draft: Transformer | None = None,
    num_draft_tokens: int = 4,
) -> BestOfNOutput:
    """Best-of-N for many prompts at once: ``n`` candidates per prompt decoded to the end (EOS or
    ``max_new_tokens``) in one dense batch, each scored by ``reward``; the best per prompt wins.

    Each prompt is prefilled once and its KV copied to its ``n`` rows; finished rows leave the
    batch (compacted out) so the rest decode as a smaller dense batch. Same engine, sampling and
    tie rules as ``speculative_rejection`` (module docstring), which with ``alpha=0`` returns
    exactly this.

    Args:
        model: a ``specdecode.decoder.model.Transformer``.
        reward: a callable ``(tokens [B, L], lengths [B]) -> [B]`` float (higher is better), which
            may also take ``prompt_lengths``; see ``specdecode.decoder.rewards``.
        prompts: strings, token lists or a ``[P, L]`` integer tensor (``specdecode.decoder.state.encode_prompts``).
        n: candidates per prompt (an int >= 1).
        max_new_tokens: new tokens per candidate at most; a candidate that reaches it is finished.
        temperature: sampling temperature (> 0; 0 is greedy, which makes all ``n`` candidates equal).
        generator: the one seed of the per-candidate uniforms is drawn from it (the global RNG if None).
        eos_id: a candidate finishes after emitting it (``None``: only at ``max_new_tokens``).
        reward_batch_size: rows per reward call (``None``: all at once).
        progress: called after every decoding step with ``(tokens generated per live row, live rows)``
            (for progress bars; the run ends at ``max_new_tokens`` or when no row is live). With
            ``draft``: the fewest tokens any live row has.
        draft: a draft model (same vocabulary) to decode every candidate speculatively (module
            docstring, "Speculative decoding inside"): same output distribution; greedy: the
            same tokens. ``None``: plain decoding.
        num_draft_tokens: K, the drafts proposed per live row per step (an int >= 1; with ``draft``).

    Returns:
        ``BestOfNOutput``; ``stats`` has ``tokens_generated`` (all candidates), ``forwards``,
        ``model_tokens`` (tokens through the model: prefill + decode), ``prefill_tokens``,
        ``reward_calls``, ``reward_rows``, ``seconds`` (with ``reward_seconds``), ``tokens_per_second``,
        ``peak_kv_bytes`` (largest live KV), ``kv_bytes_per_token``, ``over_budget_steps``,
        ``rounds`` (empty here). With ``draft`` (the counts of ``forwards`` and ``model_tokens`` are
        the model's: prefill + one verify of ``K+1`` tokens per row per step): ``steps``,
        ``draft_forwards``, ``draft_model_tokens``, ``accepted_hist``, ``mean_accepted_length``,
        ``acceptance_rate``, ``tokens_past_pruning``, ``discarded_tokens``, ``num_draft_tokens``
        (``SpeculativeCandidateBatch.speculation_stats``).
    """
    return _run(
        model,
        reward,
        prompts,
        n,
        max_new_tokens,
        sampling=SamplingSettings(temperature, generator, eos_id),
        schedule=None,
        reward_batch_size=reward_batch_size,
        progress=progress,
        speculation=None if draft is None else Speculation(draft, num_draft_tokens),
    )


def speculative_rejection(
    model: Transformer,
    reward: Reward,
    prompts: Prompts,
    n: int,
    alpha: Real,
    max_new_tokens: int,
    *,
    decision_tokens: Sequence[int] | None = None,
    memory_budget: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = EOS_ID,
    reward_batch_size: int | None = 256,
    progress: Callable[[int, int], None] | None = None,
    draft: Transformer | None = None,
    num_draft_tokens: int = 4,
) -> BestOfNOutput:
    """Speculative Rejection (fast Best-of-N) for many prompts at once.

    Starts like ``best_of_n`` (``n`` candidates per prompt, prompt prefilled once); at each
    decision point scores the unfinished candidates by ``reward`` on their partial responses,
    keeps the best ``max(1, ceil((1 - alpha) * m_g))`` of each prompt's ``m_g`` (``topk_prune``),
    and compacts the KV cache and per-row state so the survivors keep decoding densely. Finished
    candidates are retired as they finish and stay eligible. Returns the best finished response
    per prompt. Semantics of alpha, decision points, rounding and ties: the module docstring.

    Args (beyond ``best_of_n``'s):
        alpha: rejection rate in ``[0, 1]`` (0 prunes nothing: exactly ``best_of_n``).
        decision_tokens: strictly increasing ints in ``[1, max_new_tokens)``: decide after that
            many new tokens per row.
        memory_budget: bytes of live KV (``kv_bytes_per_token(model)`` per position per row):
            decide whenever the next forward would exceed it. Give exactly one of the two.
        draft, num_draft_tokens: decode every live candidate speculatively (as ``best_of_n``):
            a decision point is taken when the slowest row reaches it, scoring every candidate
            on its first ``tau`` tokens; the memory budget counts both models' KV of the next
            step (module docstring).

    Returns:
        ``BestOfNOutput``. ``stats["rounds"]``: one dict per decision point with ``tokens_per_row``,
        ``live_kv_bytes``, ``live_per_prompt`` (the candidates ranked), ``finished_in_pool`` (of
        those, already finished: only with a draft, see the module docstring), ``kept_per_prompt``,
        ``rewards`` (per prompt, the partial rewards of the ranked candidates, in candidate order),
        ``best_partial`` (per prompt).
    """
    return _run(
        model,
        reward,
        prompts,
        n,
        max_new_tokens,
        sampling=SamplingSettings(temperature, generator, eos_id),
        schedule=PruningSchedule(alpha, decision_tokens, memory_budget),
        reward_batch_size=reward_batch_size,
        progress=progress,
        speculation=None if draft is None else Speculation(draft, num_draft_tokens),
    )


@dataclass(frozen=True)
class PruningSchedule:
    """When Speculative Rejection prunes, and how much; checked on construction (module docstring).

    ``alpha``: the rejection rate in ``[0, 1]``. Exactly one of ``decision_tokens`` (strictly
    increasing ints >= 1: decide after that many new tokens per row; kept as a tuple) and
    ``memory_budget`` (bytes of live KV: decide whenever the next forward would exceed it)."""

    alpha: Real
    decision_tokens: tuple[int, ...] | None = None
    memory_budget: int | None = None

    def __post_init__(self):
        alpha = self.alpha
        if alpha is None or isinstance(alpha, bool) or not isinstance(alpha, Real):
            raise TypeError(f"alpha must be a real number in [0, 1], got {alpha!r}")
        if not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if (self.decision_tokens is None) == (self.memory_budget is None):
            raise ValueError(
                "give exactly one of decision_tokens (a schedule of tokens per row) and memory_budget (bytes)"
            )
        if self.memory_budget is not None and (not is_int(self.memory_budget) or self.memory_budget <= 0):
            raise ValueError(f"memory_budget must be a positive int (bytes), got {self.memory_budget!r}")
        if self.decision_tokens is not None:
            object.__setattr__(self, "decision_tokens", _checked_decision_tokens(self.decision_tokens))

    def check_within(self, max_new_tokens: int) -> None:
        """Every decision point must come before the last token."""
        for i, tau in enumerate(self.decision_tokens or ()):
            if not 1 <= tau < max_new_tokens:
                raise ValueError(f"decision_tokens[{i}] = {tau} is outside [1, max_new_tokens = {max_new_tokens})")

    def over_budget(self, live_kv_bytes: int) -> bool:
        return self.memory_budget is not None and live_kv_bytes > self.memory_budget

    def prunes_any(self, group_sizes: list[int]) -> bool:
        """Whether a round would drop anyone from groups of these sizes (decided unscored)."""
        return num_keep_from_alpha(group_sizes, self.alpha) != group_sizes


def _checked_decision_tokens(decision_tokens) -> tuple[int, ...]:
    if isinstance(decision_tokens, (str, bytes)) or not isinstance(decision_tokens, Sequence):
        raise TypeError(f"decision_tokens must be a sequence of ints, got {type(decision_tokens).__name__}")
    taus = tuple(decision_tokens)
    if not taus:
        raise ValueError("decision_tokens is empty: give at least one decision point")
    for i, tau in enumerate(taus):
        check_int(f"decision_tokens[{i}]", tau)
        if i and tau <= taus[i - 1]:
            raise ValueError(f"decision_tokens must be strictly increasing: {taus[i - 1]} then {tau}")
    return taus


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


def _check_run_args(model, reward, n, max_new_tokens, reward_batch_size) -> None:
    check_model("model", model)
    if not callable(reward):
        raise TypeError(f"reward must be callable (tokens, lengths) -> [B] scores, got {type(reward).__name__}")
    check_int("n", n, minimum=1)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if reward_batch_size is not None:
        check_int("reward_batch_size", reward_batch_size, minimum=1)


def _check_initial_batch_fits(
    model: Transformer, prompt_lengths: Tensor, n: int, budget: int, speculation: Speculation | None
) -> None:
    """The first step's live KV (``live_kv_bytes``) must fit: plain decoding holds the prompts and one
    token per row, speculative decoding the prompts and the first verify's K positions (both models)."""
    num_prompts, prompt_tokens = len(prompt_lengths), int(prompt_lengths.sum())
    committed = prompt_tokens if speculation is not None else prompt_tokens + num_prompts  # per candidate index

    def needed(candidates: int) -> int:
        return live_kv_bytes(model, committed * candidates, num_prompts * candidates, speculation)

    initial = needed(n)
    if initial > budget:
        fits = next(m for m in range(n, -1, -1) if m == 0 or needed(m) <= budget)
        what = f"the first {speculation.num_draft_tokens}-draft step" if speculation is not None else "one token"
        raise ValueError(
            f"memory_budget = {budget} bytes cannot hold the initial batch: {num_prompts} prompts x n = {n} "
            f"candidates need {initial} bytes of KV for the prompts and {what} "
            f"({kv_bytes_per_token(model)} bytes per token); n <= {fits} fits"
        )


class _RewardScorer:
    """Scores rows with the reward -- or, for the log-likelihood of the decoding model itself,
    reads it from the running sums -- and counts calls, rows and seconds."""

    def __init__(self, reward: Reward, model: Transformer, batch_size: int | None):
        self.reward, self.batch_size = reward, batch_size
        self.running = isinstance(reward, LogLikelihoodReward) and reward.model is model and reward.running_sums
        self.stats = {"reward_seconds": 0.0, "reward_calls": 0, "reward_rows": 0}

    def __call__(self, tokens: Tensor, lengths: Tensor, prompt_lengths: Tensor, logprob_sum: Tensor) -> Tensor:
        """``[B]`` rewards of rows ``tokens [B, S]`` (``lengths``, ``prompt_lengths``, ``logprob_sum``: ``[B]``)."""
        start = time.perf_counter()
        if self.running:
            values = LogLikelihoodReward.from_running_sums(logprob_sum, lengths - prompt_lengths)
        else:
            values = score(self.reward, tokens, lengths, prompt_lengths, self.batch_size)
            self.stats["reward_calls"] += 1
        self.stats["reward_rows"] += tokens.shape[0]
        self.stats["reward_seconds"] += time.perf_counter() - start
        return values


@torch.no_grad()
def _run(
    model: Transformer,
    reward: Reward,
    prompts: Prompts,
    n: int,
    max_new_tokens: int,
    *,
    sampling: SamplingSettings,
    schedule: PruningSchedule | None,
    reward_batch_size: int | None,
    progress: Callable[[int, int], None] | None,
    speculation: Speculation | None = None,
) -> BestOfNOutput:
    """Best-of-N (``schedule=None``) or Speculative Rejection, plain or with ``speculation``: the module
    docstring's loop."""
    _check_run_args(model, reward, n, max_new_tokens, reward_batch_size)
    if schedule is not None:
        schedule.check_within(max_new_tokens)
    if speculation is not None:
        speculation.check_pair(model)
    device = model.output.weight.device
    ids, prompt_lengths = encode_prompts(prompts, device, model.config.vocab_size)
    P, width = ids.shape
    _check_fits(model, speculation, width, max_new_tokens)
    if schedule is not None and schedule.memory_budget is not None:
        _check_initial_batch_fits(model, prompt_lengths, n, schedule.memory_budget, speculation)
    start = time.perf_counter()
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=sampling.generator))
    if speculation is None:
        batch = CandidateBatch(model, ids, prompt_lengths, n, max_new_tokens, sampling, seed)
    else:
        taus = schedule.decision_tokens or () if schedule is not None else ()
        batch = SpeculativeCandidateBatch(
            model, ids, prompt_lengths, n, max_new_tokens, sampling, seed, speculation, taus
        )
    scorer = _RewardScorer(reward, model, reward_batch_size)
    batch.prefill()
    rounds: list[dict] = []
    pending = list(enumerate(schedule.decision_tokens or ())) if schedule is not None else []
    peak_kv = batch.live_kv_bytes()
    over_budget_steps = 0
    while True:
        finished = batch.advance()
        if bool(finished.any()):
            batch.retire(finished)
        if progress is not None:
            progress(batch.step, batch.size)
        # A decision point is due once every live row has reached it (plain rows reach it together;
        # speculative rows run ahead of the slowest one and are scored on their first tau tokens).
        while pending and (batch.size == 0 or pending[0][1] <= batch.step):
            tau_index, tau = pending.pop(0)
            record = _prune_round(batch, schedule.alpha, len(rounds), scorer, batch.live_kv_bytes(), tau_index, tau)
            if record is not None:  # None: no candidate was still generating at tau
                rounds.append(record)
        if batch.size == 0:
            break
        live_kv = batch.live_kv_bytes()
        if schedule is not None and schedule.over_budget(live_kv):
            if not schedule.prunes_any(batch.live_per_prompt()):
                over_budget_steps += 1  # nothing to prune at this alpha: decode on over the budget
            else:
                rounds.append(_prune_round(batch, schedule.alpha, len(rounds), scorer, live_kv))
                live_kv = batch.live_kv_bytes()
        peak_kv = max(peak_kv, live_kv)
        batch.forward()
    out = _select(batch, scorer)
    seconds = time.perf_counter() - start
    counts = {**batch.counts, **(batch.speculation_stats() if speculation is not None else {})}
    out.stats = {
        **counts,
        "prefill_forwards": 1,
        "prefill_tokens": ids.numel(),
        "candidates": P * n,
        **scorer.stats,
        "seconds": seconds,
        "tokens_per_second": counts["tokens_generated"] / seconds,
        "kv_bytes_per_token": kv_bytes_per_token(model),
        "peak_kv_bytes": peak_kv,
        "reward_from_running_logprobs": scorer.running,
        "over_budget_steps": over_budget_steps,
        "rounds": rounds,
    }
    return out


def _check_fits(model: Transformer, speculation: Speculation | None, width: int, max_new_tokens: int) -> None:
    """The longest prompt and ``max_new_tokens`` (plus K verify positions when speculative) must fit
    every model's positions."""
    needed = width + max_new_tokens + (speculation.num_draft_tokens - 1 if speculation is not None else 0)
    models = [("model", model)] + ([("draft", speculation.draft)] if speculation is not None else [])
    for name, m in models:
        if needed > m.config.max_seq_len:
            slack = f" + num_draft_tokens - 1 ({speculation.num_draft_tokens - 1})" if speculation is not None else ""
            raise ValueError(
                f"longest prompt ({width}) + max_new_tokens ({max_new_tokens}){slack} exceeds the {name}'s "
                f"max_seq_len {m.config.max_seq_len}"
            )


def _prune_round(
    batch: CandidateBatch,
    alpha: Real,
    round_index: int,
    scorer: _RewardScorer,
    live_kv_bytes: int,
    tau_index: int | None = None,
    tau: int | None = None,
) -> dict | None:
    """Score the decision pool (at ``decision_tokens[tau_index] = tau``, or the live rows as they are
    for a memory decision), keep the best of each prompt, archive the rest as pruned."""
    pool = batch.decision_pool(tau_index)
    if pool.cand.numel() == 0:
        return None
    sizes = torch.bincount(pool.cand // batch.n_per_prompt, minlength=batch.num_prompts).tolist()
    values = scorer(pool.tokens, pool.lengths, pool.prompt_lengths, pool.logprob_sum)
    result = topk_prune(values, sizes, alpha)
    tokens_per_row = batch.step if tau is None else tau
    batch.apply_pruning(pool, result.keep_mask, round_index, tau)
    per_prompt = values.split(sizes)
    return {
        "round": round_index,
        "tokens_per_row": tokens_per_row,
        "live_kv_bytes": live_kv_bytes,
        "live_per_prompt": sizes,
        "finished_in_pool": int((pool.rows < 0).sum()),
        "kept_per_prompt": result.kept_group_sizes.tolist(),
        "rewards": [v.tolist() for v in per_prompt],
        "best_partial": [float(v.max()) if v.numel() else float("nan") for v in per_prompt],
    }


def _select(batch: CandidateBatch, scorer: _RewardScorer) -> BestOfNOutput:
    """Score every finished candidate; per prompt keep the best (``topk_prune`` with one slot)."""
    P, n, max_new_tokens = batch.num_prompts, batch.n_per_prompt, batch.max_new_tokens
    done = (batch.status == FINISHED).nonzero().flatten()  # ascending: grouped by prompt
    plens = batch.prompt_lengths.repeat_interleave(n)
    values = scorer(batch.final_tokens[done], batch.final_lengths[done], plens[done], batch.final_logprob[done])
    sizes = torch.bincount(done // n, minlength=P).tolist()
    best = done[topk_prune(values, sizes, num_keep=[1] * P).kept_indices]  # every prompt has one finished
    candidate_rewards = torch.full((P * n,), float("nan"), device=values.device)
    candidate_rewards[done] = values
    tokens, num_tokens = response_tokens(batch.final_tokens, plens, batch.final_lengths - plens, max_new_tokens)
    return BestOfNOutput(
        tokens=tokens[best],
        num_tokens=num_tokens[best],
        rewards=candidate_rewards[best],
        best_candidate=best % n,
        candidate_tokens=tokens.view(P, n, max_new_tokens),
        candidate_num_tokens=num_tokens.view(P, n),
        candidate_rewards=candidate_rewards.view(P, n),
        finished=(batch.status == FINISHED).view(P, n),
        pruned_at_round=batch.pruned_round.view(P, n),
    )
