"""What the Hugging Face integration's modules share: the token distributions (``SamplingConfig``,
the way ``generate`` processes logits), in-place compaction of HF caches (``compact_hf_cache_``),
the KV size of an HF model (``kv_bytes_per_token``) and the transformers versions it is tested on.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer, StaticLayer
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from specdecode.ops.compact_kv import compact_kv_cache_

__all__ = [
    "SamplingConfig",
    "fit_vocab",
    "compact_hf_cache_",
    "eos_ids",
    "cache_argument",
    "TESTED_TRANSFORMERS_VERSIONS",
]

# The transformers releases the tests of this integration ran against (the `hf` extra pins this range).
TESTED_TRANSFORMERS_VERSIONS = ("5.23", "5.24")


# ---------------------------------------------------------------------------------------------
# Distributions
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is chosen from a model's logits, applied identically to target and draft.

    ``do_sample=False`` is greedy (argmax of the logits; the warpers are ignored, as in
    ``generate``). Otherwise the logits are widened to float32 and processed as ``generate``
    does -- temperature, then top-k, then top-p, with HF's own warpers -- and softmaxed.

    >>> SamplingConfig(do_sample=True, temperature=0.7, top_k=50).greedy
    False
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return not self.do_sample

    def warpers(self) -> LogitsProcessorList:
        """The warpers ``generate`` would build for these settings, in its order."""
        warpers = LogitsProcessorList()
        if self.temperature is not None and self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k is not None and self.top_k != 0:
            warpers.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p is not None and self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p))
        return warpers

    def probs(self, logits: Tensor, vocab_size: int) -> Tensor:
        """``[..., vocab_size]`` float32 distributions from ``[..., V_model]`` logits of any dtype.

        Ids the model has but the verified vocabulary lacks are dropped *before* the softmax
        (they get zero mass, the rest is renormalised: the model then samples only ids the target
        knows); ids the model lacks are padded with ``-inf`` (zero mass). Widening bf16/fp16 to
        float32 is exact, so the target's distribution is exactly the one ``generate`` samples."""
        logits = fit_vocab(logits.float(), vocab_size)
        shape = logits.shape
        flat = logits.reshape(-1, vocab_size)
        flat = self.warpers()(None, flat)
        return flat.softmax(-1).reshape(shape)

    def greedy_token(self, logits: Tensor, vocab_size: int) -> Tensor:
        """The argmax over the verified vocabulary (first maximum, as ``generate``'s argmax)."""
        return fit_vocab(logits.float(), vocab_size).argmax(-1)


def fit_vocab(logits: Tensor, vocab_size: int) -> Tensor:
    """``[..., V]`` logits cut or ``-inf``-padded to ``[..., vocab_size]`` (padding = zero mass).

    >>> fit_vocab(torch.zeros(1, 3), 4).tolist()
    [[0.0, 0.0, 0.0, -inf]]
    """
    width = logits.shape[-1]
    if width >= vocab_size:
        return logits[..., :vocab_size]
    padding = logits.new_full((*logits.shape[:-1], vocab_size - width), float("-inf"))
    return torch.cat([logits, padding], -1)


# ---------------------------------------------------------------------------------------------
# Cache compaction
# ---------------------------------------------------------------------------------------------


def compact_hf_cache_(cache: Cache, kept_indices: Tensor, extra: Sequence[Tensor] = ()) -> list[Tensor]:
    """Keep batch rows ``kept_indices`` (ascending) of an HF cache, in place, as rows ``0..N'-1``.

    Every layer's ``keys``/``values`` (``[B, kv_heads, T, head_dim]``, also the strided views
    ``crop()`` leaves) are compacted by ``sd.compact_kv_cache_`` -- no second cache is allocated --
    and the narrowed views are assigned back into the layers, so the next forward sees a batch
    of ``N'``. Works for ``DynamicCache`` and ``StaticCache`` (``StaticLayer.batch_size`` is
    updated too). ``extra``: per-row tensors (batch dim 0) compacted in the same call.

    Returns:
        the narrowed views of ``extra``, in order.

    >>> views = compact_hf_cache_(cache, torch.tensor([0, 2]), extra=[attention_mask])  # doctest: +SKIP
    >>> attention_mask = views[0]  # doctest: +SKIP
    """
    layers = [layer for layer in cache.layers if layer.is_initialized]
    for i, layer in enumerate(layers):
        if type(layer) not in (DynamicLayer, StaticLayer):
            raise TypeError(
                f"compact_hf_cache_ supports DynamicLayer and StaticLayer caches; layer {i} is "
                f"{type(layer).__name__} (sliding-window, quantised and linear-attention layers are not supported)"
            )
    tensors = [t for layer in layers for t in (layer.keys, layer.values)] + list(extra)
    views = compact_kv_cache_(tensors, kept_indices, batch_dim=0)
    for i, layer in enumerate(layers):
        layer.keys, layer.values = views[2 * i], views[2 * i + 1]
        if isinstance(layer, StaticLayer):
            layer.batch_size = kept_indices.numel()
    return views[2 * len(layers) :]


def eos_ids(eos_token_id: int | Sequence[int] | None, device: torch.device | str | None = None) -> Tensor | None:
    """EOS ids as a 1-D int64 tensor, or ``None`` for "never stop early".

    >>> eos_ids([2, 7]).tolist()
    [2, 7]
    """
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.int64, device=device) if ids else None


def cache_argument(model) -> str:
    """The name under which ``model.forward`` takes its KV cache: ``cache`` from transformers 5.24
    (``past_key_values`` is deprecated there, to be removed in 5.40), ``past_key_values`` before."""
    parameters = inspect.signature(model.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"
