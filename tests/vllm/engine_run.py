"""Run one vLLM engine in this process and write what it generated as JSON.

``python tests/vllm/engine_run.py <request.json> <result.json>``. The tests run every engine in
a child process of its own: vLLM starts one engine per process reliably (a second one fails
once the n-gram proposer has loaded numba), and the environment (``SPECDECODE_VLLM_PLUGIN``,
``SPECDECODE_VLLM_CALL_LOG``, ``VLLM_ENABLE_V1_MULTIPROCESSING``) must be set before vLLM is
imported.

The request holds the ``LLM`` arguments and a list of jobs (prompts as token ids, sampling
settings); the result holds, per job, the generated token ids and the change of vLLM's own
speculative-decoding counters over that job (drafts, draft tokens, accepted tokens).
"""

from __future__ import annotations

import json
import os
import sys
import time

SPEC_COUNTERS = {
    "vllm:spec_decode_num_drafts": "num_drafts",
    "vllm:spec_decode_num_draft_tokens": "num_draft_tokens",
    "vllm:spec_decode_num_accepted_tokens": "num_accepted_tokens",
}


def spec_counters(llm) -> dict[str, float]:
    """vLLM's speculative-decoding counters (summed over engines); zeros without speculation."""
    totals = dict.fromkeys(SPEC_COUNTERS.values(), 0.0)
    for metric in llm.get_metrics():
        if metric.name in SPEC_COUNTERS:
            totals[SPEC_COUNTERS[metric.name]] += metric.value
    return totals


def run(request: dict) -> dict:
    from vllm import LLM, SamplingParams

    started = time.perf_counter()
    llm = LLM(**request["llm"])
    result = {"startup_seconds": time.perf_counter() - started, "pid": os.getpid(), "jobs": []}
    for job in request["jobs"]:
        params = SamplingParams(**job["sampling"])
        prompts = [{"prompt_token_ids": ids} for ids in job["prompts"]]
        before = spec_counters(llm)
        started = time.perf_counter()
        outputs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - started
        after = spec_counters(llm)
        result["jobs"].append(
            {
                "token_ids": [[list(c.token_ids) for c in out.outputs] for out in outputs],
                "seconds": seconds,
                "spec": {name: after[name] - before[name] for name in after},
            }
        )
    return result


if __name__ == "__main__":
    request_path, result_path = sys.argv[1], sys.argv[2]
    with open(request_path) as f:
        request = json.load(f)
    with open(result_path, "w") as f:
        json.dump(run(request), f)
