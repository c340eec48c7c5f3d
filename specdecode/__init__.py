"""specdecode: fused kernels for lossless speculative sampling and Speculative Rejection."""
import torch  # noqa: F401  (loads libtorch before the extension that links against it)

from specdecode import _C  # noqa: F401  (registers the torch.ops.specdecode.* schemas and CPU kernels)
from specdecode.rejection import RejectionOutput, RejectionSampler, rejection_sample  # noqa: F401
