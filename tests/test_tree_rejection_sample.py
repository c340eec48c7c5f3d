"""tree_rejection_sample: exhaustive greedy trees, exact cases, losslessness, kernels vs reference.

Three backends run every exact case: the pure-PyTorch reference (the spec), the C++ CPU kernel
(through the registered op) and the Triton kernel (its launcher on CPU tensors, under
TRITON_INTERPRET=1, set in conftest.py).

Statistics: each chi-square check rejects a correct sampler with probability FALSE_ALARM = 1e-4;
a run makes fewer than 60 checks, so a correct implementation fails it with probability below
0.6%. Seeds are fixed, so a build passes or fails deterministically. The power check shows that
the same test rejects the naive tree rule.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from devices import COMPILED, launcher
from stats import assert_fits

import specdecode as sd
from specdecode.reference import rejection_sample as chain_ref
from specdecode.reference import tree_rejection_sample as ref
from specdecode.stats import chi2_sf, chi_square

PADDING = -1  # a padding node's token
ROOT = ref.ROOT  # parents[i] == ROOT: node i hangs off the root
FALSE_ALARM = 1e-4
# A seed whose first uniform (slot 0, row 0, offset 0) is exactly 0.0 (see test_rejection_sample.py).
SEED_WITH_ZERO_UNIFORM = 12121362
# The Triton launcher on the test device (tests/devices.py: CPU + interpreter, or CUDA). Compiled on
# a GPU it is fast, so it joins the behavioural and the long statistical cases there.
triton_tree_rejection_sample = launcher("tree_rejection_sample", "tree_rejection_sample")
COMPILED_TRITON = ["triton"] if COMPILED else []


def _run_reference(*args, block_v=None):
    return tuple(ref.tree_rejection_sample(*args))


def _run_cpp(*args, block_v=None):
    return tuple(torch.ops.specdecode.tree_rejection_sample(*args))


def _run_triton(*args, block_v=None):
    return triton_tree_rejection_sample(*args, block_v=block_v)


BACKENDS = {"reference": _run_reference, "cpp": _run_cpp, "triton": _run_triton}


@pytest.fixture(params=["reference", "cpp", *COMPILED_TRITON])
def backend(request):
    """The backends every behavioural case runs on. The Triton interpreter costs ~50 ms per row
    here, so Triton runs the cases marked with ``every_backend`` (each of its code paths) and
    test_kernel_matches_reference, which compares it to the reference exactly on random trees."""
    return BACKENDS[request.param]


@pytest.fixture(params=list(BACKENDS))
def every_backend(request):
    return BACKENDS[request.param]


def verify(backend, ids, parents, draft_probs, target, greedy=False, seed=0, offset=0, without_replacement=False):
    """One call of a backend with the raw op's arguments; returns (token_ids, accepted_nodes, num_accepted)."""
    batch = ids.shape[0]
    greedy_mask = greedy if isinstance(greedy, torch.Tensor) else torch.full((batch,), greedy)
    seeds = seed if isinstance(seed, torch.Tensor) else torch.tensor([seed])
    offsets = offset if isinstance(offset, torch.Tensor) else torch.tensor([offset])
    ids, parents = ids.long().contiguous(), parents.long().contiguous()  # the raw op's layout
    return backend(ids, parents, draft_probs, target, greedy_mask, seeds, offsets, without_replacement)


def one_hot_rows(token_ids: list[int], vocab_size: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(token_ids), vocab_size).float()


def random_probs(*shape, temperature=1.0, dtype=torch.float32, generator=None):
    return torch.softmax(torch.randn(*shape, generator=generator) / temperature, -1).to(dtype)


# ------------------------------------------------------------------------------------------
# Greedy: every tree shape up to 5 nodes, against plain greedy decoding
# ------------------------------------------------------------------------------------------

GREEDY_VOCAB = 3  # small, so children often match the argmax


def all_parent_arrays(num_nodes: int) -> list[list[int]]:
    """Every tree on nodes 0..T-1 whose parents precede their children (each shape, every order)."""
    return [list(p) for p in itertools.product(*[range(ROOT, i) for i in range(num_nodes)])]


def context_target(context: tuple[int, ...]) -> torch.Tensor:
    """A deterministic 'language model': the target row after a token sequence."""
    seed = 0
    for token in context:
        seed = seed * (GREEDY_VOCAB + 1) + token + 1
    return random_probs(GREEDY_VOCAB, generator=torch.Generator().manual_seed(seed))


def greedy_inputs(parent_arrays: list[list[int]], generator: torch.Generator):
    """Random tokens (some padding) on each tree; target rows from the nodes' contexts."""
    batch, num_nodes = len(parent_arrays), len(parent_arrays[0])
    parents = torch.tensor(parent_arrays)
    ids = torch.randint(0, GREEDY_VOCAB, (batch, num_nodes), generator=generator)
    ids[torch.rand(batch, num_nodes, generator=generator) < 0.1] = PADDING
    target = torch.empty(batch, num_nodes + 1, GREEDY_VOCAB)
    for b in range(batch):
        contexts = {ROOT: ()}
        for node in range(num_nodes):
            contexts[node] = contexts[int(parents[b, node])] + (int(ids[b, node]),)
        for node, context in contexts.items():
            target[b, node + 1] = context_target(context)
    return ids, parents, target


