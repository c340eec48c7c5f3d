"""KV-cache compaction bandwidth on CPU: ``sd.compact_kv_cache_`` (the C++ kernel, in place)
against a plain copy of the same bytes and against ``index_select`` + ``copy_``.

    python -m bench.bench_compact_kv            # the README's numbers
    python -m bench.bench_compact_kv --quick    # fewer repetitions, one layout

Bytes moved = (rows that actually move, i.e. ``kept[i] != i``) × bytes per row; bandwidth =
bytes moved ÷ median time. Contenders, on the same cache and kept set:
- ``compact``  — ``sd.compact_kv_cache_(cache, kept, batch_dim)``: in place, no allocation.
- ``copy``     — ``dst.copy_(src)`` of exactly the bytes moved, between two preallocated
  buffers: the memory-bandwidth ceiling for this amount of data.
- ``index_select`` — ``cache.narrow(...).copy_(cache.index_select(batch_dim, kept))``: the usual
  PyTorch way; allocates a temporary of N' rows and moves every kept row twice.
Caches are 128 MiB.
"""

from __future__ import annotations

import argparse

import torch

import specdecode as sd
from bench.timing import median_ms

# (name, shape, batch_dim, dtype)
LAYOUTS = [
    ("[B,H,S,D] bf16", (64, 8, 1024, 128), 0, torch.bfloat16),
    ("[L,2,B,H,S,D] bf16", (4, 2, 64, 8, 256, 64), 2, torch.bfloat16),
    ("[B,H,S,D] int8", (128, 8, 1024, 128), 0, torch.int8),
]
# Kept sets over B rows: random subsets at three keep rates, and the worst case for an in-place
# move (row 0 dropped, so every survivor moves).
PATTERNS = ["keep 25%", "keep 50%", "keep 75%", "drop row 0"]


def kept_indices(pattern: str, num_rows: int, generator: torch.Generator) -> torch.Tensor:
    if pattern == "drop row 0":
        return torch.arange(1, num_rows)
    keep = int(pattern.split()[1].rstrip("%")) * num_rows // 100
    return torch.randperm(num_rows, generator=generator)[:keep].sort().values


def bench_case(shape, batch_dim, dtype, pattern, reps, seconds):
    generator = torch.Generator().manual_seed(0)
    cache = torch.randint(-100, 100, shape, dtype=torch.int8, generator=generator).to(dtype)
    num_rows = shape[batch_dim]
    kept = kept_indices(pattern, num_rows, generator)
    row_bytes = cache.numel() // num_rows * cache.element_size()
    moved_rows = int((kept != torch.arange(len(kept))).sum())
    moved_bytes = moved_rows * row_bytes
    src = torch.empty(moved_bytes, dtype=torch.uint8).fill_(1)
    dst = torch.empty(moved_bytes, dtype=torch.uint8).fill_(2)
    t_compact = median_ms(lambda: sd.compact_kv_cache_(cache, kept, batch_dim), reps, seconds)
    t_copy = median_ms(lambda: dst.copy_(src), reps, seconds)
    survivors = cache.narrow(batch_dim, 0, len(kept))
    t_index = median_ms(lambda: survivors.copy_(cache.index_select(batch_dim, kept)), reps, seconds)
    return moved_bytes, t_compact, t_copy, t_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, one layout")
    parser.add_argument("--threads", type=int, default=None, help="torch/OpenMP threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    reps, seconds = (3, 0.2) if args.quick else (10, 1.0)
    layouts = LAYOUTS[:1] if args.quick else LAYOUTS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GB/s = bytes moved / median time")
    header = (
        f"{'layout':<20} {'kept set':<11} {'MiB moved':>9} {'compact ms':>10} {'GB/s':>6} "
        f"{'copy ms':>8} {'GB/s':>6} {'index_select ms':>15} {'GB/s':>6} {'compact/copy':>12}"
    )
    print(header)
    print("-" * len(header))
    for name, shape, batch_dim, dtype in layouts:
        for pattern in PATTERNS:
            moved, t_compact, t_copy, t_index = bench_case(shape, batch_dim, dtype, pattern, reps, seconds)
            gbps = lambda ms: moved / ms / 1e6  # noqa: E731
            print(
                f"{name:<20} {pattern:<11} {moved / 2**20:>9.1f} {t_compact:>10.2f} {gbps(t_compact):>6.1f} "
                f"{t_copy:>8.2f} {gbps(t_copy):>6.1f} {t_index:>15.2f} {gbps(t_index):>6.1f} "
                f"{t_copy / t_compact:>11.0%}"
            )


if __name__ == "__main__":
    main()
