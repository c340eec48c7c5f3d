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
Times are medians in microseconds over repeated calls. The floor is the bytes the op must move
(float32 rewards read, bool mask written) at the copy bandwidth measured here.

Rows: ``run(...)`` returns them and saves ``bench/out/topk_prune.json``.
"""

from __future__ import annotations

import sys

import torch

import specdecode as sd
from bench.report import OUT_DIR, Log, Section, microbenchmark_main, save_rows
from bench.timing import copy_bandwidth_gbs, median_us, torch_threads

TOPIC = "topk_prune"

PROMPTS = [1, 4, 16, 64]
CANDIDATES = [8, 64, 256, 1024]


def topk_loop(rewards: torch.Tensor, group_sizes: list[int], num_keep: list[int]) -> torch.Tensor:
    kept, start = [], 0
    for size, keep in zip(group_sizes, num_keep):
        best = torch.topk(rewards[start : start + size], keep).indices
        kept.append(best.sort().values + start)
        start += size
    return torch.cat(kept)


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {"prompts": [1, 64], "candidates": [8, 1024], "min_reps": 5, "min_seconds": 0.05}
    return {"prompts": PROMPTS, "candidates": CANDIDATES, "min_reps": 20, "min_seconds": 0.3}


def run(
    prompts=PROMPTS,
    candidates=CANDIDATES,
    min_reps: int = 20,
    min_seconds: float = 0.3,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (P prompts, n candidates): ``P``, ``n``, the median µs of ``op``,
    ``topk_prune`` and ``topk_loop``, and ``floor_us`` (rewards read + mask written at the copy
    bandwidth). Saved as ``<out_dir>/topk_prune.json``."""
    generator = torch.Generator().manual_seed(0)
    rows = []
    with torch_threads(threads):
        for num_prompts in prompts:
            for n in candidates:
                log(f"  topk_prune P={num_prompts} n={n} ...", flush=True)
                rows.append(
                    measure(torch.randn(num_prompts * n, generator=generator), num_prompts, n, min_reps, min_seconds)
                )
    return save_rows(TOPIC, rows, out_dir)


def measure(rewards: torch.Tensor, num_prompts: int, n: int, min_reps: int, min_seconds: float) -> dict:
    group_sizes = [n] * num_prompts
    num_keep = sd.num_keep_from_alpha(group_sizes, 0.5)
    sizes_t, keeps_t = torch.tensor(group_sizes), torch.tensor(num_keep)
    expected = topk_loop(rewards, group_sizes, num_keep)
    assert torch.equal(sd.topk_prune(rewards, group_sizes, 0.5).kept_indices, expected)  # no ties here
    nbytes = num_prompts * n * 5  # float32 rewards read, bool mask written
    return {
        "P": num_prompts,
        "n": n,
        "op_us": median_us(lambda: torch.ops.specdecode.topk_prune(rewards, sizes_t, keeps_t), min_reps, min_seconds),
        "topk_prune_us": median_us(lambda: sd.topk_prune(rewards, group_sizes, 0.5), min_reps, min_seconds),
        "topk_loop_us": median_us(lambda: topk_loop(rewards, group_sizes, num_keep), min_reps, min_seconds),
        "floor_us": nbytes / (copy_bandwidth_gbs(nbytes, 5, 0.02) * 1e9) * 1e6,
    }


TABLE_HEADER = [
    "P",
    "n",
    "op us",
    "topk_prune us",
    "topk loop us",
    "loop/op",
    "loop/topk_prune",
    "floor us",
    "op/floor",
]


def table_rows(rows: list[dict]) -> list[list]:
    return [
        [
            r["P"],
            r["n"],
            f"{r['op_us']:.1f}",
            f"{r['topk_prune_us']:.1f}",
            f"{r['topk_loop_us']:.1f}",
            f"{r['topk_loop_us'] / r['op_us']:.1f}x",
            f"{r['topk_loop_us'] / r['topk_prune_us']:.1f}x",
            f"{r['floor_us']:.2f}",
            f"{r['op_us'] / r['floor_us']:.0f}x",
        ]
        for r in rows
    ]


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Pruning microbenchmark (CPU)",
        "Median time to prune P prompts x n candidates (alpha = 0.5): the fixed-shape C++ op, the public "
        "`sd.topk_prune` (checks + alpha -> k + kept indices), and a per-prompt `torch.topk` loop. Floor = "
        "(rewards read + mask written) / copy bandwidth measured here: far below the call overhead, so "
        "these times are launch/overhead-bound, not bandwidth-bound.",
    )
    s.table(TABLE_HEADER, table_rows(rows))
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__],
        argv,
        quick_help="fewer repetitions and shapes",
        setup_note="float32 rewards, alpha = 0.5",
    )


if __name__ == "__main__":
    main()
