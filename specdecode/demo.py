"""``python -m specdecode demo``: the ops at work, each section printing a small table."""
from __future__ import annotations

import time

import torch

import specdecode as sd
from specdecode.reference import rejection as reference


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
    print(f"1. Lossless verification: {num_samples:,} one-token drafts from a draft model that disagrees "
          f"with the target\n   (accepted {float(out.num_accepted.float().mean()):.1%}; "
          f"exact rate sum(min(p, q)) = {float(torch.minimum(draft, target).sum()):.1%})")
    print(f"   {'token':>6} {'target q':>9} {'draft p':>8} {'drafted':>8} {'emitted':>8}")
    for word, q, p, d, e in zip(words, target.tolist(), draft.tolist(), drafted.tolist(), first.tolist()):
        print(f"   {word:>6} {q:9.3f} {p:8.3f} {d:8.3f} {e:8.3f}")
    max_error = float((first - target.double()).abs().max())
    print(f"   max |emitted - target| = {max_error:.4f} (sampling noise ~ {(0.25 / num_samples) ** 0.5:.4f})\n")


def speed_demo(batch: int = 64, num_drafts: int = 4, vocab: int = 32000) -> None:
    gen = torch.Generator().manual_seed(0)
    target_logits = torch.randn(batch, num_drafts + 1, vocab, generator=gen) * 2
    target_probs = torch.softmax(target_logits, -1)
    draft_probs = torch.softmax(target_logits[:, :num_drafts] + torch.randn(batch, num_drafts, vocab, generator=gen) * 0.5, -1)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    seeds = torch.tensor([1])
    greedy = torch.zeros(batch, dtype=torch.bool)
    fused = _median_ms(lambda: sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds))
    ref = _median_ms(lambda: reference.rejection_sample(draft_ids, draft_probs, target_probs, greedy, seeds,
                                                        torch.tensor([0])), reps=3)
    same = torch.equal(sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds).num_accepted,
                       reference.rejection_sample(draft_ids, draft_probs, target_probs, greedy, seeds,
                                                  torch.tensor([0])).num_accepted)
    print(f"2. Speed on this CPU, (B, K, V) = ({batch}, {num_drafts}, {vocab}), float32:")
    print(f"   C++ kernel {fused:.2f} ms vs pure-PyTorch reference {ref:.1f} ms ({ref / fused:.0f}x); "
          f"same acceptance counts: {same}\n   (full comparison: python -m bench.bench_rejection)\n")


def main(quick: bool = False) -> None:
    print(f"specdecode demo (torch {torch.__version__}, {torch.get_num_threads()} CPU threads)\n")
    verification_demo(50_000 if quick else 200_000)
    speed_demo()
