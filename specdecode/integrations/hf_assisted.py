"""HF's own ``generate(assistant_model=...)`` verified by ``sd.rejection_sample``.

``with assisted_generation_verifier(): target.generate(..., assistant_model=draft, do_sample=True)``
runs transformers' assisted generation unchanged except for the acceptance step of sampled
speculative decoding, which becomes this package's op (exact ``u * p < q`` acceptance, residual
sampled from the one row where the chain stopped, Philox randomness seeded from torch's default
generator, so ``torch.manual_seed`` makes a run reproducible).

What it replaces is transformers' module-level ``_speculative_sampling`` (private, and its
signature has changed between minor versions), so the context manager checks the installed
version against ``TESTED_TRANSFORMERS_VERSIONS`` and the function's parameters, raises a clear
error otherwise, and restores the original on exit (also on an exception). It patches a module
global: do not enter it from two threads at once.

Greedy assisted generation does not call ``_speculative_sampling`` (transformers compares
argmaxes, which is already exact) and is unaffected. transformers' assisted generation accepts
batch size 1 only; for batches use ``speculative_generate``.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator

import transformers
import transformers.generation.utils as generation_utils
from torch import Tensor

from specdecode.integrations.hf_common import TESTED_TRANSFORMERS_VERSIONS, fit_vocab
from specdecode.ops.rejection_sample import rejection_sample

__all__ = ["assisted_generation_verifier", "specdecode_speculative_sampling"]

_EXPECTED_PARAMETERS = (
    "candidate_input_ids",
    "candidate_logits",
    "candidate_length",
    "new_logits",
    "assistant_ensemble_weight",
)


def specdecode_speculative_sampling(
    candidate_input_ids: Tensor,
    candidate_logits: Tensor,
    candidate_length: int,
    new_logits: Tensor,
    assistant_ensemble_weight: float | None = None,
) -> tuple[Tensor, Tensor]:
    """A drop-in for transformers' ``_speculative_sampling`` (5.23's signature) built on
    ``sd.rejection_sample``.

    Args:
        candidate_input_ids: ``[1, L + K]`` the sequence with the assistant's K candidates last.
        candidate_logits: ``[1, K, V_a]`` the assistant's processed logits (what it sampled from).
        candidate_length: K.
        new_logits: ``[1, K + 1, V]`` the target's processed float32 logits.
        assistant_ensemble_weight: must be ``None`` -- the ensemble relaxation is lossy by design.

    Returns:
        ``(valid_tokens [1, n + 1], n_matches)``: the accepted candidates and the residual or
        bonus token, and the number accepted (a 0-d int64 tensor), as transformers expects.

    >>> tokens, n = specdecode_speculative_sampling(ids, q_logits, 4, p_logits)  # doctest: +SKIP
    """
    if assistant_ensemble_weight is not None:
        raise ValueError(
            "assistant_ensemble_weight relaxes verification (the output is no longer the target's "
            "distribution); specdecode's verifier is lossless -- unset it or leave the context manager"
        )
    vocab_size = new_logits.shape[-1]
    draft_ids = candidate_input_ids[:, -candidate_length:]
    draft_probs = fit_vocab(candidate_logits.float(), vocab_size).softmax(-1)
    target_probs = new_logits.float().softmax(-1)
    out = rejection_sample(draft_ids, draft_probs, target_probs)
    n_matches = out.num_accepted[0]
    return out.token_ids[:, : int(n_matches) + 1], n_matches


def _check_version() -> None:
    version = transformers.__version__
    if not any(version == v or version.startswith(v + ".") for v in TESTED_TRANSFORMERS_VERSIONS):
        tested = ", ".join(f"{v}.x" for v in TESTED_TRANSFORMERS_VERSIONS)
        raise RuntimeError(
            f"assisted_generation_verifier is tested with transformers {tested}, "
            f"not {version}: it replaces a private function whose signature changes between minor versions. "
            "Install a tested version (pip install 'specdecode[hf]'), or use "
            "specdecode.integrations.transformers.speculative_generate, which uses only public transformers APIs."
        )
    original = getattr(generation_utils, "_speculative_sampling", None)
    if original is None or tuple(inspect.signature(original).parameters) != _EXPECTED_PARAMETERS:
        raise RuntimeError(
            f"transformers {version}'s _speculative_sampling is missing or has an unexpected signature; "
            "assisted_generation_verifier cannot replace it safely"
        )


@contextlib.contextmanager
def assisted_generation_verifier() -> Iterator[None]:
    """Within the block, HF's sampled assisted generation verifies with ``sd.rejection_sample``.

    Raises ``RuntimeError`` on entry on an untested transformers version (see the module
    docstring); restores transformers' own verifier on exit.

    >>> with assisted_generation_verifier():  # doctest: +SKIP
    ...     out = target.generate(ids, assistant_model=draft, do_sample=True, max_new_tokens=32)
    """
    _check_version()
    original = generation_utils._speculative_sampling
    generation_utils._speculative_sampling = specdecode_speculative_sampling
    try:
        yield
    finally:
        generation_utils._speculative_sampling = original


def _uses_specdecode() -> bool:
    """Whether transformers' assisted generation currently verifies with this package."""
    return generation_utils._speculative_sampling is specdecode_speculative_sampling
