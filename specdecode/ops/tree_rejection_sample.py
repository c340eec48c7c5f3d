"""Token-tree verification: ``torch.ops.specdecode.tree_rejection_sample`` and its public wrapper.

One op, one schema (declared in ``csrc/tree_rejection_sample.cpp``), a kernel per device: C++ on
CPU tensors, Triton (``specdecode.kernels.tree_rejection_sample``) on CUDA tensors, and a fake
kernel for ``torch.compile``. The rules and their proofs' references are in the docstring of
``specdecode.reference.tree_rejection_sample`` (the spec in code).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from specdecode.core import check_same_device
from specdecode.ops.arguments import (
    ID_DTYPES,
    PROB_DTYPES,
    as_greedy_mask,
    check_probability_values,
    check_tensor,
    per_row_int64,
    seeds_from,
    unit_stride_in_vocab,
)
from specdecode.reference.tree_rejection_sample import ROOT, live_nodes

__all__ = [
    "tree_rejection_sample",
    "TreeRejectionSampler",
    "TreeRejectionOutput",
    "parents_from_first_child_next_sibling",
]

DRAWS = ("iid", "without_replacement")  # how siblings were drawn from their draft distribution
NO_LINK = -1  # first_child / next_sibling: "none"

_lib = torch.library.Library("specdecode", "IMPL")


class TreeRejectionOutput(NamedTuple):
    token_ids: torch.Tensor  # [B, T+1] int64: the accepted path's tokens, the emitted token, then -1
    accepted_nodes: torch.Tensor  # [B, T] int64: node indices along the accepted path, then -1
    num_accepted: torch.Tensor  # [B] int64


def _check_devices(draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets) -> None:
    check_same_device(
        "tree_rejection_sample",
        draft_token_ids=draft_token_ids,
        parents=parents,
        draft_probs=draft_probs,
        target_probs=target_probs,
        greedy=greedy,
        seeds=seeds,
        offsets=offsets,
    )


def _tree_rejection_sample_cuda(
    draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets, without_replacement
):
    from specdecode.kernels.tree_rejection_sample import tree_rejection_sample as launch

    _check_devices(draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets)
    with torch.cuda.device(target_probs.device):
        return launch(draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets, without_replacement)


_lib.impl("tree_rejection_sample", _tree_rejection_sample_cuda, "CUDA")


@torch.library.register_fake("specdecode::tree_rejection_sample")
def _tree_rejection_sample_fake(
    draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets, without_replacement
):
    _check_devices(draft_token_ids, parents, draft_probs, target_probs, greedy, seeds, offsets)
    batch_size, num_nodes = draft_token_ids.shape
    return (
        draft_token_ids.new_empty((batch_size, num_nodes + 1)),
        draft_token_ids.new_empty((batch_size, num_nodes)),
        draft_token_ids.new_empty((batch_size,)),
    )


def tree_rejection_sample(
    draft_token_ids: torch.Tensor,
    parents: torch.Tensor,
    draft_probs: torch.Tensor | None,
    target_probs: torch.Tensor,
    *,
    draws: str = "iid",
    greedy: bool | torch.Tensor = False,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    offset: int | torch.Tensor = 0,
    validate: bool = False,
) -> TreeRejectionOutput:
    """Verify a tree of draft tokens per row against the target; the output follows the target exactly.

    Walking down from the root, the live children of the current node are tried in node-index
    order; the first accepted child becomes the current node; when all are rejected, one token
    is emitted from the updated target ``q'`` (or the bonus row, at a leaf). The rules per case
    (greedy, ``draft_probs=None``, ``draws="iid"``, ``draws="without_replacement"``) and their
    proofs' references (SpecInfer, arXiv 2305.09781; recursive rejection sampling, arXiv
    2402.14160) are in ``specdecode.reference.tree_rejection_sample``. A path-shaped tree
    (``parents[i] = i - 1``) gives exactly ``rejection_sample``'s output for the same seed.

    Args:
        draft_token_ids: ``[B, T]`` int32/int64, the tree's node tokens; ``-1`` (or any id
            outside ``[0, V)``) is a padding node: never accepted, nor anything below it.
        parents: ``[B, T]`` int32/int64, the index of each node's parent (below its own index);
            ``-1``: a child of the root (the last verified token). A node whose parent is not in
            ``[-1, i)`` is treated as padding (``validate=True`` rejects it).
        draft_probs: ``[B, T, V]`` float32/float16/bfloat16, row ``i`` = the distribution node
            ``i``'s token was drawn from (siblings share it: the op reads the first live
            sibling's row), or ``None`` when children are fixed (e.g. a top-k expansion): then
            child ``x`` is accepted with probability ``q'(x)`` and removed from ``q'`` if rejected.
        target_probs: ``[B, T+1, V]``, row 0 = the target after the root, row ``i + 1`` = after
            node ``i``. Pass the (temperature-scaled) distributions the tokens are sampled from.
        draws: how siblings were drawn from ``draft_probs``: ``"iid"`` (independently) or
            ``"without_replacement"`` (sequentially without replacement, as a top-k sampler
            does). Ignored when ``draft_probs`` is ``None`` or the row is greedy.
        greedy: ``True``, or a ``[B]`` bool tensor: accept the first child whose token is
            ``argmax q``, emit ``argmax q`` (first maximum, NaN ignored) -- plain greedy text.
        generator, seed, offset: the random stream, exactly as in ``rejection_sample`` (one seed
            for the batch or ``[B]`` per-row seeds; the Philox counter offset).
        validate: also check values (probabilities as in ``rejection_sample``; ids in
            ``[-1, V)``; parents in ``[-1, i)``; siblings' draft rows equal) and raise
            ``ValueError``. Off by default: it needs a device sync.

    Returns:
        ``TreeRejectionOutput(token_ids [B, T+1], accepted_nodes [B, T], num_accepted [B])``,
        int64: the accepted path's tokens then the emitted token then ``-1``; the path's node
        indices then ``-1``; the path's length. Emitted ids are always in ``[0, V)``. Inputs are
        never modified; no host sync.

    >>> target = torch.tensor([[[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    >>> out = tree_rejection_sample(torch.tensor([[0, 1]]), torch.tensor([[-1, -1]]), None, target, seed=0)
    >>> out.token_ids.tolist(), out.accepted_nodes.tolist(), out.num_accepted.tolist()
    ([[1, 0, -1]], [[1, -1]], [1])
    """
    if draws not in DRAWS:
        raise ValueError(f"draws must be one of {DRAWS}, got {draws!r}")
    draft_token_ids, parents, draft_probs, target_probs = _check_shapes(
        draft_token_ids, parents, draft_probs, target_probs
    )
    batch_size, device = draft_token_ids.shape[0], target_probs.device
    greedy_mask = as_greedy_mask(greedy, batch_size, device)
    seeds = seeds_from(generator, seed, batch_size, device)
    offsets = per_row_int64("offset", offset, batch_size, device)
    if validate:
        _check_tree_values(draft_token_ids, parents, draft_probs, target_probs)
    token_ids, accepted_nodes, num_accepted = torch.ops.specdecode.tree_rejection_sample(
        draft_token_ids, parents, draft_probs, target_probs, greedy_mask, seeds, offsets, draws == "without_replacement"
    )
    return TreeRejectionOutput(token_ids, accepted_nodes, num_accepted)


class TreeRejectionSampler(torch.nn.Module):
    """``tree_rejection_sample`` as a module: ``forward(draft_token_ids, parents, draft_probs,
    target_probs, **kwargs) -> TreeRejectionOutput``; ``validate`` is fixed at construction.

    >>> sampler = TreeRejectionSampler(validate=True)
    """

    def __init__(self, validate: bool = False) -> None:
        super().__init__()
        self.validate = validate

    def forward(
        self,
        draft_token_ids: torch.Tensor,
        parents: torch.Tensor,
        draft_probs: torch.Tensor | None,
        target_probs: torch.Tensor,
        **kwargs,
    ) -> TreeRejectionOutput:
        return tree_rejection_sample(
            draft_token_ids, parents, draft_probs, target_probs, validate=self.validate, **kwargs
        )

    def extra_repr(self) -> str:
        return f"validate={self.validate}"


def parents_from_first_child_next_sibling(first_child: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """Convert SGLang's tree encoding (``retrive_next_token`` / ``retrive_next_sibling``) to ``parents``.

    In that encoding node 0 is the root (the last verified token) and nodes ``1..N-1`` are the
    drafts; ``first_child[i]`` is node ``i``'s first child and ``next_sibling[i]`` its next
    sibling (``-1``: none). Draft node ``n`` there is node ``n - 1`` here, so pass
    ``candidates[:, 1:]`` as ``draft_token_ids`` and the target rows unchanged (row ``n`` is
    the target after SGLang's node ``n``). A node no list names as a child gets the parent
    ``N - 1`` (not before it: padding to the op), so nothing the root cannot reach is reachable.

    Siblings are tried in node-index order here, not in the list's order; the output
    distribution is the target's either way, but the same random numbers can pick another path
    when the list is not ascending. Vectorised (``N`` scatter steps), no host sync.

    Args:
        first_child: ``[B, N]`` int, node indices in ``[0, N)`` or ``-1``.
        next_sibling: ``[B, N]`` int, node indices in ``[0, N)`` or ``-1``.

    Returns:
        ``[B, N-1]`` int64 parents in this op's numbering (``-1`` = the root).

    >>> parents_from_first_child_next_sibling(torch.tensor([[1, 2, -1, -1]]), torch.tensor([[-1, 3, -1, -1]]))
    tensor([[-1,  0, -1]])
    """
    for name, links in (("first_child", first_child), ("next_sibling", next_sibling)):
        check_tensor(name, links, 2, ID_DTYPES)
    if first_child.shape != next_sibling.shape:
        raise ValueError(
            f"first_child {list(first_child.shape)} and next_sibling {list(next_sibling.shape)} must have one shape"
        )
    batch_size, size = first_child.shape
    first_child, next_sibling = first_child.long(), next_sibling.long()
    unreached = -2  # no link reaches the node (links hold node indices >= 0)
    # Column `size` swallows the writes of "-1" links (and of nodes not yet reached).
    parent = torch.full((batch_size, size + 1), unreached, dtype=torch.long, device=first_child.device)
    nodes = torch.arange(size, device=first_child.device).expand(batch_size, size)
    parent.scatter_(1, torch.where((first_child >= 0) & (first_child < size), first_child, size), nodes)
    for _ in range(size):  # a sibling list is at most N long
        known = parent[:, :size].clone()  # read before this step's writes
        targets = torch.where((next_sibling >= 0) & (next_sibling < size) & (known != unreached), next_sibling, size)
        parent.scatter_(1, targets, known)
    parents = parent[:, 1:size] - 1  # this op's numbering: SGLang's node n is node n - 1, its root -1
    return torch.where(parent[:, 1:size] == unreached, size - 1, parents)


# ---------------------------------------------------------------------------------------------
# Argument checks: shapes, dtypes and devices always (host metadata, free); values on request.
# ---------------------------------------------------------------------------------------------


def _check_shapes(draft_token_ids, parents, draft_probs, target_probs):
    draft_token_ids = check_tensor("draft_token_ids", draft_token_ids, 2, ID_DTYPES)
    parents = check_tensor("parents", parents, 2, ID_DTYPES)
    target_probs = check_tensor("target_probs", target_probs, 3, PROB_DTYPES)
    batch_size, num_nodes = draft_token_ids.shape
    if parents.shape != draft_token_ids.shape:
        raise ValueError(
            f"parents must have the shape of draft_token_ids, [B, T] = {list(draft_token_ids.shape)}; "
            f"got {list(parents.shape)}"
        )
    if tuple(target_probs.shape[:2]) != (batch_size, num_nodes + 1):
        raise ValueError(
            f"target_probs must be [B, T+1, V] = [{batch_size}, {num_nodes + 1}, V] for draft_token_ids "
            f"of shape [B, T] = {list(draft_token_ids.shape)}; got {list(target_probs.shape)}"
        )
    vocab_size = target_probs.shape[2]
    if vocab_size == 0:
        raise ValueError("target_probs has an empty vocabulary (V = 0)")
    if vocab_size >= 2**31:
        raise ValueError(f"target_probs has V = {vocab_size}; the kernels take V < 2^31")
    device = target_probs.device
    for name, tensor in (("draft_token_ids", draft_token_ids), ("parents", parents)):
        if tensor.device != device:
            raise ValueError(f"{name} is on {tensor.device} but target_probs is on {device}")
    if draft_probs is not None:
        draft_probs = check_tensor("draft_probs", draft_probs, 3, PROB_DTYPES)
        if tuple(draft_probs.shape) != (batch_size, num_nodes, vocab_size):
            raise ValueError(
                f"draft_probs must be [B, T, V] = {[batch_size, num_nodes, vocab_size]}; got {list(draft_probs.shape)}"
            )
        if draft_probs.device != device:
            raise ValueError(f"draft_probs is on {draft_probs.device} but target_probs is on {device}")
        if draft_probs.dtype != target_probs.dtype:  # the kernels compute in float32: widening changes nothing
            draft_probs, target_probs = draft_probs.float(), target_probs.float()
        draft_probs = unit_stride_in_vocab(draft_probs)
    # int32 ids and parents are widened ([B, T] copies, never the caller's tensors).
    return (
        draft_token_ids.to(torch.int64).contiguous(),
        parents.to(torch.int64).contiguous(),
        draft_probs,
        unit_stride_in_vocab(target_probs),
    )


def _check_tree_values(draft_token_ids, parents, draft_probs, target_probs) -> None:
    check_probability_values(draft_token_ids, draft_probs, target_probs)
    index = torch.arange(parents.shape[1], device=parents.device)
    bad = (parents < ROOT) | (parents >= index)
    if bool(bad.any()):
        b, i = bad.nonzero()[0].tolist()
        raise ValueError(f"parents[{b}, {i}] = {int(parents[b, i])} is outside [-1, {i}): a parent precedes its child")
    if draft_probs is None or draft_probs.shape[1] == 0:
        return
    # Siblings were drawn from one distribution: their rows must be that one row.
    live = live_nodes(draft_token_ids, parents, target_probs.shape[-1])
    same_group = (parents[:, :, None] == parents[:, None, :]) & live[:, None, :]
    first_sibling = torch.where(live, same_group.int().argmax(-1), index)
    group_rows = draft_probs.gather(1, first_sibling[..., None].expand_as(draft_probs))
    differs = live & (group_rows != draft_probs).any(-1)
    if bool(differs.any()):
        b, i = differs.nonzero()[0].tolist()
        raise ValueError(
            f"draft_probs[{b}, {i}] differs from the row of node {int(first_sibling[b, i])}, its first sibling: "
            "siblings are drawn from one draft distribution, so their rows must be equal"
        )
