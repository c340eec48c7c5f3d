"""Microbenchmark of the verifier on CPU: the C++ op vs pure-PyTorch implementations.

    python -m bench.bench_rejection_sample            # the README's numbers
    python -m bench.bench_rejection_sample --quick    # fewer repetitions, two shapes

Contenders, all on the same inputs (float32, drafts sampled from p, p close to q so about
60-70% of drafts are accepted, as with a real draft model):
- ``specdecode`` — ``sd.rejection_sample``: the C++ kernel through the registered op.
- ``reference`` — ``specdecode.reference.rejection_sample``: the spec in code, vectorised PyTorch.
- ``multinomial`` — the common PyTorch formulation (as in vLLM v0 / HF): residuals
  ``max(0, q - p)`` materialised and normalised for every draft position, ``torch.multinomial``.
- ``hf`` — HF transformers' ``_speculative_sampling`` (B = 1 only; it takes logits and applies
  softmax itself, so it is given log-probabilities), when transformers is installed.

The floor is the bytes the op must read (per row: the K gathered probabilities plus the one
target row it samples from, and the draft row when that sample is a residual) divided by the
copy bandwidth measured here on a buffer of the same size (bytes copied / time). Times are
medians over repeated calls with warm caches, for every contender alike.
"""

from __future__ import annotations

import argparse

import torch

import specdecode as sd
from bench.timing import median_ms
from specdecode.reference import rejection as ref

SHAPES = [(1, 4, 32000), (8, 4, 32000), (64, 4, 32000), (64, 8, 128256), (256, 4, 128256)]


def make_inputs(batch: int, num_drafts: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    target_logits = torch.randn(batch, num_drafts + 1, vocab, generator=gen) * 2
    draft_logits = target_logits[:, :num_drafts] + torch.randn(batch, num_drafts, vocab, generator=gen) * 0.5
    target_probs = torch.softmax(target_logits, -1)
    draft_probs = torch.softmax(draft_logits, -1)
    draft_ids = torch.multinomial(draft_probs.reshape(-1, vocab), 1, generator=gen).reshape(batch, num_drafts)
    return draft_ids, draft_probs, target_probs


def multinomial_baseline(draft_ids, draft_probs, target_probs, generator):
    """The usual PyTorch verifier: every position's residual is built and sampled."""
    batch, num_drafts = draft_ids.shape
    q_at = target_probs[:, :num_drafts].gather(-1, draft_ids[..., None]).squeeze(-1)
    p_at = draft_probs.gather(-1, draft_ids[..., None]).squeeze(-1)
    u = torch.rand(batch, num_drafts, generator=generator)
    accepted = (u * p_at < q_at).long().cumprod(-1)
    num_accepted = accepted.sum(-1)
    residual = (target_probs[:, :num_drafts] - draft_probs).clamp_min(0)
    residual = residual / residual.sum(-1, keepdim=True).clamp_min(1e-30)
    recovered = torch.multinomial(residual.reshape(batch * num_drafts, -1), 1, generator=generator)
    recovered = recovered.reshape(batch, num_drafts)
    bonus = torch.multinomial(target_probs[:, num_drafts], 1, generator=generator)
    emitted_options = torch.cat([recovered, bonus], 1)
    emitted = emitted_options.gather(1, num_accepted[:, None])
    positions = torch.arange(num_drafts + 1)[None]
    padded = torch.cat([draft_ids, torch.full((batch, 1), -1)], 1)
    tokens = torch.where(positions < num_accepted[:, None], padded, -1)
    return torch.where(positions == num_accepted[:, None], emitted, tokens), num_accepted


def hf_speculative_sampling():
    try:
        from transformers.generation.utils import _speculative_sampling
    except ImportError:
        return None
    return _speculative_sampling


def must_read_bytes(num_accepted: torch.Tensor, num_drafts: int, vocab: int, elem: int) -> int:
    residual_rows = int((num_accepted < num_drafts).sum())
    rows = num_accepted.numel()
    gathers = rows * num_drafts * 2 * elem
    return gathers + rows * vocab * elem + residual_rows * vocab * elem


def copy_bandwidth_gbs(nbytes: int, min_reps: int, min_seconds: float) -> float:
    src = torch.rand(max(nbytes // 4, 1024))
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), min_reps, min_seconds)
    return src.numel() * 4 / (ms * 1e-3) / 1e9


def run(shapes, min_reps: int, min_seconds: float) -> list[dict]:
    hf = hf_speculative_sampling()
    rows = []
    for batch, num_drafts, vocab in shapes:
        draft_ids, draft_probs, target_probs = make_inputs(batch, num_drafts, vocab)
        seeds = torch.tensor([1])
        out = sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds)
        gen = torch.Generator().manual_seed(0)
        row = {
            "shape": (batch, num_drafts, vocab),
            "accept_rate": float(out.num_accepted.float().mean()) / num_drafts,
            "specdecode": median_ms(
                lambda: sd.rejection_sample(draft_ids, draft_probs, target_probs, seed=seeds), min_reps, min_seconds
            ),
            "reference": median_ms(
                lambda: ref.rejection_sample(
                    draft_ids, draft_probs, target_probs, torch.zeros(batch, dtype=torch.bool), seeds, torch.tensor([0])
                ),
                max(3, min_reps // 10),
                min_seconds,
            ),
            "multinomial": median_ms(
                lambda: multinomial_baseline(draft_ids, draft_probs, target_probs, gen),
                max(3, min_reps // 10),
                min_seconds,
            ),
        }
        if hf is not None and batch == 1:
            logits_draft, logits_target = draft_probs.log(), target_probs.log()
            row["hf"] = median_ms(
                lambda: hf(draft_ids, logits_draft, num_drafts, logits_target), max(3, min_reps // 10), min_seconds
            )
        nbytes = must_read_bytes(out.num_accepted, num_drafts, vocab, 4)
        row["floor"] = nbytes / (copy_bandwidth_gbs(nbytes, min_reps, min_seconds) * 1e9) * 1e3
        row["bytes"] = nbytes
        rows.append(row)
        print_row(row, header=len(rows) == 1, flush=True)
    return rows


def print_row(row: dict, header: bool, flush: bool = False) -> None:
    if header:
        print(
            f"{'(B, K, V)':>20} {'accept':>6} {'specdecode':>10} {'reference':>10} {'multinom.':>10} {'hf':>8} "
            f"{'ref/sd':>7} {'mult/sd':>7} {'floor':>8} {'sd/floor':>8}   (times: median ms)"
        )
    hf = f"{row['hf']:8.3f}" if "hf" in row else f"{'-':>8}"
    print(
        f"{str(row['shape']):>20} {row['accept_rate']:6.2f} {row['specdecode']:10.3f} {row['reference']:10.3f} "
        f"{row['multinomial']:10.3f} {hf} {row['reference'] / row['specdecode']:6.1f}x "
        f"{row['multinomial'] / row['specdecode']:6.1f}x {row['floor']:8.3f} {row['specdecode'] / row['floor']:7.2f}x",
        flush=flush,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, fewer repetitions")
    args = parser.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 probabilities")
    if hf_speculative_sampling() is None:
        print("(transformers not installed: no 'hf' column; `pip install transformers` to add it)")
    shapes = SHAPES[:3:2] if args.quick else SHAPES
    run(shapes, min_reps=5 if args.quick else 20, min_seconds=0.2 if args.quick else 1.0)


if __name__ == "__main__":
    main()
