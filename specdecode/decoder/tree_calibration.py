"""How often the draft's top-k tokens are the target's greedy token, by the draft's probability:
the table greedy dynamic trees rank their nodes by (``TreeSpec.dynamic(..., greedy_ranking="calibrated")``).

    python -m specdecode.decoder.tree_calibration     # ~1-3 min on one thread; rewrites tree_calibration_table.py

**Why.** A greedy step accepts a node exactly when every node on its path is the target's argmax
after its parent, so the expected accepted length of a tree is the sum over its nodes of
``P(the node's whole path is accepted)``, and of all trees of ``n`` nodes the best keeps the ``n``
nodes of highest such value (a child's value is at most its parent's, so that set is a tree).
EAGLE-2 estimates the value by the draft's path probability; this draft is overconfident in one
way and underconfident in another (a top-1 token at 0.6 is the target's argmax far more often
than 6 times in 10), so ranking by its softmax mostly picks the chain. Here each edge's value
is *measured*: ``acceptance[r][bin(p)]``, the fraction of times a token the draft ranked ``r``-th
(``r`` = 0 for its top-1, 1 for any other) with probability ``p`` (softmax at temperature 1) was
the target's greedy token, and a node's value is the product along its path (the context of
every edge is the accepted path before it, as in the measurement).

**Measurement** (deterministic, one thread): ``NUM_PROMPTS`` windows of ``PROMPT_LEN`` bytes
evenly spaced over the held-out files of the training split (``train.load_corpus``: every 20th
standard-library file, never trained on, and not the benchmark's prompts), each continued by
``NEW_TOKENS`` tokens of the target's greedy decoding (``speculative_generate``, identical to
greedy) -- the text greedy trees are drafted on. One no-cache forward of each model over
prompt + continuation then gives, at every continuation position, the target's argmax and the
draft's top ``TOP_K`` tokens with their probabilities. Counts per (rank class, probability bin of
width ``1 / NUM_BINS``) are fitted as ``(hits + 1) / (n + 2)`` and made non-decreasing in ``p``
by pooling adjacent violators (weights ``n + 2``), so a likelier token never ranks below a less
likely one of the same class. ``tests/test_tree_calibration.py`` checks the shipped table equals
the fit of its counts, and (slow) that re-running the measurement reproduces the counts.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

TOP_K = 4
NUM_BINS = 20
NUM_PROMPTS = 48
PROMPT_LEN = 64
NEW_TOKENS = 96
BATCH = 8
TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tree_calibration_table.py")


def probability_bins(p: torch.Tensor, num_bins: int = NUM_BINS) -> torch.Tensor:
    """The bin of each probability in ``p`` (int64): ``floor(p * num_bins)``, 1.0 in the last bin."""
    return (p * num_bins).long().clamp(0, num_bins - 1)


def rank_classes(k: int, device=None) -> torch.Tensor:
    """``[k]`` int64: 0 for the draft's top-1, 1 for its other top-k tokens."""
    return (torch.arange(k, device=device) > 0).long()


def held_out_prompts(num_prompts: int = NUM_PROMPTS, prompt_len: int = PROMPT_LEN) -> torch.Tensor:
    """``[num_prompts, prompt_len]`` int64 windows evenly spaced over the held-out stream."""
    from specdecode.decoder.train import load_corpus

    _, val, _ = load_corpus()
    stride = (len(val) - prompt_len) // num_prompts
    return torch.stack([val[i * stride : i * stride + prompt_len] for i in range(num_prompts)]).long()


@torch.no_grad()
def measure_counts(target, draft, prompts: torch.Tensor, new_tokens: int = NEW_TOKENS, top_k: int = TOP_K) -> dict:
    """``{"n": [[...] * NUM_BINS] * 2, "hits": ...}``: per rank class and probability bin, how many
    of the draft's top-k tokens were seen and how many were the target's greedy token (module
    docstring)."""
    from specdecode.decoder.generate import speculative_generate

    n = torch.zeros(2, NUM_BINS, dtype=torch.int64)
    hits = torch.zeros(2, NUM_BINS, dtype=torch.int64)
    classes = rank_classes(top_k)
    for chunk in prompts.split(BATCH):
        out = speculative_generate(target, draft, chunk, new_tokens, num_draft_tokens=6, eos_id=None)
        text = torch.cat([chunk, out.tokens], 1)  # eos_id=None: every row has new_tokens tokens
        positions = slice(chunk.shape[1] - 1, text.shape[1] - 1)  # contexts ending at the root of a step
        argmax = target(text)[:, positions].argmax(-1)  # [B, new_tokens]
        top = draft(text)[:, positions].float().softmax(-1).topk(top_k, dim=-1)  # [B, new_tokens, k]
        hit = (top.indices == argmax[..., None]).long()
        index = (classes * NUM_BINS + probability_bins(top.values)).flatten()
        n += torch.bincount(index, minlength=2 * NUM_BINS).view(2, NUM_BINS)
        hits += torch.bincount(index, weights=hit.flatten().double(), minlength=2 * NUM_BINS).long().view(2, NUM_BINS)
    return {"n": n.tolist(), "hits": hits.tolist()}


def pool_adjacent_violators(values: list[float], weights: list[float]) -> list[float]:
    """The non-decreasing sequence closest to ``values`` in weighted least squares."""
    blocks = []  # [value, weight, length]
    for v, w in zip(values, weights):
        blocks.append([v, w, 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            v2, w2, n2 = blocks.pop()
            v1, w1, n1 = blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [v for v, _, length in blocks for _ in range(length)]


def fit_acceptance(counts: dict) -> list[list[float]]:
    """``[2][NUM_BINS]`` acceptance estimates from ``counts`` (module docstring), rounded to 6 digits."""
    table = []
    for n_row, hit_row in zip(counts["n"], counts["hits"]):
        raw = [(h + 1) / (n + 2) for n, h in zip(n_row, hit_row)]
        table.append([round(v, 6) for v in pool_adjacent_violators(raw, [n + 2 for n in n_row])])
    return table


def render_table(counts: dict, settings: dict) -> str:
    """The table module's source (ruff-formatted as written)."""
    lines = [
        '"""Written by ``python -m specdecode.decoder.tree_calibration`` (its docstring says how); do not edit."""',
        "",
    ]
    for name, value in (("SETTINGS", settings), ("COUNTS", counts), ("ACCEPTANCE", fit_acceptance(counts))):
        lines.append(f"{name} = " + json.dumps(value, indent=4))
    return "\n".join(lines) + "\n"


def settings() -> dict:
    return {
        "top_k": TOP_K,
        "num_bins": NUM_BINS,
        "num_prompts": NUM_PROMPTS,
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "threads": 1,
        "target_dtype": "float32",
    }


def measure_shipped_pair() -> dict:
    """The counts for the shipped pair, measured as the module docstring says (one thread, float32)."""
    from specdecode.decoder.generate import load_pretrained

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target, draft = load_pretrained(dtype=torch.float32)
        return measure_counts(target, draft, held_out_prompts())
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=TABLE_PATH, help="where to write the table module")
    args = parser.parse_args(argv)
    counts = measure_shipped_pair()
    with open(args.out, "w") as f:
        f.write(render_table(counts, settings()))
    for name, row in zip(("top-1", "others"), fit_acceptance(counts)):
        print(name, " ".join(f"{v:.2f}" for v in row))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
