"""Plain and speculative batched generation with the reference decoder (``specdecode.decoder.model``).

Both loops run on one ``DecodeState`` (``specdecode.decoder.state``): every row of the batch
keeps its own place in a static KV cache, addressed by per-row positions, so rows of different
lengths (ragged prompts, ragged acceptance) share one forward pass. Finished rows stay in the
batch, frozen (their length no longer moves), until every row is done. The steps are named
after what they do: ``prefill``, ``decode_one_token``; ``propose``, ``verify``,
``commit_verified_``.

Host syncs: one per step, ``active.any()``, to stop when every row has finished. Everything
else — sampling, verification, commits, rollbacks, the acceptance histogram — stays on the
device.

Speculative step, per row with ``n`` committed tokens (the target's cache holds positions
``0..n-2``, its ``lengths`` is ``n-1``; the last committed token is fed again as the first input
of the step):

1. ``propose``: the draft reads tokens ``n-2, n-1`` and proposes ``x_1..x_K`` (K forwards). It
   re-reads ``n-2`` because after a step that accepted all K drafts its cache lacks ``x_K``;
   rewriting a position it already holds is harmless, and this keeps every row on one path.
2. ``verify``: the target reads ``[token n-1, x_1..x_K]`` at positions ``n-1..n+K-1``: ``K+1``
   distributions.
3. ``rejection_sample`` accepts ``a`` drafts and emits one more token; ``commit_verified_``
   commits ``a+1`` tokens. Rolling back the rejected drafts is just ``n += a+1``: their cache
   entries sit beyond the row's cache length, masked, and are overwritten by the next step.

The probabilities passed to the verifier are exactly those the tokens were sampled from: the
temperature-scaled softmax, for both models.

Tree step (``speculative_generate(..., tree=TreeSpec...)``, ``specdecode.decoder.tree``), per row:

1. ``propose_tree``: the draft re-reads its last ``D + 1`` committed tokens (``D`` = the tree's
   depth; two for a chain with siblings) and drafts a tree of ``T`` nodes (static top-k,
   EAGLE-2-style dynamic, or the draft's chain plus its most valuable runner-ups).
2. ``verify_tree``: the target reads ``[token n-1, node_0..node_{T-1}]`` in one forward with tree
   attention: node ``i`` is written at position ``n + i``, rotated as position ``n - 1 + depth``,
   and attends to the committed prefix and its ancestors: ``T+1`` distributions.
3. ``accept_tree_path`` (``tree_rejection_sample``) accepts a path of ``a <= D`` nodes and emits one more token;
   ``keep_accepted_path_`` moves the path's K/V to positions ``n .. n+a-1`` (the rest of the tree
   lies beyond the cache length, masked, overwritten later); ``commit_verified_`` commits ``a+1``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from specdecode.core import RejectionOutput, check_int
from specdecode.decoder.model import KVCache, ModelConfig, Transformer
from specdecode.decoder.state import DecodeState, Prompts, SamplingSettings, check_model, encode_prompts
from specdecode.decoder.tokenizer import EOS_ID, PAD_ID, tokenizer
from specdecode.decoder.tree import DraftTree, TreeSpec, draft_chain, propose_tree
from specdecode.ops.rejection_sample import rejection_sample
from specdecode.ops.tree_rejection_sample import TreeRejectionOutput, tree_rejection_sample

__all__ = [
    "GenerationOutput",
    "generate",
    "speculative_generate",
    "load_pretrained",
    "default_dtypes",
    "encode_prompts",
    "TreeSpec",
]
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


def prefill(model: Transformer, cache: KVCache, ids: Tensor) -> int:
    """Feed every prompt of ``ids [B, P]`` but its last token (the first decode step feeds it), at
    positions ``0..P-2``; return the forwards run (0 for one-token prompts). A shorter prompt's
    PAD tail lands beyond its cache length: masked, and overwritten later. Both loops prefill so,
    so every position either loop reads back is computed by the same kind of forward (matmul
    kernels are not batch-shape invariant; this keeps greedy outputs comparable)."""
    if ids.shape[1] == 1:
        return 0
    model(ids[:, :-1], torch.zeros(ids.shape[0], dtype=torch.int64, device=ids.device), cache)
    return 1


def decode_one_token(model: Transformer, cache: KVCache, tokens: Tensor) -> Tensor:
    """Feed ``tokens [B]``, one per row at its cache length; the next-token logits ``[B, V]``."""
    return model(tokens[:, None], cache=cache)[:, -1]


def _check_fits(model: Transformer, needed_len: int) -> None:
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
        prompts: see ``encode_prompts`` (strings, token lists, or a ``[B, P]`` integer tensor);
            ids must lie in the model's vocabulary.
        max_new_tokens: new tokens per row at most (an int >= 1).
        temperature: 0 for greedy (argmax), else sampling from ``softmax(logits / temperature)``.
        generator: for the sampling draws.
        eos_id: a row stops after emitting it (``None``: never stop early).
    Returns:
        ``GenerationOutput`` with ``tokens [B, max_new_tokens]`` (-1 after each row's end),
        ``num_tokens [B]`` and ``stats`` (forward passes, seconds, tokens/s).
    Raises:
        ``TypeError``/``ValueError`` naming the bad argument.
    """
    check_model("model", model)
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    sampling = SamplingSettings(temperature, generator, eos_id)
    device = model.output.weight.device
    ids, prompt_lengths = encode_prompts(prompts, device, model.config.vocab_size)
    B, P = ids.shape
    _check_fits(model, P + max_new_tokens)
    start_time = time.perf_counter()
    cache = model.new_cache(B, P + max_new_tokens)
    state = DecodeState.start(ids, prompt_lengths, P + max_new_tokens + 1, [cache], trails=[1])
    forwards = prefill(model, cache, ids) + 1
    logits = decode_one_token(model, cache, state.last_tokens())
    for step in range(max_new_tokens):
        token = sampling.sample(sampling.probs(logits))
        token = torch.where(state.active, token, PAD_ID)  # frozen rows feed PAD at their frozen position
        state.commit_(token[:, None], state.active.long())
        if sampling.eos_id is not None:
            state.active = state.active & (token != sampling.eos_id)
        if step == max_new_tokens - 1 or not bool(state.active.any()):  # the one host sync per step
            break
        logits = decode_one_token(model, cache, token)
        forwards += 1
    seconds = time.perf_counter() - start_time
    tokens, num_tokens = state.new_tokens(max_new_tokens)
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
    tree: TreeSpec | None = None,
) -> GenerationOutput:
    """Batched speculative decoding: the draft proposes ``K = num_draft_tokens`` tokens per row,
    the target verifies them in one forward, ``specdecode.rejection_sample`` accepts a prefix
    per row (rows accept different numbers). The output is distributed exactly as
    ``generate(target, ...)`` (greedy: identical tokens).

    With ``tree`` (a ``TreeSpec``) the draft proposes a token tree per row instead of a chain and
    ``specdecode.tree_rejection_sample`` accepts a path of it (``num_draft_tokens`` is then not
    used); the output is again distributed exactly as ``generate``'s (greedy: identical tokens).

    Args: as ``generate``, plus ``draft`` (same vocabulary), ``num_draft_tokens`` (an int K >= 1),
        ``tree`` (``None``: chains).
    Returns:
        ``GenerationOutput``; ``stats`` has ``accepted_hist`` (list of K+1 counts: row-steps that
        accepted 0..K drafts; a tree's K is its depth), ``mean_accepted_length`` (tokens emitted
        per row-step, accepted drafts + 1), ``acceptance_rate`` (accepted drafts / K per row-step),
        ``steps``, ``target_forwards``, ``draft_forwards``, ``verified_tokens_per_step`` (K + 1,
        or T + 1 for a tree of T nodes), ``seconds``, ``tokens_generated``, ``tokens_per_second``.
    Raises:
        ``TypeError``/``ValueError`` naming the bad argument.
    """
    check_model("target", target)
    check_model("draft", draft)
    K = check_int("num_draft_tokens", num_draft_tokens, minimum=1)
    if tree is not None and not isinstance(tree, TreeSpec):
        raise TypeError(f"tree must be a TreeSpec or None, got {type(tree).__name__}")
    if target.config.vocab_size != draft.config.vocab_size:
        raise ValueError(
            f"target and draft vocabularies differ: {target.config.vocab_size} vs {draft.config.vocab_size}"
        )
    check_int("max_new_tokens", max_new_tokens, minimum=1)
    sampling = SamplingSettings(temperature, generator, eos_id)
    device = target.output.weight.device
    ids, prompt_lengths = encode_prompts(prompts, device, target.config.vocab_size)
    B, P = ids.shape
    if tree is not None:
        K = tree.max_depth  # the most drafts one step accepts
    # A frozen row may sit K past its budget and still write a step's positions beyond that: K+1
    # for a chain; for a tree, the positions its step writes from the root on.
    scratch = K + 1 if tree is None else tree.cache_nodes
    max_len = P + max_new_tokens + K + scratch
    for model in (target, draft):
        _check_fits(model, max_len)
    start_time = time.perf_counter()
    target_cache, draft_cache = target.new_cache(B, max_len), draft.new_cache(B, max_len)
    # The draft's cache trails by the tokens it re-reads each step (propose, propose_tree).
    draft_trail = 2 if tree is None else tree.draft_trail
    state = DecodeState.start(ids, prompt_lengths, max_len + K + 1, [target_cache, draft_cache], [1, draft_trail])
    prefills = prefill(target, target_cache, ids)
    prefill(draft, draft_cache, ids)
    accepted_hist = torch.zeros(K + 1, dtype=torch.int64, device=device)
    steps = 0
    while True:
        if tree is None:
            out = chain_step(target, draft, state, K, sampling)
        else:
            out = tree_step(target, draft, state, tree, sampling)
        accepted_hist.index_add_(0, out.num_accepted, state.active.long())
        commit_verified_(state, out, sampling.eos_id, max_new_tokens)
        steps += 1
        if not bool(state.active.any()):  # the one host sync per step
            break
    seconds = time.perf_counter() - start_time
    tokens, num_tokens = state.new_tokens(max_new_tokens)
    stats = _spec_stats(accepted_hist, steps, K, seconds, num_tokens)
    stats["target_forwards"] += prefills
    stats["draft_forwards"] += prefills
    stats["verified_tokens_per_step"] = (K if tree is None else tree.num_nodes) + 1
    return GenerationOutput(tokens, num_tokens, stats)