def greedy_walk(ids: list[int], parents: list[int], target: torch.Tensor) -> list[int]:
    """Oracle: from the root, take the first child (by index) whose token is the target's argmax."""
    path, node = [], ROOT
    while True:
        best = int(target[node + 1].argmax())
        child = next((i for i in range(len(ids)) if parents[i] == node and ids[i] == best), None)
        if child is None:
            return path
        path.append(child)
        node = child


def plain_greedy(num_tokens: int) -> list[int]:
    context: tuple[int, ...] = ()
    for _ in range(num_tokens):
        context += (int(context_target(context).argmax()),)
    return list(context)


@pytest.mark.parametrize("num_nodes", [1, 2, 3, 4, 5])
def test_greedy_every_tree_shape_equals_plain_greedy(backend, num_nodes):
    generator = torch.Generator().manual_seed(num_nodes)
    draws = 1 if backend is _run_triton else 2  # token draws per shape (the interpreter is slow)
    parent_arrays = all_parent_arrays(num_nodes) * draws
    ids, parents, target = greedy_inputs(parent_arrays, generator)
    tokens, nodes, accepted = verify(backend, ids, parents, random_probs(*ids.shape, GREEDY_VOCAB), target, True)
    for b in range(len(parent_arrays)):
        path = greedy_walk(ids[b].tolist(), parents[b].tolist(), target[b])
        count = len(path)
        assert accepted[b].item() == count
        assert nodes[b].tolist() == path + [PADDING] * (num_nodes - count)
        assert tokens[b].tolist() == plain_greedy(count + 1) + [PADDING] * (num_nodes - count)


def test_greedy_every_tree_shape_up_to_3_nodes_triton():
    """The Triton kernels on every shape up to 3 nodes, once each (the interpreter is slow; the
    reference and C++ run every shape up to 5 nodes above)."""
    generator = torch.Generator().manual_seed(7)
    longest_path = 0
    for num_nodes in range(1, 4):
        parent_arrays = all_parent_arrays(num_nodes) * 2
        ids, parents, target = greedy_inputs(parent_arrays, generator)
        probs = random_probs(*ids.shape, GREEDY_VOCAB)
        got = verify(_run_triton, ids, parents, probs, target, True)
        expected = verify(_run_reference, ids, parents, probs, target, True)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), num_nodes
        longest_path = max(longest_path, int(expected[2].max()))
    assert longest_path >= 2  # the cases do walk down the trees


def test_sglang_verify_tree_greedy_case(every_backend):
    """SGLang's verify_tree_greedy test, in this op's layout: its node 0 is the root, so its
    nodes 1..5 are nodes 0..4 here and its target row i is target row i here."""
    first_child = torch.tensor([[1, 2, -1, 4, 5, -1], [4, 2, 3, -1, 5, -1]])
    next_sibling = torch.tensor([[-1, 3, -1, -1, -1, -1], [-1, -1, -1, -1, 1, -1]])
    parents = sglang_parents(first_child, next_sibling)
    assert parents.tolist() == [[-1, 0, -1, 2, 3], [-1, 0, 1, -1, 3]]
    ids = torch.tensor([[1, 2, 3, 4, 5], [8, 9, 10, 11, 12]])
    logits = torch.full((2, 6, 20), 1.0)
    logits[0, 0, 3] = logits[0, 3, 4] = logits[0, 4, 5] = 10
    logits[1, 0, 11] = logits[1, 4, 12] = 10
    logits[..., 18] = torch.where(logits.amax(-1) < 10, 10.0, 1.0)
    tokens, nodes, accepted = verify(every_backend, ids, parents, None, torch.softmax(logits, -1), greedy=True)
    assert tokens.tolist() == [[3, 4, 5, 18, -1, -1], [11, 12, 18, -1, -1, -1]]
    assert nodes.tolist() == [[2, 3, 4, -1, -1], [3, 4, -1, -1, -1]]
    assert accepted.tolist() == [3, 2]
    # SGLang's target-only sampling test at temperature 0.01 (one-hot targets): the same path.
    sharp = torch.softmax(logits / 0.01, -1)
    for seed in range(2):
        assert verify(every_backend, ids, parents, None, sharp, seed=seed)[0].tolist() == tokens.tolist()


def sglang_parents(first_child: torch.Tensor, next_sibling: torch.Tensor) -> torch.Tensor:
    """Parents of nodes 1..N-1 of an SGLang first-child/next-sibling tree (node 0 = root), in this
    op's numbering (node i here = SGLang node i + 1); the public helper is tested against it."""
    batch, size = first_child.shape
    parents = torch.full((batch, size), -2)
    for b in range(batch):
        stack = [0]
        while stack:
            node = stack.pop()
            child = int(first_child[b, node])
            while child >= 0:
                parents[b, child] = node - 1
                stack.append(child)
                child = int(next_sibling[b, child])
    return parents[:, 1:]


