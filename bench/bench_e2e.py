"""End to end on the shipped pair: plain vs speculative decoding, tokens/s, on CPU.

    python -m bench.bench_e2e                 # batch sizes 1, 2, 4, 8, 16; K = 1..8; greedy and T=0.8 (~6 min)
    python -m bench.bench_e2e --quick         # batch 1 and 4, K = 4, 6, greedy only (~30 s)

One torch thread by default (``--threads``), see below.

Prints first the forward-pass costs of the two models (why speculation can pay here: the target,
in bf16 on AMX, is bound by streaming its weights, so 6 or 9 tokens cost about what 1 does; the
draft is a few small launches), then one table per temperature with, for
each batch size, the plain-decoding row and one row per K: tokens/s (median over repeats,
plain and speculative run alternately so both see the same machine load), speedup, mean
accepted length (tokens emitted per row-step), acceptance rate of draft tokens, and the
accepted-length histogram (row-steps that accepted 0..K drafts, summed over repeats).
Greedy rows also count the rows whose speculative text equals plain greedy decoding's. The
sampler is exact, but the target's bf16 matmuls are not batch-shape invariant: oneDNN gives a row
the same result for every M <= 32 rows per call on the machine measured and changes its blocking
above, so when a verify pass has B*(K+1) > 32 rows a near-tie in the target's logits can fall the
other way than in a one-token step, and the row's text diverges from there on.

Rows: ``run(...)`` returns them and saves ``bench/out/e2e.json``.
"""

from __future__ import annotations

import argparse
import statistics

import torch

import specdecode as sd
from bench import plots
from bench.prompts import PROMPTS, weights_available
from bench.report import OUT_DIR, Log, Section, figure_path, of_kind, save_rows
from bench.timing import median_ms, torch_threads

TOPIC = "e2e"


@torch.no_grad()
def forward_costs(target, draft, reps: int) -> list[tuple[str, float]]:
    rows = []
    for name, model in (("target", target), ("draft", draft)):
        cache = model.new_cache(1, 512)
        model(torch.randint(0, 256, (1, 200)), cache=cache)
        for T in (1, 6, 9):
            tokens = torch.randint(0, 256, (1, T))
            rows.append(
                (
                    f"{name} ({model.num_parameters() / 1e6:.2f}M params, {str(model.dtype)[6:]}), batch 1, "
                    f"{T} token(s) at pos 200",
                    median_ms(lambda: model(tokens, torch.tensor([200]), cache), reps),
                )
            )
    return rows


def decode_rows(target, draft, batch_sizes, ks, temperatures, max_new_tokens: int, repeats: int, log: Log = print):
    """``kind="decode"`` rows: per temperature and batch size, plain decoding (``k = 0``) and one row
    per K, with ``tokens_per_s`` (median over ``repeats``), ``speedup``, ``mean_accepted_length``,
    ``acceptance``, ``hist`` (row-steps that accepted 0..K drafts, summed over repeats) and, greedy
    only, ``same_text`` (rows equal to plain decoding's, of ``rows_compared``)."""
    rows = []
    for temperature in temperatures:
        for batch in batch_sizes:
            log(f"  e2e T={temperature} batch {batch} ...", flush=True)
            rows += _batch_rows(target, draft, batch, ks, temperature, max_new_tokens, repeats)
    return rows


