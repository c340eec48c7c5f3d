"""specdecode as the verifier of vLLM's GPU model runner V2 (MRV2).

vLLM's newer GPU model runner (``vllm/v1/worker/gpu/``) verifies drafts in
``RejectionSampler._verify`` (``vllm.v1.worker.gpu.spec_decode.rejection_sampler``), which calls
the module-level name ``rejection_sample`` that module imports from ``rejection_sampler_utils``.
:func:`install` rebinds that name (where ``_verify`` looks it up) to
:func:`specdecode_mrv2_rejection_sample`, which takes MRV2's arguments, runs
``sd.rejection_sample_ragged`` on them and returns MRV2's result. The plugin entry point
(``specdecode.integrations.vllm.register``) calls :func:`install`.

MRV2's layout, and how it maps onto the op (``B`` requests, ``K_b`` drafts for request ``b``,
``N = sum K_b``, ``L = N + B`` logits rows, ``R`` persistent request slots, ``S`` speculative steps):

- ``target_logits`` ``[L, V]``: per request its ``K_b`` draft rows then its bonus row, already
  through vLLM's ``apply_sampling_params`` (logits processors, penalties, temperature, min-p,
  top-k / top-p; ``-inf`` where masked). That is the op's ``[N + B, V]`` layout: handed over as it
  is, the softmax is taken inside the kernel at temperature 1 (greedy requests: argmax).
- ``cu_num_logits`` ``[B + 1]`` (exclusive, from 0): ``cu_num_draft_tokens[b] = cu_num_logits[b +
  1] - (b + 1)``, the op's inclusive running totals.
- ``draft_sampled`` ``[L]``: the input token of each logits row, so draft ``i`` of request ``b`` is
  ``draft_sampled[cu_num_logits[b] + i + 1]`` (``-1``: a placeholder, rejected by both).
- ``draft_logits`` ``[R, S, V]`` or ``None`` (one-hot drafts, e.g. n-gram): the draft's logits
  *before* temperature, indexed by the request slot ``idx_mapping[b]`` and the step. Gathered to
  the op's ``[N, V]`` rows and divided by the request's temperature in float32, as MRV2's kernels
  do on load (so the op sees both distributions at temperature 1).
- ``temperature`` / ``seed`` ``[R]`` per request slot; ``pos`` ``[L]`` the position of each row.
- Result: ``sampled`` ``[B, S + 1]`` int64 (accepted drafts, then the recovered or bonus token;
  this adapter writes ``-1`` after them, MRV2 leaves those entries unwritten) and ``num_sampled``
  ``[B]`` int32 (accepted + 1).

Everything around the call stays vLLM's: ``apply_sampling_params`` before it, and after it the
logprobs, the sampling masks and ``get_num_sampled_and_rejected``. Unlike V1, MRV2 draws the
**bonus token inside** ``rejection_sample`` (from the bonus row, with its Gumbel noise); here the op
draws it from the same row (inverse CDF on its own stream; argmax for greedy requests).

**Seeds.** MRV2 keeps one int64 seed per request slot (the user's ``SamplingParams.seed``, or one
drawn from numpy when the request is added) and keys every random number by ``(seed, position)``.
The adapter gives request ``b`` the op's per-request stream with ``seed = seed[idx_mapping[b]]``
and ``offset = pos[cu_num_logits[b]]`` (the position of its first row): its numbers depend only on
its own seed, that position and its inputs, never on the batch it is in or its slot. Each
committed step of a request starts at a larger position, so no two steps share numbers; a step run
again at the same position (a recomputation) draws the same numbers, as in MRV2, whose keys are the
same. The same seed and inputs reproduce the same tokens. They are not MRV2's tokens (other random
numbers: Philox counters ``(draft index, 0, position)`` and an inverse-CDF draw, where MRV2 uses
``tl.rand(seed, position)`` and murmur3 Gumbel noise), only the same distribution. The draft's own
draws (murmur3 at salted positions) are unrelated to the op's Philox stream.

**Falls back to vLLM's own ``rejection_sample``**, logged once per reason: synthetic acceptance
rates, block verification (a different acceptance rule), watermarking, tensors on a device the op
has no kernel for, a draft vocabulary that differs from the target's (MRV2 then verifies over the
common prefix), and target logits of a dtype the op does not take. ``use_fp64`` (the precision of
MRV2's Gumbel noise) does not apply to the op's inverse-CDF draw and is ignored.

A ``rejection_sample`` whose parameters differ from :data:`EXPECTED_PARAMETERS` (another vLLM
release) is left in place, with one warning.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The V1 plugin's names for what both adapters share: one logger, one list of devices with a kernel.
from specdecode.integrations.vllm import SUPPORTED_DEVICE_TYPES, logger

__all__ = ["install", "specdecode_mrv2_rejection_sample", "MRV2_MODULE", "EXPECTED_PARAMETERS"]

# Where MRV2's RejectionSampler._verify looks up ``rejection_sample`` (it imports the name from
# ``rejection_sampler_utils`` into its own namespace, so that namespace is the one to patch).
MRV2_MODULE = "vllm.v1.worker.gpu.spec_decode.rejection_sampler"
PATCHED_NAME = "rejection_sample"
EXPECTED_PARAMETERS = (
    "target_logits",
    "draft_logits",
    "draft_sampled",
    "cu_num_logits",
    "pos",
    "idx_mapping",
    "expanded_idx_mapping",
    "expanded_local_pos",
    "temperature",
    "seed",
    "num_speculative_steps",
    "synthetic_conditional_rates",
    "use_fp64",
    "use_block_verification",
    "contexts",
    "watermarking",
    "watermarking_skip_mask",
    "watermark_key",
)
SUPPORTED_LOGITS_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
GREEDY_TEMPERATURE = 0.0  # MRV2's (and the op's) marker of a greedy request
UNIT_TEMPERATURE = 1.0  # the op's temperature for sampled requests: MRV2 has already scaled the target


@dataclass(frozen=True)
class Mrv2State:
    """What :func:`install` replaced in this process."""

    original_rejection_sample: Callable | None = None


_state = Mrv2State()
_logged: set[str] = set()


# ---------------------------------------------------------------------------------------------
# Installation
# ---------------------------------------------------------------------------------------------


def install() -> bool:
    """Rebind MRV2's ``rejection_sample`` to :func:`specdecode_mrv2_rejection_sample`.

    Returns whether the adapter is in place. Installing twice is a no-op. Never raises: a vLLM
    without MRV2 (nothing to adapt) or whose ``rejection_sample`` takes other parameters keeps its
    own code, the latter with one warning.
    """
    global _state
    try:
        module = importlib.import_module(MRV2_MODULE)
    except Exception as error:  # noqa: BLE001 - any import failure leaves vLLM as it is
        _log_once(logging.INFO, f"specdecode: vLLM's model runner V2 is not importable ({error!r}); not adapted")
        return False
    current = getattr(module, PATCHED_NAME, None)
    if current is specdecode_mrv2_rejection_sample:
        return True
    parameters = _parameters(current)
    if parameters != EXPECTED_PARAMETERS:
        _log_once(
            logging.WARNING,
            f"specdecode: vLLM's model runner V2 rejection_sample takes ({', '.join(parameters)}), not the "
            f"({', '.join(EXPECTED_PARAMETERS)}) the adapter takes; MRV2 keeps its own verifier",
        )
        return False
    _state = Mrv2State(original_rejection_sample=current)
    setattr(module, PATCHED_NAME, specdecode_mrv2_rejection_sample)
    logger.info("specdecode: vLLM's model runner V2 verifies with sd.rejection_sample_ragged")
    return True


def _parameters(function) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(function).parameters)
    except (TypeError, ValueError):  # not a function (or None): nothing we know how to replace
        return ()


def _log_once(level: int, message: str) -> None:
    if message not in _logged:
        _logged.add(message)
        logger.log(level, message)


# ---------------------------------------------------------------------------------------------
# The verifier
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaggedLayout:
    """MRV2's per-request logits rows as the op's flattened drafts (all on the logits' device).

    ``cu_num_draft_tokens`` ``[B]`` int64 inclusive totals of ``K_b``; ``request_of_draft`` ``[N]``
    the request of each draft; ``draft_row`` ``[N]`` the logits row verifying each draft (its
    token is ``draft_sampled[draft_row + 1]``); ``step`` ``[N]`` the draft's index in its request."""

    cu_num_draft_tokens: torch.Tensor
    request_of_draft: torch.Tensor
    draft_row: torch.Tensor
    step: torch.Tensor


def specdecode_mrv2_rejection_sample(
    target_logits: torch.Tensor,
    draft_logits: torch.Tensor | None,
    draft_sampled: torch.Tensor,
    cu_num_logits: torch.Tensor,
    pos: torch.Tensor,
    idx_mapping: torch.Tensor,
    expanded_idx_mapping: torch.Tensor,
    expanded_local_pos: torch.Tensor,
    temperature: torch.Tensor,
    seed: torch.Tensor,
    num_speculative_steps: int,
    synthetic_conditional_rates: torch.Tensor | None = None,
    use_fp64: bool = False,
    use_block_verification: bool = False,
    contexts: torch.Tensor | None = None,
    watermarking: torch.Tensor | None = None,
    watermarking_skip_mask: torch.Tensor | None = None,
    watermark_key: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """MRV2's ``rejection_sample`` (same parameters and result) on ``sd.rejection_sample_ragged``.

    Args:
        target_logits: ``[L, V]`` processed target logits, ``L = N + B``: request ``b``'s ``K_b``
            draft rows, then its bonus row.
        draft_logits: ``[R, S, V]`` the draft's logits before temperature, by request slot and
            step, or ``None`` (one-hot drafts).
        draft_sampled: ``[L]`` the input token of each row (drafts at rows ``start_b + 1 …``).
        cu_num_logits: ``[B + 1]`` exclusive running totals of the rows per request.
        pos: ``[L]`` the position of each row.
        idx_mapping: ``[B]`` the request slot of each request.
        expanded_idx_mapping, expanded_local_pos: ``[L]`` slot and step of each row (read by
            vLLM's fallback only; the adapter derives both from ``cu_num_logits``, as MRV2's
            verification kernel does).
        temperature, seed: ``[R]`` per slot (``temperature == 0``: greedy).
        num_speculative_steps: ``S >= max K_b``, the output width minus one.
        synthetic_conditional_rates, use_block_verification, contexts, watermarking,
            watermarking_skip_mask, watermark_key: modes handed to vLLM's own function.
        use_fp64: the precision of MRV2's Gumbel noise; the op does not use Gumbel noise.

    Returns:
        ``(sampled [B, S + 1] int64, num_sampled [B] int32)``: per request the accepted drafts and
        the recovered or bonus token (``num_sampled`` of them), then ``-1``.
    """
    arguments = dict(
        target_logits=target_logits,
        draft_logits=draft_logits,
        draft_sampled=draft_sampled,
        cu_num_logits=cu_num_logits,
        pos=pos,
        idx_mapping=idx_mapping,
        expanded_idx_mapping=expanded_idx_mapping,
        expanded_local_pos=expanded_local_pos,
        temperature=temperature,
        seed=seed,
        num_speculative_steps=num_speculative_steps,
        synthetic_conditional_rates=synthetic_conditional_rates,
        use_fp64=use_fp64,
        use_block_verification=use_block_verification,
        contexts=contexts,
        watermarking=watermarking,
        watermarking_skip_mask=watermarking_skip_mask,
        watermark_key=watermark_key,
    )
    fallback = _fallback_reason(arguments)
    if fallback is not None:
        _log_once(logging.INFO, f"specdecode: vLLM's model runner V2 keeps its own verifier for {fallback}")
        return _original_rejection_sample()(**arguments)
    from specdecode.ops.rejection_sample_ragged import rejection_sample_ragged

    layout = ragged_layout(cu_num_logits, target_logits.shape[0])
    request_slot = idx_mapping.to(torch.long)
    request_temperature = temperature[request_slot].to(torch.float32)  # [B]
    is_sampled = request_temperature != GREEDY_TEMPERATURE
    output = rejection_sample_ragged(
        draft_sampled[layout.draft_row + 1],
        cu_num_draft_tokens=layout.cu_num_draft_tokens,
        max_num_draft_tokens=num_speculative_steps,
        target_logits=target_logits,
        draft_logits=_draft_rows(draft_logits, request_slot, request_temperature, is_sampled, layout),
        # The target is already at temperature: sampled requests verify at 1, greedy ones at 0.
        temperature=torch.where(is_sampled, UNIT_TEMPERATURE, GREEDY_TEMPERATURE).to(torch.float32),
        seed=seed[request_slot].to(torch.int64),
        offset=pos[cu_num_logits[:-1].to(torch.long)].to(torch.int64),
        output_dtype=torch.int64,  # MRV2's sampled dtype
    )
    num_sampled = (output.num_accepted + 1).to(torch.int32)  # the emitted token counts too
    return output.token_ids, num_sampled


def _original_rejection_sample() -> Callable:
    """vLLM's function: the one :func:`install` replaced, else the one in ``rejection_sampler_utils``."""
    if _state.original_rejection_sample is not None:
        return _state.original_rejection_sample
    from vllm.v1.worker.gpu.spec_decode.rejection_sampler_utils import rejection_sample

    return rejection_sample


def ragged_layout(cu_num_logits: torch.Tensor, num_logits: int) -> RaggedLayout:
    """Where the drafts are in MRV2's ``[L]`` rows, computed on the device without a host sync.

    Args:
        cu_num_logits: ``[B + 1]`` exclusive running totals of the rows per request.
        num_logits: ``L``, so that ``N = L - B``.
    """
    device = cu_num_logits.device
    batch_size = cu_num_logits.shape[0] - 1
    cu_logits = cu_num_logits.to(torch.long)
    cu_num_draft_tokens = cu_logits[1:] - torch.arange(1, batch_size + 1, device=device)  # one bonus row each
    draft_index = torch.arange(num_logits - batch_size, device=device)
    request_of_draft = torch.searchsorted(cu_num_draft_tokens, draft_index, right=True)
    draft_row = draft_index + request_of_draft  # request b's rows are shifted by its b earlier bonus rows
    step = draft_row - cu_logits[request_of_draft]
    return RaggedLayout(cu_num_draft_tokens, request_of_draft, draft_row, step)


def _draft_rows(
    draft_logits: torch.Tensor | None,
    request_slot: torch.Tensor,
    request_temperature: torch.Tensor,
    is_sampled: torch.Tensor,
    layout: RaggedLayout,
) -> torch.Tensor | None:
    """``[N, V]`` float32 draft logits at temperature 1: row ``n`` is
    ``draft_logits[slot, step] / T`` for draft ``n``'s request slot, step and temperature, the
    float32 division MRV2's kernels do on load (greedy requests, which never read it: ``/ 1``)."""
    if draft_logits is None:
        return None
    divisor = torch.where(is_sampled, request_temperature, UNIT_TEMPERATURE)[layout.request_of_draft]
    rows = draft_logits[request_slot[layout.request_of_draft], layout.step]  # a gathered copy: ours to modify
    return rows.to(torch.float32).div_(divisor[:, None])


def _fallback_reason(arguments: dict) -> str | None:
    """Why vLLM's own code must verify this call, or ``None``."""
    target, draft = arguments["target_logits"], arguments["draft_logits"]
    if arguments["synthetic_conditional_rates"] is not None:
        return "synthetic acceptance rates (preset rates, not a verifier)"
    if arguments["use_block_verification"]:
        return "block verification (a different acceptance rule)"
    if arguments["contexts"] is not None or arguments["watermarking"] is not None:
        return "watermarked requests"
    if target.device.type not in SUPPORTED_DEVICE_TYPES:
        return f"tensors on {target.device.type} (specdecode has kernels for {', '.join(SUPPORTED_DEVICE_TYPES)})"
    if target.dtype not in SUPPORTED_LOGITS_DTYPES:
        return f"{target.dtype} target logits"
    if draft is not None and (draft.shape[-1] != target.shape[-1] or draft.dtype not in SUPPORTED_LOGITS_DTYPES):
        return f"draft logits {draft.dtype} {list(draft.shape)} against target vocabulary {target.shape[-1]}"
    return None