# ------------------------------------------------------------------------------------------
# Exact cases
# ------------------------------------------------------------------------------------------

DENSE_MODES = [False, True]  # without_replacement


def test_all_accepted_path_then_bonus(every_backend):
    vocab = 8
    target = one_hot_rows([3, 5, 7], vocab)[None]
    parents = torch.tensor([[ROOT, 0]])
    for draft_probs in (one_hot_rows([3, 5], vocab)[None], None):
        tokens, nodes, accepted = verify(every_backend, torch.tensor([[3, 5]]), parents, draft_probs, target, seed=4)
        assert tokens.tolist() == [[3, 5, 7]] and nodes.tolist() == [[0, 1]] and accepted.tolist() == [2]


def test_second_sibling_accepted_after_first_rejected(every_backend):
    """q puts no mass on the first child: it is rejected, the second (q' = one-hot) accepted."""
    vocab = 6
    target = one_hot_rows([4, 0, 2, 1], vocab)[None]  # after root: 4; after node 1 (token 4): 2
    ids, parents = torch.tensor([[1, 4, 2]]), torch.tensor([[ROOT, ROOT, 1]])
    draft_probs = torch.full((1, 3, vocab), 1 / vocab)
    for probs, without_replacement in ((None, False), (draft_probs, False), (draft_probs, True)):
        for seed in range(3):
            tokens, nodes, accepted = verify(
                every_backend, ids, parents, probs, target, seed=seed, without_replacement=without_replacement
            )
            assert tokens.tolist() == [[4, 2, 1, -1]] and nodes.tolist() == [[1, 2, -1]], (probs, seed)


def test_rejected_children_are_never_emitted(backend):
    """Every child of the root rejected: the emitted token is none of theirs (q' excludes them)."""
    vocab, batch = 5, 24
    target = torch.tensor([0.3, 0.3, 0.25, 0.15, 0.0]).expand(batch, 3, vocab).contiguous()
    ids = torch.tensor([[0, 1]]).expand(batch, 2)
    parents = torch.tensor([[ROOT, ROOT]]).expand(batch, 2)
    shared_p = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0]).expand(batch, 2, vocab)  # siblings share p
    for draft_probs, without_replacement in ((None, False), (shared_p, False), (shared_p, True)):
        tokens, _, accepted = verify(
            backend, ids, parents, draft_probs, target, seed=3, without_replacement=without_replacement
        )
        emitted = tokens[accepted == 0, 0]
        assert emitted.numel() >= 4 and set(emitted.tolist()) <= {2, 3}


def test_repeated_sibling_token_is_never_accepted(backend):
    """iid siblings can repeat a token; once rejected, q'(x) = 0, so the repeat is rejected too."""
    vocab, batch = 4, 24
    target = torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(batch, 4, vocab).contiguous()
    draft_probs = torch.tensor([0.9, 0.1, 0.0, 0.0]).expand(batch, 3, vocab).contiguous()
    ids = torch.tensor([[0, 0, 1]]).expand(batch, 3)
    parents = torch.full((batch, 3), ROOT)
    for probs in (draft_probs, None):
        _, nodes, _ = verify(backend, ids, parents, probs, target, seed=5)
        assert not bool((nodes[:, 0] == 1).any())
        assert bool((nodes[:, 0] == 0).any()) and bool((nodes[:, 0] == 2).any())


def test_padding_nodes_and_bad_parents_are_never_accepted(every_backend):
    vocab = 6
    target = one_hot_rows([2, 3, 4, 5, 1, 0], vocab)[None]  # q after root: 2; after node 0: 3; ...
    # node 0: padding whose subtree would match; node 1 (parent 1 >= own index) and node 2
    # (parent -2) are malformed; node 3: the live child of the root, token 2, accepted.
    ids = torch.tensor([[-1, 2, 2, 2, 0]])
    parents = torch.tensor([[ROOT, 1, -2, ROOT, 0]])
    for probs in (None, torch.full((1, 5, vocab), 1 / vocab)):
        tokens, nodes, accepted = verify(every_backend, ids, parents, probs, target, seed=1)
        assert nodes.tolist() == [[3, -1, -1, -1, -1]] and tokens.tolist() == [[2, 1, -1, -1, -1, -1]]
    tokens, nodes, accepted = verify(every_backend, ids, parents, None, target, greedy=True)
    assert nodes.tolist() == [[3, -1, -1, -1, -1]] and tokens.tolist() == [[2, 1, -1, -1, -1, -1]]


