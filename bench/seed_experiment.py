"""Losslessness: speculative sampling reproduces the target distribution exactly.

    python -m bench.seed_experiment                # 1,000,000 samples per pair
    python -m bench.seed_experiment --quick        # 200,000 samples per pair
    python -m bench.seed_experiment --samples N

1. Sampling. For four fixed (draft p, target q) pairs, draw N first tokens speculatively with
   ``sd.rejection_sample`` (draft x ~ p, accept with min(1, q/p), else a residual sample) and
   compare the empirical distribution with q, as the published article "Does speculative sampling
   lose LLM inference accuracy?" does with 1,000,000 samples: the standard deviation of
   (empirical - q) over the vocabulary (the article reports 9.694e-5 for Llama-3-8B + EAGLE), next
   to what pure sampling noise gives, sqrt(mean q(1-q) / N); the same over the 10 most likely
   tokens (over a 128k vocabulary the whole-vocabulary noise at N = 1M is below 2.8e-6, so the
   article's 9.694e-5 is the noise level of its few plotted top tokens, not of the whole
   vocabulary); and a chi-square
   goodness-of-fit p-value (bins with expected count < 5 merged). Pairs: a close draft
   (V = 1000), an unrelated draft (V = 1000), a peaked target against a flat draft (V = 4096, most
   mass via the residual), and the shipped
   (target, draft) models' next-token distributions after a fixed code prefix (``PROMPT``, V = 259).
2. Greedy. ``sd.generate`` and ``sd.speculative_generate`` at temperature 0 on the shipped pair:
   the texts must be identical; printed side by side.

Rows: ``run(...)`` returns them and saves ``bench/out/seed_experiment.json``.
"""

from __future__ import annotations

import argparse
import math

import torch

import specdecode as sd
from bench import plots
from bench.prompts import weights_available
from bench.report import OUT_DIR, Log, Section, figure_path, of_kind, save_rows
from specdecode.decoder.tokenizer import tokenizer
from specdecode.stats import chi2_sf, chi_square

TOPIC = "seed_experiment"
ARTICLE_REPORTED_STD = 9.694e-5
TOP = 10  # the article's figures show a handful of top tokens; its std is at their noise level
# A prefix where the next byte is genuinely uncertain (entropy ~2.3 nats), as for the article's prompts.
PROMPT = "class Queue:\n    def __init__(self, maxsize=0):\n        self."
GREEDY_PROMPTS = [
    "def _check_arg(name, value):\n    if not isinstance(value, str):\n",
    "class Queue:\n    def __init__(self, maxsize=0):\n",
]


@torch.no_grad()
def model_pair(prompt: str = PROMPT, weights_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(draft p, target q): the shipped models' next-token distributions after ``prompt`` (T = 1)."""
    target, draft = sd.load_pretrained(weights_dir=weights_dir)
    ids = torch.tensor([tokenizer.encode(prompt)])
    q = torch.softmax(target(ids)[0, -1].float(), -1)
    p = torch.softmax(draft(ids)[0, -1].float(), -1)
    return p, q


def synthetic_pairs() -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(2024)
    logits = torch.randn(1000, generator=gen) * 2
    close = (
        "close draft (draft logits = target + N(0, 0.5^2)), V=1000",
        torch.softmax(logits + torch.randn(1000, generator=gen) * 0.5, -1),
        torch.softmax(logits, -1),
    )
    unrelated = (
        "unrelated draft (independent logits), V=1000",
        torch.softmax(torch.randn(1000, generator=gen) * 2, -1),
        torch.softmax(torch.randn(1000, generator=gen) * 2, -1),
    )
    peaked_logits = torch.randn(4096, generator=gen) * 4
    peaked = (
        "peaked target vs flat draft (mostly residual samples), V=4096",
        torch.softmax(torch.randn(4096, generator=gen) * 0.3, -1),
        torch.softmax(peaked_logits, -1),
    )
    return [close, unrelated, peaked]


def pairs(weights_dir: str | None = None) -> tuple[list[tuple[str, torch.Tensor, torch.Tensor]], str | None]:
    """The four (name, p, q) pairs, and a note when the model pair is missing."""
    out = synthetic_pairs()
    if not weights_available(weights_dir):
        return (
            out,
            f"no (target, draft) weights in {weights_dir or 'specdecode/decoder/weights/'}: the model pair is skipped",
        )
    p, q = model_pair(weights_dir=weights_dir)
    out.append((f"shipped pair, next byte after ...{PROMPT[-14:]!r}, V={q.numel()}", p, q))
    return out, None


# ----------------------------------------------------------------------------- the experiment


def speculative_first_tokens(
    p: torch.Tensor, q: torch.Tensor, num_samples: int, seed: int
) -> tuple[torch.Tensor, float]:
    """Counts [V] of N speculatively sampled first tokens, and the fraction of drafts accepted.
    Every sample is its own batch row (K = 1) sharing one p and q through stride-0 views."""
    vocab = q.numel()
    gen = torch.Generator().manual_seed(seed)
    draft_ids = torch.multinomial(p, num_samples, replacement=True, generator=gen)[:, None]
    draft_probs = p[None, None].expand(num_samples, 1, vocab)
    target_probs = q[None, None].expand(num_samples, 2, vocab)  # row 1: the bonus (not used here)
    out = sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seed + 1)
    counts = torch.bincount(out.token_ids[:, 0], minlength=vocab)
    return counts, float(out.num_accepted.float().mean())


