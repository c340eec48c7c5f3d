"""``python -m specdecode demo``: the ops at work, each section printing a small table and what it
showed: (1) a chi-square verdict on lossless verification, (2) the verifier's speed (medians of
repeats, beside the README's figure), (3) plain vs speculative decoding, (4) Best-of-N vs
Speculative Rejection, saying when and why a row loses at equal tokens, (5) the same ops on
Hugging Face models, when transformers is installed."""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import time

import torch

import specdecode as sd
from specdecode.reference import rejection_sample as reference
from specdecode.stats import chi2_sf, chi_square

# The chi-square test rejects "the tokens follow this distribution" below this p-value: a correct
# sampler is rejected in 1 run out of 1,000.
P_VALUE_THRESHOLD = 1e-3

# The README's verifier benchmark (C++ kernel vs the pure-PyTorch reference, float32, one run of
# `python -m bench`): (B, K, V) -> (kernel ms, reference ms).
README_VERIFIER_MS = {(64, 4, 32000): (0.331, 55.4)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _time_ms(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def _median_ms(fn, reps: int = 7) -> float:
    fn()
    return _median([_time_ms(fn) for _ in range(reps)])


# ------------------------------------------------------------------------ section 1: losslessness


def goodness_of_fit(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int, float, bool]:
    """(chi-square statistic, degrees of freedom, p-value, passed) of ``counts`` against ``probs``;
    passed means p >= ``P_VALUE_THRESHOLD``."""
    stat, df = chi_square(counts, probs)
    p_value = chi2_sf(stat, df)
    return stat, df, p_value, p_value >= P_VALUE_THRESHOLD


def fit_line(name: str, counts: torch.Tensor, probs: torch.Tensor) -> str:
    stat, df, p_value, passed = goodness_of_fit(counts, probs)
    verdict = "follows the target" if passed else f"does NOT follow the target (p < {P_VALUE_THRESHOLD:g})"
    return f"{name:<18} chi-square = {stat:9.1f}, df = {df}, p = {p_value:.3g}: {verdict}"


def verification_demo(num_samples: int = 200_000, verifier=None) -> bool:
    """Speculative sampling is lossless: a draft that disagrees with the target still yields the
    target's distribution, while most drafts are accepted. ``verifier`` replaces
    ``sd.rejection_sample`` (the tests pass a broken one to see the verdict fail). Returns the
    verdict: True if the emitted tokens pass the chi-square test."""
    verifier = verifier or sd.rejection_sample
    words = ["the", "a", "cat", "dog", "sat", "ran", "on", "mat"]
    target = torch.tensor([0.30, 0.10, 0.20, 0.05, 0.15, 0.05, 0.10, 0.05])
    draft = torch.tensor([0.10, 0.30, 0.05, 0.20, 0.05, 0.15, 0.05, 0.10])
    gen = torch.Generator().manual_seed(0)
    draft_ids = torch.multinomial(draft, num_samples, replacement=True, generator=gen)[:, None]
    target_probs = target.expand(num_samples, 2, len(words))  # position 0, then the bonus row
    out = verifier(draft_ids, draft.expand(num_samples, 1, len(words)), target_probs, seed=1)
    emitted_counts = torch.bincount(out.token_ids[:, 0], minlength=len(words))
    drafted_counts = torch.bincount(draft_ids[:, 0], minlength=len(words))
    first = emitted_counts.double() / num_samples
    drafted = drafted_counts.double() / num_samples
    print(
        f"1. Lossless verification: {num_samples:,} one-token drafts from a draft model that disagrees "
        f"with the target\n   (accepted {float(out.num_accepted.float().mean()):.1%}; "
        f"exact rate sum(min(p, q)) = {float(torch.minimum(draft, target).sum()):.1%})"
    )
    print(f"   {'token':>6} {'target q':>9} {'draft p':>8} {'drafted':>8} {'emitted':>8}")
    for word, q, p, d, e in zip(words, target.tolist(), draft.tolist(), drafted.tolist(), first.tolist()):
        print(f"   {word:>6} {q:9.3f} {p:8.3f} {d:8.3f} {e:8.3f}")
    passed = goodness_of_fit(emitted_counts, target)[3]
    draft_rejected = not goodness_of_fit(drafted_counts, target)[3]
    print(
        f"   Chi-square goodness of fit against the target q (rejects below p = {P_VALUE_THRESHOLD:g}, "
        f"so a correct sampler fails 1 run in {round(1 / P_VALUE_THRESHOLD):,}):"
    )
    print("     " + fit_line("emitted tokens", emitted_counts, target))
    print("     " + fit_line("drafted (control)", drafted_counts, target))
    if passed:
        control = "" if not draft_rejected else ", while the same test rejects the drafts they came from"
        print(f"   Verdict: PASS -- the emitted tokens follow the target{control}.\n")
    else:
        print("   Verdict: FAIL -- the emitted tokens do not follow the target distribution.\n")
    return passed


# ------------------------------------------------------------------------ section 2: speed


def speed_demo(batch: int = 64, num_drafts: int = 4, vocab: int = 32000, rounds: int = 5) -> None:
    """The C++ kernel against the pure-PyTorch reference: ``rounds`` rounds, each timing the kernel
    (median of 5 calls) and the reference (one call); medians over the rounds, and the range of
    the per-round ratio, since one call on a busy machine can be off by an order of magnitude."""
    gen = torch.Generator().manual_seed(0)
    target_logits = torch.randn(batch, num_drafts + 1, vocab, generator=gen) * 2
    target_probs = torch.softmax(target_logits, -1)
    draft_probs = torch.softmax(
        target_logits[:, :num_drafts] + torch.randn(batch, num_drafts, vocab, generator=gen) * 0.5, -1
    )
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    seeds = torch.tensor([1])
    greedy = torch.zeros(batch, dtype=torch.bool)

    def fused_call():
        return sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds)

    def reference_call():
        return reference.rejection_sample(draft_ids, draft_probs, target_probs, greedy, seeds, torch.tensor([0]))

    same = torch.equal(fused_call().num_accepted, reference_call().num_accepted)  # also the warm-up
    fused_times, reference_times = [], []
    for _ in range(rounds):
        fused_times.append(_median_ms(fused_call, reps=5))
        reference_times.append(_time_ms(reference_call))
    fused, ref = _median(fused_times), _median(reference_times)
    ratios = [r / f for r, f in zip(reference_times, fused_times)]
    print(f"2. Speed on this CPU, (B, K, V) = ({batch}, {num_drafts}, {vocab}), float32:")
    print(
        f"   C++ kernel {fused:.2f} ms vs pure-PyTorch reference {ref:.1f} ms: {ref / fused:.0f}x "
        f"(medians of {rounds} rounds; per-round ratio {min(ratios):.0f}-{max(ratios):.0f}x)"
    )
    readme = README_VERIFIER_MS.get((batch, num_drafts, vocab))
    if readme is not None:
        print(
            f"   README benchmark, same shape: {readme[0]} ms vs {readme[1]} ms: {readme[1] / readme[0]:.0f}x "
            "(another run; the ratio moves with the reference's time)"
        )
    print(
        f"   same acceptance counts as the reference: {same}\n"
        "   (full comparison: python -m bench.bench_rejection_sample)\n"
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


# A row "loses at equal tokens" to another that reached a higher reward with at most this much
# more generated tokens (1,280 vs 1,312 is equal for a reader; 2x is not).
EQUAL_TOKENS_TOLERANCE = 0.05


def losses_at_equal_tokens(rows: list[tuple[float, int]]) -> list[tuple[int, int]]:
    """``rows`` = (reward, tokens generated) per method. For every row some other row beats -- a
    higher reward with at most ``1 + EQUAL_TOKENS_TOLERANCE`` times its tokens -- the pair
    ``(loser, winner)``, the winner being the best such row."""
    losses = []
    for i, (reward, tokens) in enumerate(rows):
        better = [
            j
            for j, (other_reward, other_tokens) in enumerate(rows)
            if j != i and other_reward > reward and other_tokens <= tokens * (1 + EQUAL_TOKENS_TOLERANCE)
        ]
        if better:
            losses.append((i, max(better, key=lambda j: rows[j][0])))
    return losses


def _pearson(xs: list[float], ys: list[float]) -> float:
    """Pearson correlation; NaN for fewer than 3 points or a constant side."""
    if len(xs) < 3:
        return math.nan
    return float(torch.corrcoef(torch.tensor([xs, ys], dtype=torch.float64))[0, 1])


def partial_final_correlation(pruned_run, full_run) -> float:
    """Mean over prompts of the within-prompt correlation between the partial reward each
    candidate had at the first decision point of ``pruned_run`` and its final reward in
    ``full_run`` (Best-of-N with as many candidates, same seed: candidate ``j`` of a prompt draws
    the same uniforms in both). NaN if the runs' candidates differ before the decision point."""
    first = pruned_run.stats["rounds"][0]
    tau = first["tokens_per_row"]
    if not torch.equal(pruned_run.candidate_tokens[..., :tau], full_run.candidate_tokens[..., :tau]):
        return math.nan
    within = []
    for g, partial in enumerate(first["rewards"]):
        live = (full_run.candidate_num_tokens[g] > tau).nonzero().flatten().tolist()
        if len(live) != len(partial):
            return math.nan
        within.append(_pearson(partial, [float(full_run.candidate_rewards[g, c]) for c in live]))
    within = [r for r in within if not math.isnan(r)]
    return sum(within) / len(within) if within else math.nan


def best_pruned(pruned_run, full_run) -> int:
    """How many prompts lost, to pruning in ``pruned_run``, the candidate that wins them in
    ``full_run`` (Best-of-N over the same candidates)."""
    winners = full_run.best_candidate[:, None]
    return int((~pruned_run.finished.gather(1, winners)).sum())


def _per_prompt(counts: list[int]) -> str:
    """``[8, 8, 8, 8]`` -> ``8``; ``[8, 7, 8, 8]`` -> ``8/7/8/8``."""
    return str(counts[0]) if len(set(counts)) == 1 else "/".join(map(str, counts))


def _kept_per_prompt(run) -> str:
    return _per_prompt(run.stats["rounds"][-1]["kept_per_prompt"])


def loss_explanation(loser: dict, winner: dict, full_run) -> str:
    """One line: ``loser`` (a row of section 4) reaches a lower reward than ``winner`` with about
    as many tokens or more, and why. ``full_run``: Best-of-N with as many candidates as the
    pruned runs start with, same seed."""
    head = (
        f"   {loser['label']} loses to {winner['label']} at about equal tokens "
        f"({loser['tokens']:,} vs {winner['tokens']:,}; reward {loser['reward']:.3f} vs {winner['reward']:.3f}): "
    )
    if loser["rounds"] and not winner["rounds"]:  # pruned, against plain Best-of-N
        run = loser["out"]
        tau = run.stats["rounds"][0]["tokens_per_row"]
        r = partial_final_correlation(run, full_run)
        measured = f" (within-prompt correlation {r:.2f})" if not math.isnan(r) else ""
        lost, num_prompts = best_pruned(run, full_run), run.finished.shape[0]
        return head + (
            f"at this length the partial reward at token {tau} predicts the final one only in part{measured}; "
            f"pruning dropped the best of all {full_run.candidate_rewards.shape[1]} for {lost} of {num_prompts} "
            f"prompts, and {_kept_per_prompt(run)} candidates per prompt finished to Best-of-N's {winner['n']}."
        )
    if winner["rounds"] and not loser["rounds"]:
        run = winner["out"]
        tau = run.stats["rounds"][0]["tokens_per_row"]
        return head + (
            f"Speculative Rejection started {winner['n']} candidates per prompt and spent its remaining tokens on the "
            f"{_kept_per_prompt(run)} whose partial reward was best at token {tau}."
        )
    return head + "one seed on a few prompts: the rewards of single samples vary."


@one_thread()
def best_of_n_demo(target, quick: bool = False) -> list[dict]:
    """Best-of-N vs Speculative Rejection on the shipped target, reward = the target's mean
    log-likelihood of the response (the paper's Table 2 setting). Returns the table's rows
    (``label``, ``n``, ``alpha``, ``reward``, ``tokens``, ``rounds``, ``out``)."""
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
        n, alpha = kwargs.pop("n"), kwargs.pop("alpha", None)
        if alpha is not None:
            out = sd.speculative_rejection(target, reward, prompts, n, alpha, **common, **kwargs)
        else:
            out = sd.best_of_n(target, reward, prompts, n, **common)
        bar.close()
        results.append(
            {
                "label": label,
                "n": n,
                "alpha": alpha,
                "reward": float(out.rewards.mean()),
                "tokens": out.stats["tokens_generated"],
                "rounds": len(out.stats["rounds"]),
                "out": out,
            }
        )
    full_run = results[2]["out"]
    base_tokens = full_run.stats["tokens_generated"]
    base_seconds = full_run.stats["seconds"]
    print(
        f"   {'method (N per prompt)':<30} {'reward':>7} {'perplexity':>10} {'tokens':>7} {'vs BoN-' + str(big_n):>9} "
        f"{'time s':>7} {'peak KV KiB':>11} {'rounds':>6}"
    )
    for row in results:
        out = row["out"]
        perplexity = float(torch.exp(-out.rewards).mean())
        print(
            f"   {row['label']:<30} {row['reward']:7.3f} {perplexity:10.2f} {row['tokens']:7d} "
            f"{row['tokens'] / base_tokens:8.0%} {out.stats['seconds']:7.2f} "
            f"{out.stats['peak_kv_bytes'] / 1024:11.0f} {row['rounds']:6d}"
        )
    spr = results[3]["out"]
    kept = ", ".join(
        f"{sum(r['live_per_prompt'])} -> {sum(r['kept_per_prompt'])} rows "
        f"({_per_prompt(r['live_per_prompt'])} -> {_per_prompt(r['kept_per_prompt'])} per prompt) "
        f"at token {r['tokens_per_row']}"
        for r in spr.stats["rounds"]
    )
    print(
        f"   SpecRej alpha = 0.5 pruned {kept}, then the survivors finish; "
        f"time vs BoN-{big_n}: {spr.stats['seconds'] / base_seconds:.0%}"
    )
    for loser, winner in losses_at_equal_tokens([(row["reward"], row["tokens"]) for row in results]):
        print(loss_explanation(results[loser], results[winner], full_run))
    print(f"   its best answer to {prompts[0]!r}:\n     {spr.texts()[0][:120]!r}")
    print("   (sweep over N and alpha: python -m bench.bench_best_of_n)\n")
    return results


@one_thread()
def premise_demo(draft, quick: bool = False) -> list[dict] | None:
    """Section 4, continued: the setting where Speculative Rejection's premise can hold -- long
    responses, many candidates, a memory budget and the trained code reward model
    (``rewards.load_reward_model``). The 0.24M draft decodes (the 22.4M target would take minutes
    per prompt at this size on a CPU; ``python -m bench.bench_best_of_n`` runs both). Returns the
    rows (as ``best_of_n_demo``'s, plus ``well_formed``), or None without the reward weights."""
    from specdecode.decoder.best_of_n import kv_bytes_per_token
    from specdecode.decoder.rewards import load_reward_model, well_formed

    try:
        reward = load_reward_model()
    except FileNotFoundError as error:
        print(f"4 (cont.). Skipped: {error}\n")
        return None
    prompts = DEMO_PROMPTS[:2]
    max_new, ns, alphas = (128, (8, 32, 128), (0.7, 0.9)) if quick else (256, (16, 64, 256), (0.7, 0.9))
    big_n = ns[-1]
    prompt_tokens = sum(len(p.encode()) + 1 for p in prompts)
    budget = kv_bytes_per_token(draft) * big_n * (prompt_tokens + len(prompts) * (max_new // 8))
    fits = budget // (kv_bytes_per_token(draft) * (prompt_tokens + len(prompts) * max_new))
    info = reward.training_info.get("held_out_accuracy", {}).get("draft/val", {}).get("finished", {})
    print(
        f"4 (cont.). Where the premise can hold: {len(prompts)} prompts, up to {max_new} new tokens, the draft "
        "decoding,\n   reward = the trained code reward model (logit of 'the finished response is well-formed'; "
        "held-out accuracy "
        f"{info.get('accuracy', float('nan')):.0%}\n   vs {info.get('majority_accuracy', float('nan')):.0%} for the "
        f"majority label); SpecRej starts {big_n} candidates per prompt in a KV budget where Best-of-N\n"
        f"   could keep {fits // len(prompts)} per prompt at full length, and prunes whenever the budget is reached"
    )
    runs = [(f"Best-of-N, N = {n}", n, None) for n in ns] + [
        (f"SpecRej, N = {big_n}, alpha = {alpha}", big_n, alpha) for alpha in alphas
    ]
    results = []
    for label, n, alpha in runs:
        bar = Progress(label, max_new)
        common = dict(
            max_new_tokens=max_new,
            generator=torch.Generator().manual_seed(0),
            progress=lambda step, live: bar.update(step),
        )
        if alpha is None:
            out = sd.best_of_n(draft, reward, prompts, n, **common)
        else:
            out = sd.speculative_rejection(draft, reward, prompts, n, alpha, memory_budget=budget, **common)
        bar.close()
        good = sum(well_formed(p + t)[0] for p, t in zip(prompts, out.texts()))
        results.append(
            {
                "label": label,
                "n": n,
                "alpha": alpha,
                "reward": float(out.rewards.mean()),
                "tokens": out.stats["tokens_generated"],
                "rounds": len(out.stats["rounds"]),
                "well_formed": good / len(prompts),
                "out": out,
            }
        )
    print(
        f"   {'method (N per prompt)':<30} {'reward':>7} {'well-formed':>11} {'tokens':>7} {'time s':>7} {'rounds':>6}"
    )
    for row in results:
        print(
            f"   {row['label']:<30} {row['reward']:7.3f} {row['well_formed']:11.0%} {row['tokens']:7d} "
            f"{row['out'].stats['seconds']:7.2f} {row['rounds']:6d}"
        )
    for row in results[len(ns) :]:
        print("   " + _against_best_of_n(row, results[: len(ns)]))
    full_run = results[len(ns) - 1]["out"]
    for loser, winner in losses_at_equal_tokens([(row["reward"], row["tokens"]) for row in results]):
        print(loss_explanation(results[loser], results[winner], full_run))
    print(
        "   (N up to 1024, the target with speculative decoding inside, both rewards: "
        "python -m bench.bench_best_of_n)\n"
    )
    return results


def _against_best_of_n(row: dict, best_of_n_rows: list[dict]) -> str:
    """How ``row`` (a pruned run) compares with the Best-of-N rows: the cheapest one that reaches
    its reward and the token ratio (a range: Best-of-N's cost at that reward lies between that row
    and the next cheaper one), a loss said as one, or that none reaches it."""
    reached = [b for b in best_of_n_rows if b["reward"] >= row["reward"]]
    if not reached:
        top = max(best_of_n_rows, key=lambda b: b["reward"])
        return (
            f"{row['label']}: reward {row['reward']:.2f} is above every Best-of-N row here (best {top['reward']:.2f} "
            f"with {top['tokens']:,} tokens), with {row['tokens']:,} tokens"
        )
    cheapest = min(reached, key=lambda b: b["tokens"])
    below = [b for b in best_of_n_rows if b["tokens"] < cheapest["tokens"]]
    ratio = cheapest["tokens"] / row["tokens"]
    if ratio <= 1:
        return (
            f"{row['label']}: Best-of-N reaches its reward {row['reward']:.2f} with {cheapest['tokens']:,} tokens "
            f"({cheapest['label'].split(', ')[1]}), {1 / ratio:.1f}x FEWER than it used -- a loss: pruning dropped "
            "candidates that would have won"
        )
    # Between two rows of the grid: Best-of-N's true cost at this reward lies between them.
    low = max(b["tokens"] for b in below) / row["tokens"] if below else None
    span = f"between {low:.1f}x and {ratio:.1f}x" if low is not None and low < ratio else f"{ratio:.1f}x"
    return (
        f"{row['label']}: the cheapest Best-of-N here that reaches its reward {row['reward']:.2f} is "
        f"{cheapest['label'].split(', ')[1]} ({cheapest['tokens']:,} tokens): Best-of-N needs {span} the tokens "
        "Speculative Rejection used (the lower figure if the next smaller N just missed that reward)"
    )


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
    premise_demo(draft, quick)
    hugging_face_demo(quick)


def hugging_face_demo(quick: bool = False) -> None:
    """Section 5: the same ops on Hugging Face models, when the ``hf`` extra is installed."""
    print("5. Hugging Face models (tiny random-config Llamas; specdecode.integrations.transformers)")
    if importlib.util.find_spec("transformers") is None:
        print("   skipped: transformers is not installed (pip install --no-build-isolation -e '.[hf]')\n")
        return
    from specdecode.integrations import hf_demo

    hf_demo.main(quick)
    print()
