"""Token-tree speculative decoding end to end (``speculative_generate(..., tree=...)``).

- Tree attention: one forward over a tree gives every node the logits a plain forward of its
  path gives, and the accepted path's K/V ends up where plain decoding would have put it.
- Drafting: a static tree's children are the draft's top-k (or samples) at their parent, a
  dynamic tree keeps the nodes of highest path probability, closed under ancestors; a sampled
  chain with siblings drafts a chain's exact chain (no siblings: a chain's exact tokens) and
  distinct siblings, as many per level as the value rule says.
- Greedy tree decoding equals plain greedy decoding token for token (batch 1 and 4, static and
  dynamic trees); sampled tree decoding draws the first and second tokens from the target's
  distribution for every way a tree is drawn (chi-square, false-alarm rate 1e-3), and a verifier
  told the wrong drawing rule fails the same test (power).

Random tiny models in float64 for the exact tests (no trained weights needed), float32 for the
statistical ones.
"""

import dataclasses

import pytest
import torch
from stats import assert_fits
from test_generate import PROMPTS, assert_cache_holds_committed_tokens, exact_first_two, tiny_pair

from specdecode.decoder.generate import (
    accept_tree_path,
    commit_verified_,
    generate,
    prefill,
    speculative_generate,
    tree_step,
    verify_tree,
)
from specdecode.decoder.model import TreeAttention
from specdecode.decoder.state import DecodeState, SamplingSettings, encode_prompts
from specdecode.decoder.tree import (
    TreeSpec,
    calibrated_acceptance,
    chain_with_siblings_tree,
    edge_log_values,
    propose_tree,
    static_parents,
    tree_layout,
)

FALSE_ALARM_RATE = 1e-3  # per chi-square test: a correct sampler fails on 1 seed in 1000

pytestmark = pytest.mark.usefixtures("one_thread")

TREES = [
    TreeSpec.static((3, 2, 1)),
    TreeSpec.static((2, 2, 2, 1)),
    TreeSpec.dynamic(10, top_k=3, depth=4),
    TreeSpec.dynamic(10, top_k=3, depth=4, greedy_ranking="softmax"),
    TreeSpec.chain_with_siblings(4, 3, top_k=2),
    TreeSpec.chain_with_siblings(6, 1, top_k=2, keep_chain=False),
]


@pytest.fixture(scope="module")
def close_pair():
    """A draft close enough to the target that paths of 2-4 drafts are accepted often."""
    return tiny_pair(noise=0.02)


# ---- layout and tree attention ------------------------------------------------------------------


