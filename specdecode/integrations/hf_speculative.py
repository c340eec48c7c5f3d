"""Batched lossless speculative decoding for a Hugging Face causal-LM pair: ``speculative_generate``.

**How a batch whose rows accept different numbers of tokens shares one HF cache.** An HF cache has
one length for the whole batch. Every row keeps its tokens in cache *columns*; a column a row
does not use (left padding, a rejected draft of this row while another row accepted more) is a
*dead slot*: its attention-mask entry is 0, so no query ever attends to it, and each row's tokens
get their own ``position_ids`` (the number of live columns before them), so RoPE sees the row as
if it were alone. After a verify the cache is cropped to the longest accepted run, so a step
leaves ``max(accepted) - accepted[b]`` dead slots in row ``b`` and none at batch 1. When more than
``2 (K + 1)`` columns are dead in every row, the live columns of each row are gathered to the
right (a repack: keys already carry their rotary positions, so only the mask moves with them), so
every step starts from at most ``longest live row + 2 (K + 1)`` columns, however long the run.
Finished rows leave the batch (``compact_hf_cache_``). ``stats`` reports the dead slots.

Measured (tiny Llama pair, K = 4, 96 new tokens, 7-token prompts): batch 1 has no dead slot; at
batch 4 and 8 the cache ends at 100-107 columns with repacking against 154-205 without, and
14-17% of the slots the forwards read are dead (left padding included) against 31-50%.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache

from specdecode.integrations.hf_common import SamplingConfig, cache_argument, compact_hf_cache_, eos_ids
from specdecode.ops.rejection_sample import rejection_sample

__all__ = ["SpeculativeOutput", "SpeculativeSettings", "speculative_generate"]


# ---------------------------------------------------------------------------------------------
# Speculative decoding
# ---------------------------------------------------------------------------------------------


@dataclass
class SpeculativeOutput:
    """``sequences [B, P + W]``: the prompt as given, then each row's new tokens, rows that
    finished early padded with ``pad_token_id`` -- the layout of ``target.generate(...)``
    (``W`` = the longest row's new tokens). ``num_new_tokens [B]``. ``stats``: see
    ``speculative_generate``."""

    sequences: Tensor
    num_new_tokens: Tensor
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SpeculativeSettings:
    """What one ``speculative_generate`` call was asked for (its keyword arguments, grouped)."""

    num_draft_tokens: int
    max_new_tokens: int
    sampling: SamplingConfig
    eos_token_id: int | Sequence[int] | None
    seed: int


class _RowState:
    """Per-row decoding state of the live rows, all with the batch in dim 0 (compacted together
    with both caches when rows finish)."""

    names = ("mask", "num_live", "pending", "lag_token", "row")

    def __init__(self, mask: Tensor, pending: Tensor) -> None:
        self.mask = mask  # [B, T] int64: 1 = a live cache column of this row (target's columns)
        self.num_live = mask.sum(1)  # [B]: live columns = this row's tokens in the target cache
        self.pending = pending  # [B]: the last committed token, not yet in either cache
        self.lag_token = torch.zeros_like(pending)  # [B]: the draft's missing last column, if it lags
        self.row = torch.arange(mask.shape[0], device=mask.device)  # [B]: index in the caller's batch

    def tensors(self) -> list[Tensor]:
        return [getattr(self, name) for name in self.names]

    def set(self, tensors: Sequence[Tensor]) -> None:
        for name, tensor in zip(self.names, tensors):
            setattr(self, name, tensor)


class _SpeculativeRun:
    """One call of ``speculative_generate``: the caches, the row state and the steps."""

    def __init__(self, target, draft, input_ids: Tensor, settings: SpeculativeSettings) -> None:
        self.target, self.draft = target, draft
        self.k = settings.num_draft_tokens
        self.max_new_tokens = settings.max_new_tokens
        self.sampling = settings.sampling
        self.device = input_ids.device
        self.eos_ids = eos_ids(settings.eos_token_id, self.device)
        self.vocab_size = target.get_output_embeddings().weight.shape[0]
        self.seed = settings.seed
        self.draft_generator = torch.Generator(self.device).manual_seed(self.seed)
        batch_size = input_ids.shape[0]
        width = self.max_new_tokens + self.k + 1
        self.new_tokens = torch.zeros(batch_size, width, dtype=torch.int64, device=self.device)
        self.num_new = torch.zeros(batch_size, dtype=torch.int64, device=self.device)
        self.target_cache = DynamicCache(config=target.config)
        self.draft_cache = DynamicCache(config=draft.config)
        self.step = 0
        self.stats = {
            "target_forwards": 0,
            "draft_forwards": 0,
            "accepted_hist": torch.zeros(self.k + 1, dtype=torch.int64),
            "repacks": 0,
            "max_dead_columns": 0,
        }

    # -- forwards ------------------------------------------------------------------------------

    def _forward(self, model, cache: Cache, tokens: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        counter = "target_forwards" if model is self.target else "draft_forwards"
        self.stats[counter] += 1
        inputs = {"input_ids": tokens, "attention_mask": mask, "position_ids": positions, "use_cache": True}
        return model(**inputs, **{cache_argument(model): cache}).logits

    def _choose(self, logits: Tensor) -> tuple[Tensor, Tensor | None]:
        """A draft token per row from ``logits [B, V_draft]`` and the distribution it came from."""
        if self.sampling.greedy:
            return self.sampling.greedy_token(logits, self.vocab_size), None
        probs = self.sampling.probs(logits, self.vocab_size)
        return torch.multinomial(probs, 1, generator=self.draft_generator).squeeze(-1), probs

    def _target_probs(self, logits: Tensor) -> Tensor:
        """What the verifier gets from the target: the processed distribution, or, greedy, a
        one-hot of the logits' argmax (exactly ``generate``'s choice even where softmax rounding
        would tie two different logits)."""
        if self.sampling.greedy:
            token = self.sampling.greedy_token(logits, self.vocab_size)
            return torch.nn.functional.one_hot(token, self.vocab_size).float()
        return self.sampling.probs(logits, self.vocab_size)

    # -- steps ---------------------------------------------------------------------------------

    def prefill(self, input_ids: Tensor, attention_mask: Tensor) -> None:
        """Both models read the prompts (positions as ``generate`` computes them for left
        padding); the target's last logits give every row its first new token."""
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)
        logits = self._forward(self.target, self.target_cache, input_ids, attention_mask, positions)
        self._forward(self.draft, self.draft_cache, input_ids, attention_mask, positions)
        empty = input_ids.new_zeros((input_ids.shape[0], 0))
        first = self._verify(empty, None, self._target_probs(logits[:, -1:]))
        self.rows = _RowState(attention_mask.clone(), first.token_ids[:, 0])
        self._commit(first.token_ids, first.num_accepted)

    def propose(self) -> tuple[Tensor, Tensor | None]:
        """K draft tokens per row (K one-token forwards; the first also writes the column the
        draft lags behind the target after a step that accepted every draft)."""
        rows = self.rows
        lag = self.target_cache.get_seq_length() - self.draft_cache.get_seq_length()
        tokens, positions = rows.pending[:, None], rows.num_live[:, None]
        if lag:
            tokens = torch.stack([rows.lag_token, rows.pending], 1)
            positions = torch.stack([rows.num_live - 1, rows.num_live], 1)
        drafts, draft_probs = [], []
        for j in range(self.k):
            mask = self._extended_mask(j + 1)
            logits = self._forward(self.draft, self.draft_cache, tokens, mask, positions)[:, -1]
            token, probs = self._choose(logits)
            drafts.append(token)
            draft_probs.append(probs)
            tokens, positions = token[:, None], rows.num_live[:, None] + j + 1
        draft_ids = torch.stack(drafts, 1)
        return draft_ids, None if self.sampling.greedy else torch.stack(draft_probs, 1)

    def verify(self, draft_ids: Tensor, draft_probs: Tensor | None) -> None:
        """The target reads ``[pending, x_1..x_K]`` in one forward; ``rejection_sample`` accepts a
        prefix per row; the caches are cropped to the longest accepted run."""
        rows = self.rows
        tokens = torch.cat([rows.pending[:, None], draft_ids], 1)
        positions = rows.num_live[:, None] + torch.arange(self.k + 1, device=self.device)
        logits = self._forward(self.target, self.target_cache, tokens, self._extended_mask(self.k + 1), positions)
        out = self._verify(draft_ids, draft_probs, self._target_probs(logits))
        accepted = out.num_accepted
        self.stats["accepted_hist"] += torch.bincount(accepted.cpu(), minlength=self.k + 1)
        longest = int(accepted.max())  # the one host sync of a step
        # Column j of this step holds input j: live for the row iff j <= accepted (pending + accepted drafts).
        live = (torch.arange(longest + 1, device=self.device) <= accepted[:, None]).to(rows.mask.dtype)
        rows.mask = torch.cat([rows.mask, live], 1)
        rows.num_live = rows.num_live + accepted + 1
        self.target_cache.crop(-(self.k - longest))
        draft_surplus = self.k - longest - 1  # the draft read pending + x_1..x_{K-1}
        if draft_surplus > 0:
            self.draft_cache.crop(-draft_surplus)
        rows.lag_token = draft_ids[:, -1]  # used only when the draft lags (longest == K)
        rows.pending = out.token_ids.gather(1, accepted[:, None]).squeeze(1)
        self._commit(out.token_ids, accepted)

    def _verify(self, draft_ids: Tensor, draft_probs: Tensor | None, target_probs: Tensor):
        out = rejection_sample(
            draft_ids, draft_probs, target_probs, greedy=self.sampling.greedy, seed=self.seed, offset=self.step
        )
        self.step += 1
        return out

    def _extended_mask(self, num_new_columns: int) -> Tensor:
        mask = self.rows.mask
        return torch.cat([mask, mask.new_ones(mask.shape[0], num_new_columns)], 1)

    def _commit(self, token_ids: Tensor, accepted: Tensor) -> None:
        """Append each live row's emitted tokens (``token_ids [B, k]``, the first ``accepted + 1``)."""
        row = self.rows.row
        for j in range(token_ids.shape[1]):
            emitted = j <= accepted
            self.new_tokens[row[emitted], self.num_new[row[emitted]] + j] = token_ids[emitted, j]
        self.num_new[row] += accepted + 1

    def finished(self) -> Tensor:
        """``[B_live]`` bool: rows with ``max_new_tokens`` tokens or an EOS among them."""
        row = self.rows.row
        done = self.num_new[row] >= self.max_new_tokens
        if self.eos_ids:
            slots = torch.arange(self.new_tokens.shape[1], device=self.device)
            written = slots < self.num_new[row, None]
            done |= (torch.isin(self.new_tokens[row], self.eos_ids) & written).any(1)
        return done

    def drop_finished(self, finished: Tensor) -> None:
        """Finished rows leave the batch: both caches and the row state are compacted in place."""
        kept = (~finished).nonzero().flatten()
        state = compact_hf_cache_(self.target_cache, kept, extra=self.rows.tensors())
        compact_hf_cache_(self.draft_cache, kept)
        self.rows.set(state)

    def repack_if_sparse(self) -> None:
        """Gather each row's live columns to the right when more than ``2 (K + 1)`` columns are
        dead in every row (keys carry their rotary positions, so moving them is exact)."""
        rows = self.rows
        length = rows.mask.shape[1]
        reclaimable = length - int(rows.num_live.max())
        if reclaimable <= 2 * (self.k + 1):
            # What the next forward carries (measured after the decision, so at most 2 (K + 1)).
            self.stats["max_dead_columns"] = max(self.stats["max_dead_columns"], reclaimable)
            return
        if self.target_cache.get_seq_length() != self.draft_cache.get_seq_length():
            self._catch_up_draft()
        new_length = length - reclaimable
        # Stable sort puts each row's dead columns first and its live ones, in order, last.
        order = torch.sort(rows.mask, dim=1, stable=True).indices[:, -new_length:]
        for cache in (self.target_cache, self.draft_cache):
            for layer in cache.layers:
                index = order[:, None, :, None]
                layer.keys = layer.keys.gather(2, index.expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3]))
                layer.values = layer.values.gather(
                    2, index.expand(-1, layer.values.shape[1], -1, layer.values.shape[3])
                )
        rows.mask = rows.mask.gather(1, order)
        self.stats["repacks"] += 1

    def _catch_up_draft(self) -> None:
        """Write the draft's missing last column now (its logits are not needed)."""
        rows = self.rows
        tokens, positions = rows.lag_token[:, None], (rows.num_live - 1)[:, None]
        self._forward(self.draft, self.draft_cache, tokens, rows.mask, positions)

    def sequences(self, input_ids: Tensor, pad_token_id: int | None) -> tuple[Tensor, Tensor]:
        """``generate``'s layout: prompt, new tokens cut at ``max_new_tokens`` and after EOS, pad."""
        num_new = self.num_new.clamp_max(self.max_new_tokens)
        slots = torch.arange(self.new_tokens.shape[1], device=self.device)
        if self.eos_ids:
            is_eos = torch.isin(self.new_tokens, self.eos_ids) & (slots < num_new[:, None])
            first_eos = torch.where(is_eos, slots, self.new_tokens.shape[1]).amin(1)
            num_new = torch.minimum(num_new, first_eos + 1)
        width = int(num_new.max())
        pad = 0 if pad_token_id is None else pad_token_id
        new = torch.where(slots[:width] < num_new[:, None], self.new_tokens[:, :width], pad)
        return torch.cat([input_ids, new], 1), num_new


