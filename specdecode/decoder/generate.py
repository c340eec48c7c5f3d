"""Plain and speculative batched generation with the reference decoder (``specdecode.decoder.model``).

Both loops keep every row of the batch in its own place in a static KV cache, addressed by
per-row positions, so rows of different lengths (ragged prompts, ragged acceptance) share one
forward pass. Finished rows stay in the batch, frozen (their length no longer moves), until
every row is done.

Host syncs: one per step, ``active.any()``, to stop when every row has finished. Everything
else — sampling, verification, commits, rollbacks, the acceptance histogram — stays on the
device.

Speculative step, per row with ``n`` committed tokens (the caches hold positions ``0..n-2``;
the last committed token is fed again as the first input of the step):

1. The draft reads tokens ``n-2, n-1`` and proposes ``x_1..x_K`` (K forwards). It re-reads
   ``n-2`` because after a step that accepted all K drafts its cache lacks ``x_K``; rewriting
   a position it already holds is harmless, and this keeps every row on one uniform path.
2. The target reads ``[token n-1, x_1..x_K]`` at positions ``n-1..n+K-1``: ``K+1`` distributions.
3. ``rejection_sample`` accepts ``a`` drafts and emits one more token; the row commits
   ``a+1`` tokens. Rolling back the rejected drafts is just ``n += a+1``: their cache entries
   sit beyond the row's position, masked, and are overwritten by the next step.

The probabilities passed to the verifier are exactly those the tokens were sampled from: the
temperature-scaled softmax, for both models.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from specdecode.decoder.model import ModelConfig, Transformer
from specdecode.decoder.tokenizer import EOS_ID, PAD_ID, tokenizer
from specdecode.ops.rejection_sample import rejection_sample

Prompts = str | Sequence[str] | Sequence[Sequence[int]] | Tensor
WEIGHTS_DIR = os.path.join(os.path.dirname(__file__), "weights")


@dataclass
class GenerationOutput:
    tokens: Tensor  # [B, max_new_tokens] int64: each row's new tokens, then -1
    num_tokens: Tensor  # [B] int64: new tokens per row (up to and including EOS)
    stats: dict = field(default_factory=dict)

    def texts(self) -> list[str]:
        """The new tokens of each row decoded as text (specials dropped)."""
        return [tokenizer.decode(row[:n]) for row, n in zip(self.tokens.tolist(), self.num_tokens.tolist())]


def default_dtypes(device: torch.device | str | None = None) -> tuple[torch.dtype, torch.dtype]:
    """``(target, draft)`` dtypes ``load_pretrained`` uses by default.

    The target runs in bf16 (its weights ship in bf16) wherever bf16 matmuls are fast (CUDA, or
    a CPU with AMX tiles): its forward is then bound by streaming its weights, so a (K+1)-token
    verify costs about what a one-token step does, the regime speculative decoding is for.
    Elsewhere bf16 matmuls are emulated and slow, so float32. The draft runs in float32: at
    its size every forward is a few small launches, and bf16 only adds conversions to them."""
    device = torch.device("cpu" if device is None else device)
    fast_bf16 = device.type == "cuda" or (
        device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )
    return (torch.bfloat16 if fast_bf16 else torch.float32), torch.float32


def load_pretrained(
    device: torch.device | str | None = None,
    dtype: torch.dtype | tuple[torch.dtype, torch.dtype] | None = None,
    weights_dir: str | None = None,
) -> tuple[Transformer, Transformer]:
    """The shipped ``(target, draft)`` pair (trained by ``python -m specdecode.decoder.train``), in eval
    mode; ``weights_dir`` loads a pair trained with ``--out`` instead. ``dtype``: one dtype for
    both, a ``(target, draft)`` pair, or ``None`` for ``default_dtypes(device)``; a model's
    cached attention, KV cache, final norm and output head stay float32 under a narrower body
    (``Transformer.widen_``).
    Each model's ``training_info`` holds the recipe and numbers the training run recorded."""
    weights_dir = WEIGHTS_DIR if weights_dir is None else weights_dir
    dtypes = default_dtypes(device) if dtype is None else dtype if isinstance(dtype, tuple) else (dtype, dtype)
    return tuple(
        load_model(os.path.join(weights_dir, f"{name}.pt"), device, model_dtype)
        for name, model_dtype in zip(("target", "draft"), dtypes)
    )