def test_static_layout_by_hand():
    parents = static_parents(TreeSpec.static((2, 2, 1)), batch_size=2)
    assert parents.tolist() == [[-1, -1, 0, 0, 1, 1, 2, 3, 4, 5]] * 2
    depths, ancestors = tree_layout(parents)
    assert depths[0].tolist() == [0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    # layout node 8 = tree node 7, child of tree node 3 (layout 4), child of tree node 0 (layout 1)
    assert ancestors[1, 8].nonzero().flatten().tolist() == [0, 1, 4, 8]
    assert TreeSpec.static((2, 2, 1)).num_nodes == 10 and TreeSpec.static((4, 2, 1, 1)).num_nodes == 28


def random_tree(batch: int, nodes: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, T]`` parents of random trees (each node's parent uniform over the root and earlier nodes)."""
    return torch.stack(
        [torch.randint(-1, i, (batch,), generator=generator) if i else torch.full((batch,), -1) for i in range(nodes)],
        1,
    )


@torch.no_grad()
def test_tree_forward_equals_a_plain_forward_of_each_path():
    """Every node's logits from one tree forward at an offset (per row) equal a no-cache forward of
    the row's prefix followed by the node's path; siblings must not see each other."""
    target, _ = tiny_pair()
    generator = torch.Generator().manual_seed(1)
    B, T, V = 3, 9, target.config.vocab_size
    parents = random_tree(B, T, generator)
    tokens = torch.randint(0, V, (B, T), generator=generator)
    prefix_lengths = torch.tensor([5, 9, 7])
    prefixes = torch.randint(0, V, (B, 9), generator=generator)
    cache = target.new_cache(B, 40)
    target(prefixes[:, :-1], torch.zeros(B, dtype=torch.int64), cache)  # positions 0..7; row 0 and 2 rewrite theirs
    depths, ancestors = tree_layout(parents)
    root = prefix_lengths - 1
    roots = prefixes[torch.arange(B), root]
    attention = TreeAttention(root, depths, ancestors, torch.arange(T + 1).expand(B, -1))
    got = target(torch.cat([roots[:, None], tokens], 1), cache=cache, tree=attention)
    for b in range(B):
        for node in range(T + 1):
            path = [i - 1 for i in range(1, T + 1) if ancestors[b, node, i]]  # tree nodes, in order
            text = torch.cat([prefixes[b, : prefix_lengths[b]], tokens[b, path]])
            expected = target(text[None])[0, -1]
            torch.testing.assert_close(got[b, node], expected, rtol=0, atol=1e-10)


@torch.no_grad()
@pytest.mark.parametrize(
    "spec", [TreeSpec.static((3, 2, 1)), TreeSpec.chain_with_siblings(3, 3, top_k=2)], ids=lambda s: s.label()
)
def test_tree_steps_keep_cache_lengths_true(close_pair, spec):
    """Tree steps by hand over ragged rows, EOS freezing some: after every commit the target's cache
    holds exactly the committed tokens' K/V below its length (the accepted path was moved into
    place), and the draft's cache (trail depth + 1) too."""
    target, draft = close_pair
    eos = int(generate(target, PROMPTS, 4, eos_id=None).tokens[1, 3])
    sampling = SamplingSettings(temperature=0.0, eos_id=eos)
    ids, prompt_lengths = encode_prompts(PROMPTS)
    width = 90
    caches = [target.new_cache(len(PROMPTS), width), draft.new_cache(len(PROMPTS), width)]
    state = DecodeState.start(ids, prompt_lengths, width, caches, trails=[1, spec.draft_trail])
    prefill(target, caches[0], ids)
    prefill(draft, caches[1], ids)
    longest = 0
    for _ in range(6):
        out = tree_step(target, draft, state, spec, sampling)
        longest = max(longest, int(out.num_accepted[state.active].max()))
        commit_verified_(state, out, sampling.eos_id, max_new_tokens=40)
        assert_cache_holds_committed_tokens(target, caches[0], state, trail=1)
        assert_cache_holds_committed_tokens(draft, caches[1], state, trail=spec.draft_trail)
    assert longest >= 2 and not bool(state.active.all())  # moved paths of 2+ nodes; a row froze


# ---- drafting -----------------------------------------------------------------------------------


def start_state(target, draft, prompts, spec):
    ids, prompt_lengths = encode_prompts(prompts)
    caches = [target.new_cache(len(prompts), 128), draft.new_cache(len(prompts), 128)]
    state = DecodeState.start(ids, prompt_lengths, 128, caches, trails=[1, spec.draft_trail])
    prefill(target, caches[0], ids)
    prefill(draft, caches[1], ids)
    return state


@torch.no_grad()
def node_distributions(model, state, tree, temperature: float = 1.0):
    """``[B, T+1, V]`` the model's softmax (at ``temperature``) after each row's prompt (0) and after
    each node's path, by no-cache forwards."""
    depths, ancestors = tree.depths, tree.ancestors
    rows = []
    for b in range(state.batch_size):
        prompt = state.tokens[b, : state.lengths[b]]
        row = []
        for node in range(depths.shape[1]):
            path = [i - 1 for i in range(1, depths.shape[1]) if ancestors[b, node, i]]
            logits = model(torch.cat([prompt, tree.tokens[b, path]])[None])[0, -1].double()
            row.append((logits / temperature).softmax(-1))
        rows.append(torch.stack(row))
    return torch.stack(rows)


@torch.no_grad()
def test_static_top_k_children_are_the_drafts_top_k(close_pair):
    target, draft = close_pair
    spec = TreeSpec.static((3, 2, 2))
    state = start_state(target, draft, PROMPTS, spec)
    tree = propose_tree(draft, state.caches[1], state, spec, SamplingSettings(0.0))
    assert tree.draft_probs is None and tree.tokens.shape == (4, spec.num_nodes)
    probs = node_distributions(draft, state, tree)
    for b in range(4):
        for parent in range(spec.num_nodes + 1):  # layout index
            children = (tree.parents[b] == parent - 1).nonzero().flatten()
            if len(children):
                assert tree.tokens[b, children].tolist() == probs[b, parent].topk(len(children)).indices.tolist()


@torch.no_grad()
def test_dynamic_tree_keeps_the_most_likely_paths(close_pair):
    """The kept nodes are closed under ancestors, each is one of its parent's top-k under the draft,
    and no kept node's path probability (greedy: under the draft's softmax at the rank temperature)
    is below a generated but dropped one's: checked against no-cache forwards."""
    target, draft = close_pair
    spec = TreeSpec.dynamic(7, top_k=3, depth=4, greedy_ranking="softmax")
    state = start_state(target, draft, PROMPTS, spec)
    tree = propose_tree(draft, state.caches[1], state, spec, SamplingSettings(0.0))
    probs = node_distributions(draft, state, tree, spec.greedy_rank_temperature)  # greedy ranks by these
    for b in range(4):
        parents = tree.parents[b].tolist()
        assert all(p < i for i, p in enumerate(parents))  # parents first: ancestors are kept
        path_prob = [1.0]
        for i, p in enumerate(parents):
            top = probs[b, p + 1].topk(spec.top_k)
            assert int(tree.tokens[b, i]) in top.indices.tolist()
            path_prob.append(path_prob[p + 1] * float(probs[b, p + 1, tree.tokens[b, i]]))
        # The root's top-k children that were dropped have lower path probability than every kept leaf.
        kept_roots = {int(tree.tokens[b, i]) for i, p in enumerate(parents) if p == -1}
        root_top = probs[b, 0].topk(spec.top_k)
        dropped = [float(v) for v, t in zip(root_top.values, root_top.indices) if int(t) not in kept_roots]
        assert all(d <= min(path_prob[1:]) + 1e-6 for d in dropped)
    assert int(tree.depths.max()) >= 2


def test_edge_values_read_the_calibration_table():
    """A top-1 token's edge value is the table's top-1 row at its probability's bin, any other
    rank's the second row; without a table it is the log probability."""
    table = torch.tensor([[0.2, 0.6, 0.9, 0.99], [0.05, 0.3, 0.5, 0.5]])
    probs = torch.tensor([[0.8, 0.1, 0.05], [0.3, 0.26, 0.24]])
    expected = torch.tensor([[0.99, 0.05, 0.05], [0.6, 0.3, 0.05]]).log()
    torch.testing.assert_close(edge_log_values(probs, table), expected)
    torch.testing.assert_close(edge_log_values(probs, None), probs.log())
    shipped = calibrated_acceptance()
    assert shipped.shape[0] == 2 and bool((shipped > 0).all() and (shipped <= 1).all())


def test_chain_with_siblings_keeps_the_most_valuable_runner_ups():
    """By hand: a chain of 3 with 2 runner-ups per level and 2 extra nodes. Table: top-1 at p in
    [0.5, 1) accepted 0.9, below 0.5 accepted 0.5; a runner-up at p in [0.25, 0.5) 0.4, below 0.25
    0.1. Level 0 is confident (0.9), level 1 is not (0.4 / 0.35 / 0.2), level 2 is (0.8 / 0.15).
    Values: chain 0.9, 0.45, 0.405; runner-ups at level 0: 0.1, 0.1; level 1: 0.9 * 0.4 = 0.36,
    0.9 * 0.1 = 0.09; level 2: 0.045, 0.045. Kept: level 1 rank 2 (0.36) and a level-0 one (0.1, the
    first of the tie), laid out level then rank after the chain."""
    table = torch.tensor([[0.5, 0.5, 0.9, 0.9], [0.1, 0.4, 0.4, 0.4]])
    values = torch.tensor([[[0.9, 0.05, 0.03], [0.4, 0.35, 0.2], [0.8, 0.15, 0.04]]])
    indices = torch.tensor([[[10, 11, 12], [20, 21, 22], [30, 31, 32]]])
    tree = chain_with_siblings_tree(values, indices, 2, table)
    assert tree.tokens.tolist() == [[10, 20, 30, 11, 21]]
    assert tree.parents.tolist() == [[-1, 0, 1, -1, 0]]
    assert tree.depths.tolist() == [[0, 1, 2, 3, 1, 2]]
    expected_depths, expected_ancestors = tree_layout(tree.parents)
    assert torch.equal(tree.depths, expected_depths) and torch.equal(tree.ancestors, expected_ancestors)
    assert tree.draft_probs is None
    # Without the table (the draft's path probability): level 1's runner-up 0.9 * 0.35 = 0.315, then
    # level 1's third 0.18: the draft's softmax rates level 0's runner-ups (0.05) lower.
    tree = chain_with_siblings_tree(values, indices, 2, None)
    assert tree.tokens.tolist() == [[10, 20, 30, 21, 22]]
    # Chain nodes compete too (keep_chain=False, 3 + 1 places): chain 0.9, 0.45, 0.405 and the
    # level-1 runner-up 0.36 beat level 0's 0.1; with 2 places (depth 2 + 0): the first two chain nodes.
    tree = chain_with_siblings_tree(values, indices, 1, table, keep_chain=False)
    assert tree.tokens.tolist() == [[10, 20, 30, 21]] and tree.parents.tolist() == [[-1, 0, 1, 0]]
    tree = chain_with_siblings_tree(values[:, :2], indices[:, :2], 0, table, keep_chain=False)
    assert tree.tokens.tolist() == [[10, 20]]
    # A top-1 below 0.5 now accepted 0.1: chain 0.9, 0.09, 0.081; runner-ups 0.1, 0.1 (level 0),
    # 0.36, 0.09 (level 1): 3 places keep chain node 0, level 1's runner-up and level 0's first.
    table = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.1, 0.4, 0.4, 0.4]])
    tree = chain_with_siblings_tree(values, indices, 0, table, keep_chain=False)
    assert tree.tokens.tolist() == [[10, 11, 21]] and tree.parents.tolist() == [[-1, -1, 0]]
    assert tree.depths.tolist() == [[0, 1, 1, 2]] and tree.ancestors[0].sum(1).tolist() == [1, 2, 2, 3]
    expected_depths, expected_ancestors = tree_layout(tree.parents)
    assert torch.equal(tree.depths, expected_depths) and torch.equal(tree.ancestors, expected_ancestors)