def _check_speculative_args(
    target, draft, input_ids: Tensor, attention_mask: Tensor, settings: SpeculativeSettings
) -> None:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [B, P] with P > 0; got shape {list(input_ids.shape)}")
    if attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask {list(attention_mask.shape)} must match input_ids {list(input_ids.shape)}")
    if bool((attention_mask[:, -1] == 0).any()):
        raise ValueError("prompts must be left-padded (attention_mask[:, -1] must be 1), as for generate()")
    if settings.num_draft_tokens < 1 or settings.max_new_tokens < 1:
        raise ValueError("num_draft_tokens and max_new_tokens must be >= 1")
    if settings.sampling.do_sample and not settings.sampling.temperature > 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {settings.sampling.temperature}")
    for name, model in (("target", target), ("draft", draft)):
        if not hasattr(model, "get_output_embeddings") or model.get_output_embeddings() is None:
            raise TypeError(f"{name} must be a Hugging Face causal LM (with an output embedding)")
        types = set(getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ["full_attention"])
        if types != {"full_attention"}:
            raise ValueError(f"{name} has {sorted(types)} layers; only full-attention models are supported")


@torch.no_grad()
def speculative_generate(
    target,
    draft,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    num_draft_tokens: int,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
) -> SpeculativeOutput:
    """Batched lossless speculative decoding with a Hugging Face causal-LM pair.

    The draft proposes ``num_draft_tokens`` (K) tokens per row, the target scores them in one
    forward, and ``sd.rejection_sample`` accepts a prefix per row and emits one more token:
    the output is distributed exactly as ``target.generate(do_sample=..., temperature=...,
    top_k=..., top_p=...)`` (greedy: the target's argmax, token for token up to floating-point
    differences between one-token and (K+1)-token forwards). Rows accept different numbers of
    tokens per step; see the module docstring for how they share one HF cache.

    Args:
        target, draft: HF causal LMs (``AutoModelForCausalLM``) sharing a tokenizer, with
            full-attention layers. Any dtypes (e.g. a bf16 target and an fp32 draft: logits are
            widened to float32, exactly). The verified vocabulary is the target's output width;
            a draft with more ids (padding) gives them zero mass, one with fewer pads with zero.
        input_ids: ``[B, P]`` int64 prompts, left-padded like ``generate``'s inputs.
        attention_mask: ``[B, P]`` (1 = token, 0 = left padding); ``None``: no padding.
        num_draft_tokens: K >= 1.
        max_new_tokens: new tokens per row at most.
        do_sample, temperature, top_k, top_p: as in ``generate`` (only these are applied, to both
            models; the models' ``generation_config`` is not read).
        eos_token_id: an id or ids ending a row (``None``: rows run to ``max_new_tokens``).
        pad_token_id: fills finished rows in ``sequences`` (default: the first EOS id, as
            ``generate`` does, else 0).
        seed: makes the run reproducible (draft draws and the verifier's Philox stream); ``None``
            draws one from torch's default generator.

    Returns:
        ``SpeculativeOutput(sequences [B, P + W], num_new_tokens [B], stats)`` with ``stats``:
        ``target_forwards``, ``draft_forwards`` (prefill included), ``accepted_hist`` (``[K+1]``
        row-steps that accepted 0..K drafts), ``mean_accepted_length`` (tokens per row-step),
        ``seconds``, ``cache_length`` / ``dead_slot_fraction`` (of the target cache at the end:
        columns, and the share of row x column slots not attended -- left padding included),
        ``mean_dead_slot_fraction`` (the same, averaged over steps), ``max_dead_columns`` (columns
        dead in every row when a step starts: at most ``2 (K + 1)``) and ``repacks``.

    >>> out = speculative_generate(target, draft, ids, mask, num_draft_tokens=4, max_new_tokens=32)  # doctest: +SKIP
    >>> out.sequences.shape  # doctest: +SKIP
    torch.Size([4, 40])
    """
    start = time.perf_counter()
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(torch.int64)
    if seed is None:
        seed = int(torch.randint(2**62, (1,)))
    sampling = SamplingConfig(do_sample, temperature, top_k, top_p)
    settings = SpeculativeSettings(num_draft_tokens, max_new_tokens, sampling, eos_token_id, seed)
    _check_speculative_args(target, draft, input_ids, attention_mask, settings)
    run = _SpeculativeRun(target, draft, input_ids, settings)
    run.prefill(input_ids, attention_mask)
    dead_slots = all_slots = 0
    while True:
        finished = run.finished()
        if bool(finished.all()):
            break
        if bool(finished.any()):
            run.drop_finished(finished)
        run.repack_if_sparse()
        draft_ids, draft_probs = run.propose()
        run.verify(draft_ids, draft_probs)
        dead_slots += int((run.rows.mask == 0).sum())
        all_slots += run.rows.mask.numel()
    if pad_token_id is None and run.eos_ids is not None:
        pad_token_id = int(run.eos_ids[0])
    sequences, num_new = run.sequences(input_ids, pad_token_id)
    stats = run.stats
    hist = stats["accepted_hist"]
    row_steps = int(hist.sum())
    stats["mean_accepted_length"] = (
        float((hist * torch.arange(1, num_draft_tokens + 2)).sum()) / row_steps if row_steps else 0.0
    )
    stats["cache_length"] = run.rows.mask.shape[1]
    stats["dead_slot_fraction"] = float((run.rows.mask == 0).float().mean())
    stats["mean_dead_slot_fraction"] = dead_slots / all_slots if all_slots else 0.0
    stats["seconds"] = time.perf_counter() - start
    return SpeculativeOutput(sequences, num_new, stats)
