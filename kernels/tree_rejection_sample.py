"""Triton kernel for token-tree verification: the walk down the tree, acceptance and the emitted token, fused.

The algorithm and the random stream are those of ``specdecode/reference/tree_rejection_sample.py``.
Two kernels, one program per row each:

- ``_tree_walk_kernel``: a single pass over the nodes in index order tries each live child of the
  current node (a gathered ``q(x)``, ``p(x)``), keeping the sibling group's updated target
  ``q' = max(0, q - c p) / S`` as scalars; a pass over the vocabulary recomputes ``S`` only when
  a sibling is tried after a rejection. It writes the path and the final node's ``c``.
- ``_tree_emit_kernel``: streams the one target (and draft) row the emitted token is sampled
  from, without the final node's rejected children. (In one kernel, the walk's state stayed
  live across this stream and spilled registers on sm_80, sm_90 and gfx942.)

The Philox uniforms and the NaN-safe argmax are the chain verifier's (``kernels/rejection_sample.py``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._aot import AotCase
from .rejection_sample import NUM_WARPS, _nan_safe_argmax, _uniform, default_block_v

NO_NODE = tl.constexpr(-1)  # "no node": the root as a parent, padding in the outputs


@triton.jit
def _tree_weights(q_row, p_row, c, offs, q_limit, p_limit, HAS_DRAFT_PROBS: tl.constexpr):
    """max(0, q - c p) on one tile, NaN -> 0. Entries at offs >= q_limit read as 0; p is read for
    offs < p_limit only (p_limit = 0 when c = 0, so the weight is exactly max(0, q))."""
    diff = tl.load(q_row + offs, mask=offs < q_limit, other=0.0).to(tl.float32)
    if HAS_DRAFT_PROBS:
        diff = diff - c * tl.load(p_row + offs, mask=offs < p_limit, other=0.0).to(tl.float32)
    return tl.where(diff > 0, diff, 0.0)


@triton.jit
def _drop_tokens(w, start, dropped_ids, BLOCK_V: tl.constexpr):
    """Zero the tile's weights at ``dropped_ids`` (a small vector of token ids, -1 = none): a
    histogram of the ids that fall in the tile marks the lanes, without a loop over the ids
    (a scalar loop here spilled scalar registers)."""
    lane = dropped_ids - start
    in_tile = (lane >= 0) & (lane < BLOCK_V)
    marks = tl.histogram(tl.where(in_tile, lane, 0), BLOCK_V, mask=in_tile)
    return tl.where(marks > 0, 0.0, w)


@triton.jit
def _residual_mass(q_row, p_row, c, V, HAS_DRAFT_PROBS: tl.constexpr, BLOCK_V: tl.constexpr):
    """S = sum_v max(0, q - c p): the normaliser of q' (rejected tokens carry no mass in exact
    arithmetic, so they are not dropped here)."""
    total = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        total += tl.sum(_tree_weights(q_row, p_row, c, offs, V, V, HAS_DRAFT_PROBS), 0)
    return total


@triton.jit
def _sample_tree_residual(
    q_row, p_row, c, p_limit, dropped_ids, u, V, HAS_DRAFT_PROBS: tl.constexpr, BLOCK_V: tl.constexpr
):
    """Inverse CDF of w = max(0, q - c p) without the tokens ``dropped_ids`` (-1 = none): the
    smallest v with w_v > 0 and cumsum(w)_v > u * sum(w); -1 if sum(w) is not positive."""
    total = 0.0
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        w = _tree_weights(q_row, p_row, c, offs, V, p_limit, HAS_DRAFT_PROBS)
        total += tl.sum(_drop_tokens(w, start, dropped_ids, BLOCK_V), 0)
    threshold = u * total
    running = 0.0
    found = -1
    last_positive = -1
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        # Once found, the remaining tiles read nothing (limit 0); the loop stays for the compiler.
        limit = tl.where(found < 0, V, 0)
        w = _tree_weights(q_row, p_row, c, offs, limit, tl.minimum(limit, p_limit), HAS_DRAFT_PROBS)
        w = _drop_tokens(w, start, dropped_ids, BLOCK_V)
        # A zero weight can get a slightly larger parallel prefix than its predecessor: a hit
        # also needs w > 0, so a token without mass is never emitted.
        hit = (running + tl.cumsum(w, 0) > threshold) & (w > 0)
        first_hit = tl.min(tl.where(hit, offs, V), 0)
        found = tl.where((found < 0) & (first_hit < V), first_hit, found)
        last_positive = tl.maximum(last_positive, tl.max(tl.where(w > 0, offs, -1), 0))
        running += tl.sum(w, 0)
    # Rounding can leave the threshold above every prefix: fall back to the last positive weight.
    sample = tl.where(found >= 0, found, last_positive)
    return tl.where(total > 0, sample, -1)


@triton.jit
def _load_tree(ids_row, parents_row, T, V, BLOCK_T: tl.constexpr):
    """A row's tree as int32 vectors over node slots: (slot index, token, parent, live), with
    -1 tokens and -2 parents at dead nodes (padding, a parent not before the node, slots >= T)."""
    nodes = tl.arange(0, BLOCK_T)
    node_ids = tl.load(ids_row + nodes, mask=nodes < T, other=-1)
    node_parents = tl.load(parents_row + nodes, mask=nodes < T, other=-2)
    live = (node_ids >= 0) & (node_ids < V) & (node_parents >= -1) & (node_parents < nodes)
    return nodes, tl.where(live, node_ids, -1).to(tl.int32), tl.where(live, node_parents, -2).to(tl.int32), live


@triton.jit
def _tree_walk_kernel(
    draft_ids_ptr,  # [B, T] int64, contiguous
    parents_ptr,  # [B, T] int64, contiguous
    draft_probs_ptr,  # [B, T, V] (unit stride in V), or any pointer when not HAS_DRAFT_PROBS
    target_probs_ptr,  # [B, T+1, V] (unit stride in V)
    greedy_ptr,  # [B] bool
    seeds_ptr,  # [1] or [B] int64
    offsets_ptr,  # [1] or [B] int64
    token_ids_ptr,  # [B, T+1] int64 out: the accepted path's tokens, then -1
    accepted_nodes_ptr,  # [B, T] int64 out
    num_accepted_ptr,  # [B] int64 out
    residual_scale_ptr,  # [B] float32 out: c of the final node's q' (for the emit kernel)
    T,
    V,
    draft_stride_b,
    draft_stride_t,
    target_stride_b,
    target_stride_t,
    SEED_PER_ROW: tl.constexpr,
    OFFSET_PER_ROW: tl.constexpr,
    HAS_DRAFT_PROBS: tl.constexpr,
    WITHOUT_REPLACEMENT: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,  # >= T + 1
):
    # int64 row and node offsets: row * stride overflows int32 once B*(T+1)*V > 2**31.
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(seeds_ptr + row * SEED_PER_ROW)
    offset = tl.load(offsets_ptr + row * OFFSET_PER_ROW)
    stream_row = row * (1 - SEED_PER_ROW)  # as the chain verifier: per-row seeds ignore the batch slot
    is_greedy = tl.load(greedy_ptr + row) != 0
    target_row0 = target_probs_ptr + row * target_stride_b
    draft_row0 = draft_probs_ptr + row * draft_stride_b
    ids_row = draft_ids_ptr + row * T
    parents_row = parents_ptr + row * T

    # Node indices and (in-vocabulary) tokens fit int32; the walk's state is kept in int32 to
    # save registers, and only pointer offsets are widened to int64.
    nodes, node_ids, node_parents, live = _load_tree(ids_row, parents_row, T, V, BLOCK_T)
    path_nodes = tl.full((BLOCK_T,), -1, tl.int32)
    path_tokens = tl.full((BLOCK_T,), -1, tl.int32)

    current = tl.full((), -1, tl.int32)
    num_accepted = tl.full((), 0, tl.int32)
    # The current node's sibling group: q' = max(0, q - c p) / mass; `removed` = draft mass taken
    # out by rejections without replacement; p = the first live child's draft row.
    c = 0.0
    mass = 1.0
    removed = 0.0
    mass_is_stale = tl.full((), 0, tl.int1)
    draft_row_node = tl.full((), -1, tl.int32)
    argmax = tl.full((), -1, tl.int32)
    for j in range(0, T):
        x = tl.load(ids_row + j)
        parent = tl.load(parents_row + j)
        is_child = (x >= 0) & (x < V) & (parent == current) & (parent < j)
        x = tl.where(is_child, x, 0).to(tl.int32)
        q_row = target_row0 + (current + 1).to(tl.int64) * target_stride_t
        draft_row_node = tl.where(is_child & (draft_row_node < 0), j, draft_row_node)
        p_row = draft_row0 + tl.maximum(draft_row_node, 0).to(tl.int64) * draft_stride_t
        q_x = tl.load(q_row + x).to(tl.float32)
        if is_greedy:
            if is_child & (argmax < 0):  # one argmax pass per node, when its first child is tried
                argmax = _nan_safe_argmax(q_row, V, BLOCK_V).to(tl.int32)
            accept = is_child & (x == argmax)
        else:
            earlier_sibling = live & (node_parents == current) & (nodes < j)
            repeated = tl.sum((earlier_sibling & (node_ids == x)).to(tl.int32), 0) > 0
            u = _uniform(seed, j, stream_row, offset)
            if HAS_DRAFT_PROBS:
                if is_child & mass_is_stale:  # S after the last rejection, when a sibling needs it
                    mass = _residual_mass(q_row, p_row, c, V, HAS_DRAFT_PROBS, BLOCK_V)
                    mass_is_stale = False
                p_x = tl.load(p_row + x).to(tl.float32)
                r_x = tl.where(repeated, 0.0, tl.where(c == 0, q_x, q_x - c * p_x))
                p_removed = p_x
                if WITHOUT_REPLACEMENT:
                    p_removed = tl.where(repeated, 0.0, p_x)
                # Strict '<', division-free: a token with q'(x) = 0 is never accepted, even at u = 0.
                accept = is_child & ((u * p_removed) * mass < r_x * (1.0 - removed))
                rejected = is_child & ~accept
                c = tl.where(rejected, c + mass / (1.0 - removed), c)
                if WITHOUT_REPLACEMENT:
                    removed = tl.where(rejected, removed + p_removed, removed)
                mass_is_stale = mass_is_stale | rejected
            else:
                r_x = tl.where(repeated, 0.0, q_x)
                accept = is_child & (u * mass < r_x)
                mass = tl.where(is_child & ~accept, mass - tl.where(r_x > 0, r_x, 0.0), mass)
        path_nodes = tl.where(accept & (nodes == num_accepted), j, path_nodes)
        path_tokens = tl.where(accept & (nodes == num_accepted), x, path_tokens)
        num_accepted += accept.to(tl.int32)
        current = tl.where(accept, j, current)
        # An accepted child starts a fresh sibling group below it.
        c = tl.where(accept, 0.0, c)
        mass = tl.where(accept, 1.0, mass)
        removed = tl.where(accept, 0.0, removed)
        mass_is_stale = mass_is_stale & ~accept
        draft_row_node = tl.where(accept, -1, draft_row_node)
        argmax = tl.where(accept, -1, argmax)

    # The emitted token is the second kernel's: a kernel that also streamed the emitted row
    # kept the walk's state alive across it and spilled registers on every target.
    tl.store(token_ids_ptr + row * (T + 1) + nodes, path_tokens.to(tl.int64), mask=nodes < T + 1)
    tl.store(accepted_nodes_ptr + row * T + nodes, path_nodes.to(tl.int64), mask=nodes < T)
    tl.store(num_accepted_ptr + row, num_accepted.to(tl.int64))
    tl.store(residual_scale_ptr + row, c)


@triton.jit
def _tree_emit_kernel(
    draft_ids_ptr,  # [B, T] int64, contiguous
    parents_ptr,  # [B, T] int64, contiguous
    draft_probs_ptr,  # [B, T, V] (unit stride in V), or any pointer when not HAS_DRAFT_PROBS
    target_probs_ptr,  # [B, T+1, V] (unit stride in V)
    greedy_ptr,  # [B] bool
    seeds_ptr,  # [1] or [B] int64
    offsets_ptr,  # [1] or [B] int64
    token_ids_ptr,  # [B, T+1] int64: the walk's path; the emitted token is stored after it
    accepted_nodes_ptr,  # [B, T] int64, from the walk
    num_accepted_ptr,  # [B] int64, from the walk
    residual_scale_ptr,  # [B] float32, from the walk: c of the final node's q' = max(0, q - c p) / S
    T,
    V,
    draft_stride_b,
    draft_stride_t,
    target_stride_b,
    target_stride_t,
    SEED_PER_ROW: tl.constexpr,
    OFFSET_PER_ROW: tl.constexpr,
    HAS_DRAFT_PROBS: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_T: tl.constexpr,  # >= T + 1
):
    row = tl.program_id(0).to(tl.int64)
    num_accepted = tl.load(num_accepted_ptr + row)
    final = tl.load(accepted_nodes_ptr + row * T + num_accepted - 1, mask=num_accepted > 0, other=-1)
    q_row = target_probs_ptr + row * target_stride_b + (final + 1) * target_stride_t
    if tl.load(greedy_ptr + row) != 0:
        emitted = _nan_safe_argmax(q_row, V, BLOCK_V).to(tl.int64)
    else:
        seed = tl.load(seeds_ptr + row * SEED_PER_ROW)
        offset = tl.load(offsets_ptr + row * OFFSET_PER_ROW)
        u = _uniform(seed, T, row * (1 - SEED_PER_ROW), offset)  # stream_row as in the walk
        nodes, node_ids, node_parents, live = _load_tree(draft_ids_ptr + row * T, parents_ptr + row * T, T, V, BLOCK_T)
        children = live & (node_parents == final)
        rejected_ids = tl.where(children, node_ids, -1)  # every child of the final node was rejected
        first_child = tl.min(tl.where(children, nodes, BLOCK_T), 0)  # its draft row is the group's p
        p_row = draft_probs_ptr + row * draft_stride_b + tl.minimum(first_child, T - 1).to(tl.int64) * draft_stride_t
        c = tl.load(residual_scale_ptr + row)
        p_limit = tl.where(c != 0, V, 0)
        emitted = _sample_tree_residual(q_row, p_row, c, p_limit, rejected_ids, u, V, HAS_DRAFT_PROBS, BLOCK_V)
        if emitted < 0:  # no residual mass (q == p up to rounding, NaN/zero rows): the target row
            no_ids = tl.full((BLOCK_T,), -1, tl.int32)
            emitted = _sample_tree_residual(q_row, p_row, 0.0, 0, no_ids, u, V, HAS_DRAFT_PROBS, BLOCK_V)
        emitted = tl.maximum(emitted, 0).to(tl.int64)  # no positive mass at all: stay in [0, V)
    tl.store(token_ids_ptr + row * (T + 1) + num_accepted, emitted)


def tree_rejection_sample(
    draft_token_ids: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    without_replacement: bool,
    block_v: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the tree verifier. Arguments as ``torch.ops.specdecode.tree_rejection_sample``
    (already checked by the caller): ``draft_token_ids``/``parents`` ``[B, T]`` int64 contiguous,
    probabilities with unit stride in V, ``greedy [B]`` bool, ``seeds``/``offsets`` int64 ``[1]``
    or ``[B]``.

    Returns ``(token_ids [B, T+1], accepted_nodes [B, T], num_accepted [B])``, int64.

    Example (CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1`` set before import)::

        token_ids, accepted_nodes, num_accepted = tree_rejection_sample(
            ids, parents, None, target, greedy, seeds, offsets, without_replacement=False
        )
    """
    batch_size, num_nodes = draft_token_ids.shape
    vocab_size = target_probs.shape[-1]
    device = target_probs.device
    token_ids = torch.empty((batch_size, num_nodes + 1), dtype=torch.int64, device=device)
    accepted_nodes = torch.empty((batch_size, num_nodes), dtype=torch.int64, device=device)
    num_accepted = torch.empty((batch_size,), dtype=torch.int64, device=device)
    if batch_size == 0:
        return token_ids, accepted_nodes, num_accepted
    has_draft_probs = draft_probs is not None
    draft = draft_probs if has_draft_probs else target_probs
    residual_scale = torch.empty((batch_size,), dtype=torch.float32, device=device)
    tensors = (draft_token_ids, parents, draft, target_probs, greedy, seeds, offsets, token_ids, accepted_nodes)
    sizes = (
        num_nodes,
        vocab_size,
        draft.stride(0) if has_draft_probs else 0,
        draft.stride(1) if has_draft_probs else 0,
        target_probs.stride(0),
        target_probs.stride(1),
    )
    meta = dict(
        SEED_PER_ROW=int(seeds.numel() != 1),
        OFFSET_PER_ROW=int(offsets.numel() != 1),
        HAS_DRAFT_PROBS=has_draft_probs,
        BLOCK_V=block_v or default_block_v(vocab_size, target_probs.element_size()),
        BLOCK_T=triton.next_power_of_2(num_nodes + 1),
        num_warps=NUM_WARPS,
    )
    without_replacement = bool(without_replacement) and has_draft_probs
    _tree_walk_kernel[(batch_size,)](
        *tensors, num_accepted, residual_scale, *sizes, WITHOUT_REPLACEMENT=without_replacement, **meta
    )
    _tree_emit_kernel[(batch_size,)](*tensors, num_accepted, residual_scale, *sizes, **meta)
    return token_ids, accepted_nodes, num_accepted