def chain_step(
    target: Transformer, draft: Transformer, state: DecodeState, K: int, sampling: SamplingSettings
) -> RejectionOutput:
    """Propose K drafts per row, verify them in one target forward, accept a prefix."""
    target_cache, draft_cache = state.caches
    draft_ids, draft_probs = propose(draft, draft_cache, state, K, sampling)
    target_probs = verify(target, target_cache, state, draft_ids, sampling)
    return rejection_sample(
        draft_ids,
        None if sampling.greedy else draft_probs,
        target_probs,
        greedy=sampling.greedy,
        generator=sampling.generator,
    )


def tree_step(
    target: Transformer, draft: Transformer, state: DecodeState, spec: TreeSpec, sampling: SamplingSettings
) -> RejectionOutput:
    """Draft a tree per row, verify it in one target forward, accept a path and keep its K/V.
    Returns the accepted path's tokens and the emitted one (``[B, D+1]``) and the path lengths."""
    target_cache, draft_cache = state.caches
    tree = propose_tree(draft, draft_cache, state, spec, sampling)
    target_probs = verify_tree(target, target_cache, state, tree, sampling)
    token_ids, accepted_nodes, num_accepted = accept_tree_path(tree, target_probs, sampling)
    keep_accepted_path_(target_cache, state, accepted_nodes[:, : spec.max_depth])
    return RejectionOutput(token_ids[:, : spec.max_depth + 1], num_accepted)