@torch.no_grad()
def test_sampled_chain_with_siblings_layout_and_sibling_counts(close_pair):
    """Sampled siblings (batch 4, depth 4, 5 extra of top-3): each row has depth + extra nodes,
    the chain first (node d the child of node d - 1), then the siblings level by level, each a
    child of the chain node above its level; a level's siblings differ from each other and from its
    chain token; every node's draft row is the draft's distribution at its parent (no-cache
    forwards); and the siblings per level are what the value rule ``reach_d (1 - p_d(c_d)) s_dj``
    keeps, computed here from the chain and the distributions only."""
    target, draft = close_pair
    D, S, k = 4, 5, 3
    spec = TreeSpec.chain_with_siblings(D, S, top_k=k)
    state = start_state(target, draft, PROMPTS, spec)
    sampling = SamplingSettings(1.0, torch.Generator().manual_seed(0), eos_id=None)
    tree = propose_tree(draft, state.caches[1], state, spec, sampling)
    assert tree.tokens.shape == (4, D + S) and tree.draws == "without_replacement"
    assert spec.verifier_draws(greedy=False) == (True, "without_replacement")
    depths, ancestors = tree_layout(tree.parents)
    assert torch.equal(tree.depths, depths) and torch.equal(tree.ancestors, ancestors)
    probs = node_distributions(draft, state, tree)  # [B, T + 1, V]: layout node d + 1 = chain node d
    parent_rows = (tree.parents + 1)[:, :, None].expand(-1, -1, probs.shape[2])
    torch.testing.assert_close(tree.draft_probs.double(), probs.gather(1, parent_rows), rtol=0, atol=1e-6)
    levels_with_siblings = set()
    for b in range(4):
        parents, tokens = tree.parents[b].tolist(), tree.tokens[b].tolist()
        assert parents[:D] == list(range(-1, D - 1)) and parents[D:] == sorted(parents[D:])
        chain, level_probs = tokens[:D], probs[b, :D]  # level d: the distribution after chain node d - 1
        counts = [0] * D
        for d in range(D):
            siblings = [t for t, p in zip(tokens[D:], parents[D:]) if p == d - 1]
            assert len(set(siblings)) == len(siblings) and chain[d] not in siblings and min(siblings, default=0) >= 0
            counts[d] = len(siblings)
        chain_p = level_probs[torch.arange(D), chain]
        reach = torch.cat([torch.ones(1, dtype=chain_p.dtype), chain_p.cumprod(0)[:-1]])
        rest = level_probs.scatter(1, torch.tensor(chain)[:, None], 0.0).topk(k).values  # [D, k]
        value = (reach * (1 - chain_p))[:, None] * rest
        kept = value.flatten().sort(descending=True, stable=True).indices[:S] // k
        assert counts == torch.bincount(kept, minlength=D).tolist()
        levels_with_siblings |= {d for d in range(D) if counts[d]}
    assert len(levels_with_siblings) >= 2  # the rule puts siblings on different levels per row


