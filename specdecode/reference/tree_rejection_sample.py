"""Pure-PyTorch reference of token-tree verification: the spec in code.

Both kernels (C++ in ``csrc/tree_rejection_sample.cpp``, Triton in
``kernels/tree_rejection_sample.py``) follow this algorithm and draw the *same* random numbers.

A row's tree has nodes ``0..T-1``; node ``i`` carries the draft token ``x_i`` and the index of its
parent ``parents[i]`` (``-1``: a child of the root, the last verified token). Target row 0 is the
target distribution after the root, target row ``i + 1`` the one after node ``i``. A node is
*live* when ``x_i`` is in ``[0, V)`` and ``-1 <= parents[i] < i``; any other node is padding:
never accepted, and neither is anything below it.

Verification walks down from the root. At the current node ``n`` (target row ``q``) its live
children are tried in node-index order; the first accepted child becomes the current node; when
every child is rejected (or there is none) one more token is emitted at ``n`` and the walk ends.
Because children have larger indices than their parents, one pass over ``j = 0..T-1`` visits
every child of every node the walk reaches, in order -- that is how all backends run it.

The rules, with ``q'`` the target row as updated by the rejections at ``n`` so far:

- **greedy** rows: accept the first child with ``x == argmax q``; emit ``argmax q``. The emitted
  text is plain greedy decoding's.
- **no draft probabilities** (``draft_probs=None``; children fixed, e.g. a top-k expansion):
  accept child ``x`` with probability ``q'(x)``; on rejection ``q' <- q'`` without ``x``,
  renormalised; emit from ``q'``. Each child is a sample of a one-hot "draft"; the rule is
  rejection sampling against ``q'`` with the mass of the rejected token removed (SpecInfer,
  arXiv 2305.09781, Theorem 4.2 with one-hot proposals).
- **iid** siblings (``without_replacement=False``: siblings drawn independently from ``p``):
  accept ``x`` with probability ``min(1, q'(x) / p(x))``; on rejection
  ``q' <- norm(max(0, q' - p))``; emit from ``q'`` -- SpecInfer's multi-step speculative
  sampling (arXiv 2305.09781, Algorithm 2 and Theorem 4.2).
- **without replacement** (``without_replacement=True``: siblings drawn from ``p`` without
  replacement, as a top-k sampler does): accept ``x`` with probability ``min(1, q'(x) / p'(x))``;
  on rejection ``q' <- norm(max(0, q' - p'))``, then ``p' <- p'`` without ``x``, renormalised --
  recursive rejection sampling (arXiv 2402.14160, Algorithm 1 and Theorem 3.1).

Siblings share one draft distribution ``p`` (they are drawn from it); it is read from the
``draft_probs`` row of the node's first live child, the other siblings' rows are not read.

**Closed form.** With one ``p`` per sibling group, every ``q'`` is ``r / S`` with
``r(v) = max(0, q(v) - c * p(v))`` for a scalar ``c`` (0 before any rejection), so nothing
``V``-wide is stored: after rejecting ``x``, ``c <- c + S / (1 - P)`` and ``S <- sum_v r(v)``
(one pass over the vocabulary, done only when another sibling is tried), where ``P`` is the draft
mass already removed (``p' = p / (1 - P)`` off the rejected tokens; ``P = 0`` for iid siblings;
``P <- P + p(x)``). The target row is taken as normalised before the first rejection
(``S = 1``), as the chain verifier does. Tokens of rejected siblings carry no mass in ``q'``
(exact in real arithmetic; enforced so rounding cannot revive them). A sibling repeating an
earlier sibling's token has ``q'(x) = 0``: it is rejected (and updates ``q'`` as any rejection).
Without draft probabilities ``c`` stays 0 and ``S <- S - q(x)`` on rejection.

**Acceptance** is division-free and strict, in float32: ``(u * p'(x)) * S < r(x) * (1 - P)``
(``u * S < r(x)`` without draft probabilities), so a token with ``q'(x) = 0`` is never accepted.
Before any rejection at ``n`` this is exactly the chain verifier's ``u * p(x) < q(x)``.

**The emitted token** is drawn by inverse CDF (``specdecode.core.inverse_cdf_sample``) from
``w(v) = r(v)`` with the tokens of ``n``'s live children removed; if ``w`` has no positive mass
(a NaN/zero row, or ``q == p`` up to rounding) from ``max(0, q)``; if that has none, token 0.

**Randomness** (``specdecode.core.uniforms``): node ``j``'s acceptance uses the uniform of slot
``j`` (each node is tried at most once), the emitted token slot ``T``; the Philox counter and
the per-row/shared seed conventions are the chain verifier's. A path-shaped tree (node ``i``'s
parent is ``i - 1``) therefore gives exactly the chain verifier's output for the same seed.
"""