def test_zero_uniform_never_accepts_zero_probability(every_backend):
    target = torch.tensor([[[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]]])
    ids, parents = torch.tensor([[0]]), torch.tensor([[ROOT]])
    for draft_probs in (torch.full((1, 1, 4), 0.25), one_hot_rows([0], 4)[None], None):
        tokens, _, accepted = verify(every_backend, ids, parents, draft_probs, target, seed=SEED_WITH_ZERO_UNIFORM)
        assert accepted.tolist() == [0] and tokens[0, 0].item() in (1, 2)


def test_draft_rows_of_later_siblings_are_not_read(backend):
    vocab, batch = 7, 16
    target = random_probs(batch, 4, vocab)
    draft_probs = random_probs(batch, 3, vocab)
    draft_probs[:, 1] = draft_probs[:, 0]
    ids = torch.multinomial(draft_probs[:, 0], 2)
    ids = torch.cat([ids, torch.randint(0, vocab, (batch, 1))], 1)
    parents = torch.tensor([[ROOT, ROOT, 0]]).expand(batch, 3)
    other = draft_probs.clone()
    other[:, 1] = float("nan")  # the second sibling's row: never read
    for without_replacement in DENSE_MODES:
        expected = verify(backend, ids, parents, draft_probs, target, seed=2, without_replacement=without_replacement)
        got = verify(backend, ids, parents, other, target, seed=2, without_replacement=without_replacement)
        assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_zero_residual_mass_falls_back_to_target(every_backend):
    # p = 2q (not normalised) rejects half the time while max(0, q - p) has no mass at all.
    batch = 12
    target = torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]]).expand(batch, 2, 4).contiguous()
    for without_replacement in DENSE_MODES:
        tokens, _, accepted = verify(
            every_backend,
            torch.full((batch, 1), 2),
            torch.full((batch, 1), ROOT),
            2 * target[:, :1],
            target,
            seed=8,
            without_replacement=without_replacement,
        )
        assert 0 < int((accepted == 0).sum()) < batch
        assert torch.all(tokens[accepted == 0, 0] == 2)


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), 0.0, -1.0])
def test_degenerate_rows_emit_in_range(backend, bad_value):
    vocab, batch = 37, 6
    target = torch.full((batch, 4, vocab), bad_value)
    target[3:, :, 5] = float("nan")
    draft_probs = random_probs(batch, 3, vocab)
    draft_probs[:2] = bad_value
    ids = torch.randint(0, vocab, (batch, 3))
    parents = torch.tensor([[ROOT, ROOT, 0]]).expand(batch, 3)
    for probs, without_replacement, greedy in itertools.product((draft_probs, None), DENSE_MODES, (False, True)):
        tokens, _, accepted = verify(
            backend, ids, parents, probs, target, greedy=greedy, seed=1, without_replacement=without_replacement
        )
        emitted = tokens.gather(1, accepted[:, None])
        assert torch.all((emitted >= 0) & (emitted < vocab))


@pytest.mark.parametrize("proposer", ["dense", "one-hot"])
def test_path_shaped_tree_is_the_chain_verifier(every_backend, proposer):
    """A path (node i's parent is i - 1) gives exactly the chain op's output for the same seed."""
    batch, num_drafts, vocab = 8, 4, 20
    target = random_probs(batch, num_drafts + 1, vocab)
    draft_probs = random_probs(batch, num_drafts, vocab)
    ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1).reshape(batch, num_drafts)
    ids[3, 2:] = PADDING  # a ragged row
    ids[5, 1] = PADDING  # a gap: nothing after it is accepted
    draft_probs = draft_probs if proposer == "dense" else None
    parents = (torch.arange(num_drafts) - 1).expand(batch, num_drafts)
    greedy = torch.rand(batch) < 0.25
    seeds, offsets = torch.tensor([11]), torch.tensor([3])
    chain = chain_ref.rejection_sample(ids, draft_probs, target, greedy, seeds, offsets)
    for without_replacement in DENSE_MODES:
        tokens, nodes, accepted = verify(
            every_backend, ids, parents, draft_probs, target, greedy, seeds, offsets, without_replacement
        )
        assert torch.equal(tokens, chain.token_ids) and torch.equal(accepted, chain.num_accepted)
        positions = torch.arange(num_drafts)[None]
        assert torch.equal(nodes, torch.where(positions < accepted[:, None], positions, PADDING))


# ------------------------------------------------------------------------------------------
# Losslessness: first token vs the root's row, second token vs the first node's row
# ------------------------------------------------------------------------------------------

STAT_VOCAB = 6
# The drafted tree: the root has 3 children (nodes 0-2), node 0 has 2 (3, 4), node 1 has 1 (5),
# node 3 has 1 (6). Deeper target rows exist but only the first two output tokens are checked.
STAT_PARENTS = [ROOT, ROOT, ROOT, 0, 0, 1, 3]
STAT_DEPTH = [0, 0, 0, 1, 1, 1, 2]