def verify_tree(
    target: Transformer, cache: KVCache, state: DecodeState, tree: DraftTree, sampling: SamplingSettings
) -> Tensor:
    """The target's distributions ``[B, T+1, V]`` after each row's last committed token (row 0) and
    after each node of its tree (row ``i+1``): one forward of ``[token n-1, node_0..node_{T-1}]``
    with tree attention, the root at position ``n-1`` (the cache's length), node ``i`` written at
    ``n + i``. A padding node (token ``-1``, never accepted, nobody's ancestor) is fed as token 0."""
    verify_tokens = torch.cat([state.last_tokens()[:, None], tree.tokens.clamp_min(0)], 1)
    return sampling.probs(target(verify_tokens, cache=cache, tree=tree.attention(state.lengths - 1)))


def keep_accepted_path_(cache: KVCache, state: DecodeState, accepted_nodes: Tensor) -> None:
    """Move the K/V of each row's accepted path (``accepted_nodes [B, D]``: node indices, then -1)
    from where ``verify_tree`` wrote it (node ``j`` at ``n + j``) to consecutive positions
    ``n, n+1, ...`` after the root, in place. A path's nodes are ascending and node ``j`` has depth
    at most ``j + 1``, so every move goes left; ``-1`` entries move nothing. Frozen rows move too,
    but only positions beyond their cache length, which they never read."""
    root = state.lengths - 1
    dst = root[:, None] + 1 + torch.arange(accepted_nodes.shape[1], device=root.device)
    src = torch.where(accepted_nodes >= 0, root[:, None] + 1 + accepted_nodes, dst)
    cache.move_positions_(src, dst)