def run_pair(name: str, p: torch.Tensor, q: torch.Tensor, num_samples: int, seed: int) -> dict:
    counts, accept = speculative_first_tokens(p, q, num_samples, seed)
    q64 = q.double() / q.double().sum()
    empirical = counts.double() / num_samples
    stat, df = chi_square(counts, q64)
    top = q64.topk(min(TOP, q64.numel())).indices
    return {
        "name": name,
        "vocab": q.numel(),
        "num_samples": num_samples,
        "accept_rate": accept,
        "tv_pq": float((p.double() - q64).abs().sum() / 2),
        "std": float((empirical - q64).std()),
        "noise": math.sqrt(float((q64 * (1 - q64)).mean()) / num_samples),
        "std_top": float((empirical - q64)[top].pow(2).mean().sqrt()),
        "noise_top": math.sqrt(float((q64[top] * (1 - q64[top])).mean()) / num_samples),
        "chi2": stat,
        "df": df,
        "p_value": chi2_sf(stat, df),
        "target": q64.tolist(),
        "draft": p.double().tolist(),
        "empirical": empirical.tolist(),
        "labels": [repr(tokenizer.decode([i]))[1:-1] or f"<{i}>" for i in range(q.numel())]
        if q.numel() == 259
        else None,
    }


SAMPLING_HEADER = [
    "pair",
    "V",
    "samples",
    "TV(p,q)",
    "accepted",
    "std(emp - q)",
    "noise sqrt(mean q(1-q)/N)",
    "std / noise",
    f"rms(emp - q), top {TOP}",
    f"noise, top {TOP}",
    "chi2",
    "df",
    "p-value",
]


def sampling_table(results: list[dict]) -> list[list]:
    return [
        [
            r["name"],
            r["vocab"],
            f"{r['num_samples']:,}",
            f"{r['tv_pq']:.3f}",
            f"{r['accept_rate']:.3f}",
            f"{r['std']:.3e}",
            f"{r['noise']:.3e}",
            f"{r['std'] / r['noise']:.3f}",
            f"{r['std_top']:.3e}",
            f"{r['noise_top']:.3e}",
            f"{r['chi2']:.1f}",
            r["df"],
            f"{r['p_value']:.3f}",
        ]
        for r in results
    ]


def greedy_side_by_side(max_new_tokens: int, weights_dir: str | None = None, num_draft_tokens: int = 4) -> dict | None:
    """Plain vs speculative greedy text on the shipped pair; ``None`` without weights."""
    if not weights_available(weights_dir):
        return None
    target, draft = sd.load_pretrained(weights_dir=weights_dir)
    plain = sd.generate(target, GREEDY_PROMPTS, max_new_tokens, temperature=0.0, eos_id=None)
    spec = sd.speculative_generate(
        target, draft, GREEDY_PROMPTS, max_new_tokens, num_draft_tokens=num_draft_tokens, temperature=0.0, eos_id=None
    )
    return {
        "prompts": GREEDY_PROMPTS,
        "plain": plain.texts(),
        "speculative": spec.texts(),
        "identical_tokens": bool(torch.equal(plain.tokens, spec.tokens)),
        "K": num_draft_tokens,
        "mean_accepted_length": spec.stats["mean_accepted_length"],
    }