def _batch_rows(target, draft, batch: int, ks, temperature: float, max_new_tokens: int, repeats: int) -> list[dict]:
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    plain_rates, spec_rates = [], {k: [] for k in ks}
    hists = {k: None for k in ks}
    same = {k: 0 for k in ks}  # rows whose greedy text equals plain decoding's, over repeats
    for rep in range(repeats + 1):  # rep 0 warms up
        gen = torch.Generator().manual_seed(rep)
        plain = sd.generate(target, prompts, max_new_tokens, temperature=temperature, generator=gen, eos_id=None)
        if rep:
            plain_rates.append(plain.stats["tokens_per_second"])
        for k in ks:
            spec = sd.speculative_generate(
                target,
                draft,
                prompts,
                max_new_tokens,
                num_draft_tokens=k,
                temperature=temperature,
                generator=gen,
                eos_id=None,
            )
            if not rep:
                continue
            spec_rates[k].append(spec.stats["tokens_per_second"])
            if temperature == 0:
                same[k] += int((spec.tokens == plain.tokens).all(1).sum())
            hist = spec.stats["accepted_hist"]
            hists[k] = hist if hists[k] is None else [a + b for a, b in zip(hists[k], hist)]
    common = {"kind": "decode", "temperature": temperature, "max_new_tokens": max_new_tokens, "batch": batch}
    plain_rate = statistics.median(plain_rates)
    rows = [{**common, "k": 0, "tokens_per_s": plain_rate, "speedup": 1.0, "mean_accepted_length": 1.0}]
    for k in ks:
        rate, hist = statistics.median(spec_rates[k]), hists[k]
        row_steps = sum(hist)
        rows.append(
            {
                **common,
                "k": k,
                "tokens_per_s": rate,
                "speedup": rate / plain_rate,
                "mean_accepted_length": sum((a + 1) * c for a, c in enumerate(hist)) / row_steps,
                "acceptance": sum(a * c for a, c in enumerate(hist)) / (k * row_steps),
                "hist": list(hist),
                "same_text": same[k] if temperature == 0 else None,
                "rows_compared": batch * repeats,
            }
        )
    return rows


def settings(quick: bool) -> dict:
    """``run``'s arguments for the full run (the README's numbers, ~6 min) or ``--quick`` (~30 s)."""
    if quick:
        return {"batch_sizes": [1, 4], "ks": [4, 6], "temperatures": [0.0], "repeats": 2, "forward_reps": 30}
    return {
        "batch_sizes": [1, 2, 4, 8, 16],
        "ks": list(range(1, 9)),
        "temperatures": [0.0, 0.8],
        "repeats": 3,
        "forward_reps": 100,
    }


