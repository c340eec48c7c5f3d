"""Best-of-N and Speculative Rejection (arXiv 2410.20290) over a ``vllm.LLM``.

vLLM schedules, batches and caches; this module decides which candidates keep generating. Per call::

    segment 0: every prompt as ONE request with SamplingParams(n=n, max_tokens=first stop, seed)
    at a decision point (Speculative Rejection only): score the unfinished candidates' partial
        responses with the reward, keep the best of each prompt (``sd.topk_prune``, one call for
        all prompts), drop the rest
    next segment: every survivor as a new request whose prompt is prompt + partial response
        (``n=1``, its own seed); vLLM's prefix cache still holds the KV of those tokens, so only
        the last, partly filled KV block is computed again
    finally: score every finished candidate; per prompt return the best.

**Nothing is re-prefilled** (with vLLM's prefix caching, on by default in V1): a continuation request
of ``L`` tokens finds ``floor((L - 1) / B) * B`` of them in the cache (``B`` = the engine's KV block
size; vLLM caches whole blocks and always computes a request's last token). ``stats["prefix_cache"]``
reports vLLM's per-request ``num_cached_tokens`` summed over the continuation requests, that bound,
and -- when the engine logs stats (``LLM(..., disable_log_stats=False)``) -- vLLM's own counters
``vllm:prefix_cache_queries`` / ``vllm:prefix_cache_hits`` over the whole call. On CPU vLLM's
default block is 128 tokens, more than a short partial response: pass ``block_size=32`` (its
attention takes multiples of 32) to ``LLM`` to see the reuse on short runs.

**Seeds.** ``seed`` (an int; ``None`` draws one, then runs do not reproduce) gives prompt ``g`` the
seed ``s_g`` (Philox4x32-10 of ``seed`` on the counter ``(0, 0, g, 0)``, 62 bits); vLLM gives sample
``j`` of that request the seed ``s_g + j``. Continuation ``r`` (1, 2, ...) of candidate ``j`` of
prompt ``g`` has the seed of Philox on ``(r, j, g, 1)``. vLLM samples a seeded request from its
own ``torch.Generator``, so a candidate's tokens do not depend on the other requests in the batch
(tested): ``best_of_n`` and ``speculative_rejection`` under one ``seed`` generate the same first
segment, and every candidate's first ``decision_tokens[0]`` tokens are Best-of-N's. After a decision
a survivor continues with a fresh seed, so its later tokens are a different sample from the same
distribution (vLLM cannot resume a generator mid-stream).

**Decision points.** Candidates advance in lockstep: one segment ends for every request at the
same number of new tokens. One of:

- ``decision_tokens=(t1, t2, ...)``: after ``t_i`` new tokens;
- ``memory_budget=bytes``: the paper's rule, as in ``specdecode.decoder.best_of_n``: decide at the
  first token count ``t`` at which the live candidates' KV would exceed the budget, i.e. the
  smallest ``t`` with ``sum over live candidates of (prompt length + t) * kv_bytes_per_token(llm)
  > memory_budget`` (``kv_bytes_per_token``: layers x (K, V) x KV heads x head dim x KV-cache
  element size, from the model config). Each candidate's positions are counted in full, as a
  cache without sharing holds them (vLLM's prefix cache shares the prompt's blocks, so its real use
  is lower). The initial batch (every prompt's ``n`` candidates with one new token) must fit. If
  the survivors still do not fit, the next token is a decision point again.

A decision point at which no prompt could lose a candidate (every prompt's ``m`` unfinished
candidates has ``max(1, ceil((1 - alpha) m)) = m``, which then holds for any smaller ``m`` too) is
*skipped*: the requests are not interrupted (``stats["skipped_decisions"]``). So ``alpha = 0`` runs
exactly ``best_of_n``'s requests and returns its candidates; in memory mode the candidates then
decode on over the budget, as the reference decoder does.

**alpha** in ``[0, 1]``: at a decision, prompt ``g`` with ``m_g`` unfinished candidates keeps the
best ``max(1, ceil((1 - alpha) m_g))`` of them (``topk_prune``'s exact rounding; ties to the lower
candidate index, NaN last). **Finished candidates** (EOS / a stop token, or the model's length
limit, before a decision) are not ranked there: they take no keep slot, cost nothing more, and are
scored with the rest at the end (the reference decoder's rule).

**Rewards**: a callable on token ids ``fn(prompt_ids, response_ids) -> [N]`` (lists of lists of
ints; ``reward_input="tokens"``, the default), on texts ``fn(prompts, responses) -> [N]``
(``reward_input="text"``: decoded with the engine's tokenizer, special tokens skipped), or any
object of ``specdecode.integrations.hf_best_of_n`` (``TokenReward``, ``TextReward``,
``ClassifierReward``, something with ``score``). Higher is better.

Example (the engine's log stats on, a block size smaller than the partial responses)::

    from vllm import LLM
    from specdecode.integrations.vllm_best_of_n import speculative_rejection

    llm = LLM(model=path, block_size=32, disable_log_stats=False)
    out = speculative_rejection(
        llm, lambda prompts, responses: [len(set(r)) for r in responses], ["Once upon a time"],
        n=16, alpha=0.5, max_new_tokens=128, decision_tokens=(32, 64), seed=0,
    )
    out.texts()[0], out.rewards[0], out.stats["prefix_cache"]["continuation_hit_rate"]
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, Literal

import torch

from specdecode.core import check_int, is_int, num_keep_from_alpha, philox4x32
from specdecode.decoder.best_of_n import BestOfNOutput, PruningSchedule
from specdecode.integrations.hf_best_of_n import TextReward, as_reward
from specdecode.integrations.hf_best_of_n import kv_bytes_per_token as hf_kv_bytes_per_token
from specdecode.ops.topk_prune import topk_prune

__all__ = [
    "best_of_n",
    "speculative_rejection",
    "VLLMBestOfNOutput",
    "kv_bytes_per_token",
    "prefix_cache_counters",
    "prompt_seed",
    "continuation_seed",
]

NO_TOKEN = -1
LIVE, FINISHED, PRUNED = 0, 1, 2
NOT_PRUNED = -1
SEED_BITS = 62  # vLLM adds the sample index to a request's seed: stay well inside int64
# SamplingParams fields that keep their meaning when a candidate is continued as a new request.
# (Not allowed: stop strings and penalties over the output, min_tokens, logprobs: they would restart
# at every segment.)
ALLOWED_SAMPLING_KWARGS = ("top_k", "top_p", "min_p", "ignore_eos", "stop_token_ids")
PREFIX_QUERIES, PREFIX_HITS = "vllm:prefix_cache_queries", "vllm:prefix_cache_hits"


@dataclass
class VLLMBestOfNOutput(BestOfNOutput):
    """The reference decoder's ``BestOfNOutput`` (same fields; ``P`` prompts, ``n`` candidates,
    ``M = max_new_tokens``), with the texts decoded by the engine's tokenizer.

    ``tokens [P, M]`` best response then -1; ``num_tokens [P]``; ``rewards [P]``; ``best_candidate
    [P]``; ``candidate_tokens [P, n, M]`` (pruned: up to their decision point); ``candidate_num_tokens
    [P, n]``; ``candidate_rewards [P, n]`` (final rewards, NaN for pruned); ``finished [P, n]``;
    ``pruned_at_round [P, n]`` (-1 if finished); ``stats`` (``speculative_rejection``)."""

    response_texts: list[str] = field(default_factory=list)

    def texts(self) -> list[str]:
        """Each prompt's best response as text (the engine's tokenizer, special tokens skipped)."""
        return list(self.response_texts)


# ---------------------------------------------------------------------------------------------
# Engine facts
# ---------------------------------------------------------------------------------------------


def kv_bytes_per_token(llm) -> int:
    """KV-cache bytes one position of one sequence takes in ``llm``'s model: layers x (K, V) x KV
    heads x head dim x the KV cache's element size (``cache_dtype``; ``"auto"`` = the model's dtype),
    from the model config (all tensor-parallel ranks together)."""
    from vllm.utils.torch_utils import kv_cache_dtype_str_to_dtype

    config = llm.llm_engine.vllm_config
    dtype = kv_cache_dtype_str_to_dtype(config.cache_config.cache_dtype, config.model_config)
    return hf_kv_bytes_per_token(config.model_config.hf_config, dtype)


def prefix_cache_counters(llm) -> tuple[int, int] | None:
    """vLLM's ``(prefix_cache_queries, prefix_cache_hits)`` counters (tokens, summed over engines),
    or ``None`` when the engine does not log stats (``LLM``'s default ``disable_log_stats=True``)."""
    if not getattr(llm.llm_engine, "log_stats", False):
        return None
    totals = {PREFIX_QUERIES: 0, PREFIX_HITS: 0}
    for metric in llm.get_metrics():
        if metric.name in totals:
            totals[metric.name] += int(metric.value)
    return totals[PREFIX_QUERIES], totals[PREFIX_HITS]


def _philox_seed(seed: int, c0: int, c1: int, c2: int, c3: int) -> int:
    seed_t = torch.tensor(seed - 2**64 if seed >= 2**63 else seed, dtype=torch.int64)
    w0, w1, _, _ = philox4x32(seed_t, c0, c1, c2, c3)
    return ((int(w0) << 32) | int(w1)) >> (64 - SEED_BITS)


def prompt_seed(seed: int, prompt: int) -> int:
    """The vLLM seed of prompt ``prompt``'s first request (its sample ``j`` gets this + ``j``)."""
    return _philox_seed(seed, 0, 0, prompt, 0)


def continuation_seed(seed: int, segment: int, prompt: int, candidate: int) -> int:
    """The vLLM seed of candidate ``candidate`` of prompt ``prompt`` in segment ``segment >= 1``."""
    return _philox_seed(seed, segment, candidate, prompt, 1)


# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------


def _normalise_prompts(prompts) -> list[str | list[int]]:
    """Strings, token-id lists, ``{"prompt_token_ids": ids}`` / ``vllm.TokensPrompt`` or
    ``{"prompt": text}`` as a list of strings and int lists; ValueError naming ``prompts[i]``."""
    if isinstance(prompts, (str, Mapping)) or (isinstance(prompts, Sequence) and prompts and is_int(prompts[0])):
        prompts = [prompts]  # one prompt
    if not isinstance(prompts, Sequence) or isinstance(prompts, (bytes, bytearray)):
        raise TypeError(f"prompts must be a list of prompts, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    result: list[str | list[int]] = []
    for i, prompt in enumerate(prompts):
        if isinstance(prompt, Mapping):
            if "prompt_token_ids" in prompt:
                prompt = prompt["prompt_token_ids"]
            elif "prompt" in prompt:
                prompt = prompt["prompt"]
            else:
                raise ValueError(f"prompts[{i}] is a dict without 'prompt_token_ids' or 'prompt'")
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompts[{i}] is an empty string")
            result.append(prompt)
            continue
        if isinstance(prompt, torch.Tensor):
            prompt = prompt.tolist()
        if not isinstance(prompt, Sequence) or isinstance(prompt, (bytes, bytearray)):
            raise TypeError(f"prompts[{i}] must be a string or a list of token ids, got {type(prompt).__name__}")
        if len(prompt) == 0:
            raise ValueError(f"prompts[{i}] has no tokens")
        if not all(is_int(t) and t >= 0 for t in prompt):
            raise ValueError(f"prompts[{i}] must hold non-negative int token ids")
        result.append([int(t) for t in prompt])
    return result


def _check_common(n, max_new_tokens, temperature, seed, reward, reward_input, sampling_kwargs) -> dict:
    check_int("n", n, minimum=1)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    if isinstance(temperature, bool) or not isinstance(temperature, Real) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0 (Best-of-N samples), got {temperature!r}")
    if seed is not None:
        check_int("seed", seed, minimum=0)
        if seed >= 2**64:
            raise ValueError(f"seed must be < 2**64, got {seed}")
    if reward_input not in ("tokens", "text"):
        raise ValueError(f"reward_input must be 'tokens' or 'text', got {reward_input!r}")
    if not callable(reward) and not hasattr(reward, "score"):
        raise TypeError(f"reward must be a callable or an object with score(), got {type(reward).__name__}")
    kwargs = dict(sampling_kwargs or {})
    unknown = sorted(set(kwargs) - set(ALLOWED_SAMPLING_KWARGS))
    if unknown:
        raise ValueError(
            f"sampling_kwargs may hold only {', '.join(ALLOWED_SAMPLING_KWARGS)} (they keep their meaning "
            f"across continuation requests); got {', '.join(unknown)}"
        )
    return kwargs


def _scorer(llm, reward, reward_input: str, reward_tokenizer):
    if reward_input == "text" and not hasattr(reward, "score") and not isinstance(reward, torch.nn.Module):
        return TextReward(reward, llm.get_tokenizer())
    return as_reward(reward, llm.get_tokenizer(), reward_tokenizer)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class _Candidates:
    """Every candidate's tokens and fate, by candidate id ``g * n + j``."""

    def __init__(self, num_prompts: int, n: int) -> None:
        self.num_prompts, self.n = num_prompts, n
        total = num_prompts * n
        self.tokens: list[list[int]] = [[] for _ in range(total)]
        self.status = [LIVE] * total
        self.pruned_round = [NOT_PRUNED] * total
        self.prompt_ids: list[list[int]] = [[] for _ in range(num_prompts)]

    def live(self) -> list[int]:
        return [c for c, s in enumerate(self.status) if s == LIVE]

    def sizes(self, cands: list[int]) -> list[int]:
        sizes = [0] * self.num_prompts
        for c in cands:
            sizes[c // self.n] += 1
        return sizes

    def rows(self, cands: list[int]) -> tuple[list[list[int]], list[list[int]]]:
        return [self.prompt_ids[c // self.n] for c in cands], [self.tokens[c] for c in cands]


class _Run:
    def __init__(self, llm, scorer, prompts, n, max_new_tokens, temperature, seed, sampling_kwargs, schedule):
        self.llm, self.scorer, self.prompts = llm, scorer, prompts
        self.n, self.max_new_tokens, self.temperature = n, max_new_tokens, temperature
        self.seed = int(torch.randint(0, 2**62, (1,))) if seed is None else seed
        self.sampling_kwargs, self.schedule = sampling_kwargs, schedule
        self.cands = _Candidates(len(prompts), n)
        self.segments: list[dict] = []
        self.rounds: list[dict] = []
        self.skipped: list[int] = []
        self.reward_stats = {"reward_seconds": 0.0, "reward_calls": 0, "reward_rows": 0}
        self.block_size = llm.llm_engine.vllm_config.cache_config.block_size
        self.prefix_caching = bool(llm.llm_engine.vllm_config.cache_config.enable_prefix_caching)
        self.kv_bytes = kv_bytes_per_token(llm) if schedule is not None and schedule.memory_budget else None
        self.peak_kv = 0

    # -- scoring ------------------------------------------------------------------------------

    def score(self, cands: list[int]) -> torch.Tensor:
        start = time.perf_counter()
        values = self.scorer.score(*self.cands.rows(cands)).float().cpu()
        self.reward_stats["reward_calls"] += 1
        self.reward_stats["reward_rows"] += len(cands)
        self.reward_stats["reward_seconds"] += time.perf_counter() - start
        return values

    # -- when to stop a segment ----------------------------------------------------------------

    def could_prune(self, sizes: list[int]) -> bool:
        """Whether a decision over groups of at most these sizes could drop anyone (module docstring)."""
        return any(num_keep_from_alpha([m], self.schedule.alpha) != [m] for m in sizes if m > 1)

    def live_kv_bytes(self, live: list[int], tokens: int) -> int:
        return sum(len(self.cands.prompt_ids[c // self.n]) + tokens for c in live) * self.kv_bytes

    def next_stop(self, step: int, live: list[int], pending: list[int]) -> int:
        """The token count at which the next segment ends: a decision point, or ``max_new_tokens``."""
        if self.schedule is None:
            return self.max_new_tokens
        prunable = self.could_prune(self.cands.sizes(live))
        if self.schedule.decision_tokens is not None:
            while pending and not prunable:
                self.skipped.append(pending.pop(0))
            return pending.pop(0) if pending else self.max_new_tokens
        if not prunable:
            return self.max_new_tokens
        # the memory budget: the first t > step whose live KV exceeds it (t = step + 1 when over already)
        prompt_positions = sum(len(self.cands.prompt_ids[c // self.n]) for c in live) * self.kv_bytes
        per_token = len(live) * self.kv_bytes
        stop = max(step + 1, (self.schedule.memory_budget - prompt_positions) // per_token + 1)
        return min(stop, self.max_new_tokens)

    # -- one segment ---------------------------------------------------------------------------

    def params(self, max_tokens: int, seed: int, n: int = 1):
        from vllm import SamplingParams

        return SamplingParams(
            n=n, max_tokens=max_tokens, temperature=self.temperature, seed=seed, **self.sampling_kwargs
        )

    def generate(self, step: int, stop: int, live: list[int]) -> None:
        """Generate ``stop - step`` more tokens for every live candidate (segment 0: the prompts, n each)."""
        segment = len(self.segments)
        if segment == 0:
            inputs = [p if isinstance(p, str) else {"prompt_token_ids": p} for p in self.prompts]
            params = [self.params(stop, prompt_seed(self.seed, g), self.n) for g in range(len(self.prompts))]
        else:
            inputs, params = [], []
            for c in live:
                g, j = divmod(c, self.n)
                inputs.append({"prompt_token_ids": self.cands.prompt_ids[g] + self.cands.tokens[c]})
                params.append(self.params(stop - step, continuation_seed(self.seed, segment, g, j)))
        if self.kv_bytes is not None:
            self.peak_kv = max(self.peak_kv, self.live_kv_bytes(live, stop))
        before = prefix_cache_counters(self.llm)
        start = time.perf_counter()
        outputs = self.llm.generate(inputs, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        after = prefix_cache_counters(self.llm)
        generated, lengths, cached = 0, [], []
        if segment == 0:
            for g, out in enumerate(outputs):
                self.cands.prompt_ids[g] = list(out.prompt_token_ids)
                completions = sorted(out.outputs, key=lambda o: o.index)
                for j, completion in enumerate(completions):
                    generated += self.take(g * self.n + j, completion, stop)
                lengths.append(len(out.prompt_token_ids))
                cached.append(out.num_cached_tokens or 0)
        else:
            for c, out in zip(live, outputs):
                generated += self.take(c, out.outputs[0], stop)
                lengths.append(len(out.prompt_token_ids))
                cached.append(out.num_cached_tokens or 0)
        record = {
            "segment": segment,
            "from_tokens": step,
            "to_tokens": stop,
            "requests": len(inputs),
            "tokens_generated": generated,
            "prompt_tokens": sum(lengths),
            "cached_prompt_tokens": sum(cached),
            # what the prefix cache can hold of each request: its whole blocks before the last token
            "cacheable_prompt_tokens": sum((length - 1) // self.block_size * self.block_size for length in lengths),
            "seconds": seconds,
        }
        if before is not None and after is not None:
            record["vllm_prefix_cache_queries"] = after[0] - before[0]
            record["vllm_prefix_cache_hits"] = after[1] - before[1]
        self.segments.append(record)

    def take(self, c: int, completion, stop: int) -> int:
        """Append a completion to candidate ``c``; finished unless it stopped at a decision point."""
        new = list(completion.token_ids)
        self.cands.tokens[c].extend(new)
        at_decision = completion.finish_reason == "length" and len(self.cands.tokens[c]) == stop
        if not at_decision or stop >= self.max_new_tokens:
            self.cands.status[c] = FINISHED
        return len(new)

    # -- a decision ----------------------------------------------------------------------------

    def decide(self, step: int, live: list[int]) -> None:
        sizes = self.cands.sizes(live)
        values = self.score(live)
        result = topk_prune(values, sizes, self.schedule.alpha)
        round_index = len(self.rounds)
        keep = result.keep_mask.tolist()
        for c, kept in zip(live, keep):
            if not kept:
                self.cands.status[c], self.cands.pruned_round[c] = PRUNED, round_index
        per_prompt_cands = [[c % self.n for c in live if c // self.n == g] for g in range(len(sizes))]
        per_prompt_values = [v.tolist() for v in values.split(sizes)]
        kept_cands = [[c % self.n for c, k in zip(live, keep) if k and c // self.n == g] for g in range(len(sizes))]
        self.rounds.append(
            {
                "round": round_index,
                "tokens_per_row": step,
                "live_kv_bytes": self.live_kv_bytes(live, step) if self.kv_bytes is not None else None,
                "live_per_prompt": sizes,
                "kept_per_prompt": result.kept_group_sizes.tolist(),
                "candidates": per_prompt_cands,
                "rewards": per_prompt_values,
                "kept": kept_cands,
                "best_partial": [max(v) if v else float("nan") for v in per_prompt_values],
            }
        )

    # -- the loop ------------------------------------------------------------------------------

    def check_initial_batch(self) -> None:
        """The first token of every candidate must fit the memory budget (with ``n`` as given)."""
        prompt_lengths = [len(ids) for ids in self.cands.prompt_ids]
        needed = (sum(prompt_lengths) + len(prompt_lengths)) * self.n * self.kv_bytes
        if needed > self.schedule.memory_budget:
            fits = self.schedule.memory_budget // ((sum(prompt_lengths) + len(prompt_lengths)) * self.kv_bytes)
            raise ValueError(
                f"memory_budget = {self.schedule.memory_budget} bytes cannot hold the initial batch: "
                f"{len(prompt_lengths)} prompts x n = {self.n} candidates with one new token need {needed} bytes "
                f"of KV ({self.kv_bytes} bytes per token); n <= {fits} fits"
            )

    def run(self) -> VLLMBestOfNOutput:
        start = time.perf_counter()
        if self.kv_bytes is not None:  # prompt lengths for the budget (segment 0 replaces them by vLLM's)
            tokenizer = self.llm.get_tokenizer()
            self.cands.prompt_ids = [list(p) if not isinstance(p, str) else tokenizer.encode(p) for p in self.prompts]
            self.check_initial_batch()
        pending = list(self.schedule.decision_tokens or ()) if self.schedule is not None else []
        step, live = 0, list(range(len(self.prompts) * self.n))
        while live:
            stop = self.next_stop(step, live, pending)
            self.generate(step, stop, live)
            step, live = stop, self.cands.live()
            if live and step < self.max_new_tokens:
                self.decide(step, live)
                live = self.cands.live()
        output = self.select()
        output.stats = self.stats(time.perf_counter() - start)
        return output

    def select(self) -> VLLMBestOfNOutput:
        P, n, M = len(self.prompts), self.n, self.max_new_tokens
        finished = [c for c, s in enumerate(self.cands.status) if s == FINISHED]
        values = self.score(finished)
        rewards = torch.full((P * n,), float("nan"))
        rewards[finished] = values
        best = topk_prune(values, self.cands.sizes(finished), num_keep=[1] * P).kept_indices.tolist()
        best = [finished[i] for i in best]  # every prompt has a finished candidate: survivors run to the end
        tokens = torch.full((P * n, M), NO_TOKEN, dtype=torch.int64)
        for c, row in enumerate(self.cands.tokens):
            tokens[c, : len(row)] = torch.tensor(row, dtype=torch.int64)
        num_tokens = torch.tensor([len(row) for row in self.cands.tokens], dtype=torch.int64)
        best_t = torch.tensor(best, dtype=torch.int64)
        tokenizer = self.llm.get_tokenizer()
        return VLLMBestOfNOutput(
            tokens=tokens[best_t],
            num_tokens=num_tokens[best_t],
            rewards=rewards[best_t],
            best_candidate=best_t % n,
            candidate_tokens=tokens.view(P, n, M),
            candidate_num_tokens=num_tokens.view(P, n),
            candidate_rewards=rewards.view(P, n),
            finished=torch.tensor([s == FINISHED for s in self.cands.status]).view(P, n),
            pruned_at_round=torch.tensor(self.cands.pruned_round, dtype=torch.int64).view(P, n),
            response_texts=[tokenizer.decode(self.cands.tokens[c], skip_special_tokens=True) for c in best],
        )

    def stats(self, seconds: float) -> dict:
        generated = sum(s["tokens_generated"] for s in self.segments)
        continuations = self.segments[1:]
        queried = sum(s["prompt_tokens"] for s in continuations)
        hits = sum(s["cached_prompt_tokens"] for s in continuations)
        prefix = {
            "enabled": self.prefix_caching,
            "block_size": self.block_size,
            "continuation_requests": sum(s["requests"] for s in continuations),
            "continuation_prompt_tokens": queried,
            "continuation_cached_tokens": hits,
            "continuation_cacheable_tokens": sum(s["cacheable_prompt_tokens"] for s in continuations),
            "continuation_hit_rate": hits / queried if queried else None,
            "continuation_recomputed_tokens": queried - hits,
        }
        if all("vllm_prefix_cache_queries" in s for s in self.segments):
            q = sum(s["vllm_prefix_cache_queries"] for s in self.segments)
            h = sum(s["vllm_prefix_cache_hits"] for s in self.segments)
            prefix.update({"vllm_queries": q, "vllm_hits": h, "vllm_hit_rate": h / q if q else None})
        return {
            "candidates": len(self.cands.status),
            "seed": self.seed,
            "tokens_generated": generated,
            "requests": sum(s["requests"] for s in self.segments),
            "segments": self.segments,
            "rounds": self.rounds,
            "skipped_decisions": self.skipped,
            "prefix_cache": prefix,
            "kv_bytes_per_token": self.kv_bytes,
            "peak_live_kv_bytes": self.peak_kv if self.kv_bytes is not None else None,
            **self.reward_stats,
            "seconds": seconds,
            "tokens_per_second": generated / seconds if seconds > 0 else None,
        }


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def best_of_n(
    llm,
    reward: Callable[..., Any] | Any,
    prompts: Sequence[str | Sequence[int] | Mapping[str, Any]] | str,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int | None = None,
    reward_input: Literal["tokens", "text"] = "tokens",
    reward_tokenizer=None,
    sampling_kwargs: Mapping[str, Any] | None = None,
) -> VLLMBestOfNOutput:
    """Best-of-N over a ``vllm.LLM``: ``n`` samples per prompt (one request each, ``SamplingParams(n=n)``)
    to EOS or ``max_new_tokens``, every one scored by ``reward``; the best per prompt wins.

    Args:
        llm: a ``vllm.LLM`` (V1 engine).
        reward: a callable on token ids ``fn(prompt_ids, response_ids) -> [N]`` (``reward_input="tokens"``)
            or on texts ``fn(prompts, responses) -> [N]`` (``reward_input="text"``), or an object of
            ``specdecode.integrations.hf_best_of_n`` (``TokenReward``, ``TextReward``, ``ClassifierReward``
            with ``reward_tokenizer``) or with a ``score(prompt_ids, response_ids)`` method.
        prompts: strings, token-id lists, ``{"prompt_token_ids": ids}`` / ``vllm.TokensPrompt``, or
            ``{"prompt": text}``; one prompt alone is accepted too.
        n: samples per prompt (>= 1). max_new_tokens: per sample (>= 1).
        temperature: > 0. seed: the runs' seed (module docstring); ``None`` draws one.
        sampling_kwargs: more ``SamplingParams`` fields, only ``top_k``, ``top_p``, ``min_p``,
            ``ignore_eos``, ``stop_token_ids``.

    Returns:
        ``VLLMBestOfNOutput`` (the reference decoder's ``BestOfNOutput``; ``texts()`` decodes with
        the engine's tokenizer). ``stats``: ``tokens_generated``, ``requests``, ``segments`` (one),
        ``prefix_cache``, ``reward_*``, ``seconds``, ``seed``.
    """
    kwargs = _check_common(n, max_new_tokens, temperature, seed, reward, reward_input, sampling_kwargs)
    prompts = _normalise_prompts(prompts)
    scorer = _scorer(llm, reward, reward_input, reward_tokenizer)
    return _Run(llm, scorer, prompts, n, max_new_tokens, temperature, seed, kwargs, None).run()


def speculative_rejection(
    llm,
    reward: Callable[..., Any] | Any,
    prompts: Sequence[str | Sequence[int] | Mapping[str, Any]] | str,
    *,
    n: int,
    alpha: Real,
    max_new_tokens: int,
    decision_tokens: Sequence[int] | None = None,
    memory_budget: int | None = None,
    temperature: float = 1.0,
    seed: int | None = None,
    reward_input: Literal["tokens", "text"] = "tokens",
    reward_tokenizer=None,
    sampling_kwargs: Mapping[str, Any] | None = None,
) -> VLLMBestOfNOutput:
    """Speculative Rejection (fast Best-of-N) over a ``vllm.LLM``: ``best_of_n``, but at each decision
    point the unfinished candidates are scored on their partial responses and only the best
    ``max(1, ceil((1 - alpha) m))`` of each prompt's ``m`` continue, as new requests whose prompt is
    prompt + partial response (their KV comes from vLLM's prefix cache). Module docstring: decision
    points, skipped decisions, finished candidates, seeds, the prefix-cache numbers.

    Args (beyond ``best_of_n``'s):
        alpha: rejection rate in ``[0, 1]``; 0 prunes nobody (``best_of_n``'s requests, candidates and
            answer), 1 keeps one per prompt.
        decision_tokens: strictly increasing token counts in ``[1, max_new_tokens)``; or
        memory_budget: bytes of live KV (``kv_bytes_per_token(llm)`` per position per candidate):
            decide when the next token would exceed it. Exactly one of the two.

    Returns:
        ``VLLMBestOfNOutput``. ``stats["rounds"]``: per decision ``tokens_per_row``, ``live_per_prompt``,
        ``candidates`` (per prompt, the candidate indices ranked, ascending), ``rewards`` (their partial
        rewards, same order), ``kept`` (the indices kept), ``kept_per_prompt``, ``best_partial``,
        ``live_kv_bytes`` (memory mode). ``stats["segments"]``: per ``llm.generate`` call the token range,
        requests, tokens generated, prompt tokens, vLLM's cached prompt tokens (``num_cached_tokens``)
        and the cacheable ones (whole blocks before each request's last token), vLLM's counters when
        logged. ``stats["prefix_cache"]``: the continuation requests' totals and hit rate.
        ``stats["skipped_decisions"]``, ``peak_live_kv_bytes``, ``kv_bytes_per_token`` (memory mode).
    """
    kwargs = _check_common(n, max_new_tokens, temperature, seed, reward, reward_input, sampling_kwargs)
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise ValueError(f"alpha must be a real number in [0, 1], got {alpha!r}")
    schedule = PruningSchedule(alpha, decision_tokens, memory_budget)  # checks alpha, the schedule, the budget
    schedule.check_within(max_new_tokens)
    prompts = _normalise_prompts(prompts)
    scorer = _scorer(llm, reward, reward_input, reward_tokenizer)
    return _Run(llm, scorer, prompts, n, max_new_tokens, temperature, seed, kwargs, schedule).run()