class ToyModels:
    """A two-token 'language model' pair: first-token rows (q0, p0) and second-token rows
    indexed by the first token (Q1[t], P1[t]); deeper rows reuse Q1/P1 by the last token.
    The draft is far from the target so that rejections (and q' updates) are frequent."""

    def __init__(self, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        logits = torch.randn(STAT_VOCAB + 1, STAT_VOCAB, generator=gen) * 1.5
        self.q0, self.q1 = torch.softmax(logits[0], -1), torch.softmax(logits[1:], -1)
        self.p0 = torch.softmax(-logits[0] * 0.7, -1)
        self.p1 = torch.softmax(torch.randn(STAT_VOCAB, STAT_VOCAB, generator=gen) * 1.5, -1)

    def draft_tree(self, case: str, num_trials: int, gen: torch.Generator):
        """Tokens [N, T] redrawn per trial as the case says, draft rows [N, T, V] (or None), target rows [N, T+1, V]."""
        ids = torch.empty(num_trials, len(STAT_PARENTS), dtype=torch.long)
        draft_rows = torch.empty(num_trials, len(STAT_PARENTS), STAT_VOCAB)
        for parent in [ROOT, 0, 1, 3]:
            children = [i for i, par in enumerate(STAT_PARENTS) if par == parent]
            p = self.p0.expand(num_trials, -1) if parent == ROOT else self.p1[ids[:, parent]]
            if case == "fixed":  # a top-k expansion of the draft: the children are fixed
                drawn = p.topk(len(children), -1).indices
            else:
                drawn = torch.multinomial(p, len(children), replacement=case == "iid", generator=gen)
            ids[:, children] = drawn
            draft_rows[:, children] = p[:, None, :]
        target = torch.cat([self.q0.expand(num_trials, 1, -1), self.q1[ids]], 1)
        return ids, None if case == "fixed" else draft_rows, target


def run_stat_case(backend, case: str, num_trials: int, seed: int):
    models = ToyModels()
    ids, draft_rows, target = models.draft_tree(case, num_trials, torch.Generator().manual_seed(seed))
    parents = torch.tensor(STAT_PARENTS).expand(num_trials, -1)
    tokens, nodes, accepted = verify(
        backend, ids, parents, draft_rows, target, seed=seed + 1, without_replacement=case == "without_replacement"
    )
    return models, tokens, accepted


def assert_first_two_tokens_follow_target(models, tokens, accepted, label, min_count=800):
    """Returns the number of chi-square checks made."""
    assert_fits(torch.bincount(tokens[:, 0], minlength=STAT_VOCAB), models.q0, FALSE_ALARM, f"{label} token 1")
    checks = 1
    for first in range(STAT_VOCAB):
        rows = (accepted >= 1) & (tokens[:, 0] == first)
        if int(rows.sum()) < min_count:
            continue
        counts = torch.bincount(tokens[rows, 1], minlength=STAT_VOCAB)
        assert_fits(counts, models.q1[first], FALSE_ALARM, f"{label} token 2 after {first}")
        checks += 1
    return checks


STAT_CASES = ["fixed", "iid", "without_replacement"]


@pytest.mark.parametrize("case", STAT_CASES)
def test_first_two_tokens_follow_target(case):
    models, tokens, accepted = run_stat_case(_run_cpp, case, 40_000, seed=1)
    assert float((accepted == 0).float().mean()) > 0.1  # the root's residual path is exercised
    checks = assert_first_two_tokens_follow_target(models, tokens, accepted, case)
    assert checks >= 3


@pytest.mark.slow
@pytest.mark.parametrize("case", STAT_CASES)
@pytest.mark.parametrize("name", ["reference", "cpp", *COMPILED_TRITON])  # interpreted Triton: exact tests
def test_first_two_tokens_follow_target_many_trials(name, case):
    models, tokens, accepted = run_stat_case(BACKENDS[name], case, 400_000, seed=2)
    assert_first_two_tokens_follow_target(models, tokens, accepted, f"{name}/{case}", min_count=5000)


def naive_first_token(models: ToyModels, num_trials: int, seed: int) -> torch.Tensor:
    """The naive tree rule on the root's iid children: accept child c with min(1, q/p) against
    the *original* q at every sibling, and after rejecting them all sample norm(max(0, q - p))."""
    gen = torch.Generator().manual_seed(seed)
    children = torch.multinomial(models.p0.expand(num_trials, -1), 3, replacement=True, generator=gen)
    accept = torch.rand(num_trials, 3, generator=gen) * models.p0[children] < models.q0[children]
    first_accepted = torch.where(accept.any(1), accept.float().argmax(1), 0)
    residual = (models.q0 - models.p0).clamp_min(0)
    fallback = torch.multinomial(residual.expand(num_trials, -1), 1, generator=gen).squeeze(1)
    return torch.where(accept.any(1), children.gather(1, first_accepted[:, None]).squeeze(1), fallback)


def test_the_naive_rule_fails_the_same_test():
    """Power check: without updating q' between siblings, the first token is biased, and the
    same chi-square test (same trial count) rejects it."""
    models = ToyModels()
    counts = torch.bincount(naive_first_token(models, 40_000, seed=3), minlength=STAT_VOCAB)
    stat, df = chi_square(counts, models.q0)
    assert chi2_sf(stat, df) < FALSE_ALARM


# ------------------------------------------------------------------------------------------
# Kernels vs reference on random trees: same random stream, same output
# ------------------------------------------------------------------------------------------


def random_tree_case(batch: int, num_nodes: int, vocab: int, dtype: torch.dtype, seed: int):
    """Random trees (random parents, some padding), drafts from p with iid repeats, targets
    mostly far from the drafts so that several siblings per node get rejected."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.arange(num_nodes)
    parents = (torch.rand(batch, num_nodes, generator=gen) * (index + 1)).long() - 1  # uniform in [-1, i)
    target = random_probs(batch, num_nodes + 1, vocab, temperature=0.5, dtype=dtype, generator=gen)
    group_rows = random_probs(batch, num_nodes + 1, vocab, temperature=0.5, generator=gen)
    draft_probs = group_rows.gather(1, (parents + 1)[..., None].expand(-1, -1, vocab)).to(dtype)  # siblings share p
    ids = torch.multinomial(draft_probs.float().reshape(-1, vocab), 1, generator=gen).reshape(batch, num_nodes)
    ids[torch.rand(batch, num_nodes, generator=gen) < 0.05] = PADDING
    greedy = torch.rand(batch, generator=gen) < 0.2
    return ids, parents, draft_probs, target, greedy


KERNEL_GRID = [  # (B, T, V, dtype)
    (4, 1, 2, torch.float32),
    (5, 7, 33, torch.bfloat16),
    (6, 12, 64, torch.float32),
    (3, 16, 1000, torch.float16),
]


@pytest.mark.parametrize("batch,num_nodes,vocab,dtype", KERNEL_GRID)
@pytest.mark.parametrize("mode", ["one-hot", "iid", "without_replacement"])
@pytest.mark.parametrize("kernel", [name for name in BACKENDS if name != "reference"])
def test_kernel_matches_reference(kernel, mode, batch, num_nodes, vocab, dtype):
    ids, parents, draft_probs, target, greedy = random_tree_case(batch, num_nodes, vocab, dtype, seed=vocab + num_nodes)
    draft_probs = None if mode == "one-hot" else draft_probs
    seeds = torch.randint(0, 2**62, (batch,)) if batch % 2 else torch.tensor([1234])
    args = (ids, parents, draft_probs, target, greedy, seeds, torch.tensor([7]), mode == "without_replacement")
    got = verify(BACKENDS[kernel], *args)
    expected = verify(_run_reference, *args)
    for name, a, b in zip(("token_ids", "accepted_nodes", "num_accepted"), got, expected):
        assert torch.equal(a, b), f"{name}: {kernel}\n{a}\nreference\n{b}"


def test_empty_batch_and_empty_tree(every_backend):
    tokens, nodes, accepted = verify(
        every_backend,
        torch.zeros(0, 3, dtype=torch.long),
        torch.zeros(0, 3, dtype=torch.long),
        None,
        torch.rand(0, 4, 5),
    )
    assert tokens.shape == (0, 4) and nodes.shape == (0, 3) and accepted.shape == (0,)
    target = one_hot_rows([4, 1], 6)[:, None, :]  # [2, 1, 6]: a tree without nodes emits from row 0
    empty = torch.zeros(2, 0, dtype=torch.long)
    for probs in (None, torch.rand(2, 0, 6)):
        tokens, nodes, accepted = verify(every_backend, empty, empty, probs, target, seed=3)
        assert tokens.tolist() == [[4], [1]] and nodes.shape == (2, 0) and accepted.tolist() == [0, 0]


def test_offsets_beyond_int32(every_backend):
    """rows x V > 2**31: the row offsets of the last rows overflow int32."""
    vocab, row_stride = 64, 2**31 + 64
    storage = torch.empty(row_stride + 2 * vocab, dtype=torch.bfloat16)  # untouched pages cost no RAM
    target = storage.as_strided((2, 2, vocab), (row_stride, vocab, 1))
    target.zero_()
    target[0, :, 3] = 1.0
    target[1, :, 60] = 1.0
    parents = torch.full((2, 1), ROOT)
    tokens, nodes, accepted = verify(every_backend, torch.tensor([[3], [60]]), parents, None, target, seed=0)
    assert tokens.tolist() == [[3, 3], [60, 60]] and accepted.tolist() == [1, 1]


# ------------------------------------------------------------------------------------------
# Public API: the encoding helper, argument checks, validate=True, plumbing
# ------------------------------------------------------------------------------------------


def random_sglang_trees(batch: int, size: int, generator: torch.Generator):
    """Random trees in SGLang's first-child/next-sibling encoding (node 0 = root), sibling lists
    in random order."""
    first_child = torch.full((batch, size), -1)
    next_sibling = torch.full((batch, size), -1)
    for b in range(batch):
        for node in torch.randperm(size - 1, generator=generator).tolist():
            child = node + 1
            parent = int(torch.randint(0, child, (1,), generator=generator))
            next_sibling[b, child] = first_child[b, parent]  # push front: lists end up in random order
            first_child[b, parent] = child
    return first_child, next_sibling


def test_parents_from_first_child_next_sibling_matches_a_walk_of_the_lists():
    first_child, next_sibling = random_sglang_trees(16, 9, torch.Generator().manual_seed(0))
    expected = sglang_parents(first_child, next_sibling)
    assert torch.equal(sd.parents_from_first_child_next_sibling(first_child, next_sibling), expected)
    assert torch.equal(sd.parents_from_first_child_next_sibling(first_child.int(), next_sibling.int()), expected)
    # Cut the root's list in row 0: nothing there is reachable from the root any more.
    first_child[0, 0] = -1
    parents = sd.parents_from_first_child_next_sibling(first_child, next_sibling)
    ids = torch.zeros_like(parents)
    always_accept = one_hot_rows([0], 2).expand(ids.shape[0], ids.shape[1] + 1, 2)  # q = one-hot at token 0
    _, _, accepted = verify(_run_reference, ids, parents, None, always_accept, greedy=True)
    assert accepted[0] == 0 and bool((accepted[1:] > 0).all())
    with pytest.raises(ValueError, match="one shape"):
        sd.parents_from_first_child_next_sibling(first_child, next_sibling[:, :3])


def _public_case(batch=6, num_nodes=5, vocab=12):
    ids, parents, draft_probs, target, _ = random_tree_case(batch, num_nodes, vocab, torch.float32, seed=1)
    return ids, parents, draft_probs, target


def test_public_op_is_the_raw_op():
    ids, parents, draft_probs, target = _public_case()
    for draws in DRAWS_NAMES:
        out = sd.tree_rejection_sample(ids, parents, draft_probs, target, draws=draws, seed=9, offset=2)
        raw = verify(_run_cpp, ids, parents, draft_probs, target, False, 9, 2, draws == "without_replacement")
        assert all(torch.equal(a, b) for a, b in zip(out, raw))
        assert isinstance(out, sd.TreeRejectionOutput)


DRAWS_NAMES = ["iid", "without_replacement"]


def test_bad_inputs_raise_clear_errors():
    ids, parents, draft_probs, target = _public_case()
    cases = [
        (dict(draft_token_ids=ids[0]), ValueError, "draft_token_ids must have 2 dimensions"),
        (dict(parents=parents.float()), TypeError, "parents must have dtype"),
        (dict(parents=parents[:, :3]), ValueError, "parents must have the shape of draft_token_ids"),
        (dict(target_probs=target[:, :3]), ValueError, r"target_probs must be \[B, T\+1, V\]"),
        (dict(target_probs=target.double()), TypeError, "target_probs must have dtype"),
        (dict(draft_probs=draft_probs[:, :, :5]), ValueError, r"draft_probs must be \[B, T, V\]"),
        (dict(parents=parents.to("meta")), ValueError, "parents is on meta"),
        (dict(draws="top-k"), ValueError, "draws must be one of"),
        (dict(greedy=torch.tensor([True])), ValueError, "greedy must be a"),
        (dict(seed=1, generator=torch.Generator()), ValueError, "either generator or seed"),
        (dict(offset=1.5), TypeError, "offset must be an int"),
        (dict(target_probs=torch.empty(6, 6, 0)), ValueError, "empty vocabulary"),
    ]
    base = dict(draft_token_ids=ids, parents=parents, draft_probs=draft_probs, target_probs=target)
    for override, error, message in cases:
        kwargs = {**base, **override}
        args = [kwargs.pop(k) for k in ("draft_token_ids", "parents", "draft_probs", "target_probs")]
        with pytest.raises(error, match=message):
            sd.tree_rejection_sample(*args, **kwargs)


def test_raw_op_rejects_bad_layouts_without_crashing():
    ids, parents, draft_probs, target = _public_case()
    args = [ids, parents, draft_probs, target, torch.zeros(6, dtype=torch.bool), torch.tensor([1]), torch.tensor([0])]
    bad = {1: parents[:, :4], 3: target[:, :4], 4: torch.zeros(5, dtype=torch.bool), 5: torch.tensor([1, 2])}
    for position, value in bad.items():
        broken = list(args)
        broken[position] = value
        with pytest.raises(RuntimeError, match="tree_rejection_sample"):
            torch.ops.specdecode.tree_rejection_sample(*broken, False)


def test_validate_reports_bad_values():
    ids, parents, draft_probs, target = _public_case()
    sd.tree_rejection_sample(ids, parents, draft_probs, target, validate=True)  # valid input passes
    late_parent = parents.clone()
    late_parent[2, 3] = 3
    nan_target = target.clone()
    nan_target[1, 2, 4] = float("nan")
    siblings_differ = draft_probs.clone()
    b, i = next((b, i) for b in range(6) for i in range(1, 5) if int(parents[b, i]) in parents[b, :i].tolist())
    siblings_differ[b, i] = siblings_differ[b, i].flip(-1)
    too_big = ids.clone()
    too_big[0, 1] = 12
    cases = [
        (dict(parents=late_parent), r"parents\[2, 3\] = 3 is outside \[-1, 3\)"),
        (dict(target_probs=nan_target), "target_probs contains NaN or inf"),
        (dict(draft_probs=siblings_differ), rf"draft_probs\[{b}, {i}\] differs from the row of node"),
        (dict(draft_token_ids=too_big), r"draft_token_ids\[0, 1\] = 12 is outside \[-1, V\)"),
    ]
    base = dict(draft_token_ids=ids, parents=parents, draft_probs=draft_probs, target_probs=target)
    for override, message in cases:
        kwargs = {**base, **override}
        args = [kwargs[k] for k in ("draft_token_ids", "parents", "draft_probs", "target_probs")]
        with pytest.raises(ValueError, match=message):
            sd.tree_rejection_sample(*args, validate=True)
        sd.tree_rejection_sample(*args)  # without validate: no raise, outputs in range


def test_inputs_are_not_modified_and_int32_works():
    ids, parents, draft_probs, target = _public_case()
    ids32, parents32 = ids.int(), parents.int()
    snapshots = [t.clone() for t in (ids32, parents32, draft_probs, target)]
    out32 = sd.tree_rejection_sample(ids32, parents32, draft_probs, target, seed=5)
    for before, after in zip(snapshots, (ids32, parents32, draft_probs, target)):
        assert torch.equal(before, after) and before.dtype == after.dtype
    out64 = sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(out32, out64)) and out32.token_ids.dtype == torch.int64


def test_strided_probabilities_and_mixed_dtypes():
    ids, parents, draft_probs, target = _public_case()
    expected = sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=3)
    transposed = target.transpose(1, 2).contiguous().transpose(1, 2)  # strided in V
    got = sd.tree_rejection_sample(ids, parents, draft_probs, transposed, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    mixed = sd.tree_rejection_sample(ids, parents, draft_probs.bfloat16(), target, seed=3)  # widened to float32
    assert torch.equal(
        mixed.token_ids, verify(_run_cpp, ids, parents, draft_probs.bfloat16().float(), target, seed=3)[0]
    )


def test_seeds_offsets_and_generators():
    ids, parents, draft_probs, target = _public_case(batch=64)
    first = sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=77)
    assert torch.equal(first.token_ids, sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=77).token_ids)
    stepped = sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=77, offset=1)
    assert not torch.equal(first.token_ids, stepped.token_ids)
    run = lambda gen: sd.tree_rejection_sample(ids, parents, draft_probs, target, generator=gen).token_ids
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(run(gen_a), run(gen_b))
    assert not torch.equal(run(gen_a), run(torch.Generator().manual_seed(3)))  # gen_a advanced
    seeds, offsets = torch.arange(100, 164), torch.arange(64) * 3
    batched = sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=seeds, offset=offsets)
    for row in (0, 17, 63):
        alone = sd.tree_rejection_sample(
            ids[row : row + 1],
            parents[row : row + 1],
            draft_probs[row : row + 1],
            target[row : row + 1],
            seed=seeds[row : row + 1],
            offset=offsets[row : row + 1],
        )
        assert torch.equal(alone.token_ids[0], batched.token_ids[row])


def test_module_wraps_the_op():
    ids, parents, draft_probs, target = _public_case()
    module = sd.TreeRejectionSampler()
    assert torch.equal(
        module(ids, parents, draft_probs, target, seed=4).token_ids,
        sd.tree_rejection_sample(ids, parents, draft_probs, target, seed=4).token_ids,
    )
    with pytest.raises(ValueError):
        sd.TreeRejectionSampler(validate=True)(ids, parents, draft_probs, target * 2, seed=4)


def test_opcheck():
    ids, parents, draft_probs, target = _public_case()
    greedy = torch.tensor([True, False, False, True, False, False])
    for probs, without_replacement in ((draft_probs, True), (None, False)):
        torch.library.opcheck(
            torch.ops.specdecode.tree_rejection_sample,
            (ids, parents, probs, target, greedy, torch.tensor([1]), torch.tensor([0]), without_replacement),
        )


def test_torch_compile_fullgraph_matches_eager():
    ids, parents, draft_probs, target = _public_case()
    seeds = torch.arange(ids.shape[0])

    def step(ids, parents, p, q, s):
        out = sd.tree_rejection_sample(ids, parents, p, q, draws="without_replacement", seed=s)
        return out.token_ids, out.accepted_nodes, out.num_accepted

    eager = step(ids, parents, draft_probs, target, seeds)
    compiled = torch.compile(step, fullgraph=True)(ids, parents, draft_probs, target, seeds)
    assert all(torch.equal(a, b) for a, b in zip(compiled, eager))