@torch.no_grad()
def test_sampled_siblings_past_the_drafts_support_are_padding():
    """At temperature 0.01 the draft's float32 softmax has one or a few nonzero tokens: draws past
    a level's support would be zero-probability tokens, so those slots are padding (-1, never
    accepted), and decoding still runs and emits only real tokens."""
    vocab = 8
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=0, dtype=torch.float32)
    spec = TreeSpec.chain_with_siblings(3, 9, top_k=3)  # every sibling slot kept
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [2, 2, 7], [0, 1, 5]])
    state = start_state(target, draft, prompts, spec)
    sampling = SamplingSettings(0.01, torch.Generator().manual_seed(0), eos_id=None)
    tree = propose_tree(draft, state.caches[1], state, spec, sampling)
    support = (tree.draft_probs > 0).sum(-1)  # [B, T]: the support of each node's level
    padded = tree.tokens == -1
    assert bool(padded.any()) and bool((tree.tokens[:, :3] >= 0).all())
    for b in range(4):
        for d in range(3):
            level = (tree.parents[b] == d - 1).nonzero().flatten()  # the chain node, then its siblings
            real = int((tree.tokens[b, level] >= 0).sum())
            assert real == min(1 + 3, int(support[b, level[0]]))
            assert bool((tree.draft_probs[b, level[0], tree.tokens[b, level[:real]]] > 0).all())
    out = speculative_generate(
        target, draft, prompts, 20, temperature=0.01, generator=torch.Generator().manual_seed(0), eos_id=None, tree=spec
    )
    assert out.num_tokens.tolist() == [20] * 4 and int(out.tokens.min()) >= 0


