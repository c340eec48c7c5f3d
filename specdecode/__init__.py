"""specdecode: fused kernels for lossless speculative sampling and Speculative Rejection.

Ops (``torch.ops.specdecode.*``, C++ on CPU, Triton on CUDA) and their public wrappers:
``rejection_sample``, ``topk_prune``, ``compact_kv_cache_``. A reference decoder that uses them
end to end: ``generate``, ``speculative_generate``, ``best_of_n``, ``speculative_rejection``.
"""
import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from specdecode import _C  # noqa: F401  (registers the torch.ops.specdecode.* schemas and CPU kernels)
from specdecode.rejection import RejectionOutput, RejectionSampler, rejection_sample
from specdecode.pruning import (KVCacheCompactor, PruneResult, RewardPruner, compact_kv_cache_,
                                kept_indices_from_mask, num_keep_from_alpha, topk_prune)
from specdecode.generate import default_dtypes, generate, load_pretrained, speculative_generate
from specdecode.best_of_n import (BestOfNOutput, LogLikelihoodReward, RewardModel, best_of_n, kv_bytes_per_token,
                                  max_candidates_for_budget, speculative_rejection)

__all__ = [
    "rejection_sample", "RejectionSampler", "RejectionOutput",
    "topk_prune", "compact_kv_cache_", "kept_indices_from_mask", "num_keep_from_alpha", "PruneResult",
    "RewardPruner", "KVCacheCompactor",
    "generate", "speculative_generate", "load_pretrained", "default_dtypes",
    "best_of_n", "speculative_rejection", "BestOfNOutput", "LogLikelihoodReward", "RewardModel",
    "kv_bytes_per_token", "max_candidates_for_budget",
]
