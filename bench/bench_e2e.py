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
"""

from __future__ import annotations

import argparse
import statistics

import torch

import specdecode as sd
from bench.prompts import PROMPTS
from bench.timing import median_ms


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


def run(target, draft, batch_sizes, ks, temperatures, max_new_tokens, repeats):
    for temperature in temperatures:
        mode = "greedy" if temperature == 0 else f"sampling, T={temperature}"
        print(f"\n## {mode}, {max_new_tokens} new tokens per row")
        print(
            "| batch | method | tokens/s | speedup | mean accepted length | acceptance "
            "| accepted-length histogram | rows with plain's text |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for batch in batch_sizes:
            prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
            plain_rates, spec_rates = [], {k: [] for k in ks}
            spec_stats = {k: None for k in ks}
            same = {k: 0 for k in ks}  # rows whose greedy text equals plain decoding's, over repeats
            for rep in range(repeats + 1):  # rep 0 warms up
                gen = torch.Generator().manual_seed(rep)
                plain = sd.generate(
                    target, prompts, max_new_tokens, temperature=temperature, generator=gen, eos_id=None
                )
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
                    old = spec_stats[k]
                    spec_stats[k] = (
                        spec.stats
                        if old is None
                        else {
                            **spec.stats,
                            "accepted_hist": [a + b for a, b in zip(old["accepted_hist"], spec.stats["accepted_hist"])],
                        }
                    )
            plain_rate = statistics.median(plain_rates)
            print(f"| {batch} | plain | {plain_rate:.0f} | 1.00x | 1 | | | |")
            for k in ks:
                rate, st = statistics.median(spec_rates[k]), spec_stats[k]
                hist = st["accepted_hist"]
                row_steps = sum(hist)
                mean_len = sum((a + 1) * c for a, c in enumerate(hist)) / row_steps
                acceptance = sum(a * c for a, c in enumerate(hist)) / (k * row_steps)
                same_text = f"{same[k]}/{batch * repeats}" if temperature == 0 else "n/a"
                print(
                    f"| {batch} | speculative K={k} | {rate:.0f} | {rate / plain_rate:.2f}x | {mean_len:.2f} | "
                    f"{acceptance:.2f} | {hist} | {same_text} |",
                    flush=True,
                )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
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
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = None if args.target_dtype == "auto" else (getattr(torch, args.target_dtype), torch.float32)
    target, draft = sd.load_pretrained(dtype=dtype, weights_dir=args.weights_dir)
    info = target.training_info
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; shipped pair trained on {info.get('files')} "
        f"stdlib files ({info.get('train_bytes')} bytes): target val loss {info.get('target_val_loss')}, draft "
        f"{info.get('draft_val_loss')} nats/byte; teacher-forced acceptance {info.get('acceptance_sampled')} (T=1), "
        f"{info.get('acceptance_greedy')} (greedy)"
    )
    print("\n| forward pass | median ms |\n|---|---|")
    for name, ms in forward_costs(target, draft, reps=30 if args.quick else 100):
        print(f"| {name} | {ms:.2f} |")
    if args.quick:
        run(target, draft, [1, 4], [4, 6], [0.0], args.max_new_tokens, max(1, args.repeats - 1))
    else:
        run(target, draft, [1, 2, 4, 8, 16], list(range(1, 9)), [0.0, 0.8], args.max_new_tokens, args.repeats)


if __name__ == "__main__":
    main()