@torch.no_grad()
def test_static_children_drawn_past_the_drafts_support_are_padding():
    """The same for a static tree drawn without replacement (``pick_children``, shared by both
    drafters): at temperature 0.01 a node with fewer nonzero tokens than its branching gets
    padding (-1) for the draws past its support, every real child has nonzero draft probability,
    and decoding emits only real tokens."""
    vocab = 8
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=0, dtype=torch.float32)
    spec = TreeSpec.static((4, 3), children="without_replacement")
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6], [2, 2, 7], [0, 1, 5]])
    state = start_state(target, draft, prompts, spec)
    sampling = SamplingSettings(0.01, torch.Generator().manual_seed(0), eos_id=None)
    tree = propose_tree(draft, state.caches[1], state, spec, sampling)
    real = tree.tokens >= 0
    assert bool((~real).any()) and bool(real.any(1).all())
    probs_of_tokens = tree.draft_probs.gather(2, tree.tokens.clamp_min(0)[:, :, None]).squeeze(2)
    assert bool((probs_of_tokens[real] > 0).all())
    for b in range(4):  # a node's real children: as many as its distribution's support allows
        for parent in tree.parents[b].unique().tolist():
            children = (tree.parents[b] == parent).nonzero().flatten()
            support = int((tree.draft_probs[b, children[0]] > 0).sum())
            assert int(real[b, children].sum()) == min(len(children), support)
    out = speculative_generate(
        target, draft, prompts, 20, temperature=0.01, generator=torch.Generator().manual_seed(0), eos_id=None, tree=spec
    )
    assert out.num_tokens.tolist() == [20] * 4 and int(out.tokens.min()) >= 0


@torch.no_grad()
def test_calibrated_dynamic_tree_keeps_the_most_valuable_paths(close_pair):
    """Greedy, calibrated: every kept node's path value (product of table entries along it, from
    no-cache forwards) is at least that of each dropped child of the root."""
    target, draft = close_pair
    spec = TreeSpec.dynamic(7, top_k=3, depth=4)
    state = start_state(target, draft, PROMPTS, spec)
    tree = propose_tree(draft, state.caches[1], state, spec, SamplingSettings(0.0))
    probs = node_distributions(draft, state, tree).float()
    table = calibrated_acceptance()
    for b in range(4):
        parents = tree.parents[b].tolist()
        assert all(p < i for i, p in enumerate(parents))
        value = [0.0]
        for i, p in enumerate(parents):
            top = probs[b, p + 1].topk(spec.top_k)
            rank = top.indices.tolist().index(int(tree.tokens[b, i]))
            value.append(value[p + 1] + float(edge_log_values(top.values, table)[rank]))
        root_top = probs[b, 0].topk(spec.top_k)
        kept_roots = {int(tree.tokens[b, i]) for i, p in enumerate(parents) if p == -1}
        root_values = edge_log_values(root_top.values, table)
        dropped = [float(v) for v, t in zip(root_values, root_top.indices) if int(t) not in kept_roots]
        assert all(d <= min(value[1:]) + 1e-5 for d in dropped)


# ---- greedy: identical to plain greedy decoding -------------------------------------------------