def side_by_side(left: str, right: str, width: int = 56) -> str:
    def wrap(text):
        lines = []
        for line in text.split("\n"):
            lines += [line[i : i + width] for i in range(0, max(len(line), 1), width)]
        return lines

    a, b = wrap(left), wrap(right)
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return "\n".join(f"{x:<{width}} | {y}" for x, y in zip(a, b))


def settings(quick: bool) -> dict:
    """``run``'s arguments for the article's size (1,000,000 samples) or ``--quick``."""
    return {"num_samples": 200_000, "greedy_tokens": 80} if quick else {"num_samples": 1_000_000, "greedy_tokens": 160}


def run(
    num_samples: int = 1_000_000,
    greedy_tokens: int = 160,
    seed: int = 0,
    weights_dir: str | None = None,
    out_dir: str | None = OUT_DIR,
    log: Log = print,
) -> list[dict]:
    """Rows: one ``kind="sampling"`` row per (p, q) pair (``run_pair``'s dict), a ``kind="greedy"``
    row (``greedy_side_by_side``'s dict) when the weights are there, and a ``kind="note"`` row
    (``text``) when a part was skipped. Saved as ``<out_dir>/seed_experiment.json``."""
    chosen, note = pairs(weights_dir)
    rows = [{"kind": "note", "text": note}] if note else []
    for i, (name, p, q) in enumerate(chosen):
        log(f"  [{i + 1}/{len(chosen)}] {num_samples:,} speculative first tokens: {name} ...", flush=True)
        rows.append({"kind": "sampling", **run_pair(name, p, q, num_samples, seed + 10 * i)})
    greedy = greedy_side_by_side(greedy_tokens, weights_dir)
    if greedy is not None:
        rows.append({"kind": "greedy", **greedy})
    return save_rows(TOPIC, rows, out_dir)


def section(rows: list[dict], figures_dir: str | None = None) -> Section:
    sampled = of_kind(rows, "sampling")
    samples = sampled[0]["num_samples"] if sampled else 0
    s = Section(
        "Losslessness: the 1,000,000-sample experiment, and greedy",
        f"{samples:,} speculative samples of the first token for four fixed (p, q) pairs, after the article "
        f'"Does speculative sampling lose LLM inference accuracy?" (1,000,000 samples; it reports '
        f"{ARTICLE_REPORTED_STD:.3e} for Llama-3-8B + EAGLE): std of (empirical - q) over the vocabulary (the "
        "number scales with 1/sqrt(N) and the vocabulary) next to the sampling-noise expectation "
        "sqrt(mean q(1-q)/N), and the chi-square goodness-of-fit p-value (large = consistent with q). Then "
        "greedy: plain and speculative decoding must give identical text.",
    )
    for note in of_kind(rows, "note"):
        s.text(f"NOTE: {note['text']}.")
    s.table(SAMPLING_HEADER, sampling_table(sampled))
    s.image(plots.plot_seed_bars(sampled, figure_path(figures_dir, "seed_first_token.png")))
    greedy = of_kind(rows, "greedy")
    if not greedy:
        s.text("Greedy: shipped weights not found, skipped.")
    for g in greedy:
        s.text(
            f"Greedy, temperature 0, K = {g['K']}: **tokens identical = {g['identical_tokens']}** "
            f"(mean accepted length {g['mean_accepted_length']:.2f})."
        )
        for prompt, a, b in zip(g["prompts"], g["plain"], g["speculative"]):
            s.text(f"Prompt `{prompt!r}`:")
            s.code(f"{'sd.generate':<56} | sd.speculative_generate\n{'-' * 56}-+-{'-' * 56}\n" + side_by_side(a, b))
    return s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200,000 samples per pair, shorter greedy text")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--plot", default=None, help="write the bar chart into this directory (needs matplotlib)")
    parser.add_argument("--weights", default=None, help="a (target, draft) pair directory instead of the shipped one")
    args = parser.parse_args(argv)
    kwargs = settings(args.quick) | ({"num_samples": args.samples} if args.samples else {})
    rows = run(**kwargs, weights_dir=args.weights)
    print(section(rows, args.plot).terminal())


if __name__ == "__main__":
    main()
