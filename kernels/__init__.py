"""Triton kernels (installed as ``specdecode.kernels``). One module per op: the ``@triton.jit``
kernel, then its launcher, then ``aot_cases()`` listing the launches it makes at realistic sizes.

The launchers take tensors on any device Triton can run on: CUDA, or CPU tensors under
``TRITON_INTERPRET=1`` (which must be set before this package is imported). The public ops in
``specdecode`` route CUDA tensors here and CPU tensors to the C++ kernels in ``csrc/``.
"""

import os


def is_interpreting() -> bool:
    """True under the Triton interpreter (``TRITON_INTERPRET=1``), which runs kernels on CPU
    tensors one program at a time: launchers then pick tiles that suit it, not a GPU."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Modules with kernels; each defines aot_cases() (see _aot.py). Add new kernel modules here.
KERNEL_MODULES = ["rejection_sample", "topk_prune", "compact_kv", "tree_rejection_sample", "rejection_sample_ragged"]
