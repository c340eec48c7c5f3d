"""Speculative Rejection vs Best-of-N on the shipped target: reward reached vs compute.

    python -m bench.bench_best_of_n             # N = 4..256, alpha = 0.3, 0.5, 0.7, 0.9, 8 prompts
    python -m bench.bench_best_of_n --quick     # N = 4, 16, 64, alpha = 0.5, 0.9, 4 prompts, fewer tokens
    python -m bench.bench_best_of_n --reward rm # the stand-in reward model instead of the likelihood

All prompts of a run share one batch. The reward is the target's mean log-likelihood of the
response (the paper's Table 2 setting: higher reward = lower perplexity), or ``--reward rm``:
a reward model whose trunk is the target's and whose head is random (a stand-in, see
``specdecode.decoder.rewards.RewardModel``). Speculative Rejection decides by memory, as the paper
does: its budget is the KV of its N candidates holding the prompt plus ``max_new_tokens / 4``
tokens, so it prunes early, and again whenever the survivors' KV outgrows the budget.

Both methods run on the same engine with per-candidate randomness from the same seed, so every
candidate Speculative Rejection finishes is exactly the one Best-of-N generates: the reward gap
is the price of pruning alone, not sampling noise. Compute is counted as tokens generated (all
candidates, pruned ones included) and wall time. On this CPU, a decode step's time grows more
slowly than the batch (per-step overheads), so the time saving is smaller than the token saving;
on a GPU the paper's regime is memory-bound large batches.

Columns: reward (mean over prompts of the best response's reward), ppl (mean exp(-reward),
likelihood reward only), tokens, time, forwards (decode steps + prefill), rounds (decision
points), peak KV (largest live KV of the run), and for Speculative Rejection the tokens Best-of-N
needs for the same reward (its curve over N, interpolated in log tokens, as the paper reads its
speedups) with the ratio ``those tokens / SpecRej tokens`` (> 1: Speculative Rejection is cheaper).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

import specdecode as sd
from bench.prompts import PROMPTS
from specdecode.decoder.best_of_n import kv_bytes_per_token


def memory_budget_for(model, prompts, n: int, tokens_per_row: int) -> int:
    """KV bytes of ``n`` candidates per prompt holding the prompt plus ``tokens_per_row`` tokens."""
    prompt_tokens = sum(len(p.encode()) + 1 for p in prompts)  # + BOS
    return kv_bytes_per_token(model) * n * (prompt_tokens + len(prompts) * tokens_per_row)


def make_reward(kind: str, target):
    if kind == "loglik":
        return sd.LogLikelihoodReward(target)
    if kind == "rm":
        return sd.RewardModel.from_language_model(target)
    raise ValueError(f"unknown reward {kind!r}: loglik or rm")


def run(
    ns=(4, 8, 16, 32, 64, 128, 256),
    alphas=(0.3, 0.5, 0.7, 0.9),
    prompts=PROMPTS,
    max_new_tokens: int = 64,
    reward: str = "loglik",
    seed: int = 0,
    budget_fraction: float = 1 / 4,
    weights_dir: str | None = None,
    decision_tokens=None,
    log=print,
) -> list[dict]:
    """One Best-of-N row per N and one Speculative Rejection row per (N, alpha): a list of dicts
    with ``method``, ``N``, ``alpha``, ``reward``, ``ppl``, ``tokens``, ``seconds``, ``forwards``,
    ``model_tokens``, ``rounds``, ``live_after_rounds``, ``peak_kv_bytes``, ``memory_budget``.
    Speculative Rejection decides by a memory budget (``budget_fraction`` of the new tokens on
    top of the prompts, for its N candidates), or at ``decision_tokens`` if given."""
    target, _ = sd.load_pretrained(weights_dir=weights_dir)
    scorer = make_reward(reward, target)
    rows = []
    for n in ns:
        budget = memory_budget_for(target, prompts, n, max(1, int(max_new_tokens * budget_fraction)))
        configs = [("Best-of-N", None)] + [(f"SpecRej a={alpha}", alpha) for alpha in alphas]
        for method, alpha in configs:
            log(f"  N = {n:4d}  {method:<14} ...", end="", flush=True)
            common = dict(max_new_tokens=max_new_tokens, generator=torch.Generator().manual_seed(seed))
            if alpha is None:
                out = sd.best_of_n(target, scorer, prompts, n, **common)
            else:
                when = {"decision_tokens": decision_tokens} if decision_tokens else {"memory_budget": budget}
                out = sd.speculative_rejection(target, scorer, prompts, n, alpha, **when, **common)
            s = out.stats
            rows.append(
                {
                    "method": method,
                    "N": n,
                    "alpha": alpha,
                    "reward": float(out.rewards.mean()),
                    "ppl": float(torch.exp(-out.rewards).mean()) if reward == "loglik" else math.nan,
                    "tokens": s["tokens_generated"],
                    "seconds": s["seconds"],
                    "forwards": s["forwards"],
                    "model_tokens": s["model_tokens"],
                    "rounds": len(s["rounds"]),
                    "live_after_rounds": [sum(r["kept_per_prompt"]) for r in s["rounds"]],
                    "peak_kv_bytes": s["peak_kv_bytes"],
                    "memory_budget": budget if alpha is not None and not decision_tokens else None,
                }
            )
            log(f" reward {rows[-1]['reward']:.4f}, {rows[-1]['tokens']} tokens, {s['seconds']:.1f} s", flush=True)
    _add_bon_equivalents(rows)
    return rows


def _add_bon_equivalents(rows: list[dict]) -> None:
    """For every Speculative Rejection row, the tokens Best-of-N needs for the same reward: the
    Best-of-N curve (reward vs log tokens, one point per N) interpolated linearly at its reward,
    as the paper reads its speedups off the Best-of-N curve; then ``bon_token_ratio`` = those
    tokens / its tokens (> 1: Speculative Rejection is cheaper). None when its reward is outside
    the curve (``bon_equiv`` says "below" or "above")."""
    bon = sorted((r for r in rows if r["alpha"] is None), key=lambda r: r["tokens"])
    for row in rows:
        if row["alpha"] is None:
            continue
        row["bon_equiv_tokens"], row["bon_token_ratio"], row["bon_equiv"] = None, None, None
        if not bon:
            continue
        if row["reward"] < bon[0]["reward"] - 1e-9:
            row["bon_equiv"] = f"below BoN-{bon[0]['N']}"
            continue
        for lo, hi in zip(bon, bon[1:] + [None]):
            if hi is None:
                if row["reward"] <= lo["reward"] + 1e-9:
                    tokens = lo["tokens"]
                    break
                row["bon_equiv"] = f"above BoN-{lo['N']}"
                tokens = None
                break
            if row["reward"] <= hi["reward"] + 1e-9:
                span = hi["reward"] - lo["reward"]
                w = 0.0 if span <= 0 else max(0.0, (row["reward"] - lo["reward"]) / span)
                tokens = math.exp(math.log(lo["tokens"]) + w * (math.log(hi["tokens"]) - math.log(lo["tokens"])))
                break
        if tokens is not None:
            row["bon_equiv_tokens"] = tokens
            row["bon_token_ratio"] = tokens / row["tokens"]
            row["bon_equiv"] = f"{tokens:.0f} ({row['bon_token_ratio']:.2f}x)"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| method | N | reward | ppl | tokens | time s | forwards | rounds (live after) | peak KV MiB "
        "| BoN tokens for this reward (ratio) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        equiv = r.get("bon_equiv") or ""
        live = " -> ".join(str(x) for x in r["live_after_rounds"])
        ppl = "-" if math.isnan(r["ppl"]) else f"{r['ppl']:.1f}"
        lines.append(
            f"| {r['method']} | {r['N']} | {r['reward']:.4f} | {ppl} | {r['tokens']} | "
            f"{r['seconds']:.2f} | {r['forwards']} | {r['rounds']}{f' ({live})' if live else ''} | "
            f"{r['peak_kv_bytes'] / 2**20:.1f} | {equiv} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="N = 4, 16, 64; alpha = 0.5, 0.9; 4 prompts; 32 tokens")
    parser.add_argument("--ns", type=int, nargs="+", help="candidates per prompt")
    parser.add_argument("--alphas", type=float, nargs="+", help="rejection rates")
    parser.add_argument("--max-new-tokens", type=int)
    parser.add_argument("--num-prompts", type=int)
    parser.add_argument("--reward", choices=["loglik", "rm"], default="loglik")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=1 / 4,
        help="memory budget = KV of the N candidates at prompt + this fraction of max-new-tokens",
    )
    parser.add_argument(
        "--decision-tokens", type=int, nargs="+", help="decide at these tokens per row instead of by memory"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine OpenMP threads spinning against "
        "other processes made a 2-thread run 13x slower than a 1-thread one)",
    )
    parser.add_argument("--weights-dir", help="a pair trained with python -m specdecode.decoder.train --out DIR")
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # restored below: a report runner may call main() in-process
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)


def _main(args) -> list[dict]:
    ns = args.ns or ([4, 16, 64] if args.quick else [4, 8, 16, 32, 64, 128, 256])
    alphas = args.alphas or ([0.5, 0.9] if args.quick else [0.3, 0.5, 0.7, 0.9])
    max_new = args.max_new_tokens or (32 if args.quick else 64)
    prompts = PROMPTS[: args.num_prompts or (4 if args.quick else 8)]
    from specdecode.decoder.generate import WEIGHTS_DIR

    weights_dir = args.weights_dir or WEIGHTS_DIR
    if not all(os.path.exists(os.path.join(weights_dir, f"{m}.pt")) for m in ("target", "draft")):
        print(f"weights not found in {weights_dir}: train them with python -m specdecode.decoder.train")
        return []
    print(
        f"Speculative Rejection vs Best-of-N: {len(prompts)} prompts in one batch, up to {max_new} new tokens, "
        f"T = 1, reward = {args.reward}, seed {args.seed}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        flush=True,
    )
    start = time.perf_counter()
    rows = run(
        ns,
        alphas,
        prompts,
        max_new,
        args.reward,
        args.seed,
        budget_fraction=args.budget_fraction,
        weights_dir=args.weights_dir,
        decision_tokens=args.decision_tokens,
    )
    rule = (
        f"at tokens {args.decision_tokens}"
        if args.decision_tokens
        else f"by memory: the KV of its N candidates at prompt + {max(1, int(max_new * args.budget_fraction))} tokens"
    )
    print(f"\n{format_table(rows)}\n\n(total {time.perf_counter() - start:.0f} s; SpecRej decides {rule})")
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
