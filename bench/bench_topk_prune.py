"""Batched per-prompt top-k pruning on CPU: one op for all prompts against a ``torch.topk`` loop.

    python -m bench.bench_topk_prune            # the README's numbers
    python -m bench.bench_topk_prune --quick    # fewer repetitions and shapes

P prompts × n candidates each (float32 rewards, alpha = 0.5, so k = n/2 per prompt).
Contenders, all producing the ascending kept indices of every prompt:
- ``op``       — ``torch.ops.specdecode.topk_prune`` (the fixed-shape C++ op: the keep mask).
- ``topk_prune`` — ``sd.topk_prune``: argument checks, alpha -> num_keep, the op, kept_indices.
- ``topk loop`` — per prompt ``torch.topk(rewards[s:s+n], k)``, sort the indices, offset, then
  ``torch.cat`` (what a per-prompt implementation does; it does not rank NaN or break ties
  as specdecode does, so it is a speed baseline only).
Times are medians in microseconds over repeated calls.
"""

from __future__ import annotations

import argparse

import torch

import specdecode as sd
from bench.timing import median_us

PROMPTS = [1, 4, 16, 64]
CANDIDATES = [8, 64, 256, 1024]


def topk_loop(rewards: torch.Tensor, group_sizes: list[int], num_keep: list[int]) -> torch.Tensor:
    kept, start = [], 0
    for size, keep in zip(group_sizes, num_keep):
        best = torch.topk(rewards[start : start + size], keep).indices
        kept.append(best.sort().values + start)
        start += size
    return torch.cat(kept)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and shapes")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps, seconds = (5, 0.05) if args.quick else (20, 0.3)
    prompts, candidates = ([1, 64], [8, 1024]) if args.quick else (PROMPTS, CANDIDATES)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 rewards, alpha = 0.5; median µs")
    header = (
        f"{'P':>3} {'n':>5} {'op µs':>9} {'topk_prune µs':>13} {'topk loop µs':>12} "
        f"{'loop/op':>8} {'loop/topk_prune':>15}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for num_prompts in prompts:
        for n in candidates:
            rewards = torch.randn(num_prompts * n, generator=generator)
            group_sizes = [n] * num_prompts
            num_keep = sd.num_keep_from_alpha(group_sizes, 0.5)
            sizes_t, keeps_t = torch.tensor(group_sizes), torch.tensor(num_keep)
            expected = topk_loop(rewards, group_sizes, num_keep)
            assert torch.equal(sd.topk_prune(rewards, group_sizes, 0.5).kept_indices, expected)  # no ties here
            t_op = median_us(lambda: torch.ops.specdecode.topk_prune(rewards, sizes_t, keeps_t), reps, seconds)
            t_public = median_us(lambda: sd.topk_prune(rewards, group_sizes, 0.5), reps, seconds)
            t_loop = median_us(lambda: topk_loop(rewards, group_sizes, num_keep), reps, seconds)
            print(
                f"{num_prompts:>3} {n:>5} {t_op:>9.1f} {t_public:>13.1f} {t_loop:>12.1f} "
                f"{t_loop / t_op:>7.1f}x {t_loop / t_public:>14.1f}x"
            )


if __name__ == "__main__":
    main()
