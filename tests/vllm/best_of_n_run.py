"""Run Best-of-N / Speculative Rejection jobs over one vLLM engine in this process; write JSON.

``python tests/vllm/best_of_n_run.py <request.json> <result.json>`` (as ``engine_run.py``: one
engine per child process, the environment set before vLLM is imported). The request holds the
``LLM`` arguments and a list of jobs: ``{"name", "function": "best_of_n" | "speculative_rejection",
"reward": a key of REWARDS, "prompts", "kwargs"}``; ``kwargs`` may hold
``"memory_budget_tokens_per_candidate": t`` for a budget of ``kv_bytes_per_token(llm) * n *
(sum of prompt lengths + P * t)`` bytes (the run's first decision then falls at token ``t + 1``),
or ``"expect_error": true`` to record the exception instead. The result holds, per job, every
field of the output as lists, its stats, and the engine's block size and KV bytes per token.

``REWARDS`` is imported by the tests to recompute every reward from the returned tokens.
"""

from __future__ import annotations

import json
import os
import sys
import time


def token_reward(prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[float]:
    """A reward on token ids: the mean of a hash of the response's tokens (few ties)."""
    return [sum((37 * t + 11) % 101 for t in r) / max(1, len(r)) for r in response_ids]


def text_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """A reward on texts: the number of words of the response that end in 1, 2 or 3 (many ties)."""
    return [float(sum(word[-1:] in "123" for word in text.split())) for text in responses]


REWARDS = {"tokens": token_reward, "text": text_reward}


def tensor_fields(output) -> dict:
    return {
        name: getattr(output, name).tolist()
        for name in (
            "tokens",
            "num_tokens",
            "rewards",
            "best_candidate",
            "candidate_tokens",
            "candidate_num_tokens",
            "candidate_rewards",
            "finished",
            "pruned_at_round",
        )
    }


def run(request: dict) -> dict:
    from vllm import LLM

    from specdecode.integrations import vllm_best_of_n

    started = time.perf_counter()
    llm = LLM(**request["llm"])
    kv_bytes = vllm_best_of_n.kv_bytes_per_token(llm)
    result = {
        "startup_seconds": time.perf_counter() - started,
        "pid": os.getpid(),
        "block_size": llm.llm_engine.vllm_config.cache_config.block_size,
        "kv_bytes_per_token": kv_bytes,
        "jobs": {},
    }
    for job in request["jobs"]:
        kwargs = dict(job["kwargs"])
        expect_error = kwargs.pop("expect_error", False)
        budget_tokens = kwargs.pop("memory_budget_tokens_per_candidate", None)
        if budget_tokens is not None:
            prompt_tokens = sum(len(p) for p in job["prompts"])  # token-id prompts
            kwargs["memory_budget"] = kv_bytes * kwargs["n"] * (prompt_tokens + len(job["prompts"]) * budget_tokens)
        function = getattr(vllm_best_of_n, job["function"])
        started = time.perf_counter()
        try:
            output = function(llm, REWARDS[job["reward"]], job["prompts"], **kwargs)
        except (ValueError, TypeError) as error:
            if not expect_error:
                raise
            result["jobs"][job["name"]] = {"error": f"{type(error).__name__}: {error}"}
            continue
        result["jobs"][job["name"]] = {
            **tensor_fields(output),
            "texts": output.texts(),
            "stats": output.stats,
            "memory_budget": kwargs.get("memory_budget"),
            "seconds": time.perf_counter() - started,
        }
    return result


if __name__ == "__main__":
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        request = json.load(f)
    with open(result_path, "w") as f:
        json.dump(run(request), f)
