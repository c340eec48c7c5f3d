"""Pure-PyTorch references: the spec in code. Tests compare the C++ and Triton kernels to these."""
