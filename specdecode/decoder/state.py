"""What the decode loops share: the sampling settings, the prompts as ids, and one decode state.

- ``SamplingSettings``: temperature, random generator and EOS, checked once, in one place, with
  errors that name the argument.
- ``encode_prompts``: strings, token lists or a ``[B, P]`` integer tensor as right-padded ids,
  checked against the vocabulary.
- ``DecodeState``: the per-row state of a batch being decoded -- token buffer, committed
  lengths, prompt lengths, active rows and the KV caches -- used by ``generate``,
  ``speculative_generate`` and the Best-of-N engine (``best_of_n.CandidateBatch``).

**KV cache lengths.** The state keeps each cache's ``KVCache.lengths`` true: row ``b``'s next
forward of that model starts writing at ``cache.lengths[b]``, and every position before it holds
the K/V of one of the row's committed tokens. A cache trails the committed length by the tokens
the next forward feeds again: one for plain decoding, the speculative target and Best-of-N (the
last committed token), two for the speculative draft (it re-reads the last two). ``commit_``
advances every cache with the lengths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

from specdecode.core import check_int
from specdecode.decoder.model import KVCache, Transformer
from specdecode.decoder.tokenizer import EOS_ID, PAD_ID, tokenizer

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | Tensor
NO_TOKEN = -1  # the fill of output token slots after a row's end


@dataclass(frozen=True)
class SamplingSettings:
    """How every loop draws a token and when a row stops; checked on construction.

    ``temperature``: 0 for greedy (argmax), else sampling from ``softmax(logits / temperature)``.
    ``generator``: the random generator of the draws (the global one if ``None``).
    ``eos_id``: a row stops after emitting it (``None``: never stop early)."""

    temperature: float = 0.0
    generator: torch.Generator | None = None
    eos_id: int | None = EOS_ID

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, Real) or not t >= 0:
            raise ValueError(f"temperature must be a number >= 0 (0 = greedy), got {t!r}")
        object.__setattr__(self, "temperature", float(t))
        if self.generator is not None and not isinstance(self.generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(self.generator).__name__}")
        if self.eos_id is not None:
            check_int("eos_id", self.eos_id, minimum=0)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def probs(self, logits: Tensor) -> Tensor:
        """The float32 distribution ``[..., V]`` a token is drawn from: ``softmax(logits / temperature)``
        (plain softmax when greedy, where only its argmax matters)."""
        logits = logits.float()
        return (logits if self.greedy else logits / self.temperature).softmax(-1)

    def sample(self, probs: Tensor) -> Tensor:
        """One id per row of ``probs [B, V]``: the argmax when greedy, else a draw from ``probs``."""
        if self.greedy:
            return probs.argmax(-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1)


def check_model(name: str, model) -> Transformer:
    """``model`` itself, or ``TypeError`` naming ``name``."""
    if not isinstance(model, Transformer):
        raise TypeError(f"{name} must be a specdecode.decoder.model.Transformer, got {type(model).__name__}")
    return model


def encode_prompts(
    prompts: Prompts, device: torch.device | str | None = None, vocab_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """Prompts as ``(ids [B, P] int64 right-padded with PAD, lengths [B] int64)``.

    Strings are byte-encoded with BOS in front; token lists are used as given (non-empty); a
    ``[B, P]`` integer tensor is taken as B prompts of length P. With ``vocab_size``, every
    prompt id must lie in ``[0, vocab_size)``. Bad prompts raise ``TypeError``/``ValueError``
    naming ``prompts``."""
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2 or prompts.numel() == 0:
            raise ValueError(
                f"prompts: a prompt tensor must be [B, P] with B > 0 and P > 0, got shape {list(prompts.shape)}"
            )
        _check_integer_ids(prompts.dtype)
        ids = prompts.to(device=device, dtype=torch.int64)
        lengths = torch.full((ids.shape[0],), ids.shape[1], dtype=torch.int64, device=device)
    else:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
        if not rows or any(len(r) == 0 for r in rows):
            raise ValueError("prompts must be a non-empty list of non-empty prompts")
        width = max(len(r) for r in rows)
        try:
            as_tensor = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])  # floats stay float here
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"prompts: token lists must hold integer ids ({error})") from error
        _check_integer_ids(as_tensor.dtype)
        ids = as_tensor.to(device=device, dtype=torch.int64)
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)
    if vocab_size is not None:
        _check_ids_in_vocabulary(ids, lengths, vocab_size)
    return ids, lengths


def _check_integer_ids(dtype: torch.dtype) -> None:
    if dtype.is_floating_point or dtype.is_complex or dtype == torch.bool:
        raise TypeError(f"prompts must hold integer token ids, got {dtype} (ids are never rounded silently)")


def _check_ids_in_vocabulary(ids: Tensor, lengths: Tensor, vocab_size: int) -> None:
    """One host sync, once per call (not on the decode path): PAD beyond a row's length is not checked."""
    valid = torch.arange(ids.shape[1], device=ids.device) < lengths[:, None]
    real = ids[valid]
    low, high = int(real.min()), int(real.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"prompts: token id {bad} is outside the model's vocabulary [0, {vocab_size})")