def accept_tree_path(tree: DraftTree, target_probs: Tensor, sampling: SamplingSettings) -> TreeRejectionOutput:
    """``specdecode.tree_rejection_sample`` on one step's trees, with the drawing rule the drafter
    used (``DraftTree.draft_probs``/``draws``, see ``specdecode.decoder.tree``): ``token_ids
    [B, T+1]``, ``accepted_nodes [B, T]``, ``num_accepted [B]``."""
    return tree_rejection_sample(
        tree.tokens,
        tree.parents,
        tree.draft_probs,
        target_probs,
        draws=tree.draws,
        greedy=sampling.greedy,
        generator=sampling.generator,
    )


def propose(
    draft: Transformer, cache: KVCache, state: DecodeState, K: int, sampling: SamplingSettings
) -> tuple[Tensor, Tensor]:
    """K draft tokens per row ``[B, K]`` and the distributions they were drawn from ``[B, K, V]``:
    ``tree.draft_chain`` with ``sampling``'s draws (K forwards, the first re-reading each row's last
    two committed tokens; a chain with siblings drafts its chain through the same loop)."""
    return draft_chain(draft, cache, state, K, sampling.probs, sampling.sample)


def verify(
    target: Transformer, cache: KVCache, state: DecodeState, draft_ids: Tensor, sampling: SamplingSettings
) -> Tensor:
    """The target's distributions ``[B, K+1, V]`` after each row's last committed token and each of
    its drafts ``draft_ids [B, K]``: one forward of ``[token n-1, x_1..x_K]`` at positions
    ``n-1..n+K-1`` (the cache's lengths)."""
    verify_tokens = torch.cat([state.last_tokens()[:, None], draft_ids], 1)
    return sampling.probs(target(verify_tokens, cache=cache))


def commit_verified_(state: DecodeState, out: RejectionOutput, eos_id: int | None, max_new_tokens: int) -> None:
    """Commit each active row's accepted drafts and emitted token (cut after EOS); rolling back the
    rejected drafts is just not advancing: their cache entries lie beyond the cache lengths,
    masked, and are overwritten by the next step. Rows that hit EOS or the budget freeze."""
    emitted, hit_eos = _stop_early(out.token_ids, out.num_accepted + 1, eos_id)
    emitted = torch.where(state.active, emitted, 0)
    state.commit_(out.token_ids, emitted)
    state.active = state.active & ~hit_eos & (state.num_new() < max_new_tokens)


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
