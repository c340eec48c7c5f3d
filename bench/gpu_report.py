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
for the minimum the op must move, for this package's kernel, and for the designs of its peers
(vLLM's v0 and v1 rejection samplers, HF transformers' ``_speculative_sampling``, and plain
PyTorch ``topk`` / ``index_select``), each turned into an H100 SXM time floor at
3.35 TB/s (bytes / bandwidth; launch latency, ~2-5 us, is not included). Gathers count one
32-byte sector each, the DRAM access granularity.

Rows: ``run(...)`` returns them and saves ``bench/out/gpu_report.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from bench.report import OUT_DIR, Log, Section, of_kind, save_rows
from specdecode.kernels._aot import compile_in_subprocess

TOPIC = "gpu_report"

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


def ragged_designs(batch: int, num_drafts: int, vocab: int, acceptance: float) -> list[Design]:
    """Expected DRAM bytes of one ragged verifier call *from logits*, in vLLM's layout: ``B``
    requests of ``K`` drafts, ``[N + B, V]`` bf16 target logits (a bonus row per request, as MRV2
    passes them; vLLM V1 samples the bonus elsewhere and passes ``[N, V]``), bf16 draft logits for
    MRV2 and this kernel, float32 draft probabilities for MRV1 (what V1 keeps), all requests sampled.

    - this kernel (``kernels/rejection_sample_ragged.py``), an upper bound: a softmax-statistics
      pass over the target and draft rows of every *checked* position (the chain stops at the
      first rejection: later rows are never read), then on the row it samples from one statistics
      pass and the sampler's two passes (sum, then a scan that stops at the hit) over target and
      draft rows; the rejected row's second read is counted although it is often served from L2;
    - vLLM MRV2 (``vllm/v1/worker/gpu/spec_decode/``): per-block statistics of every draft
      position's target and draft rows, written and reduced (small), then one Gumbel-max pass over
      the resampled row (the rejected position's target and draft rows, or the bonus row);
    - vLLM MRV1 (``vllm/v1/sample/rejection_sampler.py``): the target softmax materialised in
      float32 for every draft position, one Exp(1) row per request (written, then read per
      position), and the recovered-token pass reading ``q``, ``p`` and the noise at every position.
    """
    B, K, V = batch, num_drafts, vocab
    target, draft_logit, draft_prob = 2, 2, 4  # element bytes: bf16 logits, float32 probabilities
    dist = accepted_distribution(K, acceptance)
    checked = sum(p * min(j + 1, K) for j, p in enumerate(dist))  # rows whose statistics are needed
    residual = 1 - dist[-1]
    io = B * K * 8 + B * (K + 2) * 8 + B * 8  # ids, cumulative counts, temperatures in; tokens out
    row_pair = V * (target + draft_logit)  # one target row and one draft row
    minimum = io + B * (checked * row_pair + residual * row_pair + (1 - residual) * V * target)
    ours = io + B * (checked * row_pair + residual * 3 * row_pair + (1 - residual) * 3 * V * target)
    stats = B * K * V * (target + draft_logit) + 2 * 2 * B * K * -(-V // 8192) * 4
    mrv2 = io + stats + B * (residual * row_pair + (1 - residual) * V * target) + B * K * SECTOR
    full = B * K * V
    mrv1 = io + full * (target + 4) + B * V * 4 * 2 + full * (4 + draft_prob + 4) + B * checked * 2 * SECTOR
    return [
        Design("minimum (checked rows' statistics + the sampled row)", minimum),
        Design("specdecode ragged kernel, from logits (<=)", ours),
        Design("vLLM MRV2: statistics of every position + Gumbel-max resample", mrv2),
        Design("vLLM MRV1: softmax materialised + per-position recovered", mrv1, full * 4 + B * V * 4),
    ]


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


# Realistic sizes: those of the peers' own benchmarks and pull requests (the labels say which), and
# of Fast Best-of-N Decoding via Speculative Rejection (arXiv 2410.20290).
REJECTION_SIZES = [  # (B, K, V, element bytes, label)
    (1, 4, 32000, 4, "Llama-2, fp32"),
    (16, 5, 32000, 4, "FlashInfer bench, fp32"),
    (64, 4, 128256, 2, "Llama-3, bf16"),
    (64, 16, 128256, 4, "vLLM PR #45369, fp32"),
    (128, 4, 151936, 4, "vLLM PR #53090 (Qwen), fp32"),
]
RAGGED_SIZES = [  # (B, K, V, label): bf16 logits in vLLM's layout
    (1, 4, 128256, "Llama-3, 1 request"),
    (64, 4, 128256, "Llama-3"),
    (256, 4, 151936, "Qwen"),
]
PRUNE_SIZES = [
    (1, 1000, 4, "1 prompt x 1000 (Best-of-1000)"),
    (8, 128, 4, "8 prompts x 128"),
    (64, 256, 2, "64 prompts x 256, bf16"),
]
# Llama-3-8B KV cache: 32 layers x (K, V) x 8 KV heads x S x 128 x bf16 per candidate row.
COMPACTION_SIZES = [
    (64, 512, 0.5, "Llama-3-8B, 64 cand., S=512, keep 50%"),
    (64, 512, 0.1, "Llama-3-8B, 64 cand., S=512, keep 10%"),
    (256, 256, 0.3, "Llama-3-8B, 256 cand., S=256, keep 30%"),
]


def bytes_rows(acceptance: float = 0.7) -> list[dict]:
    """One row per (op, size, design): ``kind="bytes"``, ``op``, ``size``, ``design``, ``bytes``,
    ``min_bytes`` (the op's minimum at that size), ``temp_bytes``."""
    rows = []

    def add(op: str, size: str, designs: list[Design]) -> None:
        rows.extend(
            {
                "kind": "bytes",
                "op": op,
                "size": size,
                "design": d.name,
                "bytes": d.bytes,
                "min_bytes": designs[0].bytes,
                "temp_bytes": d.temp_bytes,
            }
            for d in designs
        )

    for B, K, V, e, label in REJECTION_SIZES:
        add("rejection_sample", f"B={B} K={K} V={V} ({label})", rejection_designs(B, K, V, e, acceptance))
    for B, K, V, label in RAGGED_SIZES:
        add("rejection_sample_ragged", f"B={B} K={K} V={V} ({label})", ragged_designs(B, K, V, acceptance))
    for P, n, e, label in PRUNE_SIZES:
        add("topk_prune", label, prune_designs(P, n, e, keep_rate=0.5))
    for num_rows, seq, keep_rate, label in COMPACTION_SIZES:
        row_bytes = 32 * 2 * 8 * seq * 128 * 2
        add("compact_kv_cache_", label, compaction_designs(row_bytes, num_rows, _kept_set(num_rows, keep_rate)))
    return rows


BYTES_HEADER = ["size", "design", "MB moved", "vs min", "H100 floor us", "temp MiB"]


def bytes_table(rows: list[dict]) -> list[list[str]]:
    """MB moved, ratio to the minimum, H100 floor in us and transient MiB, one line per row."""
    return [
        [
            r["size"],
            r["design"],
            f"{r['bytes'] / 1e6:.3f}",
            f"{r['bytes'] / r['min_bytes']:.2f}x",
            f"{r['bytes'] / H100_BYTES_PER_S * 1e6:.2f}",
            f"{r['temp_bytes'] / 2**20:.1f}" if r["temp_bytes"] else "",
        ]
        for r in rows
    ]


# ----------------------------------------------------------------------------- entry points


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full report or ``--quick`` (one target)."""
    return {"targets": ("sm_90",) if quick else ALL_TARGETS}


def run(
    targets=ALL_TARGETS,
    name_filter: str | None = None,
    acceptance: float = 0.7,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """Compile and model. Rows: one ``kind="compile"`` row per (AOT case, target) as
    ``compile_in_subprocess`` returns it, then the ``kind="bytes"`` rows of ``bytes_rows``, each
    with the ``acceptance`` it assumes. Saved as ``<out_dir>/gpu_report.json``."""
    log(
        f"  AOT compile for {', '.join(targets)} (Triton's compiler, no GPU; a subprocess with TRITON_INTERPRET unset)",
        flush=True,
    )
    rows = [{"kind": "compile", **r} for r in compile_in_subprocess(list(targets), name_filter)]
    rows += [{**r, "acceptance": acceptance} for r in bytes_rows(acceptance)]
    return save_rows(TOPIC, rows, out_dir)


def compile_summary(compile_rows: list[dict]) -> str:
    ok = [r for r in compile_rows if r["ok"]]
    spilling = [f"{r['name']}@{r['target']}" for r in ok if r["spills"]]
    narrow = [f"{r['name']}@{r['target']}" for r in ok if r["widest_load"] < 16]
    summary = (
        f"{len(ok)} of {len(compile_rows)} (case, target) compiles succeeded; spills: "
        f"{', '.join(spilling) if spilling else 'none'}. Without any 16-byte load: "
        f"{', '.join(narrow) if narrow else 'none'}."
    )
    if len(ok) < len(compile_rows) or spilling:
        summary += f" **{len(compile_rows) - len(ok)} case(s) failed to compile, {len(spilling)} spilled.**"
    return summary


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    compiled, modelled = of_kind(rows, "compile"), of_kind(rows, "bytes")
    targets = list(dict.fromkeys(r["target"] for r in compiled))
    acceptance = modelled[0]["acceptance"] if modelled else None
    s = Section(
        "GPU readiness report (no GPU: compiler output and a bytes MODEL)",
        f"Every Triton launch in the kernels' `aot_cases()` compiled ahead of time for {', '.join(targets)}: "
        "registers, spills, shared memory, the widths of its global loads (16 B = vectorised streaming; 8/4/2/1 B "
        "are metadata, gathers, or unvectorised streams). Then a model, **not a measurement**: DRAM bytes "
        "per call for the minimum, this package's kernel and the peers' designs, and the H100 time floor at "
        f"{H100_BYTES_PER_S / 1e12:.2f} TB/s (launch latency not included).",
    )
    s.text(
        compile_summary(compiled) + " (Narrow-only cases are expected for `topk_prune`, which reads one reward "
        "per lane and is launch-bound, and for the BLOCK=128 compaction tile, whose 128 lanes cover head_dim-sized "
        "runs; any other streaming kernel without 16-byte loads reads its rows with narrow loads.)"
    )
    s.table(COMPILE_HEADER, compile_table(compiled), "**Compiled kernels**")
    s.text(
        f"Bytes model assumptions: per-draft-token acceptance {acceptance} (i.i.d.), so a row samples a "
        "residual with probability 1 - a^K and the bonus row otherwise; a gather costs one 32-byte sector; "
        "`specdecode kernel (<=)` counts both passes over the sampled row (sum, then a scan that stops at the hit "
        "and may be served from L2), an upper bound; the peers' designs are those of vLLM's rejection samplers "
        "(the v0 PyTorch one and the v1 Triton one) and HF transformers' `_speculative_sampling`, with "
        "element-wise ops fused (their real traffic is at least this). Compaction rows are a Llama-3-8B KV cache "
        "row: 32 layers x (K, V) x 8 heads x S x 128 x bf16."
    )
    for op in dict.fromkeys(r["op"] for r in modelled):
        caption = f"**{op}: bytes moved per call (model)**"
        if op == "topk_prune":
            caption += " (well under 1 MB per call: launch latency, not bandwidth, bounds it)"
        s.table(BYTES_HEADER, bytes_table([r for r in modelled if r["op"] == op]), caption)
    return s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="sm_90 only")
    parser.add_argument("--targets", default=None, help="comma-separated, of " + ", ".join(ALL_TARGETS))
    parser.add_argument("--only", default=None, help="only AOT cases whose name contains this")
    args = parser.parse_args(argv)
    targets = args.targets.split(",") if args.targets else settings(args.quick)["targets"]
    print(section(run(targets, args.only)).terminal())


if __name__ == "__main__":
    main()
