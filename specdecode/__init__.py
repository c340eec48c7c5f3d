"""specdecode: fused kernels for lossless speculative sampling and Speculative Rejection."""
import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from specdecode import _C  # noqa: F401  (registers the torch.ops.specdecode.* schemas and CPU kernels)
from specdecode.rejection import RejectionOutput, RejectionSampler, rejection_sample  # noqa: F401
from specdecode.pruning import KVCacheCompactor, PruneResult, RewardPruner, compact_kv_cache_, kept_indices_from_mask, num_keep_from_alpha, topk_prune  # noqa: F401
from specdecode.generate import generate, load_pretrained, speculative_generate  # noqa: F401
from specdecode.best_of_n import BestOfNOutput, LogLikelihoodReward, RewardModel, best_of_n, kv_bytes_per_token, max_candidates_for_budget, speculative_rejection  # noqa: F401
