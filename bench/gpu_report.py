"""GPU readiness report, with no GPU: what the compiler says, and a bytes model of each op.

    python -m bench.gpu_report            # every kernel, sm_80 / sm_90 / gfx942
    python -m bench.gpu_report --quick    # sm_90 only

Part 1 (compiler facts): every Triton launch listed by the kernel modules' ``aot_cases()`` is
compiled ahead of time for real GPU targets through Triton's own compiler (in a subprocess with
``TRITON_INTERPRET`` unset). Per kernel and target: registers per thread, spilled bytes, shared
memory, and the widths of the global loads in the generated code. A streaming pass over a probability
row or a KV-cache row should use 16-byte loads (``ld.global.v4.b32`` / ``ld.global.v2.b64`` on
NVIDIA, ``global_load_dwordx4`` on AMD); gathers and scalar metadata loads are narrow by nature.

Part 2 (a MODEL, not a measurement): the DRAM bytes each op moves per call at realistic sizes,
for the minimum the op must move, for this package's kernel, and for the designs the peers use
(``/work/shared/research/peers_rejection.md``), each turned into an H100 SXM time floor at
3.35 TB/s (bytes / bandwidth; launch latency, ~2-5 us, is not included). Gathers count one
32-byte sector each, the DRAM access granularity.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from specdecode.kernels._aot import compile_in_subprocess

H100_BYTES_PER_S = 3.35e12
SECTOR = 32  # bytes: the smallest DRAM transaction on NVIDIA GPUs; a gather of one element costs this
ALL_TARGETS = ("sm_80", "sm_90", "gfx942")

# ----------------------------------------------------------------------------- part 1: compile


def compile_table(rows: list[dict]) -> list[list]:
    """One row per (case, target); a last column with the case's own ``bytes_moved`` (and its
    H100 floor) when the kernel module declares it."""
    table = []
    for r in rows:
        if not r["ok"]:
            table.append([r["name"], r["target"], "FAILED", "", "", "", r["error"][:80], ""])
            continue
        vec = "yes" if r["widest_load"] >= 16 else "no"
        widths = ",".join(str(w) for w in r["load_widths"]) or "-"
        moved = r.get("bytes_moved")
        floor = f"{moved / 1e6:.3f} MB, {moved / H100_BYTES_PER_S * 1e6:.2f} us" if moved else "-"
        table.append([r["name"], r["target"], r["registers"], r["spills"], r["shared"], widths, vec, floor])
    return table


COMPILE_HEADER = [
    "kernel [case]",
    "target",
    "registers",
    "spilled",
    "shared B",
    "load widths B",
    "16-B loads",
    "declared bytes/launch, H100 floor",
]

# ----------------------------------------------------------------------------- part 2: bytes model


@dataclass
class Design:
    name: str
    bytes: float  # DRAM bytes read + written per call
    temp_bytes: float = 0.0  # transient allocation beyond inputs and outputs


def accepted_distribution(num_drafts: int, acceptance: float) -> list[float]:
    """P(a = j drafts accepted), j = 0..K, for i.i.d. per-token acceptance."""
    probs = [acceptance**j * (1 - acceptance) for j in range(num_drafts)]
    return probs + [acceptance**num_drafts]


def rejection_designs(batch: int, num_drafts: int, vocab: int, elem: int, acceptance: float) -> list[Design]:
    """Expected DRAM bytes of one verifier call on [B, K(+1), V] probabilities of ``elem`` bytes."""
    B, K, V, e = batch, num_drafts, vocab, elem
    dist = accepted_distribution(K, acceptance)
    checked = sum(p * min(j + 1, K) for j, p in enumerate(dist))  # positions gathered per row
    residual_rows = 1 - dist[-1]  # rows that sample a residual (the rest sample the bonus row)
    io = B * K * 8 + B * (K + 2) * 8  # draft ids in; token ids and counts out (int64)
    gathers = B * checked * 2 * SECTOR
    sampled_rows = B * (V * e + residual_rows * V * e)  # q_j, plus p_j when it is a residual
    minimum = io + gathers + sampled_rows
    # specdecode: a sum pass then a scan pass over the sampled row(s); the scan stops reading at
    # the hit, so 2x is the upper bound (and the second pass often hits L2).
    ours = io + gathers + 2 * sampled_rows
    # vLLM v0 / PyTorch baseline: residual max(0, q-p) written, summed, normalised and sampled
    # (torch.multinomial) for every draft position; bonus from q_K.
    full = B * K * V
    per_position = io + 2 * full * e + full * 4 * (1 + 1 + 2 + 1) + B * V * e
    # vLLM MRV1 (Triton): softmax(target logits) materialised in fp32 (logits read, probs written),
    # one Exp(1) row per request (written, then 1/q read+written), and the recovered-token kernel
    # reads q_i, p_i and 1/E for every draft position; the bonus is sampled elsewhere (not counted).
    softmax = B * (K + 1) * V * (e + 4)
    vllm_v1 = io + softmax + B * V * 4 * 3 + full * (4 + e + 4) + gathers
    designs = [
        Design("minimum", minimum),
        Design("specdecode kernel (<=)", ours),
        Design("vLLM MRV1: softmax + per-position recovered", vllm_v1, B * (K + 1) * V * 4 + B * V * 8),
        Design("vLLM v0 / torch: per-position residual + multinomial", per_position, full * 4),
    ]
    if B == 1:
        # HF _speculative_sampling: softmax of both logit tensors materialised, one residual row.
        # Residual row: p_j, q_j read, written, summed, normalised (read + write), multinomial.
        one_row = residual_rows * 7 * V * 4 + (1 - residual_rows) * V * 4
        hf = io + B * (2 * K + 1) * V * (e + 4) + gathers + one_row
        designs.append(Design("HF: softmax of both + one residual row", hf, (2 * K + 1) * V * 4))
    return designs


def prune_designs(num_prompts: int, group: int, elem: int, keep_rate: float) -> list[Design]:
    N = num_prompts * group
    keep = int(round(keep_rate * group)) * num_prompts
    meta = 3 * num_prompts * 8
    minimum = N * elem + N + meta  # rewards in, bool mask out
    # Ours: the group is re-read in each of its 34 passes, but a group of <= 1024 fits in L1/L2,
    # so DRAM sees it once.
    ours = minimum + num_prompts * 8  # + the on-device cumsum of group sizes
    # Peers' usual PyTorch: view(P, n).topk(k) (values + int64 indices written), then a scatter
    # into a zeroed mask (mask written twice, indices read).
    topk = N * elem + keep * (elem + 8) + 2 * N + keep * 8
    return [
        Design("minimum", minimum),
        Design("specdecode kernel", ours),
        Design("torch: topk + scatter (uniform groups only)", topk, keep * (elem + 8)),
    ]


def compaction_designs(row_bytes: int, num_rows: int, kept: list[int]) -> list[Design]:
    moved = sum(1 for i, k in enumerate(kept) if k != i)
    minimum = 2 * moved * row_bytes  # each row that moves is read once and written once
    ours = minimum + len(kept) * 8
    index_select = 4 * len(kept) * row_bytes + len(kept) * 8  # gather into a temp, copy back
    out_of_place = 2 * len(kept) * row_bytes  # a second cache: every survivor copied
    return [
        Design("minimum (rows that move, read + write)", minimum),
        Design("specdecode kernel (in place)", ours),
        Design("index_select + copy_ (temp of N' rows)", index_select, len(kept) * row_bytes),
        Design("copy survivors into a second cache", out_of_place, len(kept) * row_bytes),
    ]


def _kept_set(num_rows: int, keep_rate: float, seed: int = 0) -> list[int]:
    import random

    rng = random.Random(seed)
    return sorted(rng.sample(range(num_rows), int(num_rows * keep_rate)))


# Realistic sizes, from peers_rejection.md §6 and the Speculative Rejection paper.
REJECTION_SIZES = [  # (B, K, V, element bytes, label)
    (1, 4, 32000, 4, "Llama-2, fp32"),
    (16, 5, 32000, 4, "FlashInfer bench, fp32"),
    (64, 4, 128256, 2, "Llama-3, bf16"),
    (64, 16, 128256, 4, "vLLM PR #45369, fp32"),
    (128, 4, 151936, 4, "vLLM PR #53090 (Qwen), fp32"),
]
PRUNE_SIZES = [
    (1, 1000, 4, "seed: N=1000, 1 prompt"),
    (8, 128, 4, "8 prompts x 128"),
    (64, 256, 2, "64 prompts x 256, bf16"),
]
# Llama-3-8B KV cache: 32 layers x (K, V) x 8 KV heads x S x 128 x bf16 per candidate row.
COMPACTION_SIZES = [
    (64, 512, 0.5, "Llama-3-8B, 64 cand., S=512, keep 50%"),
    (64, 512, 0.1, "Llama-3-8B, 64 cand., S=512, keep 10%"),
    (256, 256, 0.3, "Llama-3-8B, 256 cand., S=256, keep 30%"),
]


def bytes_tables(acceptance: float = 0.7) -> dict[str, list[list]]:
    """Per op, one row per (size, design): MB moved, ratio to the minimum, H100 floor in us."""
    tables = {"rejection_sample": [], "topk_prune": [], "compact_kv_cache_": []}

    def add(op, label, designs):
        base = designs[0].bytes
        for d in designs:
            tables[op].append(
                [
                    label,
                    d.name,
                    f"{d.bytes / 1e6:.3f}",
                    f"{d.bytes / base:.2f}x",
                    f"{d.bytes / H100_BYTES_PER_S * 1e6:.2f}",
                    f"{d.temp_bytes / 2**20:.1f}" if d.temp_bytes else "",
                ]
            )

    for B, K, V, e, label in REJECTION_SIZES:
        add("rejection_sample", f"B={B} K={K} V={V} ({label})", rejection_designs(B, K, V, e, acceptance))
    for P, n, e, label in PRUNE_SIZES:
        add("topk_prune", label, prune_designs(P, n, e, keep_rate=0.5))
    for rows, seq, keep_rate, label in COMPACTION_SIZES:
        row_bytes = 32 * 2 * 8 * seq * 128 * 2
        add("compact_kv_cache_", label, compaction_designs(row_bytes, rows, _kept_set(rows, keep_rate)))
    return tables


BYTES_HEADER = ["size", "design", "MB moved", "vs min", "H100 floor us", "temp MiB"]

# ----------------------------------------------------------------------------- entry points


def run(quick: bool = False, targets=None, name_filter: str | None = None, acceptance: float = 0.7) -> dict:
    """Compile and model; print and return the tables (``{"compile": rows, "bytes": {...}}``)."""
    from bench.plots import print_table

    targets = list(targets or (("sm_90",) if quick else ALL_TARGETS))
    print(
        f"AOT compile for {', '.join(targets)} (Triton's compiler, no GPU; a subprocess with TRITON_INTERPRET unset)",
        flush=True,
    )
    rows = compile_in_subprocess(targets, name_filter)
    compile_rows = compile_table(rows)
    print_table(COMPILE_HEADER, compile_rows)
    tables = bytes_tables(acceptance)
    print(
        f"\nMODEL, not a measurement: DRAM bytes per call and the H100 floor at {H100_BYTES_PER_S / 1e12:.2f} TB/s "
        f"(rejection: i.i.d. acceptance {acceptance} per draft token; gathers = 32-B sectors)"
    )
    for op, table in tables.items():
        print(
            f"\n{op}"
            + ("  (well under 1 MB per call: launch latency, not bandwidth, bounds it)" if op == "topk_prune" else "")
        )
        print_table(BYTES_HEADER, table)
    return {"compile": rows, "compile_table": compile_rows, "bytes": tables, "acceptance": acceptance}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sm_90 only")
    parser.add_argument("--targets", default=None, help="comma-separated, of " + ", ".join(ALL_TARGETS))
    parser.add_argument("--only", default=None, help="only AOT cases whose name contains this")
    args = parser.parse_args(argv)
    targets = args.targets.split(",") if args.targets else None
    run(args.quick, targets, args.only)


if __name__ == "__main__":
    main()