@pytest.mark.parametrize("spec", TREES, ids=lambda s: s.label())
@pytest.mark.parametrize("batch", ["single", "batch4"])
def test_greedy_tree_decoding_equals_greedy(close_pair, spec, batch):
    target, draft = close_pair
    groups = [[p] for p in PROMPTS] if batch == "single" else [PROMPTS]
    hist = torch.zeros(spec.max_depth + 1, dtype=torch.int64)
    for prompts in groups:
        plain = generate(target, prompts, 24, eos_id=None)
        tree = speculative_generate(target, draft, prompts, 24, eos_id=None, tree=spec)
        assert torch.equal(tree.tokens, plain.tokens)
        assert tree.num_tokens.tolist() == [24] * len(prompts)
        assert tree.stats["verified_tokens_per_step"] == spec.num_nodes + 1
        hist += torch.tensor(tree.stats["accepted_hist"])
    assert hist[0] > 0 and hist[2:].sum() > 0  # rejections at the root, and paths of 2+ accepted


@pytest.mark.parametrize("batch", ["single", "batch4"])
def test_sampled_chain_without_siblings_equals_a_chain(close_pair, batch):
    """Sampled ``chain_with_siblings(K, 0)`` drafts a K-chain with a chain's draws and the tree
    verifier on a path equals the chain verifier for the same seed: the same tokens as
    ``num_draft_tokens=K`` for the same generator seed."""
    target, draft = close_pair
    prompts = PROMPTS[:1] if batch == "single" else PROMPTS
    accepted = 0

    def run(seed: int, **kwargs):
        generator = torch.Generator().manual_seed(seed)
        return speculative_generate(
            target, draft, prompts, 24, temperature=0.9, generator=generator, eos_id=None, **kwargs
        )

    for K, seed in [(2, 0), (4, 1), (4, 2)]:
        chain, tree = run(seed, num_draft_tokens=K), run(seed, tree=TreeSpec.chain_with_siblings(K, 0))
        assert torch.equal(tree.tokens, chain.tokens), (K, seed)
        assert tree.stats["accepted_hist"] == chain.stats["accepted_hist"]
        accepted += sum(tree.stats["accepted_hist"][2:])
    assert accepted > 0  # paths of 2+ drafts accepted: the chains really were compared


def test_draft_equal_to_target_accepts_the_whole_depth(close_pair):
    """With the target as its own draft, its top-1 child is always accepted: every step accepts a
    full path of the static tree's depth, plus one token (20 = 5 steps of 4)."""
    target, _ = close_pair
    spec = TreeSpec.static((2, 1, 1))
    tree = speculative_generate(target, target, PROMPTS, 20, eos_id=None, tree=spec)
    assert tree.stats["accepted_hist"] == [0, 0, 0, 4 * 5]
    assert tree.stats["mean_accepted_length"] == 4.0 and tree.stats["steps"] == 5
    assert tree.stats["draft_forwards"] == 5 * 3 + 1 and tree.stats["verified_tokens_per_step"] == 7
    assert torch.equal(tree.tokens, generate(target, PROMPTS, 20, eos_id=None).tokens)


def test_tree_decoding_stops_at_eos(close_pair):
    target, draft = close_pair
    plain = generate(target, PROMPTS, 20, eos_id=None)
    eos = int(plain.tokens[0, 5])
    tree = speculative_generate(target, draft, PROMPTS, 20, eos_id=eos, tree=TREES[0])
    assert torch.equal(tree.tokens, generate(target, PROMPTS, 20, eos_id=eos).tokens)
    assert int(tree.num_tokens[0]) == 6


def test_shipped_pair_greedy_tree_equals_greedy():
    """The shipped pair at batch 1 (the target in its default dtype on this machine): greedy tree
    decoding gives plain greedy decoding's text."""
    import os

    import specdecode as sd
    from specdecode.decoder.generate import WEIGHTS_DIR

    if not os.path.exists(os.path.join(WEIGHTS_DIR, "target.pt")):
        pytest.skip("no shipped weights in this checkout")
    target, draft = sd.load_pretrained()
    prompt = ["def main():\n"]
    plain = sd.generate(target, prompt, 32, eos_id=None)
    for spec in (TreeSpec.static((4, 2, 1, 1)), TreeSpec.dynamic(16, top_k=4, depth=5)):
        tree = sd.speculative_generate(target, draft, prompt, 32, eos_id=None, tree=spec)
        assert torch.equal(tree.tokens, plain.tokens), spec.label()
        assert tree.stats["mean_accepted_length"] > 2