from __future__ import annotations

import torch

from specdecode.core import inverse_cdf_sample, nan_safe_argmax, uniforms

ROOT = -1  # parents[i] == ROOT: node i is a child of the root (the last verified token)
NO_NODE = -1  # padding in accepted_nodes / token_ids, and "no node" in the walk's state


def _positive_part(values: torch.Tensor) -> torch.Tensor:
    """max(0, values) with NaN mapped to 0."""
    return torch.where(values > 0, values, torch.zeros_like(values))


def live_nodes(draft_token_ids: torch.Tensor, parents: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """``[B, T]`` bool: the nodes that can be accepted (id in ``[0, V)``, ``-1 <= parent < index``).

    >>> live_nodes(torch.tensor([[3, -1, 2]]), torch.tensor([[-1, 0, 0]]), 4).tolist()
    [[True, False, True]]
    """
    index = torch.arange(draft_token_ids.shape[1], device=draft_token_ids.device)
    in_vocab = (draft_token_ids >= 0) & (draft_token_ids < vocab_size)
    return in_vocab & (parents >= ROOT) & (parents < index)


def tree_rejection_sample(
    draft_token_ids: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    greedy: torch.Tensor,
    seeds: torch.Tensor,
    offsets: torch.Tensor,
    without_replacement: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference tree verifier; same arguments as ``torch.ops.specdecode.tree_rejection_sample``.

    Args:
        draft_token_ids: ``[B, T]`` int64 node tokens; ids outside ``[0, V)`` are padding.
        parents: ``[B, T]`` int64, ``parents[b, i] < i``; ``-1`` = child of the root.
        draft_probs: ``[B, T, V]`` float (row ``i``: the distribution node ``i`` was drawn from),
            or ``None`` (children fixed; target-only rule).
        target_probs: ``[B, T+1, V]`` float; row 0 after the root, row ``i+1`` after node ``i``.
        greedy: ``[B]`` bool.
        seeds, offsets: int64 ``[1]`` or ``[B]`` (see ``specdecode.core.uniforms``).
        without_replacement: siblings drawn from ``p`` without replacement (else iid).

    Returns:
        ``(token_ids [B, T+1], accepted_nodes [B, T], num_accepted [B])``, int64.

    >>> q = torch.tensor([[[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]]])  # argmax 1 after the root; 0 after node 1
    >>> out = tree_rejection_sample(torch.tensor([[0, 1]]), torch.tensor([[-1, -1]]), None, q,
    ...     torch.tensor([True]), torch.tensor([0]), torch.tensor([0]), False)
    >>> [t.tolist() for t in out]
    [[[1, 0, -1]], [[1, -1]], [1]]
    """
    batch_size, num_nodes = draft_token_ids.shape
    vocab_size = target_probs.shape[-1]
    device = target_probs.device
    rows = torch.arange(batch_size, device=device)
    target = target_probs.float()
    draft = None if draft_probs is None else draft_probs.float()
    ids = draft_token_ids.long()
    parents = parents.long()
    live = live_nodes(ids, parents, vocab_size)
    safe_ids = torch.where(live, ids, 0)
    u = uniforms(seeds, offsets, batch_size, num_nodes + 1)

    current = torch.full((batch_size,), NO_NODE, dtype=torch.long, device=device)
    accepted_nodes = torch.full((batch_size, num_nodes), NO_NODE, dtype=torch.long, device=device)
    num_accepted = torch.zeros(batch_size, dtype=torch.long, device=device)
    # The state of the current node's sibling group: q' = max(0, q - c p) / S, P = removed p mass.
    c = torch.zeros(batch_size, device=device)
    mass = torch.ones(batch_size, device=device)  # S
    removed = torch.zeros(batch_size, device=device)  # P
    mass_is_stale = torch.zeros(batch_size, dtype=torch.bool, device=device)
    draft_row_node = torch.full((batch_size,), NO_NODE, dtype=torch.long, device=device)

    for j in range(num_nodes):
        is_child = live[:, j] & (parents[:, j] == current)
        x = safe_ids[:, j]
        q = target[rows, current + 1]  # [B, V]: the current node's target row
        q_x = q[rows, x]
        earlier_siblings = live[:, :j] & (parents[:, :j] == current[:, None])
        repeated = (earlier_siblings & (ids[:, :j] == x[:, None])).any(1)
        draft_row_node = torch.where(is_child & (draft_row_node == NO_NODE), j, draft_row_node)

        if draft is None:
            r_x = torch.where(repeated, 0.0, q_x)
            accept = u[:, j] * mass < r_x
            rejected_mass = _positive_part(r_x)
        else:
            p = draft[rows, draft_row_node.clamp_min(0)]
            recompute = is_child & mass_is_stale
            fresh_mass = _residual(q, p, c).double().sum(-1).float()
            mass = torch.where(recompute, fresh_mass, mass)
            mass_is_stale &= ~recompute
            p_x = p[rows, x]
            r_x = torch.where(repeated, 0.0, torch.where(c == 0, q_x, q_x - c * p_x))
            p_removed = torch.where(repeated, 0.0, p_x) if without_replacement else p_x
            accept = (u[:, j] * p_removed) * mass < r_x * (1 - removed)
        accept = torch.where(greedy, x == nan_safe_argmax(q), accept)

        taken = is_child & accept
        dropped = is_child & ~accept & ~greedy
        if draft is None:
            mass = torch.where(dropped, mass - rejected_mass, mass)
        else:
            c = torch.where(dropped, c + mass / (1 - removed), c)
            if without_replacement:
                removed = torch.where(dropped, removed + p_removed, removed)
            mass_is_stale |= dropped
        accepted_nodes[rows, num_accepted] = torch.where(taken, j, accepted_nodes[rows, num_accepted])
        num_accepted += taken.long()
        current = torch.where(taken, j, current)
        # A new current node starts a fresh sibling group.
        c = torch.where(taken, 0.0, c)
        mass = torch.where(taken, 1.0, mass)
        removed = torch.where(taken, 0.0, removed)
        mass_is_stale &= ~taken
        draft_row_node = torch.where(taken, NO_NODE, draft_row_node)

    emitted = _emit(target, draft, live, ids, parents, current, c, draft_row_node, greedy, u[:, num_nodes])
    token_ids = torch.full((batch_size, num_nodes + 1), NO_NODE, dtype=torch.long, device=device)
    path_tokens = ids.gather(1, accepted_nodes.clamp_min(0))
    positions = torch.arange(num_nodes, device=device)[None, :]
    token_ids[:, :num_nodes] = torch.where(positions < num_accepted[:, None], path_tokens, NO_NODE)
    token_ids[rows, num_accepted] = emitted
    return token_ids, accepted_nodes, num_accepted


def _residual(q: torch.Tensor, p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``max(0, q - c p)`` row-wise (float32, NaN -> 0); ``max(0, q)`` where ``c == 0``."""
    return _positive_part(torch.where(c[:, None] == 0, q, q - c[:, None] * p))


def _emit(target, draft, live, ids, parents, final, c, draft_row_node, greedy, u) -> torch.Tensor:
    """The token emitted at each row's final node (see the module docstring)."""
    batch_size, vocab_size = target.shape[0], target.shape[-1]
    rows = torch.arange(batch_size, device=target.device)
    q = target[rows, final + 1]
    if draft is None or draft.shape[1] == 0:  # no draft rows (or no nodes): c is 0
        weights = _positive_part(q)
    else:
        weights = _residual(q, draft[rows, draft_row_node.clamp_min(0)], c)
    children = live & (parents == final[:, None])
    excluded = torch.zeros(batch_size, vocab_size + 1, dtype=torch.bool, device=target.device)
    excluded.scatter_(1, torch.where(children, ids, vocab_size), True)  # column V collects non-children
    weights = torch.where(excluded[:, :vocab_size], 0.0, weights).double()
    fallback = _positive_part(q).double()
    use_residual = weights.sum(-1) > 0
    weights = torch.where(use_residual[:, None], weights, fallback)
    sampled = torch.where(weights.sum(-1) > 0, inverse_cdf_sample(weights, u), 0)
    return torch.where(greedy, nan_safe_argmax(q), sampled)
