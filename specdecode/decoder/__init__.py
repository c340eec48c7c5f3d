"""The reference decoder: a small Llama-style model with a KV cache, its byte tokenizer, plain and
speculative generation, Best-of-N and Speculative Rejection, rewards, training, and the shipped
trained draft/target pair (``weights/``). It uses the public ops from ``specdecode.ops``."""