def run(
    batch_sizes=(1, 2, 4, 8, 16),
    ks=tuple(range(1, 9)),
    temperatures=(0.0, 0.8),
    max_new_tokens: int = 128,
    repeats: int = 3,
    forward_reps: int = 100,
    threads: int | None = 1,
    target_dtype: torch.dtype | None = None,
    weights_dir: str | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """A ``kind="setup"`` row (threads, the pair's ``training_info``), ``kind="forward"`` rows
    (``name``, ``ms``: ``forward_costs``) and the ``kind="decode"`` rows of ``decode_rows``; no rows
    without weights. ``target_dtype`` None: ``sd.default_dtypes``. Saved as ``<out_dir>/e2e.json``."""
    if not weights_available(weights_dir):
        log(f"  weights not found in {weights_dir or 'the shipped directory'}: e2e skipped", flush=True)
        return save_rows(TOPIC, [], out_dir)
    with torch_threads(threads):
        dtype = None if target_dtype is None else (target_dtype, torch.float32)
        target, draft = sd.load_pretrained(dtype=dtype, weights_dir=weights_dir)
        rows = [{"kind": "setup", "threads": torch.get_num_threads(), "training_info": target.training_info}]
        rows += [{"kind": "forward", "name": name, "ms": ms} for name, ms in forward_costs(target, draft, forward_reps)]
        rows += decode_rows(target, draft, batch_sizes, ks, temperatures, max_new_tokens, repeats, log)
    return save_rows(TOPIC, rows, out_dir)


DECODE_HEADER = [
    "batch",
    "method",
    "tokens/s",
    "speedup",
    "mean accepted length",
    "acceptance",
    "accepted-length histogram",
    "rows with plain's text",
]


def decode_table(rows: list[dict]) -> list[list]:
    table = []
    for r in rows:
        if r["k"] == 0:
            table.append([r["batch"], "plain", f"{r['tokens_per_s']:.0f}", "1.00x", "1", "", "", ""])
            continue
        same = "n/a" if r["same_text"] is None else f"{r['same_text']}/{r['rows_compared']}"
        table.append(
            [
                r["batch"],
                f"speculative K={r['k']}",
                f"{r['tokens_per_s']:.0f}",
                f"{r['speedup']:.2f}x",
                f"{r['mean_accepted_length']:.2f}",
                f"{r['acceptance']:.2f}",
                str(r["hist"]),
                same,
            ]
        )
    return table


def setup_text(setup: dict) -> str:
    info = setup["training_info"]
    return (
        f"{setup['threads']} torch thread(s); shipped pair trained on {info.get('files')} stdlib files "
        f"({info.get('train_bytes')} bytes): target val loss {info.get('target_val_loss')}, draft "
        f"{info.get('draft_val_loss')} nats/byte; teacher-forced acceptance {info.get('acceptance_sampled')} (T=1), "
        f"{info.get('acceptance_greedy')} (greedy)."
    )


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    s = Section(
        "Speculative decoding end to end (CPU, shipped pair)",
        "Tokens/s of `sd.speculative_generate` vs `sd.generate` on the shipped (target, draft) pair for "
        "several K and batch sizes, mean accepted length, acceptance rate and the accepted-length "
        "histogram (from `bench/bench_e2e.py`).",
    )
    if not rows:
        s.text(
            "Shipped weights (specdecode/decoder/weights/*.pt) not found: section skipped "
            "(train them with `python -m specdecode.decoder.train`)."
        )
        return s
    for setup in of_kind(rows, "setup"):
        s.text(setup_text(setup))
    s.table(["forward pass", "median ms"], [[r["name"], f"{r['ms']:.2f}"] for r in of_kind(rows, "forward")])
    decoded = of_kind(rows, "decode")
    for temperature, max_new in dict.fromkeys((r["temperature"], r["max_new_tokens"]) for r in decoded):
        mode = "greedy" if temperature == 0 else f"sampling, T={temperature}"
        chosen = [r for r in decoded if (r["temperature"], r["max_new_tokens"]) == (temperature, max_new)]
        s.table(DECODE_HEADER, decode_table(chosen), f"**{mode}, {max_new} new tokens per row**")
    s.image(plots.plot_e2e_throughput(decoded, figure_path(figures_dir, "e2e_tokens_per_s.png")))
    smallest = min((r["batch"] for r in decoded), default=None)
    hists = {
        f"K={r['k']}, batch {r['batch']}, " + ("greedy" if r["temperature"] == 0 else f"T={r['temperature']:g}"): r[
            "hist"
        ]
        for r in decoded
        if r["k"] and r["batch"] == smallest
    }
    s.image(plots.plot_acceptance_histogram(hists, figure_path(figures_dir, "e2e_acceptance_histogram.png")))
    return s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3, 2 with --quick)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (0: torch's default). One by default: on a shared 2-core machine "
        "two OpenMP threads stall whenever another process takes a core, which makes "
        "timings meaningless (forward passes measured 30-70x slower)",
    )
    parser.add_argument(
        "--target-dtype",
        choices=["auto", "bfloat16", "float32"],
        default="auto",
        help="the target's dtype (auto: sd.default_dtypes, bf16 where bf16 matmuls are fast); "
        "the draft always runs in float32",
    )
    parser.add_argument("--weights-dir", default=None, help="a pair trained with --out (default: the shipped pair)")
    args = parser.parse_args(argv)
    kwargs = settings(args.quick) | ({"repeats": args.repeats} if args.repeats else {})
    rows = run(
        **kwargs,
        max_new_tokens=args.max_new_tokens,
        threads=args.threads,
        target_dtype=None if args.target_dtype == "auto" else getattr(torch, args.target_dtype),
        weights_dir=args.weights_dir,
    )
    print(section(rows).terminal())


if __name__ == "__main__":
    main()
