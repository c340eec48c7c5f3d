"""specdecode: fused kernels for lossless speculative sampling and Speculative Rejection.

Ops (``torch.ops.specdecode.*``, C++ on CPU, Triton on CUDA) and their public wrappers in
``specdecode.ops``: ``rejection_sample``, ``topk_prune``, ``compact_kv_cache_``. A reference
decoder in ``specdecode.decoder`` uses them end to end: ``generate``, ``speculative_generate``,
``best_of_n``, ``speculative_rejection``.

Importing the package loads the compiled extension ``specdecode._C`` (it declares the op
schemas, which the wrappers register their CUDA and fake kernels against), also when only the
decoder or training is used.
"""

import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from specdecode import _C  # noqa: F401  (registers the torch.ops.specdecode.* schemas and CPU kernels)
from specdecode.core import PruneResult, RejectionOutput, num_keep_from_alpha
from specdecode.decoder.best_of_n import (
    BestOfNOutput,
    LogLikelihoodReward,
    RewardModel,
    best_of_n,
    kv_bytes_per_token,
    max_candidates_for_budget,
    speculative_rejection,
)
from specdecode.decoder.generate import default_dtypes, generate, load_pretrained, speculative_generate
from specdecode.decoder.tree import TreeSpec
from specdecode.ops.compact_kv import KVCacheCompactor, compact_kv_cache_
from specdecode.ops.rejection_sample import RejectionSampler, rejection_sample
from specdecode.ops.rejection_sample_ragged import RaggedRejectionSampler, rejection_sample_ragged
from specdecode.ops.topk_prune import RewardPruner, kept_indices_from_mask, topk_prune
from specdecode.ops.tree_rejection_sample import (
    TreeRejectionOutput,
    TreeRejectionSampler,
    parents_from_first_child_next_sibling,
    tree_rejection_sample,
)

__all__ = [
    "rejection_sample",
    "RejectionSampler",
    "RejectionOutput",
    "rejection_sample_ragged",
    "RaggedRejectionSampler",
    "tree_rejection_sample",
    "TreeRejectionSampler",
    "TreeRejectionOutput",
    "parents_from_first_child_next_sibling",
    "topk_prune",
    "compact_kv_cache_",
    "kept_indices_from_mask",
    "num_keep_from_alpha",
    "PruneResult",
    "RewardPruner",
    "KVCacheCompactor",
    "generate",
    "speculative_generate",
    "TreeSpec",
    "load_pretrained",
    "default_dtypes",
    "best_of_n",
    "speculative_rejection",
    "BestOfNOutput",
    "LogLikelihoodReward",
    "RewardModel",
    "kv_bytes_per_token",
    "max_candidates_for_budget",
]
