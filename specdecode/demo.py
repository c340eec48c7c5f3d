"""``python -m specdecode demo``: the ops at work, each section printing a small table."""

from __future__ import annotations

import contextlib
import os
import sys
import time

import torch

import specdecode as sd
from specdecode.reference import rejection_sample as reference


def _median_ms(fn, reps: int = 7) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def verification_demo(num_samples: int = 200_000) -> None:
    """Speculative sampling is lossless: a draft that disagrees with the target still yields the
    target's distribution, while most drafts are accepted."""
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat"]
    target = torch.tensor([0.30, 0.10, 0.20, 0.05, 0.15, 0.05, 0.10, 0.05])
    draft = torch.tensor([0.10, 0.30, 0.05, 0.20, 0.05, 0.15, 0.05, 0.10])
    gen = torch.Generator().manual_seed(0)
    draft_ids = torch.multinomial(draft, num_samples, replacement=True, generator=gen)[:, None]
    target_probs = target.expand(num_samples, 2, len(words))  # position 0, then the bonus row
    out = sd.rejection_sample(draft_ids, draft.expand(num_samples, 1, len(words)), target_probs, seed=1)
    first = torch.bincount(out.token_ids[:, 0], minlength=len(words)).double() / num_samples
    drafted = torch.bincount(draft_ids[:, 0], minlength=len(words)).double() / num_samples
    print(
        f"1. Lossless verification: {num_samples:,} one-token drafts from a draft model that disagrees "
        f"with the target\n   (accepted {float(out.num_accepted.float().mean()):.1%}; "
        f"exact rate sum(min(p, q)) = {float(torch.minimum(draft, target).sum()):.1%})"
    )
    print(f"   {'token':>6} {'target q':>9} {'draft p':>8} {'drafted':>8} {'emitted':>8}")
    for word, q, p, d, e in zip(words, target.tolist(), draft.tolist(), drafted.tolist(), first.tolist()):
        print(f"   {word:>6} {q:9.3f} {p:8.3f} {d:8.3f} {e:8.3f}")
    max_error = float((first - target.double()).abs().max())
    print(f"   max |emitted - target| = {max_error:.4f} (sampling noise ~ {(0.25 / num_samples) ** 0.5:.4f})\n")


def speed_demo(batch: int = 64, num_drafts: int = 4, vocab: int = 32000) -> None:
    gen = torch.Generator().manual_seed(0)
    target_logits = torch.randn(batch, num_drafts + 1, vocab, generator=gen) * 2
    target_probs = torch.softmax(target_logits, -1)
    draft_probs = torch.softmax(
        target_logits[:, :num_drafts] + torch.randn(batch, num_drafts, vocab, generator=gen) * 0.5, -1
    )
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    seeds = torch.tensor([1])
    greedy = torch.zeros(batch, dtype=torch.bool)
    fused = _median_ms(lambda: sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds))
    ref = _median_ms(
        lambda: reference.rejection_sample(draft_ids, draft_probs, target_probs, greedy, seeds, torch.tensor([0])),
        reps=3,
    )
    same = torch.equal(
        sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds).num_accepted,
        reference.rejection_sample(draft_ids, draft_probs, target_probs, greedy, seeds, torch.tensor([0])).num_accepted,
    )
    print(f"2. Speed on this CPU, (B, K, V) = ({batch}, {num_drafts}, {vocab}), float32:")
    print(
        f"   C++ kernel {fused:.2f} ms vs pure-PyTorch reference {ref:.1f} ms ({ref / fused:.0f}x); "
        f"same acceptance counts: {same}\n   (full comparison: python -m bench.bench_rejection_sample)\n"
    )


# ------------------------------------------------------------------------ sections 3-4: the shipped pair

DEMO_PROMPTS = [
    "import os\nimport sys\n\n\ndef main():\n",
    "class Queue:\n    def __init__(self, maxsize=0):\n",
    "    def __repr__(self):\n        return ",
    "from collections import namedtuple\n\n",
]