def test_bad_tree_arguments_name_the_argument(close_pair):
    target, draft = close_pair
    with pytest.raises(TypeError, match="tree"):
        speculative_generate(target, draft, PROMPTS, 4, tree=(2, 2))
    for kwargs in [
        dict(branching=(2, 0)),
        dict(branching=(2,), node_budget=3),
        dict(),
        dict(branching=(2,), children="sorted"),
        dict(node_budget=50, top_k=2, depth=3),
        dict(node_budget=4, top_k=2, depth=3, children="iid"),
        dict(node_budget=4, top_k=2, depth=3, greedy_rank_temperature=0.0),
        dict(node_budget=4, top_k=2, depth=3, greedy_ranking="argmax"),
        dict(depth=3, extra_nodes=7, top_k=2),
        dict(depth=0, extra_nodes=1, top_k=2),
        dict(depth=3, extra_nodes=1, top_k=2, branching=(2,)),
        dict(depth=3, extra_nodes=1, top_k=2, children="iid"),
    ]:
        with pytest.raises(ValueError, match="tree"):
            TreeSpec(**kwargs)
    # Ranking sampled chain nodes by their own drawn probabilities would bias the output.
    with pytest.raises(ValueError, match="keep_chain=False.*children='top_k'"):
        TreeSpec.chain_with_siblings(3, 1, keep_chain=False, children="without_replacement")
    with pytest.raises(ValueError, match="children must be one of"):
        TreeSpec.chain_with_siblings(3, 1, children="iid")
    assert TreeSpec.chain_with_siblings(3, 1).children == "without_replacement"
    assert TreeSpec.chain_with_siblings(3, 1, keep_chain=False).children == "top_k"


# ---- sampling: the output distribution is the target's ------------------------------------------

SAMPLED_TREES = [
    TreeSpec.static((3, 2), children="top_k"),
    TreeSpec.static((3, 2), children="without_replacement"),
    TreeSpec.static((3, 2), children="iid"),
    TreeSpec.dynamic(6, top_k=3, depth=3),
    TreeSpec.chain_with_siblings(2, 3, top_k=2),  # sampled chain, siblings without replacement
    TreeSpec.chain_with_siblings(2, 6, top_k=3),  # every sibling kept: 4 of the 8 tokens per level
    TreeSpec.chain_with_siblings(2, 3, top_k=2, children="top_k"),
    TreeSpec.chain_with_siblings(3, 1, top_k=2, keep_chain=False),
]


def check_first_two_tokens(spec: TreeSpec, num_rows: int, vocab: int, temperature: float, seed: int) -> None:
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=seed, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, second = exact_first_two(target, prompt, temperature)
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.tensor([prompt]).expand(num_rows, -1)
    out = speculative_generate(
        target, draft, prompts, 2, temperature=temperature, generator=generator, eos_id=None, tree=spec
    )
    for position, probs in ((0, first), (1, second)):
        counts = torch.bincount(out.tokens[:, position], minlength=vocab)
        assert_fits(counts, probs, FALSE_ALARM_RATE, f"{spec.label()} token {position}")
    hist = out.stats["accepted_hist"]
    assert hist[0] > 0 and sum(hist[1:]) > 0  # both accepted and rejected roots
    # Power of the test: the draft's own first-token distribution is rejected by it.
    draft_first, _ = exact_first_two(draft, prompt, temperature)
    with pytest.raises(AssertionError):
        assert_fits(torch.bincount(out.tokens[:, 0], minlength=vocab), draft_first, FALSE_ALARM_RATE)


