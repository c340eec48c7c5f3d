"""Token trees for speculative decoding: how the draft builds one per step, and how it is laid out.

A *token tree* holds several candidate continuations at once (SpecInfer, arXiv 2305.09781;
Medusa, arXiv 2401.10774; EAGLE-2, arXiv 2406.16858): the target verifies all of them in one
forward (``specdecode.decoder.model.TreeAttention``) and ``tree_rejection_sample`` walks down it,
so a step can accept a longer path than a chain of the same size.

**Indexing.** A ``DraftTree`` uses the verifier's indexing: nodes ``0..T-1``, ``parents[b, i] < i``,
``-1`` = a child of the root (the row's last committed token). Its *layout* in the cache puts the
root first: layout node ``i + 1`` is tree node ``i`` (``depths``/``ancestors`` are ``[B, T+1]`` /
``[B, T+1, T+1]`` in layout indexing, the root at 0 with depth 0).

**The drafters** (``TreeSpec``), and the verifier rule each one's drawing matches -- what makes the
verification exactly lossless for the way the tree was drawn:

- ``TreeSpec.static(branching)``: every node at depth ``d`` gets ``branching[d]`` children, e.g.
  ``(4, 2, 1, 1)``. How the children are drawn from the draft's distribution ``p`` at their parent
  is ``children``:

  - ``"top_k"`` (default): the ``b`` most likely tokens -- a fixed set given the context, so the
    verifier gets ``draft_probs=None`` (accept child ``x`` with probability ``q'(x)``, remove it
    on rejection). Exact for any fixed set of children, whatever produced it.
  - ``"without_replacement"``: ``b`` tokens sampled from ``p`` without replacement
    (``torch.multinomial(..., replacement=False)`` draws them one by one from the renormalised
    rest) -- verified with ``draws="without_replacement"`` and ``p`` as ``draft_probs``.
  - ``"iid"``: ``b`` independent samples from ``p`` (siblings may repeat; a repeat is rejected by
    the rule) -- verified with ``draws="iid"``.

- ``TreeSpec.dynamic(node_budget, top_k, depth)``: EAGLE-2's dynamic tree. Expansion: the root's
  ``top_k`` most likely tokens form level 1; at each further level the ``top_k`` nodes of the
  previous level with the highest *path probability* under the draft (the product of the draft's
  probabilities along the path) are fed to the draft together (one forward, tree attention), and
  each gets its ``top_k`` most likely tokens as children. Reranking: of all nodes generated, the
  ``node_budget`` with the highest path probability are verified. A child's path probability is at
  most its parent's, so the kept set contains every kept node's ancestors (ties: a stable sort
  keeps the parent, created first). Every choice is deterministic given the context, so the
  verifier gets ``draft_probs=None``, exactly as for a static top-k tree.

  The ranking estimates how likely each path is to be accepted (a node's *value*: the expected
  accepted length of a tree is the sum of its nodes' values, so the best tree of ``n`` nodes keeps
  the ``n`` of highest value). Sampled decoding accepts a fixed child ``x`` with probability
  ``q'(x)``, so nodes are ranked by the draft's softmax at the sampling temperature. Greedy
  decoding accepts ``x`` when it is the target's argmax, which the draft's softmax misjudges
  (a top-1 token at 0.6 is the argmax far more often than 6 times in 10), so greedy decoding by
  default (``greedy_ranking="calibrated"``) ranks by a *measured* acceptance table: an edge is
  worth the fraction of times a draft token of its rank class (top-1 or not) and probability was
  the target's greedy token on held-out text (``specdecode.decoder.tree_calibration``, shipped as
  ``tree_calibration_table.py``), a path the product. ``greedy_ranking="softmax"`` ranks by the
  draft's softmax at ``greedy_rank_temperature`` (0.3) instead. On the shipped pair (8 prompts,
  128 tokens, batch 1, depth 8) the two rankings accept 6.02 / 5.92 tokens per step at budget 8,
  where the chain K = 8 accepts 5.99: this draft's top-1 is the target's greedy token 88% of the
  time, so depth is worth more than breadth and the best 8-node tree is nearly the chain.

- ``TreeSpec.chain_with_siblings(depth, extra_nodes, top_k, children)``: the draft's chain of
  ``depth`` tokens -- drafted exactly as a chain is, one one-token forward per token -- plus, as
  leaves, the ``extra_nodes`` most valuable of up to ``top_k`` siblings at each chain position,
  so siblings go where the draft is unsure. It costs no draft forward beyond the chain's, and the
  draft re-reads two committed tokens per step as a chain does (the one K/V its cache can lack is
  the last accepted node's: a sibling is always a leaf). ``children``:

  - ``"without_replacement"`` (default): in sampled decoding the chain token ``c_d`` at level
    ``d`` is drawn from the draft's ``p_d`` exactly as a chain's (same draws: with
    ``extra_nodes=0`` the text is a ``depth``-chain's for the same seed), and the level's
    siblings are the next draws from ``p_d`` without replacement, after the whole chain.
    Verified by recursive rejection sampling (``draws="without_replacement"``, ``p_d`` as
    ``draft_probs``, the chain token tried first), which is exact for any number of siblings
    decided without looking at them: how many a level keeps is decided from the distributions
    and the chain alone, never from the siblings drawn (a sibling's value, ``reach_d (1 -
    p_d(c_d)) s_dj``, is the draft's estimate of reaching the level -- the chain's path
    probability above it --, of rejecting ``c_d``, and of the ``j``-th largest probability left).
    A sampled chain node is accepted with ``min(1, q/p)`` as in a chain (a fixed top-1 only with
    ``q``), and a sibling is tried only once it is rejected: per step this accepts at least what
    the ``depth``-chain does.
  - ``"top_k"``: the draft's greedy chain and its ``top_k`` runner-ups at each position, ranked
    as a dynamic tree ranks; deterministic given the context, verified with
    ``draft_probs=None``. With ``keep_chain=False`` (top-k children only: ranking a sampled chain
    node by its own drawn probability would bias the output) the chain's deep nodes compete with
    the runner-ups for the ``depth + extra_nodes`` places: ``chain_with_siblings(K, 0,
    keep_chain=False)`` is the most valuable ``K``-node tree of the chain and its runner-ups, at
    exactly a ``K``-chain's draft cost.

Greedy decoding (temperature 0) always uses top-k children and a greedy chain (a sampled child
would be the argmax repeated) and greedy verification: the text equals plain greedy decoding's.

**The draft's cache.** (Static and dynamic trees; a chain with siblings above.) Each step the draft
first re-reads the last ``max_depth + 1`` committed tokens (the window), which ends at the root and
gives the root's distribution: a step commits at most ``max_depth + 1`` tokens, and the tree's
nodes were written to scratch positions after the root, so the draft's cache is valid before the
window (its trail in ``DecodeState`` is ``max_depth + 1``). The draft then writes its tree after
the root: a static tree in the target's layout (node ``i`` at position ``root + i``), a dynamic
tree only the nodes it expands, in the order it feeds them (``TreeSpec.cache_nodes`` positions from
the root on).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from specdecode.decoder.model import KVCache, Transformer, TreeAttention
from specdecode.decoder.state import DecodeState, SamplingSettings

CHILDREN_RULES = ("top_k", "without_replacement", "iid")
CHAIN_SIBLINGS_RULES = ("without_replacement", "top_k")
GREEDY_RANKINGS = ("calibrated", "softmax")


@dataclass(frozen=True)
class TreeSpec:
    """How the draft builds a token tree each step (``speculative_generate(..., tree=...)``).

    Build one with ``TreeSpec.static(branching, children)`` or ``TreeSpec.dynamic(node_budget,
    top_k, depth)`` or ``TreeSpec.chain_with_siblings(depth, extra_nodes, top_k)`` (module
    docstring). ``branching``: static trees' children per node at depth 0, 1, ...;
    ``node_budget``/``top_k``/``depth``: dynamic trees; ``children``: how a static tree's children
    or a chain's siblings are drawn in sampled decoding (``"top_k"``, ``"without_replacement"``,
    ``"iid"``; ``None``: ``"without_replacement"`` for a chain with siblings that keeps its chain,
    else ``"top_k"``)."""

    branching: tuple[int, ...] = ()
    node_budget: int = 0
    top_k: int = 0
    depth: int = 0
    children: str | None = None
    greedy_rank_temperature: float = 0.3
    greedy_ranking: str = "calibrated"
    extra_nodes: int = -1
    keep_chain: bool = True

    def __post_init__(self):
        if self.children is None:  # a chain with siblings samples its children when it can
            sampled = self.extra_nodes >= 0 and self.keep_chain
            object.__setattr__(self, "children", "without_replacement" if sampled else "top_k")
        if self.children not in CHILDREN_RULES:
            raise ValueError(f"tree: children must be one of {CHILDREN_RULES}, got {self.children!r}")
        if self.extra_nodes >= 0:
            self._check_chain_with_siblings()
            return
        if bool(self.branching) == bool(self.node_budget):
            raise ValueError("tree: give exactly one of branching (a static tree) and node_budget (a dynamic tree)")
        if self.branching:
            if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.branching):
                raise ValueError(f"tree: branching must be positive ints, got {self.branching!r}")
            object.__setattr__(self, "branching", tuple(self.branching))
            return
        for name in ("node_budget", "top_k", "depth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tree: {name} must be an int >= 1, got {value!r}")
        if self.children != "top_k":
            raise ValueError("tree: a dynamic tree's children are always the draft's top-k (children='top_k')")
        if self.greedy_ranking not in GREEDY_RANKINGS:
            raise ValueError(f"tree: greedy_ranking must be one of {GREEDY_RANKINGS}, got {self.greedy_ranking!r}")
        if not self.greedy_rank_temperature > 0:
            raise ValueError(f"tree: greedy_rank_temperature must be > 0, got {self.greedy_rank_temperature!r}")
        if self.node_budget > self.candidate_nodes - 1:
            raise ValueError(
                f"tree: node_budget {self.node_budget} exceeds the {self.candidate_nodes - 1} nodes that "
                f"top_k={self.top_k}, depth={self.depth} generate"
            )

    def _check_chain_with_siblings(self) -> None:
        for name in ("depth", "top_k"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tree: {name} must be an int >= 1, got {value!r}")
        if isinstance(self.extra_nodes, bool) or not isinstance(self.extra_nodes, int):
            raise ValueError(f"tree: extra_nodes must be an int >= 0, got {self.extra_nodes!r}")
        if self.branching or self.node_budget:
            raise ValueError("tree: a chain with siblings takes depth, extra_nodes, top_k and children only")
        if self.children not in CHAIN_SIBLINGS_RULES:
            raise ValueError(
                f"tree: a chain with siblings' children must be one of {CHAIN_SIBLINGS_RULES}, got {self.children!r}"
            )
        if not self.keep_chain and self.children != "top_k":
            # Competing chain nodes are ranked by their own drawn probabilities: biased if sampled.
            raise ValueError(
                "tree: keep_chain=False ranks chain nodes by their own drawn tokens' probabilities, which "
                f"biases sampled children: it needs children='top_k', got children={self.children!r}"
            )
        if self.greedy_ranking not in GREEDY_RANKINGS:
            raise ValueError(f"tree: greedy_ranking must be one of {GREEDY_RANKINGS}, got {self.greedy_ranking!r}")
        if self.extra_nodes > self.depth * self.top_k:
            raise ValueError(
                f"tree: extra_nodes {self.extra_nodes} exceeds the {self.depth * self.top_k} siblings that "
                f"depth={self.depth}, top_k={self.top_k} offer"
            )

    @classmethod
    def chain_with_siblings(
        cls,
        depth: int,
        extra_nodes: int,
        top_k: int = 3,
        greedy_ranking: str = "calibrated",
        keep_chain: bool = True,
        children: str | None = None,
    ) -> TreeSpec:
        """The draft's chain of ``depth`` tokens plus, as leaves, the ``extra_nodes`` most valuable of
        up to ``top_k`` siblings at each of its positions (module docstring). ``children``: in
        sampled decoding, ``"without_replacement"`` (the default with ``keep_chain=True``) samples
        the chain as a chain does and its siblings after it without replacement; ``"top_k"`` takes
        the draft's greedy chain and top-k runner-ups, the only choice with ``keep_chain=False``
        (the ``depth + extra_nodes`` most valuable of the chain's nodes and runner-ups). Greedy
        decoding always uses the greedy chain and runner-ups."""
        return cls(
            depth=depth,
            extra_nodes=extra_nodes,
            top_k=top_k,
            greedy_ranking=greedy_ranking,
            keep_chain=keep_chain,
            children=children,
        )

    @classmethod
    def static(cls, branching: tuple[int, ...], children: str = "top_k") -> TreeSpec:
        return cls(branching=tuple(branching), children=children)

    @classmethod
    def dynamic(
        cls,
        node_budget: int,
        top_k: int = 4,
        depth: int = 8,
        greedy_rank_temperature: float = 0.3,
        greedy_ranking: str = "calibrated",
    ) -> TreeSpec:
        return cls(
            node_budget=node_budget,
            top_k=top_k,
            depth=depth,
            greedy_rank_temperature=greedy_rank_temperature,
            greedy_ranking=greedy_ranking,
        )

    def calibrated(self, sampling: SamplingSettings) -> bool:
        """Whether a dynamic tree ranks by measured acceptance (greedy, ``greedy_ranking="calibrated"``)."""
        return sampling.greedy and self.greedy_ranking == "calibrated"

    def rank_temperature(self, sampling: SamplingSettings) -> float:
        """The temperature of the draft softmax a dynamic tree ranks its nodes by (module docstring);
        a calibrated ranking reads the plain softmax (temperature 1) through its table."""
        if self.calibrated(sampling):
            return 1.0
        return self.greedy_rank_temperature if sampling.greedy else sampling.temperature

    @property
    def is_dynamic(self) -> bool:
        return self.node_budget > 0

    @property
    def is_chain_with_siblings(self) -> bool:
        return self.extra_nodes >= 0

    @property
    def draft_trail(self) -> int:
        """The committed tokens the draft re-reads each step (its cache trails by as many): a chain
        with siblings re-reads two, as a chain does (the one K/V it can lack is the last accepted
        node's, a sibling's, always a leaf); the other trees their depth + 1."""
        return 2 if self.is_chain_with_siblings else self.max_depth + 1

    @property
    def max_depth(self) -> int:
        """The longest path: the most drafts one step can accept."""
        return self.depth if self.is_dynamic or self.is_chain_with_siblings else len(self.branching)

    @property
    def level_sizes(self) -> list[int]:
        """A static tree's nodes per depth, root first: ``[1, b0, b0*b1, ...]``."""
        return [math.prod(self.branching[:d]) for d in range(len(self.branching) + 1)]

    @property
    def num_nodes(self) -> int:
        """``T``: the nodes verified per step (the target's forward reads ``T + 1`` tokens)."""
        if self.is_chain_with_siblings:
            return self.depth + self.extra_nodes
        return self.node_budget if self.is_dynamic else sum(self.level_sizes) - 1

    @property
    def candidate_nodes(self) -> int:
        """Nodes generated per step, the root included: a dynamic tree generates
        ``1 + top_k + (depth - 1) top_k^2`` candidates and verifies ``node_budget`` of them."""
        if self.is_dynamic:
            return 1 + self.top_k + (self.depth - 1) * self.top_k**2
        return self.num_nodes + 1

    @property
    def cache_nodes(self) -> int:
        """Cache positions from the root on that one step writes in either model's cache: the
        target's ``T + 1``; a dynamic tree's draft writes the root and ``top_k`` fed nodes per level."""
        if self.is_dynamic:
            return max(self.node_budget, self.top_k * (self.depth - 1)) + 1
        return self.num_nodes + 1

    def verifier_draws(self, greedy: bool) -> tuple[bool, str]:
        """``(pass draft_probs, draws)`` for ``tree_rejection_sample``: see the module docstring."""
        if greedy or self.children == "top_k":
            return False, "iid"  # draws is not read without draft_probs
        return True, self.children

    def label(self) -> str:
        if self.is_chain_with_siblings:
            # The default children (sampled with keep_chain) carry no suffix.
            best = "" if self.keep_chain else ", best of chain and runner-ups"
            fixed = ", top-k children" if self.keep_chain and self.children == "top_k" else ""
            return f"chain+siblings(depth={self.depth}, extra={self.extra_nodes}, top_k={self.top_k}{best}{fixed})"
        if self.is_dynamic:
            return f"dynamic(budget={self.node_budget}, top_k={self.top_k}, depth={self.depth})"
        suffix = "" if self.children == "top_k" else f", {self.children}"
        return f"static({','.join(map(str, self.branching))}{suffix})"


@dataclass(frozen=True)
class DraftTree:
    """One step's tree per row, in the verifier's indexing (module docstring).

    ``tokens [B, T]`` int64; ``parents [B, T]`` int64 (``-1``: child of the root); ``draft_probs``
    ``[B, T, V]`` float32 (row ``i``: the distribution node ``i`` was drawn from, its parent's) or
    ``None`` (children fixed); ``draws``: the verifier's sibling rule; ``depths [B, T+1]`` and
    ``ancestors [B, T+1, T+1]``: the layout, root at 0."""

    tokens: Tensor
    parents: Tensor
    draft_probs: Tensor | None
    draws: str
    depths: Tensor
    ancestors: Tensor

    def attention(self, root_position: Tensor) -> TreeAttention:
        """Every node of the tree, the root at ``root_position [B]``: the target's verify forward."""
        B, T = self.tokens.shape
        nodes = torch.arange(T + 1, device=self.tokens.device).expand(B, T + 1)
        return TreeAttention(root_position, self.depths, self.ancestors, nodes)


def tree_layout(parents: Tensor) -> tuple[Tensor, Tensor]:
    """``(depths [B, T+1], ancestors [B, T+1, T+1])`` of trees given by ``parents [B, T]`` (verifier
    indexing, each parent before its child), with the root as layout node 0.

    >>> depths, ancestors = tree_layout(torch.tensor([[-1, -1, 0]]))
    >>> depths.tolist(), ancestors[0, 3].tolist()
    ([[0, 1, 1, 2]], [True, True, False, True])
    """
    B, T = parents.shape
    layout_parents = parents.long() + 1  # the root (layout 0) for -1
    depths = torch.zeros(B, T + 1, dtype=torch.int64, device=parents.device)
    ancestors = torch.zeros(B, T + 1, T + 1, dtype=torch.bool, device=parents.device)
    ancestors[:, 0, 0] = True
    rows = torch.arange(B, device=parents.device)
    for i in range(1, T + 1):  # parents come first, so their rows are complete
        parent = layout_parents[:, i - 1]
        depths[:, i] = depths[rows, parent] + 1
        ancestors[:, i] = ancestors[rows, parent]
        ancestors[:, i, i] = True
    return depths, ancestors


def static_parents(spec: TreeSpec, batch_size: int, device: torch.device | str | None = None) -> Tensor:
    """``[B, T]`` parents of a static tree: level by level, each level's nodes grouped by parent.

    >>> static_parents(TreeSpec.static((2, 2)), 1).tolist()
    [[-1, -1, 0, 0, 1, 1]]
    """
    parents, level_start = [], 0  # layout index of the current level's first node
    for size, branch in zip(spec.level_sizes, spec.branching):
        parents += [level_start + j // branch for j in range(size * branch)]
        level_start += size
    return (torch.tensor(parents, dtype=torch.int64, device=device) - 1).expand(batch_size, -1).contiguous()


# ---- drafting ------------------------------------------------------------------------------------


def draft_root_logits(draft: Transformer, cache: KVCache, state: DecodeState, window: int) -> Tensor:
    """Feed each row's last ``window`` committed tokens (positions ``n - window .. n - 1``, clamped at
    0: a short row re-reads position 0, the same K/V, harmless) and return the draft's logits after
    the last one, ``[B, V]``: the distribution at the root."""
    steps = torch.arange(window, device=state.tokens.device)
    positions = (state.lengths[:, None] - window + steps).clamp_min(0)
    return draft(state.tokens.gather(1, positions), positions, cache)[:, -1]


def pick_children(probs: Tensor, count: int, rule: str, sampling: SamplingSettings) -> Tensor:
    """``[B, M, count]`` children of ``M`` nodes with distributions ``probs [B, M, V]`` by ``rule``.

    Drawn without replacement, a node whose distribution has fewer than ``count`` nonzero tokens
    (a low temperature underflows the float32 softmax) runs out of tokens to draw:
    ``torch.multinomial`` then returns zero-probability tokens (and fails on a row with no mass),
    which the verifier must never see -- recursive rejection sampling would accept such a child
    outright. Those slots are padding, ``-1`` (never accepted, nobody's path)."""
    if sampling.greedy or rule == "top_k":
        return probs.topk(count, dim=-1).indices
    flat = probs.flatten(0, 1)
    if rule == "iid":
        drawn = torch.multinomial(flat, count, replacement=True, generator=sampling.generator)
        return drawn.view(*probs.shape[:2], count)
    has_mass = flat.sum(-1, keepdim=True) > 0  # a row without any is all padding: any weights do
    drawn = torch.multinomial(torch.where(has_mass, flat, 1.0), count, replacement=False, generator=sampling.generator)
    drawn = torch.where(flat.gather(1, drawn) > 0, drawn, -1)
    return drawn.view(*probs.shape[:2], count)


def propose_tree(
    draft: Transformer, cache: KVCache, state: DecodeState, spec: TreeSpec, sampling: SamplingSettings
) -> DraftTree:
    """One tree per row (``spec``), drafted with ``max_depth`` draft forwards: the window, then one
    forward per level that has children."""
    if spec.is_chain_with_siblings:
        return _chain_with_siblings(draft, cache, state, spec, sampling)
    root_logits = draft_root_logits(draft, cache, state, spec.max_depth + 1)
    root_position = state.lengths - 1
    if spec.is_dynamic:
        ranking = SamplingSettings(spec.rank_temperature(sampling), eos_id=None)
        table = calibrated_acceptance(root_logits.device) if spec.calibrated(sampling) else None
        return _dynamic_tree(draft, cache, root_position, ranking.probs(root_logits), spec, ranking, table)
    return _static_tree(draft, cache, root_position, sampling.probs(root_logits), spec, sampling)


def _static_tree(
    draft: Transformer,
    cache: KVCache,
    root_position: Tensor,
    root_probs: Tensor,
    spec: TreeSpec,
    sampling: SamplingSettings,
) -> DraftTree:
    B = root_probs.shape[0]
    device = root_probs.device
    parents = static_parents(spec, B, device)
    depths, ancestors = tree_layout(parents)
    with_probs, draws = spec.verifier_draws(sampling.greedy)
    probs = root_probs[:, None, :]  # [B, nodes of this level, V]
    tokens, child_probs, level_start = [], [], 1  # layout index of the next level's first node
    for depth, branch in enumerate(spec.branching):
        children = pick_children(probs, branch, spec.children, sampling).flatten(1)  # [B, level size]
        tokens.append(children)
        if with_probs:
            child_probs.append(probs.repeat_interleave(branch, dim=1))
        if depth + 1 < len(spec.branching):  # the last level's nodes are leaves: never fed
            nodes = torch.arange(level_start, level_start + children.shape[1], device=device).expand(B, -1)
            attention = TreeAttention(root_position, depths, ancestors, nodes)
            # A padding child (-1) is fed as token 0: its subtree is never reached.
            probs = sampling.probs(draft(children.clamp_min(0), cache=cache, tree=attention))
        level_start += children.shape[1]
    draft_probs = torch.cat(child_probs, 1) if with_probs else None
    return DraftTree(torch.cat(tokens, 1), parents, draft_probs, draws, depths, ancestors)


@dataclass(frozen=True)
class _DynamicLayout:
    """What a dynamic tree's shape fixes, whatever the draft proposes: candidates are numbered level
    by level (root 0, level 1 ``1..k``, then ``k^2`` per level, each level grouped by parent in
    frontier order), and the frontier of level ``L`` is fed at slots ``1 + (L-1) k ..``, so a
    candidate's depth, the slot of its parent and every fed slot's depth depend on the index only.
    ``level_start [depth + 1]``: first candidate of each level (and the end); ``depths [N]``;
    ``parent_slot [N]`` (the root's 0, unused); ``fed_depths [F]``; ``eye [F, F]``."""

    level_start: list[int]
    depths: Tensor
    parent_slot: Tensor
    fed_depths: Tensor
    eye: Tensor

    def slots(self, level: int, k: int) -> slice:
        """The fed slots of level ``level``'s frontier."""
        return slice(1 + (level - 1) * k, 1 + level * k)


_DYNAMIC_LAYOUTS: dict[tuple[int, int, str], _DynamicLayout] = {}


def _dynamic_layout(k: int, depth: int, device: torch.device) -> _DynamicLayout:
    key = (k, depth, str(device))
    if key not in _DYNAMIC_LAYOUTS:
        sizes = [1, k] + [k * k] * (depth - 1)
        level_start = [sum(sizes[:level]) for level in range(depth + 2)]
        depths = torch.cat([torch.full((size,), level) for level, size in enumerate(sizes)])
        parent_slot = torch.zeros(level_start[-1], dtype=torch.int64)
        for level in range(2, depth + 1):  # children of the frontier fed at level - 1, k apiece
            first_slot = 1 + (level - 2) * k
            parent_slot[level_start[level] : level_start[level + 1]] = first_slot + torch.arange(k * k) // k
        fed = 1 + k * (depth - 1)
        fed_depths = torch.cat([torch.zeros(1, dtype=torch.int64), torch.arange(1, depth).repeat_interleave(k)])
        _DYNAMIC_LAYOUTS[key] = _DynamicLayout(
            level_start,
            depths.to(device),
            parent_slot.to(device),
            fed_depths.to(device),
            torch.eye(fed, dtype=torch.bool, device=device),
        )
    return _DYNAMIC_LAYOUTS[key]


def _dynamic_tree(
    draft: Transformer,
    cache: KVCache,
    root_position: Tensor,
    root_probs: Tensor,
    spec: TreeSpec,
    sampling: SamplingSettings,
    acceptance: Tensor | None = None,
) -> DraftTree:
    """EAGLE-2's expand-then-rerank (module docstring), every row at once with fixed shapes.

    *Candidates* (every node generated): root 0, then level 1 (``top_k``), then ``top_k^2`` per
    further level, with ``scores`` = log path values. Only *fed* nodes (root, then the ``top_k``
    expanded per level) need K/V in the draft's cache: fed node ``f`` is written at position
    ``root + f``, and ``fed_ancestors`` is the tree attention over them (a fed node's row: its
    parent's row and itself). What the shape fixes is precomputed (``_DynamicLayout``), so a level
    costs one draft forward and a few small ops: the draft's overhead per level is what a deep
    tree pays over a chain."""
    B, k, depth = root_probs.shape[0], spec.top_k, spec.depth
    device = root_probs.device
    layout = _dynamic_layout(k, depth, device)
    rows = torch.arange(B, device=device)[:, None]
    fed_ancestors = layout.eye.expand(B, -1, -1).clone()  # rows of unfed slots are never read
    fed_depths = layout.fed_depths.expand(B, -1)
    top = root_probs.topk(k, dim=-1)
    tokens, scores = [top.indices], [edge_log_values(top.values, acceptance)]  # per level, [B, size]
    frontier, frontier_scores = torch.arange(k, device=device).expand(B, -1), scores[0]  # level 1: all fed
    frontiers = []  # candidate indices of each level's frontier
    for level in range(1, depth):
        frontier = frontier + layout.level_start[level]  # level-local index -> candidate index
        frontiers.append(frontier)
        slots = layout.slots(level, k)
        fed_ancestors[:, slots] = fed_ancestors[rows, layout.parent_slot[frontier]] | layout.eye[slots]
        nodes = torch.arange(slots.start, slots.stop, device=device).expand(B, -1)
        attention = TreeAttention(root_position, fed_depths, fed_ancestors, nodes)
        fed_tokens = tokens[-1].gather(1, frontier - layout.level_start[level])
        top = sampling.probs(draft(fed_tokens, cache=cache, tree=attention)).topk(k, dim=-1)  # [B, k, k]
        tokens.append(top.indices.flatten(1))
        scores.append((frontier_scores[:, :, None] + edge_log_values(top.values, acceptance)).flatten(1))
        frontier_scores, frontier = scores[-1].topk(k, dim=-1)
    return _rerank(*_candidates(layout, tokens, scores, frontiers, fed_ancestors, k), spec.node_budget)


def _candidates(layout: _DynamicLayout, tokens, scores, frontiers, fed_ancestors: Tensor, k: int) -> tuple:
    """``_rerank``'s inputs over every candidate: ``tokens``, ``parents`` (candidate indices),
    ``depths``, ``scores``, ``fed_slot`` (-1: never fed) ``[B, N]`` and ``strict_ancestors [B, N, F]``
    (a candidate's fed ancestors: its parent's row of ``fed_ancestors``; none for the root)."""
    B, device = tokens[0].shape[0], tokens[0].device
    zero = torch.zeros(B, 1, dtype=torch.int64, device=device)
    all_tokens = torch.cat([zero, *tokens], 1)
    parents = torch.cat([zero.expand(B, 1 + k), *(f.repeat_interleave(k, dim=1) for f in frontiers)], 1)
    all_scores = torch.cat([zero.float(), *scores], 1)
    fed_slot = torch.full_like(all_tokens, -1)
    fed_slot[:, 0] = 0
    if frontiers:  # none at depth 1
        fed = torch.cat(frontiers, 1)
        fed_slot.scatter_(1, fed, torch.arange(1, 1 + fed.shape[1], device=device).expand(B, -1))
    strict_ancestors = fed_ancestors[:, layout.parent_slot]
    strict_ancestors[:, 0] = False
    return all_tokens, parents, layout.depths.expand(B, -1), all_scores, fed_slot, strict_ancestors


def draft_chain(
    draft: Transformer,
    cache: KVCache,
    state: DecodeState,
    depth: int,
    distribution: Callable[[Tensor], Tensor],
    choose: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """A chain of ``depth`` draft tokens per row ``[B, depth]`` and the distributions ``[B, depth, V]``
    each was chosen from (``distribution(logits)``, then ``choose(probs) -> [B]``), with ``depth``
    draft forwards: a chain's ``propose`` and a chain with siblings draft through this one loop.

    The first forward re-reads each row's last two committed tokens, at positions
    ``cache.lengths`` (= ``n-2``, or 0 for a one-token row, which then reads position 0 twice:
    same K/V, harmless) and ``n-1``: after a step that accepted all ``depth`` drafts the draft's
    cache lacks the last one, and re-reading keeps every row on one path. The last token itself
    is not fed."""
    n = state.lengths
    first = cache.lengths[: state.batch_size]
    positions = torch.stack([first, n - 1], 1)
    logits = draft(torch.stack([state.token_at(first), state.token_at(n - 1)], 1), positions, cache)[:, -1]
    tokens, dists = [], []
    for i in range(depth):
        probs = distribution(logits)
        token = choose(probs)
        tokens.append(token)
        dists.append(probs)
        if i < depth - 1:
            logits = draft(token[:, None], n + i, cache)[:, -1]
    return torch.stack(tokens, 1), torch.stack(dists, 1)


def _chain_with_siblings(
    draft: Transformer, cache: KVCache, state: DecodeState, spec: TreeSpec, sampling: SamplingSettings
) -> DraftTree:
    """The draft's chain (``depth`` one-token forwards, ``draft_chain``), then the ``extra_nodes``
    siblings of highest value as leaves (``chain_with_siblings_tree``; module docstring).

    Sampled children (``children="without_replacement"``, not greedy): the chain is drawn exactly
    as ``propose`` draws one (same draws, same order), and level ``d``'s siblings are the next
    draws from ``p_d`` without replacement after the chain token ``c_d``. A sibling's value,
    ``reach_d (1 - p_d(c_d)) s_dj`` (``reach_d``: the chain's path probability above level ``d``;
    ``s_dj``: the ``j``-th largest probability of ``p_d`` off ``c_d``), reads only the chain and
    the distributions, so how many siblings each level keeps never depends on the siblings drawn
    -- what keeps recursive rejection sampling exact. All ``top_k`` are drawn per level and the
    first ``m_d`` kept: the same as drawing ``m_d``. They are drawn after the whole chain, and
    not at all when none is kept, so the chain's random stream is a chain's.

    Otherwise (greedy, or ``children="top_k"``): the draft's greedy chain and the ``top_k``
    runner-ups of each level, ranked by ``edge_log_values`` (calibrated acceptance when greedy,
    the draft's probability at the sampling temperature otherwise): deterministic given the
    context, verified with ``draft_probs=None``."""
    sampled, _ = spec.verifier_draws(sampling.greedy)
    if not sampled:
        ranking = SamplingSettings(spec.rank_temperature(sampling), eos_id=None)
        table = calibrated_acceptance(state.tokens.device) if spec.calibrated(sampling) else None
        chain, probs = draft_chain(draft, cache, state, spec.depth, ranking.probs, lambda p: p.argmax(-1))
        chain_probs, others = _split_off_chain(probs, chain)
        runner_ups = others.topk(spec.top_k, dim=-1)
        values = torch.cat([chain_probs, runner_ups.values], 2)
        indices = torch.cat([chain[:, :, None], runner_ups.indices], 2)
        return chain_with_siblings_tree(values, indices, spec.extra_nodes, table, spec.keep_chain)
    chain, probs = draft_chain(draft, cache, state, spec.depth, sampling.probs, sampling.sample)
    chain_probs, others = _split_off_chain(probs, chain)
    largest = others.topk(spec.top_k, dim=-1).values  # s_dj: read for the values, never drawn
    values = torch.cat([chain_probs, (1 - chain_probs) * largest], 2)
    siblings = torch.full_like(chain[:, :, None], -1).expand(-1, -1, spec.top_k)
    if spec.extra_nodes > 0:  # none kept: draw none, so the random stream is a chain's
        # Draws past p_d's support come back as padding (-1); their value s_dj is 0, so such a
        # slot is kept only after every real sibling.
        siblings = pick_children(others, spec.top_k, "without_replacement", sampling)
    indices = torch.cat([chain[:, :, None], siblings], 2)
    return chain_with_siblings_tree(values, indices, spec.extra_nodes, None, spec.keep_chain, probs)


def _split_off_chain(probs: Tensor, chain: Tensor) -> tuple[Tensor, Tensor]:
    """``p_d(c_d)`` ``[B, D, 1]`` and ``p_d`` with the chain token's entry zeroed ``[B, D, V]``, from
    the chain's distributions ``probs [B, D, V]`` and tokens ``chain [B, D]``."""
    return probs.gather(2, chain[:, :, None]), probs.scatter(2, chain[:, :, None], 0.0)


def chain_with_siblings_tree(
    values: Tensor,
    indices: Tensor,
    extra_nodes: int,
    acceptance: Tensor | None,
    keep_chain: bool = True,
    draft_probs: Tensor | None = None,
) -> DraftTree:
    """The tree of ``TreeSpec.chain_with_siblings`` from each chain position's candidates:
    ``indices [B, D, k + 1]`` the chain token then ``k`` siblings (level ``d``: children of chain
    node ``d - 1``, level 0 the root's), ``values [B, D, k + 1]`` their edge values (descending
    along each level's siblings; ``edge_log_values`` reads them). ``keep_chain``: the whole chain
    and the ``extra_nodes`` siblings of highest path value; else the ``D + extra_nodes``
    candidates of highest value, chain nodes included (a node's value is at most its parent's and
    ties go to the earlier candidate -- the chain, then the lower level and rank -- so the kept
    chain is a prefix and every kept node's parent is kept). Layout: the kept chain, then the
    kept siblings, level then rank. ``draft_probs [B, D, V]`` (level ``d``'s distribution, which
    its chain token and siblings were drawn from without replacement): the tree is verified with
    them and ``draws="without_replacement"``; ``None``: fixed children."""
    B, D, k1 = values.shape
    k, T = k1 - 1, D + extra_nodes
    edges = edge_log_values(values, acceptance)
    chain_value = edges[:, :, 0].cumsum(1)  # [B, D]: value of chain node d (depth d + 1)
    before = torch.nn.functional.pad(chain_value[:, :-1], (1, 0))  # the value of each level's parent
    sibling_value = (before[:, :, None] + edges[:, :, 1:]).flatten(1)  # [B, D * k]
    candidates = torch.cat([chain_value.clamp_min(0) + 1 if keep_chain else chain_value, sibling_value], 1)
    order = torch.sort(candidates, dim=1, descending=True, stable=True).indices
    kept = order[:, :T].sort(dim=1).values  # [B, T]: chain node c < D, else D + level * k + rank - 1
    device = kept.device
    is_chain = kept < D
    level = torch.where(is_chain, kept, (kept - D).div(k, rounding_mode="floor"))
    tokens = torch.cat([indices[:, :, 0], indices[:, :, 1:].flatten(1)], 1).gather(1, kept)
    parents = level - 1  # the kept chain is a prefix: chain node l - 1 is tree node l - 1
    root = torch.zeros(B, 1, dtype=torch.int64, device=device)
    depths = torch.cat([root, level + 1], 1)
    # A node sees the root, the chain nodes above it (layout 1..level) and itself.
    sees_up_to = torch.cat([root, level], 1)  # [B, T + 1]
    columns = torch.arange(T + 1, device=device)
    ancestors = (columns <= sees_up_to[:, :, None]) | torch.eye(T + 1, dtype=torch.bool, device=device)
    if draft_probs is None:
        return DraftTree(tokens, parents, None, "iid", depths, ancestors)
    node_probs = draft_probs.gather(1, level[:, :, None].expand(-1, -1, draft_probs.shape[2]))  # a node's level's
    return DraftTree(tokens, parents, node_probs, "without_replacement", depths, ancestors)


_ACCEPTANCE_TABLES: dict[str, Tensor] = {}


def calibrated_acceptance(device: torch.device | str | None = None) -> Tensor:
    """``[2, NUM_BINS]`` float32: the shipped greedy acceptance table (``specdecode.decoder.tree_calibration``)."""
    key = str(torch.device("cpu" if device is None else device))
    if key not in _ACCEPTANCE_TABLES:
        from specdecode.decoder.tree_calibration_table import ACCEPTANCE

        _ACCEPTANCE_TABLES[key] = torch.tensor(ACCEPTANCE, dtype=torch.float32, device=device)
    return _ACCEPTANCE_TABLES[key]


def edge_log_values(top_probs: Tensor, acceptance: Tensor | None) -> Tensor:
    """The log value of each child edge given its parent's top-k probabilities ``top_probs [..., k]``
    (descending): ``log p`` (the draft's path probability), or with a calibration table
    ``acceptance [2, bins]`` the log of the measured chance that a token of that rank class (top-1
    or not) and probability is the target's greedy token."""
    if acceptance is None:
        return top_probs.log()
    bins = acceptance.shape[1]
    index = (top_probs * bins).long().clamp_(max=bins - 1)  # probabilities are >= 0
    index[..., 1:] += bins  # runner-ups read the second row
    return acceptance.flatten()[index].log()


def _rerank(tokens, parents, depths, scores, fed_slot, strict_ancestors, budget: int) -> DraftTree:
    """Keep the ``budget`` candidates of highest path probability (ties to the earlier candidate, so a
    parent comes before a child of equal score) as a ``DraftTree`` in creation order (parents
    first). A kept node's ancestors are all kept and were all fed."""
    B, N = tokens.shape
    device = tokens.device
    rows = torch.arange(B, device=device)[:, None]
    order = torch.sort(scores[:, 1:], dim=1, descending=True, stable=True).indices + 1
    kept = order[:, :budget].sort(dim=1).values
    layout = torch.cat([torch.zeros(B, 1, dtype=torch.int64, device=device), kept], 1)  # the root first
    new_index = torch.zeros(B, N, dtype=torch.int64, device=device)
    new_index.scatter_(1, layout, torch.arange(budget + 1, device=device).expand(B, -1))
    kept_parents = new_index.gather(1, parents.gather(1, kept)) - 1  # verifier indexing: the root is -1
    # ancestors[i, j]: j == i, or j was fed and its slot is among i's fed ancestors.
    slot_of_kept = fed_slot.gather(1, layout)  # [B, T+1]
    candidate_rows = strict_ancestors[rows, layout]  # [B, T+1, F]
    is_ancestor = candidate_rows.gather(2, slot_of_kept.clamp_min(0)[:, None, :].expand(-1, budget + 1, -1))
    ancestors = (is_ancestor & (slot_of_kept >= 0)[:, None, :]) | torch.eye(budget + 1, dtype=torch.bool, device=device)
    return DraftTree(tokens.gather(1, kept), kept_parents, None, "iid", depths.gather(1, layout), ancestors)
