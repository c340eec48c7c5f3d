"""The public ops, one module per op: ``rejection_sample``, ``topk_prune``, ``compact_kv``.

Each module registers the op's CUDA kernel (the Triton launcher in ``specdecode.kernels``) and
its fake kernel against the schema that ``csrc/<op>.cpp`` declares, checks arguments, and offers
the op as a function and as an ``nn.Module``.
"""
