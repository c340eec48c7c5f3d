"""specdecode for Hugging Face ``transformers`` causal LMs.

- ``speculative_generate(target, draft, input_ids, ...)``: batched, lossless speculative
  decoding for any HF causal-LM pair sharing a tokenizer, verified by ``sd.rejection_sample``.
- ``compact_hf_cache_(cache, kept_indices, extra=())``: in-place compaction of a ``DynamicCache``
  or ``StaticCache`` (and per-row tensors) with ``sd.compact_kv_cache_``; the narrowed views are
  put back into the cache's layers.
- ``best_of_n`` / ``speculative_rejection`` for any HF policy and reward (see
  ``specdecode.integrations.hf_best_of_n``, re-exported here).
- ``assisted_generation_verifier()``: a context manager under which HF's own
  ``generate(assistant_model=...)`` verifies with this package's op.

Only this module (and its siblings under ``specdecode.integrations``) imports ``transformers``.

Modules: ``hf_common`` (distributions, cache compaction, KV sizes), ``hf_speculative``,
``hf_best_of_n``, ``hf_assisted``.
"""

from specdecode.integrations.hf_assisted import assisted_generation_verifier, specdecode_speculative_sampling
from specdecode.integrations.hf_best_of_n import (
    BestOfNOutput,
    ClassifierReward,
    TextReward,
    TokenReward,
    as_reward,
    best_of_n,
    kv_bytes_per_token,
    speculative_rejection,
)
from specdecode.integrations.hf_common import (
    TESTED_TRANSFORMERS_VERSIONS,
    SamplingConfig,
    compact_hf_cache_,
    fit_vocab,
)
from specdecode.integrations.hf_speculative import SpeculativeOutput, speculative_generate

__all__ = [
    "SamplingConfig",
    "SpeculativeOutput",
    "speculative_generate",
    "compact_hf_cache_",
    "best_of_n",
    "speculative_rejection",
    "BestOfNOutput",
    "TokenReward",
    "TextReward",
    "ClassifierReward",
    "as_reward",
    "kv_bytes_per_token",
    "assisted_generation_verifier",
    "specdecode_speculative_sampling",
    "fit_vocab",
    "TESTED_TRANSFORMERS_VERSIONS",
]
