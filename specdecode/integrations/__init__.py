"""Integrations of specdecode's ops with other libraries.

- ``specdecode.integrations.transformers``: batched speculative decoding, Best-of-N and
  Speculative Rejection for Hugging Face ``transformers`` models, and in-place compaction of
  their KV caches. Needs the ``hf`` extra (``pip install specdecode[hf]``).

Importing this package imports nothing optional; only the submodules do.
"""