@dataclass
class DecodeState:
    """The per-row state of a batch being decoded (batch in dim 0 of every tensor).

    ``tokens [B, S]`` int64: each row's prompt, then its committed new tokens, PAD after;
    ``lengths [B]`` int64: tokens committed (prompt included); ``prompt_lengths [B]`` int64;
    ``active [B]`` bool: rows still generating (a frozen row's length no longer moves);
    ``caches``: one ``KVCache`` per model that decodes this batch, and ``trails``: by how many
    tokens each cache's ``lengths`` trails ``lengths`` (module docstring).
    """

    tokens: Tensor
    lengths: Tensor
    prompt_lengths: Tensor
    active: Tensor
    caches: tuple[KVCache, ...]
    trails: tuple[int, ...]

    ROW_TENSORS = ("tokens", "lengths", "prompt_lengths", "active")

    @classmethod
    def start(
        cls, ids: Tensor, prompt_lengths: Tensor, width: int, caches: Sequence[KVCache], trails: Sequence[int]
    ) -> DecodeState:
        """Rows holding the prompts ``ids [B, P]`` (lengths ``prompt_lengths [B]``) in a ``width``-token
        buffer, every row active, nothing generated yet; each cache's lengths set by its trail."""
        batch_size, prompt_width = ids.shape
        tokens = torch.full((batch_size, width), PAD_ID, dtype=torch.int64, device=ids.device)
        tokens[:, :prompt_width] = ids
        active = torch.ones(batch_size, dtype=torch.bool, device=ids.device)
        state = cls(tokens, prompt_lengths.clone(), prompt_lengths.clone(), active, tuple(caches), tuple(trails))
        state.sync_cache_lengths_()
        return state

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    @property
    def rows(self) -> Tensor:
        return torch.arange(self.batch_size, device=self.tokens.device)

    def num_new(self) -> Tensor:
        """``[B]`` new tokens committed per row."""
        return self.lengths - self.prompt_lengths

    def token_at(self, position: Tensor) -> Tensor:
        """``[B]`` each row's token at ``position [B]``."""
        return self.tokens[self.rows, position]

    def last_tokens(self) -> Tensor:
        """``[B]`` each row's last committed token."""
        return self.token_at(self.lengths - 1)

    def commit_(self, new_tokens: Tensor, counts: Tensor) -> None:
        """Append the first ``counts[b]`` of ``new_tokens [B, T]`` to row ``b`` (``counts [B]``, 0 for
        a row that commits nothing); slots past a row's count keep what the buffer held."""
        slots = torch.arange(new_tokens.shape[1], device=new_tokens.device)
        rows = self.rows[:, None]
        write_pos = self.lengths[:, None] + slots
        self.tokens[rows, write_pos] = torch.where(slots < counts[:, None], new_tokens, self.tokens[rows, write_pos])
        self.lengths = self.lengths + counts
        self.sync_cache_lengths_()

    def sync_cache_lengths_(self) -> None:
        """Each cache's ``lengths`` of the batch's rows = committed lengths minus its trail."""
        for cache, trail in zip(self.caches, self.trails, strict=True):
            cache.lengths[: self.batch_size] = (self.lengths - trail).clamp_min(0)

    def row_tensors(self) -> list[Tensor]:
        """The per-row tensors, in ``ROW_TENSORS`` order, for compaction together with the caches."""
        return [getattr(self, name) for name in self.ROW_TENSORS]

    def set_row_tensors(self, tensors: Sequence[Tensor]) -> None:
        for name, tensor in zip(self.ROW_TENSORS, tensors, strict=True):
            setattr(self, name, tensor)

    def new_tokens(self, max_new_tokens: int) -> tuple[Tensor, Tensor]:
        """Each row's committed new tokens, at most ``max_new_tokens`` (``response_tokens``)."""
        return response_tokens(self.tokens, self.prompt_lengths, self.num_new(), max_new_tokens)


def response_tokens(
    tokens: Tensor, prompt_lengths: Tensor, num_new: Tensor, max_new_tokens: int
) -> tuple[Tensor, Tensor]:
    """The first ``num_new [B]`` (at most ``max_new_tokens``) tokens after each row's prompt in
    ``tokens [B, S]`` (``prompt_lengths [B]``), as ``([B, max_new_tokens] int64, NO_TOKEN after
    each row's end; [B] counts)``."""
    num_tokens = num_new.clamp_max(max_new_tokens)
    slots = torch.arange(max_new_tokens, device=tokens.device)
    gathered = tokens.gather(1, (prompt_lengths[:, None] + slots).clamp_max(tokens.shape[1] - 1))
    return torch.where(slots < num_tokens[:, None], gathered, NO_TOKEN), num_tokens