@pytest.mark.parametrize("spec", SAMPLED_TREES, ids=lambda s: s.label())
def test_sampling_first_two_tokens_match_target(spec):
    check_first_two_tokens(spec, num_rows=4000, vocab=8, temperature=0.7, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("spec", SAMPLED_TREES, ids=lambda s: s.label())
def test_sampling_first_two_tokens_match_target_large(spec, seed):
    check_first_two_tokens(spec, num_rows=40000, vocab=16, temperature=1.3, seed=seed)


@torch.no_grad()
def test_verifying_with_the_wrong_drawing_rule_fails():
    """Power: siblings drawn i.i.d. but verified as if drawn without replacement are biased, and the
    first-token test above catches it -- while the right rule passes on the same trees."""
    vocab, num_rows, temperature = 8, 4000, 0.7
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=0, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, _ = exact_first_two(target, prompt, temperature)
    spec = TreeSpec.static((4,), children="iid")
    sampling = SamplingSettings(temperature, torch.Generator().manual_seed(0), eos_id=None)
    state = start_state(target, draft, torch.tensor([prompt]).expand(num_rows, -1), spec)
    tree = propose_tree(draft, state.caches[1], state, spec, sampling)
    target_probs = verify_tree(target, state.caches[0], state, tree, sampling)
    right, _, _ = accept_tree_path(tree, target_probs, sampling)
    wrong, _, _ = accept_tree_path(dataclasses.replace(tree, draws="without_replacement"), target_probs, sampling)
    assert_fits(torch.bincount(right[:, 0], minlength=vocab), first, FALSE_ALARM_RATE, "iid rule")
    with pytest.raises(AssertionError):
        assert_fits(torch.bincount(wrong[:, 0], minlength=vocab), first, FALSE_ALARM_RATE, "wrong rule")


@torch.no_grad()
def test_sampled_siblings_verified_with_the_wrong_rule_fail():
    """Power, on the first token: a chain of 1 with 3 siblings drawn without replacement (4 of the
    8 tokens at the root), verified as i.i.d. draws, fails the chi-square test; so do the same
    trees when a sibling is kept only while its *own* drawn probability is >= 0.1 (a count rule
    that looks at the siblings drawn). The right rule passes on the same trees, and so does
    verifying them as fixed children (``draft_probs=None``): that rule is exact for any children
    drawn independently of the verifier's random numbers -- it only accepts less."""
    vocab, num_rows, temperature = 8, 4000, 0.7
    target, draft = tiny_pair(vocab_size=vocab, noise=0.6, seed=0, dtype=torch.float32)
    prompt = [1, 2, 3]
    first, _ = exact_first_two(target, prompt, temperature)
    spec = TreeSpec.chain_with_siblings(1, 3, top_k=3)
    sampling = SamplingSettings(temperature, torch.Generator().manual_seed(0), eos_id=None)
    state = start_state(target, draft, torch.tensor([prompt]).expand(num_rows, -1), spec)
    tree = propose_tree(draft, state.caches[1], state, spec, sampling)
    target_probs = verify_tree(target, state.caches[0], state, tree, sampling)
    drawn_p = tree.draft_probs.gather(2, tree.tokens[:, :, None])[:, :, 0]
    stop = ((drawn_p < 0.1) & (torch.arange(4) > 0)).cumsum(1) > 0  # siblings from the first unlikely one on
    trees = {
        "right rule": tree,
        "fixed children": dataclasses.replace(tree, draft_probs=None),
        "iid rule": dataclasses.replace(tree, draws="iid"),
        "own-value count rule": dataclasses.replace(tree, tokens=torch.where(stop, -1, tree.tokens)),
    }
    accepted = {}
    for label, candidate in trees.items():
        out = accept_tree_path(candidate, target_probs, sampling)
        accepted[label] = float(out.num_accepted.float().mean())
        counts = torch.bincount(out.token_ids[:, 0], minlength=vocab)
        if label in ("right rule", "fixed children"):
            assert_fits(counts, first, FALSE_ALARM_RATE, label)
        else:
            with pytest.raises(AssertionError):
                assert_fits(counts, first, FALSE_ALARM_RATE, label)
    assert accepted["fixed children"] < accepted["right rule"]


# ---- the benchmark's untimed parts ----------------------------------------------------------------


def test_benchmark_rows_and_section(tmp_path):
    """``bench/bench_tree_decoding.py`` at tiny sizes: the rows it saves and the tables and goal
    lines it renders from them (no assertion on a timing)."""
    from bench import bench_tree_decoding as bench
    from bench.prompts import weights_available

    if not weights_available():
        pytest.skip("no shipped weights in this checkout")
    rows = bench.run(
        batch_sizes=[1],
        ks=[2],
        static_branchings=[(2, 1)],
        dynamic_budgets=[2],
        softmax_budgets=[2],
        chain_with_siblings=[(2, 1, True)],
        extra_ks=[3],
        max_new_tokens=6,
        repeats=1,
        node_counts=[1, 3],
        forward_reps=1,
        out_dir=str(tmp_path),
        log=lambda *a, **k: None,
    )
    assert (tmp_path / "tree_decoding.json").exists()
    decoded = [r for r in rows if r["kind"] == "decode"]
    assert [(r["label"], r["verified"]) for r in decoded] == [
        ("plain", 1),
        ("chain K=2", 3),
        ("chain K=3", 4),
        ("static(2,1)", 5),
        ("dynamic(budget=2, top_k=4, depth=8)", 3),
        ("dynamic(budget=2, top_k=4, depth=8), softmax rank", 3),
        ("chain+siblings(depth=2, extra=1, top_k=3)", 4),
    ]
    assert all(r["same_text"] == r["rows_compared"] == 1 for r in decoded[1:])  # greedy: plain's text
    assert all(1 <= r["mean_accepted_length"] <= 9 for r in decoded)
    assert [(r["batch"], r["tokens"]) for r in rows if r["kind"] == "verify"] == [(1, 1), (1, 3)]
    text = bench.section(rows).terminal()
    assert "dynamic(budget=2, top_k=4, depth=8)" in text and "3 verified tokens per step" in text
    assert "tree vs best chain at batch 1: " in text and "accepted length at equal verified tokens: tree " in text
    assert "chain K=3 (outside the issue's K range)" in text
