"""Microbenchmark of the tree verifier on CPU: the C++ op vs its pure-PyTorch reference, and trees vs chains.

    python -m bench.bench_tree_rejection_sample            # all shapes
    python -m bench.bench_tree_rejection_sample --quick    # fewer shapes and repetitions

Rows: ``run(...)`` returns them and saves ``bench/out/tree_rejection_sample.json``.

Inputs (float32, V = 32000): every node has its own target row and a draft row close to it
(draft logits = target logits + noise), so about as many drafts are accepted as with a real
draft model. A tree of ``T`` nodes is a static top-k shape: the root and then the nodes in
breadth-first order each get ``branching`` children until ``T`` nodes exist; siblings are drawn
iid (or without replacement) from their parent's draft row, as the verifier's rules assume.
The chain of ``K = T`` drafts verifies the same number of tokens with ``rejection_sample``.

Columns: the median ms of one call of ``sd.tree_rejection_sample`` (C++ kernel), of the reference,
and of ``sd.rejection_sample`` on the chain; the mean accepted length of the tree and of the chain
(accepted drafts per row, the emitted token not counted). These are synthetic distributions: the
accepted lengths compare tree and chain shapes on one draft/target gap, not a real model pair.
"""

from __future__ import annotations

import sys

import torch

import specdecode as sd
from bench.report import OUT_DIR, Section, microbenchmark_main, save_rows
from bench.timing import median_ms, torch_threads
from specdecode.reference import tree_rejection_sample as ref

TOPIC = "tree_rejection_sample"
Log = type(print)

VOCAB = 32000
DRAFT_NOISE = 0.5  # std of the logit noise between draft and target rows (as bench_rejection_sample)
# (B, T, branching): node budgets 4..64 at batch 1 and 16, a bushy (4) and a narrow (2) shape.
SHAPES = [(1, 4, 2), (1, 16, 2), (1, 16, 4), (1, 64, 4), (16, 8, 2), (16, 16, 4), (16, 64, 4)]


def static_tree_parents(num_nodes: int, branching: int) -> list[int]:
    """Parents of a breadth-first top-k tree: the root, then each node in order, gets
    ``branching`` children until ``num_nodes`` exist.

    >>> static_tree_parents(5, 2)
    [-1, -1, 0, 0, 1]
    """
    parents, frontier = [], [-1]
    while len(parents) < num_nodes:
        parent = frontier.pop(0)
        for _ in range(branching):
            if len(parents) < num_nodes:
                frontier.append(len(parents))
                parents.append(parent)
    return parents


def make_tree_inputs(batch: int, num_nodes: int, branching: int, without_replacement: bool, seed: int = 0):
    """(draft_token_ids [B, T], parents [B, T], draft_probs [B, T, V], target_probs [B, T+1, V]):
    each node's target row and a draft row close to it; children drawn from their parent's draft row."""
    gen = torch.Generator().manual_seed(seed)
    target_logits = torch.randn(batch, num_nodes + 1, VOCAB, generator=gen) * 2
    draft_logits = target_logits + torch.randn(batch, num_nodes + 1, VOCAB, generator=gen) * DRAFT_NOISE
    target_probs = torch.softmax(target_logits, -1)
    group_probs = torch.softmax(draft_logits, -1)  # row n + 1: the draft after node n (row 0: after the root)
    parents_list = static_tree_parents(num_nodes, branching)
    parents = torch.tensor(parents_list).expand(batch, num_nodes).contiguous()
    draft_probs = group_probs[:, parents[0] + 1]  # each node's row: its parent's draft distribution
    ids = torch.empty(batch, num_nodes, dtype=torch.long)
    for parent in sorted(set(parents_list)):
        children = [i for i, p in enumerate(parents_list) if p == parent]
        drawn = torch.multinomial(group_probs[:, parent + 1], len(children), not without_replacement, generator=gen)
        ids[:, children] = drawn
    return ids, parents, draft_probs.contiguous(), target_probs


