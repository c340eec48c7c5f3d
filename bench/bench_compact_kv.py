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

Rows: ``run(...)`` returns them and saves ``bench/out/compact_kv.json``.
"""

from __future__ import annotations

import sys

import torch

import specdecode as sd
from bench.report import OUT_DIR, Log, Section, microbenchmark_main, save_rows
from bench.timing import median_ms, torch_threads

TOPIC = "compact_kv"

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


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers) or ``--quick``."""
    if quick:
        return {"layouts": LAYOUTS[:1], "min_reps": 3, "min_seconds": 0.2}
    return {"layouts": LAYOUTS, "min_reps": 10, "min_seconds": 1.0}


def run(
    layouts=LAYOUTS,
    patterns=PATTERNS,
    min_reps: int = 10,
    min_seconds: float = 1.0,
    threads: int | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """One row per (layout, kept set): ``layout``, ``kept_set``, ``moved_bytes`` and the median ms
    of ``compact``, ``copy`` (the floor) and ``index_select``. Saved as ``<out_dir>/compact_kv.json``."""
    rows = []
    with torch_threads(threads):
        for name, shape, batch_dim, dtype in layouts:
            for pattern in patterns:
                log(f"  compact_kv {name}, {pattern} ...", flush=True)
                moved, t_compact, t_copy, t_index = bench_case(shape, batch_dim, dtype, pattern, min_reps, min_seconds)
                rows.append(
                    {
                        "layout": name,
                        "kept_set": pattern,
                        "moved_bytes": moved,
                        "compact_ms": t_compact,
                        "copy_ms": t_copy,
                        "index_select_ms": t_index,
                    }
                )
    return save_rows(TOPIC, rows, out_dir)


TABLE_HEADER = [
    "layout",
    "kept set",
    "MiB moved",
    "compact ms",
    "GB/s",
    "index_select ms",
    "index/compact",
    "floor (copy) ms",
    "compact/floor",
]


def table_rows(rows: list[dict]) -> list[list[str]]:
    return [
        [
            r["layout"],
            r["kept_set"],
            f"{r['moved_bytes'] / 2**20:.1f}",
            f"{r['compact_ms']:.2f}",
            f"{r['moved_bytes'] / r['compact_ms'] / 1e6:.1f}",
            f"{r['index_select_ms']:.2f}",
            f"{r['index_select_ms'] / r['compact_ms']:.2f}x",
            f"{r['copy_ms']:.2f}",
            f"{r['compact_ms'] / r['copy_ms']:.2f}x",
        ]
        for r in rows
    ]


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "KV-cache compaction microbenchmark (CPU)",
        "Median time of `sd.compact_kv_cache_` (in place) vs `index_select` + `copy_` on 32-64 MiB caches, "
        "and the floor: a plain `copy_` of exactly the bytes that must move (rows with kept[i] != i).",
    )
    s.table(TABLE_HEADER, table_rows(rows))
    return s


def main(argv: list[str] | None = None) -> None:
    microbenchmark_main(
        sys.modules[__name__],
        argv,
        quick_help="fewer repetitions, one layout",
        setup_note="GB/s = bytes moved / median time",
    )


if __name__ == "__main__":
    main()