def load_model(path: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Transformer:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = Transformer(ModelConfig(**checkpoint["config"]))
    model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    model.training_info = checkpoint.get("meta", {})
    return model.to(device=device, dtype=dtype).widen_(torch.float32).eval()


def encode_prompts(prompts: Prompts, device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Prompts as ``(ids [B, P] int64 right-padded with PAD, lengths [B] int64)``.

    Strings are byte-encoded with BOS in front; token lists are used as given (non-empty);
    a ``[B, P]`` tensor is taken as B prompts of length P."""
    if isinstance(prompts, Tensor):
        if prompts.dim() != 2 or prompts.shape[1] == 0:
            raise ValueError(f"a prompt tensor must be [B, P] with P > 0, got shape {list(prompts.shape)}")
        ids = prompts.to(device=device, dtype=torch.int64)
        return ids, torch.full((ids.shape[0],), ids.shape[1], dtype=torch.int64, device=device)
    if isinstance(prompts, str):
        prompts = [prompts]
    rows = [tokenizer.encode(p) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("prompts must be a non-empty list of non-empty prompts")
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows], dtype=torch.int64, device=device)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.int64, device=device)


def logits_to_probs(logits: Tensor, temperature: float) -> Tensor:
    """The float32 distribution a token is drawn from: ``softmax(logits / temperature)``
    (plain softmax for greedy, where only its argmax matters)."""
    logits = logits.float()
    return (logits if temperature == 0 else logits / temperature).softmax(-1)


def sample_from(probs: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """One id per row of ``probs [B, V]``: the argmax when greedy, else a draw from ``probs``."""
    if temperature == 0:
        return probs.argmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(model: Transformer, max_new_tokens: int, temperature: float, needed_len: int) -> None:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if needed_len > model.config.max_seq_len:
        raise ValueError(
            f"prompt + max_new_tokens (+ speculation slack) needs {needed_len} positions; "
            f"the model addresses {model.config.max_seq_len}"
        )


def _stop_early(tokens: Tensor, num_new: Tensor, eos_id: int | None) -> tuple[Tensor, Tensor]:
    """Cut each row's ``num_new`` new ``tokens [B, W]`` after its first EOS; also say which rows hit one."""
    if eos_id is None:
        return num_new, torch.zeros_like(num_new, dtype=torch.bool)
    slots = torch.arange(tokens.shape[1], device=tokens.device)
    is_eos = (tokens == eos_id) & (slots < num_new[:, None])
    first_eos = torch.where(is_eos, slots, tokens.shape[1]).amin(1)
    return torch.minimum(num_new, first_eos + 1), is_eos.any(1)


def _finish(buffer: Tensor, start: Tensor, num_new: Tensor, max_new_tokens: int) -> tuple[Tensor, Tensor]:
    """Gather each row's new tokens from the sequence ``buffer`` into ``[B, max_new_tokens]``, -1 padded."""
    num_tokens = num_new.clamp_max(max_new_tokens)
    slots = torch.arange(max_new_tokens, device=buffer.device)
    gathered = buffer.gather(1, (start[:, None] + slots).clamp_max(buffer.shape[1] - 1))
    return torch.where(slots < num_tokens[:, None], gathered, -1), num_tokens


@torch.no_grad()
def generate(
    model: Transformer,
    prompts: Prompts,
    max_new_tokens: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = EOS_ID,
) -> GenerationOutput:
    """Plain batched decoding: prefill each prompt, then one token per row per forward.

    Args:
        model: a ``Transformer``.
        prompts: see ``encode_prompts`` (strings, token lists, or a ``[B, P]`` tensor).
        max_new_tokens: new tokens per row at most.
        temperature: 0 for greedy (argmax), else sampling from ``softmax(logits / temperature)``.
        generator: for the sampling draws.
        eos_id: a row stops after emitting it (``None``: never stop early).
    Returns:
        ``GenerationOutput`` with ``tokens [B, max_new_tokens]`` (-1 after each row's end),
        ``num_tokens [B]`` and ``stats`` (forward passes, seconds, tokens/s).
    """
    device = model.output.weight.device
    ids, lengths = encode_prompts(prompts, device)
    B, P = ids.shape
    _check_args(model, max_new_tokens, temperature, P + max_new_tokens)
    start_time = time.perf_counter()
    rows = torch.arange(B, device=device)
    cache = model.new_cache(B, P + max_new_tokens)
    buffer = torch.full((B, P + max_new_tokens + 1), PAD_ID, dtype=torch.int64, device=device)
    buffer[:, :P] = ids
    n, num_new = lengths.clone(), torch.zeros_like(lengths)
    # Prefill all but each row's last token, which the first step feeds, as speculative_generate
    # does: every position either loop reads back is then computed by the same kind of forward
    # (matmul kernels are not batch-shape invariant, so this keeps greedy outputs comparable).
    if P > 1:
        model(ids[:, :-1], torch.zeros_like(lengths), cache)
    logits = model(buffer[rows, n - 1][:, None], n - 1, cache)[:, -1]  # (B, V) at each row's end
    active = torch.ones(B, dtype=torch.bool, device=device)
    forwards = 1 + int(P > 1)
    for step in range(max_new_tokens):
        token = sample_from(logits_to_probs(logits, temperature), temperature, generator)
        token = torch.where(active, token, PAD_ID)  # frozen rows feed PAD at their frozen position
        buffer[rows, n] = torch.where(active, token, buffer[rows, n])
        advance = active.long()
        n, num_new = n + advance, num_new + advance
        if eos_id is not None:
            active = active & (token != eos_id)
        if step == max_new_tokens - 1 or not bool(active.any()):  # the one host sync per step
            break
        logits = model(token[:, None], n - 1, cache)[:, -1]
        forwards += 1
    seconds = time.perf_counter() - start_time
    tokens, num_tokens = _finish(buffer, lengths, num_new, max_new_tokens)
    total = int(num_tokens.sum())
    return GenerationOutput(
        tokens,
        num_tokens,
        {"forwards": forwards, "seconds": seconds, "tokens_generated": total, "tokens_per_second": total / seconds},
    )


@torch.no_grad()
def speculative_generate(
    target: Transformer,
    draft: Transformer,
    prompts: Prompts,
    max_new_tokens: int,
    num_draft_tokens: int = 4,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = EOS_ID,
) -> GenerationOutput:
    """Batched speculative decoding: the draft proposes ``K = num_draft_tokens`` tokens per row,
    the target verifies them in one forward, ``specdecode.rejection_sample`` accepts a prefix
    per row (rows accept different numbers). The output is distributed exactly as
    ``generate(target, ...)`` (greedy: identical tokens).

    Args: as ``generate``, plus ``draft`` (same vocabulary) and ``num_draft_tokens`` (K >= 1).
    Returns:
        ``GenerationOutput``; ``stats`` has ``accepted_hist`` (list of K+1 counts: row-steps that
        accepted 0..K drafts), ``mean_accepted_length`` (tokens emitted per row-step, accepted
        drafts + 1), ``acceptance_rate`` (accepted / proposed drafts), ``steps``,
        ``target_forwards``, ``draft_forwards``, ``seconds``, ``tokens_generated``, ``tokens_per_second``.
    """
    K = num_draft_tokens
    if K < 1:
        raise ValueError(f"num_draft_tokens must be >= 1, got {K}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(
            f"target and draft vocabularies differ: {target.config.vocab_size} vs {draft.config.vocab_size}"
        )
    device = target.output.weight.device
    ids, lengths = encode_prompts(prompts, device)
    B, P = ids.shape
    # A frozen row may sit K past its budget and still write K+1 positions beyond that.
    max_len = P + max_new_tokens + 2 * K + 1
    for model in (target, draft):
        _check_args(model, max_new_tokens, temperature, max_len)
    greedy = temperature == 0
    start_time = time.perf_counter()
    rows = torch.arange(B, device=device)
    slots = torch.arange(K + 1, device=device)
    target_cache, draft_cache = target.new_cache(B, max_len), draft.new_cache(B, max_len)
    buffer = torch.full((B, max_len + K + 1), PAD_ID, dtype=torch.int64, device=device)
    buffer[:, :P] = ids
    if P > 1:  # prefill all but each row's last token (PAD tail positions are overwritten later)
        target(ids[:, :-1], torch.zeros_like(lengths), target_cache)
        draft(ids[:, :-1], torch.zeros_like(lengths), draft_cache)
    n, num_new = lengths.clone(), torch.zeros_like(lengths)
    active = torch.ones(B, dtype=torch.bool, device=device)
    accepted_hist = torch.zeros(K + 1, dtype=torch.int64, device=device)
    steps = 0
    while True:
        draft_ids, draft_probs = _propose(draft, draft_cache, buffer, n, K, temperature, generator)
        verify_tokens = torch.cat([buffer[rows, n - 1][:, None], draft_ids], 1)  # (B, K+1)
        target_probs = logits_to_probs(target(verify_tokens, n - 1, target_cache), temperature)  # (B, K+1, V)
        out = rejection_sample(
            draft_ids, None if greedy else draft_probs, target_probs, greedy=greedy, generator=generator
        )
        emitted = out.num_accepted + 1
        emitted, hit_eos = _stop_early(out.token_ids, emitted, eos_id)
        emitted = torch.where(active, emitted, 0)
        write_pos = n[:, None] + slots
        buffer[rows[:, None], write_pos] = torch.where(
            slots < emitted[:, None], out.token_ids, buffer[rows[:, None], write_pos]
        )
        accepted_hist.index_add_(0, out.num_accepted, active.long())
        n, num_new = n + emitted, num_new + emitted
        active = active & ~hit_eos & (num_new < max_new_tokens)
        steps += 1
        if not bool(active.any()):  # the one host sync per step
            break
    seconds = time.perf_counter() - start_time
    tokens, num_tokens = _finish(buffer, lengths, num_new, max_new_tokens)
    stats = _spec_stats(accepted_hist, steps, K, seconds, num_tokens)
    stats["target_forwards"] += int(P > 1)  # the prefill
    stats["draft_forwards"] += int(P > 1)
    return GenerationOutput(tokens, num_tokens, stats)


def _propose(
    draft: Transformer, cache, buffer: Tensor, n: Tensor, K: int, temperature: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """K draft tokens per row ``[B, K]`` and the distributions they were drawn from ``[B, K, V]``."""
    rows = torch.arange(buffer.shape[0], device=buffer.device)
    prev = (n - 2).clamp_min(0)  # a one-token prompt re-reads position 0 twice: same K/V, harmless
    logits = draft(torch.stack([buffer[rows, prev], buffer[rows, n - 1]], 1), torch.stack([prev, n - 1], 1), cache)[
        :, -1
    ]
    tokens, dists = [], []
    for i in range(K):
        probs = logits_to_probs(logits, temperature)
        token = sample_from(probs, temperature, generator)
        tokens.append(token)
        dists.append(probs)
        if i < K - 1:  # x_K is not fed now: the next step re-reads it if it is accepted
            logits = draft(token[:, None], n + i, cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(dists, 1)


def _spec_stats(accepted_hist: Tensor, steps: int, K: int, seconds: float, num_tokens: Tensor) -> dict:
    hist = accepted_hist.tolist()
    row_steps = max(1, sum(hist))
    accepted = sum(a * c for a, c in enumerate(hist))
    total = int(num_tokens.sum())
    return {
        "accepted_hist": hist,
        "mean_accepted_length": (accepted + row_steps) / row_steps,
        "acceptance_rate": accepted / (K * row_steps),
        "steps": steps,
        "target_forwards": steps,
        "draft_forwards": steps * K,
        "seconds": seconds,
        "tokens_generated": total,
        "tokens_per_second": total / seconds,
    }