def make_chain_inputs(batch: int, num_drafts: int, seed: int = 0):
    """The chain with the same draft/target gap: ``[B, K]`` drafts, ``[B, K, V]`` and ``[B, K+1, V]`` rows."""
    ids, parents, draft_probs, target_probs = make_tree_inputs(batch, num_drafts, 1, False, seed)
    return ids, draft_probs, target_probs


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run or ``--quick``."""
    if quick:
        return {"shapes": SHAPES[:2], "min_reps": 5, "min_seconds": 0.2}
    return {"shapes": SHAPES, "min_reps": 20, "min_seconds": 1.0}


def run(
    shapes=SHAPES,
    min_reps: int = 20,
    min_seconds: float = 1.0,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (B, T, branching, draws): ``shape``, ``draws``, the median ms of ``specdecode``,
    ``reference`` and ``chain`` (``rejection_sample`` at K = T), and the mean accepted lengths
    ``tree_accepted`` and ``chain_accepted``. Saved as ``<out_dir>/tree_rejection_sample.json``."""
    with torch_threads(threads):
        rows = []
        for shape in shapes:
            for draws in ("iid", "without_replacement"):
                log(f"  tree_rejection_sample {shape} {draws} ...", flush=True)
                rows.append(measure(*shape, draws, min_reps, min_seconds))
    return save_rows(TOPIC, rows, out_dir)


def measure(batch: int, num_nodes: int, branching: int, draws: str, min_reps: int, min_seconds: float) -> dict:
    without_replacement = draws == "without_replacement"
    ids, parents, draft_probs, target_probs = make_tree_inputs(batch, num_nodes, branching, without_replacement)
    chain_ids, chain_draft, chain_target = make_chain_inputs(batch, num_nodes)
    seeds, offsets, greedy = torch.tensor([1]), torch.tensor([0]), torch.zeros(batch, dtype=torch.bool)
    tree = lambda: sd.tree_rejection_sample(ids, parents, draft_probs, target_probs, draws=draws, seed=seeds)
    chain = lambda: sd.rejection_sample(chain_ids, chain_draft, chain_target, seed=seeds)
    reference = lambda: ref.tree_rejection_sample(
        ids, parents, draft_probs, target_probs, greedy, seeds, offsets, without_replacement
    )
    return {
        "shape": [batch, num_nodes, branching],
        "draws": draws,
        "specdecode": median_ms(tree, min_reps, min_seconds),
        "reference": median_ms(reference, max(3, min_reps // 10), min_seconds),
        "chain": median_ms(chain, min_reps, min_seconds),
        "tree_accepted": float(tree().num_accepted.float().mean()),
        "chain_accepted": float(chain().num_accepted.float().mean()),
    }


TABLE_HEADER = [
    "(B, T, branching)",
    "draws",
    "tree ms",
    "reference ms",
    "ref/tree",
    "chain K=T ms",
    "tree/chain",
    "accepted (tree)",
    "accepted (chain K=T)",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            "(" + ", ".join(str(x) for x in r["shape"]) + ")",
            r["draws"],
            f"{r['specdecode']:.3f}",
            f"{r['reference']:.2f}",
            f"{r['reference'] / r['specdecode']:.0f}x",
            f"{r['chain']:.3f}",
            f"{r['specdecode'] / r['chain']:.2f}x",
            f"{r['tree_accepted']:.2f}",
            f"{r['chain_accepted']:.2f}",
        ]
        for r in rows
    ]


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Tree verifier microbenchmark (CPU)",
        "Median time of one `tree_rejection_sample` call (C++ op) vs its pure-PyTorch reference and vs "
        "`rejection_sample` on a chain of K = T drafts, V = 32000 float32; static top-k trees, siblings "
        "drawn from their parent's draft row, draft logits = target logits + N(0, 0.5²) noise. Accepted = mean "
        "accepted drafts per row (synthetic rows: a shape comparison, not a model pair's).",
    )
    s.table(TABLE_HEADER, table_rows(rows))
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__], argv, quick_help="two shapes, fewer repetitions", setup_note="float32 probabilities"
    )


if __name__ == "__main__":
    main()