class Progress:
    """A one-line text progress bar, ``label [#####-----] done/total``, redrawn in place on a
    terminal; elsewhere (a log, a pipe) one line when the task ends."""

    def __init__(self, label: str, total: int, width: int = 24):
        self.label, self.total, self.width = label, max(1, total), width
        self.tty = sys.stdout.isatty()
        self.start = time.perf_counter()
        self.update(0)

    def update(self, done: int) -> None:
        if self.tty:
            filled = self.width * min(done, self.total) // self.total
            bar = "#" * filled + "-" * (self.width - filled)
            print(f"\r   {self.label:<34} [{bar}] {done}/{self.total}", end="", flush=True)

    def close(self) -> None:
        seconds = time.perf_counter() - self.start
        if self.tty:
            print("\r" + " " * (self.width + 50 + len(self.label)) + "\r", end="", flush=True)
        else:
            print(f"   {self.label} ... {seconds:.1f} s", flush=True)


@contextlib.contextmanager
def one_thread():
    """Run on one torch thread, then restore. The shipped models are small enough that a second
    thread mostly adds synchronisation, and on a shared machine OpenMP threads spinning against
    other processes slowed batch-1 decoding ~40x in our runs (190 -> 5 tokens/s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _shipped_pair(weights_dir: str | None):
    """The shipped (target, draft), or None (with how to get them) if the weights are missing."""
    from specdecode.decoder.generate import WEIGHTS_DIR

    directory = weights_dir or WEIGHTS_DIR
    missing = [name for name in ("target.pt", "draft.pt") if not os.path.exists(os.path.join(directory, name))]
    if missing:
        print(
            f"3-4. Skipped: the trained weights are missing ({', '.join(missing)} in {directory}).\n"
            "   Train them (the Python standard library is the corpus, ~15-20 min on one CPU core) with\n"
            "       python -m specdecode.decoder.train\n"
            "   then run the demo again.\n"
        )
        return None
    return sd.load_pretrained(weights_dir=directory)


@one_thread()
def decoding_demo(target, draft, quick: bool = False, num_draft_tokens: int = 4) -> None:
    """Plain vs speculative decoding on the shipped pair: tokens/s and mean accepted length."""
    prompts = DEMO_PROMPTS[:2] if quick else DEMO_PROMPTS
    max_new = 48 if quick else 96
    cases = [
        ("greedy, batch 1", 1, 0.0),
        (f"greedy, batch {len(prompts)}", len(prompts), 0.0),
        ("T = 0.8, batch 1", 1, 0.8),
    ]
    print(
        f"3. Plain vs speculative decoding, shipped pair (target {target.num_parameters() / 1e6:.1f}M params, "
        f"draft {draft.num_parameters() / 1e6:.2f}M), K = {num_draft_tokens}, {max_new} new tokens per prompt"
    )
    rows = []
    for label, batch, temperature in cases:
        batches = [prompts[i : i + batch] for i in range(0, len(prompts), batch)]
        bar = Progress(label, 2 * len(batches))
        totals = {"plain": [0, 0.0], "spec": [0, 0.0]}
        accepted, row_steps, same = 0.0, 0, True
        for i, chunk in enumerate(batches):
            plain = sd.generate(
                target, chunk, max_new, temperature=temperature, generator=torch.Generator().manual_seed(i)
            )
            bar.update(2 * i + 1)
            spec = sd.speculative_generate(
                target,
                draft,
                chunk,
                max_new,
                num_draft_tokens=num_draft_tokens,
                temperature=temperature,
                generator=torch.Generator().manual_seed(i),
            )
            bar.update(2 * i + 2)
            for key, out in (("plain", plain), ("spec", spec)):
                totals[key][0] += out.stats["tokens_generated"]
                totals[key][1] += out.stats["seconds"]
            steps = sum(spec.stats["accepted_hist"])
            accepted += spec.stats["mean_accepted_length"] * steps
            row_steps += steps
            same &= temperature > 0 or torch.equal(plain.tokens, spec.tokens)
        bar.close()
        plain_tps = totals["plain"][0] / totals["plain"][1]
        spec_tps = totals["spec"][0] / totals["spec"][1]
        rows.append(
            (
                label,
                plain_tps,
                spec_tps,
                accepted / max(1, row_steps),
                "yes" if same and temperature == 0 else ("n/a (sampled)" if temperature else "NO"),
            )
        )
    print(
        f"   {'case':<18} {'plain tok/s':>11} {'spec tok/s':>10} {'speedup':>8} {'accepted len':>12}"
        "  same text as plain"
    )
    for label, plain_tps, spec_tps, mean_len, same in rows:
        print(
            f"   {label:<18} {plain_tps:11.0f} {spec_tps:10.0f} {spec_tps / plain_tps:7.2f}x {mean_len:12.2f}  {same}"
        )
    print(
        "   (accepted len = tokens emitted per row-step: accepted drafts + 1; full sweep: python -m bench.bench_e2e)\n"
    )


@one_thread()
def best_of_n_demo(target, quick: bool = False) -> None:
    """Best-of-N vs Speculative Rejection on the shipped target, reward = the target's mean
    log-likelihood of the response (the paper's Table 2 setting)."""
    from specdecode.decoder.best_of_n import kv_bytes_per_token

    prompts = DEMO_PROMPTS
    max_new, small_n, big_n = (32, 4, 16) if quick else (64, 8, 32)
    mid_n = (small_n + big_n) // 2
    reward = sd.LogLikelihoodReward(target)
    prompt_tokens = sum(len(p.encode()) + 1 for p in prompts)
    # As the paper: a memory budget the big batch fills early (prompt + 1/4 of the new tokens).
    budget = kv_bytes_per_token(target) * big_n * (prompt_tokens + len(prompts) * (max_new // 4))
    runs = [
        (f"Best-of-N, N = {small_n}", dict(n=small_n)),
        (f"Best-of-N, N = {mid_n}", dict(n=mid_n)),
        (f"Best-of-N, N = {big_n}", dict(n=big_n)),
        (f"SpecRej, N = {big_n}, alpha = 0.5", dict(n=big_n, alpha=0.5, memory_budget=budget)),
        (f"SpecRej, N = {big_n}, alpha = 0.8", dict(n=big_n, alpha=0.8, memory_budget=budget)),
    ]
    print(
        f"4. Best-of-N vs Speculative Rejection: {len(prompts)} prompts in one batch, up to {max_new} new tokens, "
        f"T = 1,\n   reward = the target's mean log-likelihood of the response (higher = lower perplexity); "
        f"SpecRej prunes when the live KV\n   would pass {budget / 1024:.0f} KiB "
        f"({kv_bytes_per_token(target)} B per token per row)"
    )
    results = []
    for label, kwargs in runs:
        bar = Progress(label, max_new)
        common = dict(
            max_new_tokens=max_new,
            generator=torch.Generator().manual_seed(0),
            progress=lambda step, live: bar.update(step),
        )
        if "alpha" in kwargs:
            n, alpha = kwargs.pop("n"), kwargs.pop("alpha")
            out = sd.speculative_rejection(target, reward, prompts, n, alpha, **common, **kwargs)
        else:
            out = sd.best_of_n(target, reward, prompts, kwargs["n"], **common)
        bar.close()
        results.append((label, out))
    base_tokens = results[2][1].stats["tokens_generated"]
    base_seconds = results[2][1].stats["seconds"]
    print(
        f"   {'method':<30} {'reward':>7} {'perplexity':>10} {'tokens':>7} {'vs BoN-' + str(big_n):>9} "
        f"{'time s':>7} {'peak KV KiB':>11} {'rounds':>6}"
    )
    for label, out in results:
        reward_mean = float(out.rewards.mean())
        perplexity = float(torch.exp(-out.rewards).mean())
        tokens = out.stats["tokens_generated"]
        print(
            f"   {label:<30} {reward_mean:7.3f} {perplexity:10.2f} {tokens:7d} {tokens / base_tokens:8.0%} "
            f"{out.stats['seconds']:7.2f} {out.stats['peak_kv_bytes'] / 1024:11.0f} {len(out.stats['rounds']):6d}"
        )
    spr = results[3][1]
    kept = ", ".join(
        f"{sum(r['live_per_prompt'])} -> {sum(r['kept_per_prompt'])} at token {r['tokens_per_row']}"
        for r in spr.stats["rounds"]
    )
    print(
        f"   SpecRej alpha = 0.5 pruned {kept}, then the survivors finish; "
        f"time vs BoN-{big_n}: {spr.stats['seconds'] / base_seconds:.0%}"
    )
    print(f"   its best answer to {prompts[0]!r}:\n     {spr.texts()[0][:120]!r}")
    print("   (sweep over N and alpha: python -m bench.bench_best_of_n)\n")


def main(quick: bool = False, weights_dir: str | None = None) -> None:
    print(f"specdecode demo (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)\n")
    verification_demo(50_000 if quick else 200_000)
    speed_demo()
    pair = _shipped_pair(weights_dir)
    if pair is None:
        return
    target, draft = pair
    print("(sections 3-4 on 1 CPU thread)\n")
    decoding_demo(target, draft, quick)
    best_of_n_demo(target, quick)