_PROB_TYPES = {torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16"}
AOT_MAX_NODES = 63  # BLOCK_T = 64: EAGLE-2's default budget of 60 draft nodes fits


def _aot_signature(prob: str, kernel: str) -> dict[str, str]:
    signature = {
        "draft_ids_ptr": "*i64",
        "parents_ptr": "*i64",
        "draft_probs_ptr": prob,
        "target_probs_ptr": prob,
        "greedy_ptr": "*i1",
        "seeds_ptr": "*i64",
        "offsets_ptr": "*i64",
        "token_ids_ptr": "*i64",
        "accepted_nodes_ptr": "*i64",
        "num_accepted_ptr": "*i64",
        "residual_scale_ptr": "*fp32",
        "T": "i32",
        "V": "i32",
        "draft_stride_b": "i64",
        "draft_stride_t": "i32",
        "target_stride_b": "i64",
        "target_stride_t": "i32",
        "SEED_PER_ROW": "constexpr",
        "OFFSET_PER_ROW": "constexpr",
        "HAS_DRAFT_PROBS": "constexpr",
        "WITHOUT_REPLACEMENT": "constexpr",
        "BLOCK_V": "constexpr",
        "BLOCK_T": "constexpr",
    }
    if kernel == "emit":
        del signature["WITHOUT_REPLACEMENT"]
    return signature


def aot_cases() -> list[AotCase]:
    """The launches the tree verifier makes at realistic sizes: both kernels, up to 63 nodes;
    Llama-2/3 and Qwen vocabularies; dense iid and without-replacement drafts and
    draft-probability-free trees."""
    cases = []
    variants = (  # (dtype, has_draft_probs, without_replacement)
        (torch.float32, True, False),
        (torch.bfloat16, True, True),
        (torch.float32, False, False),
    )
    divisible = ("draft_probs_ptr", "target_probs_ptr", "V", "draft_stride_b", "draft_stride_t")
    divisible += ("target_stride_b", "target_stride_t")
    for vocab_size in (32000, 128256, 151936):
        for dtype, has_draft_probs, without_replacement in variants:
            mode = ("without_replacement" if without_replacement else "iid") if has_draft_probs else "one-hot"
            for kernel_name, kernel in (("walk", _tree_walk_kernel), ("emit", _tree_emit_kernel)):
                constexprs = {
                    "SEED_PER_ROW": 1,
                    "OFFSET_PER_ROW": 1,
                    "HAS_DRAFT_PROBS": has_draft_probs,
                    "WITHOUT_REPLACEMENT": without_replacement,
                    "BLOCK_V": default_block_v(vocab_size, dtype.itemsize, interpreting=False),
                    "BLOCK_T": triton.next_power_of_2(AOT_MAX_NODES + 1),
                }
                if kernel_name == "emit":
                    del constexprs["WITHOUT_REPLACEMENT"]
                name = f"tree_rejection_sample.{kernel_name}[V={vocab_size},{str(dtype)[6:]},{mode}]"
                signature = _aot_signature(_PROB_TYPES[dtype], kernel_name)
                cases.append(AotCase(name, kernel, signature, constexprs, NUM_WARPS, divisible))
    return cases
