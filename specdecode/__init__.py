"""specdecode: fused kernels for lossless speculative sampling and Speculative Rejection."""
from specdecode import _C  # noqa: F401  (registers the torch.ops.specdecode.* schemas and CPU kernels)
